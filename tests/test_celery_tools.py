"""Operators' Celery tools work on a fleet: inspect, status, Flower; foreign apps stay out.

A fleet's workers use a control exchange and an event exchange of their
namespace (broker.topology), so ``celery -A worker.celery_app inspect ...`` and
Flower reach exactly the fleet's workers, and another Celery app's broadcasts on
the same broker never reach them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from celery import Celery

import client as sy

REPO = Path(__file__).resolve().parent.parent


def celery_cli(fleet: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**fleet.env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_celery_inspect_ping_and_stats_answer_for_the_fleet(fleet: Any) -> None:
    done = celery_cli(fleet, "inspect", "ping", "--timeout", "10", "--json")
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    names = {name.split("@")[0] for name in answers}
    assert {f"{w}.{fleet.namespace}" for w in fleet.worker_ids} <= names
    stats = celery_cli(fleet, "inspect", "stats", "--timeout", "10", "--json")
    assert stats.returncode == 0, stats.stderr
    assert len(json.loads(stats.stdout.strip().splitlines()[-1])) == len(fleet.worker_ids)


def test_a_foreign_celery_apps_broadcasts_never_reach_the_fleet(fleet: Any) -> None:
    foreign = Celery("foreign", broker=fleet.settings.broker_url, set_as_current=False)
    try:
        replies = foreign.control.inspect(timeout=2).ping() or {}
    finally:
        foreign.close()
    assert not any(fleet.namespace in name for name in replies)
    ours = celery_cli(fleet, "inspect", "ping", "--timeout", "10", "--json")
    assert ours.returncode == 0, ours.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def flower(fleet: Any) -> Iterator[str]:
    port = _free_port()
    env = {**fleet.env, "PYTHONPATH": str(REPO), "FLOWER_UNAUTHENTICATED_API": "true"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthcheck", timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"flower did not start: {log[-2000:]}") from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=30)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_flower_shows_every_worker_and_the_tasks_they_ran(
    fleet: Any, flower: str, hook: Any
) -> None:
    bob = sy.FleetWorker(hook, id="bob")
    x = torch.tensor([1.0, 2.0]).send(bob)
    assert torch.equal((x + x).get(), torch.tensor([2.0, 4.0]))
    deadline = time.monotonic() + 60
    while True:  # Flower learns of workers and tasks from events: poll its API, bounded
        workers = _get_json(f"{flower}/api/workers?refresh=1")
        tasks = _get_json(f"{flower}/api/tasks")
        names = {name.split("@")[0] for name in workers}
        ran = [t for t in tasks.values() if t.get("name") == "tensorfleet.execute"]
        done = [t for t in ran if t.get("state") == "SUCCESS" and t.get("runtime") is not None]
        if {f"{w}.{fleet.namespace}" for w in fleet.worker_ids} <= names and done:
            break
        assert time.monotonic() < deadline, (names, list(tasks.values())[:3])
        time.sleep(0.5)
    assert any(t.get("worker", "").startswith(f"bob.{fleet.namespace}") for t in done)
    x.get()
