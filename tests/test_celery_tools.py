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


def test_celery_inspect_ping_stats_active_and_status_answer_for_the_fleet(fleet: Any) -> None:
    done = celery_cli(fleet, "inspect", "ping", "--timeout", "10", "--json")
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    names = {name.split("@")[0] for name in answers}
    assert {f"{w}.{fleet.namespace}" for w in fleet.worker_ids} <= names
    stats = celery_cli(fleet, "inspect", "stats", "--timeout", "10", "--json")
    assert stats.returncode == 0, stats.stderr
    assert len(json.loads(stats.stdout.strip().splitlines()[-1])) == len(fleet.worker_ids)
    active = celery_cli(fleet, "inspect", "active", "--timeout", "10", "--json")
    assert active.returncode == 0, active.stderr
    running = json.loads(active.stdout.strip().splitlines()[-1])
    assert {name.split("@")[0] for name in running} == names
    assert all(isinstance(tasks, list) for tasks in running.values())
    status = celery_cli(fleet, "status", "--timeout", "10")
    assert status.returncode == 0, status.stderr
    assert f"{len(fleet.worker_ids)} node" in status.stdout


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


def tensorfleet_cli(fleet: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**fleet.env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_tensorfleet_status_reports_every_worker_its_objects_and_queue(
    fleet: Any, hook: Any
) -> None:
    bob = sy.FleetWorker(hook, id="bob")
    held = torch.zeros(256).send(bob)  # 1 KiB on bob
    bob.synchronize()
    done = tensorfleet_cli(fleet, "status", "--json", "--workers", "bob,nobody")
    assert done.returncode == 0, done.stderr
    rows = {row["worker"]: row for row in json.loads(done.stdout)}
    assert set(fleet.worker_ids) <= set(rows)
    assert rows["bob"]["up"] and rows["bob"]["queue_consumers"] == 1
    assert rows["bob"]["objects"] >= 1 and rows["bob"]["bytes"] >= 1024
    assert any(entry["bytes"] >= 1024 for entry in rows["bob"]["clients"].values())
    assert rows["nobody"]["up"] is False and rows["nobody"]["queue_messages"] is None
    table = tensorfleet_cli(fleet, "status")
    assert table.returncode == 0 and "bob" in table.stdout and "client" in table.stdout
    held.get()


def test_tensorfleet_dead_letters_lists_refused_messages_with_their_reason(fleet: Any) -> None:
    import pika

    from broker import topology
    from broker.amqp import pika_url

    connection = pika.BlockingConnection(pika.URLParameters(pika_url(fleet.settings.broker_url)))
    queue = topology.worker_queue("alice", fleet.namespace)
    connection.channel().basic_publish(
        queue,
        queue,
        b"\x80\x04pickle",
        pika.BasicProperties(content_type="application/x-python-serialize"),
    )
    connection.close()
    deadline = time.monotonic() + 60
    while True:  # the refusal is asynchronous: look until it is there (bounded)
        done = tensorfleet_cli(fleet, "dead-letters", "--json")
        assert done.returncode == 0, done.stderr
        entries = json.loads(done.stdout)
        if any("pickle" in entry["reason"] for entry in entries):
            break
        assert time.monotonic() < deadline, entries
    assert all(entry["origin"].startswith(fleet.namespace) for entry in entries)
    again = tensorfleet_cli(fleet, "dead-letters", "--json")  # listing keeps them
    assert len(json.loads(again.stdout)) >= len(entries)


@pytest.fixture(scope="module")
def metrics_worker() -> Iterator[tuple[Any, int]]:
    import fleet_fixture

    port = _free_port()
    with fleet_fixture.fleet(("bob",), env={"TENSORFLEET_METRICS_PORT": str(port)}) as running:
        yield running, port


def test_a_worker_serves_prometheus_metrics(metrics_worker: tuple[Any, int], hook: Any) -> None:
    _, port = metrics_worker
    bob = sy.FleetWorker(hook, id="bob")
    x = torch.ones(1000).send(bob)
    assert float((x * 2).sum().get()) == 2000.0
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    for name in (
        "tensorfleet_messages_total",
        'tensorfleet_commands_total{command="op",worker="bob"}',
        "tensorfleet_objects",
        "tensorfleet_object_bytes",
        "tensorfleet_store_up",
        "tensorfleet_message_seconds_bucket",
        "tensorfleet_redis_write_seconds_count",
    ):
        assert name in text, name
    objects = [line for line in text.splitlines() if line.startswith("tensorfleet_objects{")]
    assert objects and float(objects[0].split()[-1]) >= 1
    x.get()
