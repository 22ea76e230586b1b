"""TENSORFLEET_QUEUE_TYPE: a fleet on classic and on quorum worker queues.

Each run starts ``bob`` and ``alice`` in a namespace of their own with the queue type
set for them and for this process's client, checks that RabbitMQ holds the worker
queues with that type, that send, ops, move and get work, that commands sent while a
worker is down wait in its queue for its restart, and measures pipelined ops per second
(``z = a + b`` 2,000 times, then one synchronising call; best of 3) and the median
sync op (``(a + b).get()``, 200 calls), printed with
``pytest -s`` and written in the README (Performance, Fleet).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
import torch
from fleet_fixture import RunningFleet, fleet

import client as sy
from broker import topology
from broker.settings import get_settings
from broker.tls import pika_parameters

OPS = 2000


@pytest.fixture(params=["classic", "quorum"])
def typed_fleet(request: pytest.FixtureRequest) -> Iterator[tuple[str, RunningFleet]]:
    queue_type = str(request.param)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TENSORFLEET_QUEUE_TYPE", queue_type)  # the workers' and this client's
        try:
            with fleet(("bob", "alice")) as running:
                yield queue_type, running
        finally:
            get_settings.cache_clear()


def declared_type(running: RunningFleet, worker_id: str, other: str) -> bool:
    """True if RabbitMQ refuses to re-declare ``worker_id``'s queue with type ``other``."""
    connection = pika.BlockingConnection(pika_parameters(running.settings))
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(
                topology.worker_queue(worker_id, running.namespace),
                durable=True,
                arguments={"x-queue-type": other},
            )
        except pika.exceptions.ChannelClosedByBroker as refused:
            return refused.reply_code == 406 and "x-queue-type" in refused.reply_text
        return False
    finally:
        connection.close()


def pipelined_ops_per_s(bob: Any) -> float:
    a = torch.ones(4).send(bob)
    b = torch.ones(4).send(bob)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(OPS):
            z = a + b
        del z
        bob.synchronize()
        return OPS / (time.perf_counter() - start)

    run()  # warms the shape cache
    return max(run() for _ in range(3))


def sync_op_seconds(bob: Any) -> float:
    """Median of 200 ``(a + b).get()``: one message each way per call."""
    a = torch.ones(4).send(bob)
    b = torch.ones(4).send(bob)
    times = []
    for _ in range(200):
        start = time.perf_counter()
        (a + b).get()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_fleet_on_queue_type(typed_fleet: tuple[str, RunningFleet], hook: Any) -> None:
    queue_type, running = typed_fleet
    other = "classic" if queue_type == "quorum" else "quorum"
    assert declared_type(running, "bob", other), f"bob's queue is not {queue_type}"

    bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
    x = torch.tensor([1.0, 2.0, 3.0]).send(bob)
    y = (x * 2).move(alice)
    assert torch.equal(y.get(), torch.tensor([2.0, 4.0, 6.0]))

    # commands sent while bob is down wait in his (durable) queue
    running.stop("bob")
    z = x + 1
    running.start("bob")
    assert torch.equal(z.get(), torch.tensor([2.0, 3.0, 4.0]))

    rate, sync = pipelined_ops_per_s(bob), sync_op_seconds(bob)
    figures = {"pipelined_ops_per_s": round(rate), "sync_op_us": round(sync * 1e6)}
    print(f"\nqueue type {queue_type}: " + json.dumps(figures))
    assert rate > 0
