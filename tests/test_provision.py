"""``tensorfleet provision``: the fleet file, the grants, and a provisioned fleet on real servers.

The end-to-end test provisions a fleet, loads its definitions into the shared
RabbitMQ (a vhost of its own) and its workers' ACL users into the shared Redis,
starts real workers with their env files, runs an honest round trip as a client
(including a worker-to-worker forward), and checks with a second client and
with one worker's credentials that RabbitMQ and Redis refuse what the grants
do not allow.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pytest
import redis
import redis.exceptions
from click.testing import CliRunner
from fleet_fixture import fleet, new_namespace
from private_servers import private_rabbitmq, private_redis
from provisioned import PartyClient, honest_round_trip, provisioned_fleet, read_env

from broker import protocol, topology
from broker.amqp import pika_url
from broker.errors import FleetFileError
from broker.protocol import Ref
from broker.settings import Settings
from client.cli import main
from deploy import fleetfile, grants, provision
from worker import keys

REPO = Path(__file__).resolve().parent.parent

GOOD = """
namespace = "prod"
broker = "amqp://rabbitmq:5672"
redis = "redis://redis:6379/0"
clients = ["carol"]

[workers.bob]
[workers.alice]
redis = "redis://redis-alice:6379/0"
"""


# ------------------------------------------------------------------ the fleet file


def test_a_fleet_file_is_read() -> None:
    spec = fleetfile.parse(GOOD, "fleet.toml")
    assert spec.namespace == "prod"
    assert spec.vhost == "prod"
    assert spec.broker_url == "amqp://rabbitmq:5672"
    assert spec.worker_ids == ("bob", "alice")
    assert spec.workers[0].redis_url == "redis://redis:6379/0"
    assert not spec.workers[0].own_redis
    assert spec.workers[1].redis_url == "redis://redis-alice:6379/0"
    assert spec.workers[1].own_redis
    assert spec.clients == ("carol",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("namespace = ", "it is not TOML"),
        ('namspace = "x"\n[workers.bob]', "the top level: unknown key 'namspace'"),
        ('namespace = "a b"\n[workers.bob]', "namespace: use letters"),
        ("clients = []", "workers: name at least one worker"),
        ('[workers."bob.x"]', "workers 'bob.x': a name is letters"),
        ("[workers.operator]", "workers.operator: the name 'operator' is reserved"),
        ('broker = "http://x"\n[workers.bob]', "broker: expected amqp://HOST:PORT"),
        ('broker = "amqp://u:p@x:5672"\n[workers.bob]', "broker: give only scheme, host and port"),
        ('broker = "amqp://x:port"\n[workers.bob]', "broker: the port of"),
        ("broker = []\n[workers.bob]", "broker: expected a URL or a non-empty list"),
        ('queue_type = "stream"\n[workers.bob]', "queue_type: expected one of classic, quorum"),
        ('broker = ["amqp://a:5672", "amqps://b:5671"]\n[workers.bob]', "broker: use one scheme"),
        ('broker = ["amqp://a:5672", "amqp://u:p@b:5672"]\n[workers.bob]', "broker: give only"),
        ('[workers.bob]\nredis = "redis://u:p@x/0"', "workers.bob.redis: leave credentials out"),
        ('[workers.bob]\nredis = "memcached://x"', "workers.bob.redis: expected redis://"),
        ("[workers.bob]\nredis_url = 1", "workers.bob: unknown key 'redis_url'"),
        ('clients = ["bob"]\n[workers.bob]', "bob: is named as a worker and as a client"),
        ("workers = 3", "workers: expected a table"),
        ('[workers.bob]\n[tls]\nca_file = "ca.pem"', "tls: no URL uses it"),
        ('broker = "amqps://x:5671"\n[workers.bob]\n[tls]\ncert_dir = "d"', "tls: give ca_file"),
        ('broker = "amqps://x:5671"\n[workers.bob]\n[tls]\nca = "x"', "tls: unknown key 'ca'"),
    ],
)
def test_a_bad_fleet_file_is_one_clear_line(text: str, expected: str) -> None:
    with pytest.raises(FleetFileError) as error:
        fleetfile.parse(text, "fleet.toml")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("Fleet file fleet.toml is not valid: ")
    assert expected in message, message


def test_the_cli_reports_a_bad_fleet_file_on_one_line(tmp_path: Path) -> None:
    source = tmp_path / "fleet.toml"
    source.write_text('namespace = "x"\n[workers.bob]\nredis = "memcached://x"\n')
    result = CliRunner().invoke(main, ["provision", str(source), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"Error: Fleet file {source} is not valid: workers.bob.redis")
    missing = CliRunner().invoke(main, ["provision", str(tmp_path / "nope.toml"), "--out", "o"])
    assert missing.exit_code == 1
    assert "cannot read it" in missing.output


# ------------------------------------------------------------------ what it writes


def test_the_broker_may_be_a_cluster(tmp_path: Path) -> None:
    text = 'broker = ["amqp://rabbit-1:5672", "amqp://rabbit-2:5672/"]\n[workers.bob]\n'
    spec = fleetfile.parse(text, "fleet.toml")
    assert spec.broker_urls == ("amqp://rabbit-1:5672", "amqp://rabbit-2:5672")
    assert {"rabbit-1", "rabbit-2"} <= set(spec.hosts)
    source = tmp_path / "fleet.toml"
    source.write_text(text)
    result = CliRunner().invoke(main, ["provision", str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    urls = read_env(tmp_path / "out" / "bob.env")["TENSORFLEET_BROKER_URL"].split(";")
    assert [url.split("@")[1] for url in urls] == [
        "rabbit-1:5672/tensorfleet",
        "rabbit-2:5672/tensorfleet",
    ]
    settings = Settings.from_env({"TENSORFLEET_BROKER_URL": ";".join(urls)})
    assert settings.broker_urls == tuple(urls)


def test_a_quorum_fleet_declares_quorum_worker_queues(tmp_path: Path) -> None:
    source = tmp_path / "fleet.toml"
    source.write_text('queue_type = "quorum"\n[workers.bob]\n')
    result = CliRunner().invoke(main, ["provision", str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    definitions = json.loads((tmp_path / "out" / "definitions.json").read_text())
    arguments = {queue["name"]: queue["arguments"] for queue in definitions["queues"]}
    assert arguments["tensorfleet.worker.bob"] == {"x-queue-type": "quorum"}
    assert arguments["tensorfleet.dead-letter"] == {}
    assert read_env(tmp_path / "out" / "bob.env")["TENSORFLEET_QUEUE_TYPE"] == "quorum"


def test_provision_writes_private_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    source = tmp_path / "fleet.toml"
    source.write_text(GOOD)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["provision", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert names == {
        "definitions.json",
        "redis.acl",
        "redis-alice.acl",
        "bob.env",
        "alice.env",
        "carol.env",
        "operator.env",
    }
    # passwords only in env files, for their owner; servers read the hashes
    assert all(p.stat().st_mode & 0o077 == 0 for p in out.glob("*.env"))
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.glob("*.acl"))

    bob = read_env(out / "bob.env")
    assert bob["TENSORFLEET_NAMESPACE"] == "prod"
    assert bob["TENSORFLEET_WORKER_ID"] == "bob"
    assert bob["TENSORFLEET_BROKER_URL"].startswith("amqp://prod.worker.bob:")
    assert bob["TENSORFLEET_BROKER_URL"].endswith("@rabbitmq:5672/prod")
    assert bob["TENSORFLEET_REDIS_URL"].startswith("redis://prod.worker.bob:")
    assert bob["TENSORFLEET_REDIS_URL"].endswith("@redis:6379/0")
    assert read_env(out / "alice.env")["TENSORFLEET_REDIS_URL"].endswith("@redis-alice:6379/0")
    assert "TENSORFLEET_REDIS_URL" not in read_env(out / "carol.env")

    # a RabbitMQ hash is base64(salt + sha256(salt + password)) of the env file's password
    definitions = json.loads((out / "definitions.json").read_text())
    users = {u["name"]: u for u in definitions["users"]}
    password = bob["TENSORFLEET_BROKER_URL"].split(":")[2].split("@")[0]
    raw = base64.b64decode(users["prod.worker.bob"]["password_hash"])
    assert hashlib.sha256(raw[:4] + password.encode()).digest() == raw[4:]
    assert users["prod.worker.bob"]["hashing_algorithm"] == provision.HASHING_ALGORITHM
    # the Redis password is another one, kept as its SHA-256 in the ACL file
    redis_password = bob["TENSORFLEET_REDIS_URL"].split(":")[2].split("@")[0]
    assert redis_password != password
    acl = (out / "redis.acl").read_text()
    assert f"#{hashlib.sha256(redis_password.encode()).hexdigest()}" in acl
    assert "user default off" in acl
    assert "prod.worker.alice" not in acl  # alice has a Redis of her own
    assert "~prod:alice:*" in (out / "redis-alice.acl").read_text()

    again = CliRunner().invoke(main, ["provision", str(source), "--out", str(out)])
    assert again.exit_code == 1
    assert "--force" in again.output
    forced = CliRunner().invoke(main, ["provision", str(source), "--out", str(out), "--force"])
    assert forced.exit_code == 0
    assert read_env(out / "bob.env") != bob


def test_grants_are_exact() -> None:
    worker = grants.worker_permissions("ns", "bob", ["bob", "alice"])

    def configure(name: str) -> bool:
        return matches(worker.configure, name)

    assert configure("ns.worker.bob")
    assert configure("ns.store-down.bob") and not configure("ns.store-down.alice")
    assert not configure("ns.worker.alice")
    assert not configure("ns.worker.bobby")
    assert configure("bob.ns@host.example.ns.control.pidbox")
    assert not configure("alice.ns@host.ns.control.pidbox")

    def write(name: str) -> bool:
        return matches(worker.write, name)

    assert write("ns.worker.alice") and write("amq.default")
    assert not write("ns.worker.carol")
    assert matches(worker.read, "ns.worker.bob")
    assert not matches(worker.read, "ns.worker.alice")
    assert not matches(worker.read, "ns.dead-letter")

    client = grants.client_permissions("ns", "carol", ["bob", "alice"])
    assert matches(client.configure, "ns.reply.carol.1234")
    assert not matches(client.configure, "ns.reply.carolyn.1234")
    assert not matches(client.configure, "ns.reply.dave.1234")
    assert not matches(client.configure, "ns.worker.bob")
    assert matches(client.write, "ns.worker.bob")
    assert not matches(client.write, "amq.default")
    assert matches(client.read, "ns.reply.carol.x") and not matches(client.read, "ns.worker.bob")


def matches(regex: str, name: str) -> bool:
    """Whether RabbitMQ would grant ``name`` under a permission regex (a search, as RabbitMQ)."""
    return re.search(regex, name) is not None


def test_the_acl_file_loads_into_redis_and_turns_default_off(tmp_path: Path) -> None:
    source = tmp_path / "fleet.toml"
    source.write_text(GOOD.replace("redis:6379", "127.0.0.1:6379"))
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["provision", str(source), "--out", str(out)]).exit_code == 0
    with private_redis(tmp_path / "redis", ["--aclfile", str(out / "redis.acl")]) as port:
        bob_url = read_env(out / "bob.env")["TENSORFLEET_REDIS_URL"].replace("6379", str(port))
        bob = redis.Redis.from_url(bob_url)
        bob.hset(keys.objects("prod", "bob"), "1", b"T")
        with pytest.raises(redis.exceptions.NoPermissionError):
            bob.hgetall(keys.objects("prod", "alice"))
        health = redis.Redis(port=port, username="healthcheck", password="any")
        assert health.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            health.get("x")
        anonymous = redis.Redis(port=port)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()


# ------------------------------------------------------------------ a provisioned fleet


def test_a_provisioned_fleet_serves_its_clients_and_refuses_the_rest(
    tmp_path: Path,
) -> None:
    namespace = new_namespace()
    tag = uuid.uuid4().hex[:6]
    carol, dave = f"carol-{tag}", f"dave-{tag}"
    workers = ("alice", "bob")
    with provisioned_fleet(tmp_path, namespace, workers, (carol, dave)) as fleet_files:
        operator = fleet_files.env("operator")
        worker_env = {w: fleet_files.env(w) for w in workers}
        # the fixture pings and cleans up as the operator; each worker runs as itself
        with fleet(workers, namespace, env=operator, worker_env=worker_env) as running:
            as_carol = PartyClient(fleet_files.env(carol))
            as_dave = PartyClient(fleet_files.env(dave))
            try:
                honest_round_trip(as_carol)
                refused_on_the_broker(as_dave, as_carol, fleet_files.env("bob"), namespace)
                refused_in_redis(fleet_files.env("bob"), namespace)
                # everything still serves carol after the refusals
                [value] = as_carol.call("bob", [[protocol.GET, Ref(1), 20]])
                assert value.tolist() == [1.0, 2.0]
                # the workers' grants were enough for everything they did themselves
                for worker_id in workers:
                    log = running.log_tail(worker_id, 10_000)
                    assert "ACCESS_REFUSED" not in log, log
                    assert "NOPERM" not in log, log
            finally:
                as_carol.close()
                as_dave.close()


def refused_on_the_broker(
    dave: PartyClient, carol: PartyClient, bob_env: dict[str, str], namespace: str
) -> None:
    """RabbitMQ itself refuses what dave's and bob's grants do not allow."""
    connection = pika.BlockingConnection(dave.parameters())
    bob_queue = topology.worker_queue("bob", namespace)
    attempts = {
        "read carol's reply queue": lambda ch: ch.basic_consume(carol.reply_queue, print),
        "declare a queue of his own naming": lambda ch: ch.queue_declare(f"{namespace}.x"),
        "declare a worker queue": lambda ch: ch.queue_declare(bob_queue, durable=True),
        "reply queue under carol's name": lambda ch: ch.queue_declare(
            topology.reply_queue(f"{carol.user}.fake", namespace)
        ),
        "read bob's queue": lambda ch: ch.basic_get(bob_queue),
        "delete bob's queue": lambda ch: ch.queue_delete(bob_queue),
        "publish through amq.default": lambda ch: publish_confirmed(ch, "", carol.reply_queue),
    }
    try:
        for what, attempt in attempts.items():
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
                attempt(channel)
            assert error.value.reply_code == 403, f"{what}: {error.value}"
        # posing as carol: RabbitMQ checks user_id against the connection
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            publish_confirmed(channel, bob_queue, bob_queue, user_id=carol.user)
        assert error.value.reply_code == 406
    finally:
        connection.close()
    # a worker's own user cannot read another worker's queue either
    as_bob = pika.BlockingConnection(
        pika.URLParameters(pika_url(bob_env["TENSORFLEET_BROKER_URL"]))
    )
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            as_bob.channel().basic_get(topology.worker_queue("alice", namespace))
        assert error.value.reply_code == 403
    finally:
        as_bob.close()


def publish_confirmed(channel: object, exchange: str, key: str, user_id: str | None = None) -> None:
    channel.confirm_delivery()  # type: ignore[attr-defined]
    properties = pika.BasicProperties(user_id=user_id)
    channel.basic_publish(exchange, key, b"x", properties)  # type: ignore[attr-defined]


def refused_in_redis(bob_env: dict[str, str], namespace: str) -> None:
    as_bob = redis.Redis.from_url(bob_env["TENSORFLEET_REDIS_URL"])
    try:
        assert b"1" in as_bob.hgetall(keys.objects(namespace, "bob"))
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_bob.hgetall(keys.objects(namespace, "alice"))
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_bob.keys("*")
    finally:
        as_bob.close()


# ------------------------------------------------------------------ as docker-compose.yml runs it


def test_a_node_loading_the_definitions_at_boot_has_no_guest(tmp_path: Path) -> None:
    """deploy/rabbitmq.conf (what Compose mounts) on a private node: no guest, our users."""
    source = tmp_path / "fleet.toml"
    source.write_text(GOOD.replace("rabbitmq:5672", "127.0.0.1:5672"))
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["provision", str(source), "--out", str(out)]).exit_code == 0
    conf = (REPO / "deploy" / "rabbitmq.conf").read_text()
    conf = conf.replace("/etc/tensorfleet/definitions.json", str(out / "definitions.json"))
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    with private_rabbitmq(tmp_path / "rabbitmq", lines) as node:
        users = node.ctl("list_users")
        assert "guest" not in users
        assert "prod.worker.bob" in users and "carol" in users
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(
                pika.ConnectionParameters(
                    "127.0.0.1", node.port, credentials=pika.PlainCredentials("guest", "guest")
                )
            )
        url = read_env(out / "bob.env")["TENSORFLEET_BROKER_URL"].replace("5672", str(node.port))
        connection = pika.BlockingConnection(pika.URLParameters(pika_url(url)))
        try:
            # the definitions made the worker queues: clients can send before a worker starts
            declared = connection.channel().queue_declare("prod.worker.alice", passive=True)
            assert declared.method.message_count == 0
        finally:
            connection.close()
