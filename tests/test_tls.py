"""TLS end to end: a fleet whose broker and store speak only TLS (amqps://, rediss://).

A private RabbitMQ node with a TLS listener only, and a private redis-server with a
TLS port only, both requiring a client certificate from a throwaway CA
(deploy/certs.py). Real workers and a FleetWorker client reach them through the
TENSORFLEET_TLS_* settings; without the CA, or without a client certificate, the
servers cannot be reached.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import redis.exceptions
import torch
from click.testing import CliRunner
from fleet_fixture import fleet, new_namespace
from private_servers import free_port, private_rabbitmq, private_redis
from provisioned import PartyClient, honest_round_trip, read_env

import client as sy
from broker.errors import BrokerConnectionError, ConfigurationError
from broker.settings import Settings
from broker.tls import redis_ssl_kwargs
from client.cli import main
from client.fleet import FleetTransport
from deploy.certs import TlsFiles, write_tls_files


def tls_servers_config(files: TlsFiles, amqps_port: int) -> list[str]:
    return [
        f"listeners.ssl.default = 127.0.0.1:{amqps_port}",
        f"ssl_options.cacertfile = {files.ca}",
        f"ssl_options.certfile = {files.server_cert}",
        f"ssl_options.keyfile = {files.server_key}",
        "ssl_options.verify = verify_peer",
        "ssl_options.fail_if_no_peer_cert = true",
    ]


def redis_tls_arguments(files: TlsFiles, port: int) -> list[str]:
    return [
        "--port",
        "0",  # no plain port at all
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(files.server_cert),
        "--tls-key-file",
        str(files.server_key),
        "--tls-ca-cert-file",
        str(files.ca),
        "--tls-auth-clients",
        "yes",
    ]


def test_a_fleet_over_tls_only(tmp_path: Path, hook, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_tls_files(tmp_path / "tls", hosts=("localhost", "127.0.0.1"))
    amqps_port, rediss_port = free_port(), free_port()
    rabbit_config = tls_servers_config(files, amqps_port)
    redis_args = redis_tls_arguments(files, rediss_port)
    with (
        private_rabbitmq(tmp_path / "rabbitmq", rabbit_config, plain=False),
        private_redis(tmp_path / "redis", redis_args),
    ):
        env = {
            "TENSORFLEET_BROKER_URL": f"amqps://guest:guest@127.0.0.1:{amqps_port}//",
            "TENSORFLEET_REDIS_URL": f"rediss://127.0.0.1:{rediss_port}/0",
            "TENSORFLEET_TLS_CA_FILE": str(files.ca),
            "TENSORFLEET_TLS_CERT_FILE": str(files.client_cert),
            "TENSORFLEET_TLS_KEY_FILE": str(files.client_key),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # this process's client uses them too
        with fleet(("bob", "alice"), env=env) as running:
            bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
            x = torch.tensor([1.0, 2.0]).send(bob)
            y = x * 3
            y.move(alice)  # worker to worker, over TLS too
            assert torch.equal(y.get(), torch.tensor([3.0, 6.0]))
            assert torch.equal(x.get(), torch.tensor([1.0, 2.0]))

            # the objects went through to the TLS-only Redis
            settings = running.settings
            store = redis.Redis.from_url(
                settings.redis_url, **redis_ssl_kwargs(settings, settings.redis_url)
            )
            assert store.ping()
            store.close()

            refused_without_the_right_credentials(env, files)


def refused_without_the_right_credentials(env: dict[str, str], files: TlsFiles) -> None:
    # a client that does not trust the throwaway CA refuses the broker
    untrusting = Settings.from_env(
        {**env, "TENSORFLEET_TLS_CA_FILE": "", "TENSORFLEET_CONNECT_RETRIES": "0"}
    )
    with pytest.raises(BrokerConnectionError):
        FleetTransport(untrusting, client_id="untrusting").close()
    # the broker refuses a client without a certificate
    anonymous = Settings.from_env(
        {
            **env,
            "TENSORFLEET_TLS_CERT_FILE": "",
            "TENSORFLEET_TLS_KEY_FILE": "",
            "TENSORFLEET_CONNECT_RETRIES": "0",
        }
    )
    with pytest.raises(BrokerConnectionError):
        FleetTransport(anonymous, client_id="anonymous").close()
    # and so does Redis
    url = env["TENSORFLEET_REDIS_URL"]
    without_certificate = redis.Redis.from_url(url, **redis_ssl_kwargs(anonymous, url))
    with pytest.raises(redis.exceptions.ConnectionError):
        without_certificate.ping()
    plain = redis.Redis.from_url(url.replace("rediss://", "redis://"))
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()


def test_tls_settings_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({"TENSORFLEET_TLS_CA_FILE": str(tmp_path / "missing.pem")})
    assert "TENSORFLEET_TLS_CA_FILE" in str(error.value)
    key = tmp_path / "client.key"
    key.write_text("not really a key")
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({"TENSORFLEET_TLS_KEY_FILE": str(key)})
    assert "TENSORFLEET_TLS_CERT_FILE" in str(error.value)


def test_a_provisioned_fleet_over_tls(tmp_path: Path) -> None:
    """Everything together: provisioned users and grants, loaded at boot, over TLS only."""
    namespace = new_namespace()
    out = tmp_path / "fleet"
    amqps_port, rediss_port = free_port(), free_port()
    source = tmp_path / "fleet.toml"
    source.write_text(
        f'namespace = "{namespace}"\n'
        f'broker = "amqps://127.0.0.1:{amqps_port}"\n'
        f'redis = "rediss://127.0.0.1:{rediss_port}/0"\n'
        'clients = ["carol"]\n'
        "[workers.alice]\n[workers.bob]\n"
        f'[tls]\nca_file = "{out}/tls/ca.pem"\ncert_dir = "{out}/tls"\n'
    )
    result = CliRunner().invoke(main, ["provision", str(source), "--out", str(out), "--certs"])
    assert result.exit_code == 0, result.output
    carol = read_env(out / "carol.env")
    assert carol["TENSORFLEET_TLS_CERT_FILE"] == f"{out}/tls/carol.pem"
    files = TlsFiles(
        ca=out / "tls" / "ca.pem",
        server_cert=out / "tls" / "server.pem",
        server_key=out / "tls" / "server.key",
        client_cert=out / "tls" / "carol.pem",
        client_key=out / "tls" / "carol.key",
    )
    rabbit_config = [
        *tls_servers_config(files, amqps_port),
        f"load_definitions = {out / 'definitions.json'}",
    ]
    redis_args = [*redis_tls_arguments(files, rediss_port), "--aclfile", str(out / "redis.acl")]
    with (
        private_rabbitmq(tmp_path / "rabbitmq", rabbit_config, plain=False) as node,
        private_redis(tmp_path / "redis", redis_args),
    ):
        assert "guest" not in node.ctl("list_users")
        workers = ("alice", "bob")
        worker_env = {w: read_env(out / f"{w}.env") for w in workers}
        with fleet(workers, namespace, env=read_env(out / "operator.env"), worker_env=worker_env):
            client = PartyClient(carol)
            try:
                honest_round_trip(client)
            finally:
                client.close()
