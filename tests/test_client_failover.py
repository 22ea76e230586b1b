"""The client's broker failover, on private RabbitMQ nodes (never the shared one).

``TENSORFLEET_BROKER_URL`` may list several nodes (``;``). The client connects to the
first that answers, and after a dropped connection to the next one; batches RabbitMQ
had not confirmed when the connection dropped are published again on the new one, so
a stream of batches cut by a node stop arrives whole (some twice, marked as resends,
which workers replay instead of running again). These are transport behaviours: the
in-process worker has no broker, so they run on the fleet's transport only.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import torch
from fleet_fixture import fleet
from private_servers import RabbitNode, free_port, private_rabbitmq

import client as sy
from broker import topology
from broker.amqp import RESEND_HEADER, pika_url
from broker.errors import BrokerConnectionError
from broker.settings import Settings, get_settings
from client.fleet import FleetTransport, reset_fleet_transport

#: Batches each stream publishes before the node stop, and after it.
STREAM = 1000
#: Seconds a reconnection, or draining what is queued, may take on two loaded cores.
DEADLINE = 60.0


def url(node: RabbitNode) -> str:
    return f"amqp://guest:guest@127.0.0.1:{node.port}//"


def nobody() -> str:
    """A URL where nothing listens: connecting is refused at once."""
    return f"amqp://guest:guest@127.0.0.1:{free_port()}//"


@pytest.fixture
def broker_env() -> Iterator[None]:
    """Restore this process's broker settings and transport after a test changed them."""
    saved = {k: os.environ.get(k) for k in ("TENSORFLEET_BROKER_URL", "TENSORFLEET_NAMESPACE")}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    get_settings.cache_clear()
    reset_fleet_transport()


def wait_until(condition: object, what: str, deadline: float = DEADLINE) -> float:
    """Poll ``condition()`` (a state, with a deadline) until it is true; the seconds it took."""
    assert callable(condition)
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline:
            raise AssertionError(f"{what}: not within {deadline:g} s")
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_node_that_does_not_answer_is_skipped(tmp_path: Path, broker_env: None) -> None:
    with private_rabbitmq(tmp_path / "rabbit") as node:
        urls = f"{nobody()};{url(node)}"
        os.environ["TENSORFLEET_BROKER_URL"] = urls
        with fleet(("bob",), env={"TENSORFLEET_BROKER_URL": urls}):
            bob = sy.FleetWorker(sy.TorchHook(torch), id="bob")
            x = torch.arange(4.0).send(bob)
            assert torch.equal((x * 2).get(), torch.arange(4.0) * 2)
            from client.fleet import get_fleet_transport

            assert get_fleet_transport().node == f"amqp://guest:**@127.0.0.1:{node.port}//"


def test_no_node_answers(broker_env: None) -> None:
    settings = Settings.from_env(
        {"TENSORFLEET_BROKER_URL": f"{nobody()};{nobody()}", "TENSORFLEET_CONNECT_RETRIES": "1"}
    )
    with pytest.raises(BrokerConnectionError, match="no node answered") as raised:
        FleetTransport(settings)
    assert str(raised.value).count("127.0.0.1") >= 2  # both nodes, and why each failed


def declare_worker_queue(node: RabbitNode, worker_id: str, namespace: str) -> None:
    """What a worker declares: its durable exchange and queue (here without a worker)."""
    connection = pika.BlockingConnection(pika.URLParameters(pika_url(url(node))))
    try:
        channel = connection.channel()
        exchange = topology.worker_exchange(worker_id, namespace)
        queue = topology.worker_queue(worker_id, namespace)
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, queue)
    finally:
        connection.close()


def drain(node: RabbitNode, worker_id: str, namespace: str) -> list[tuple[bytes, bool]]:
    """Every message in the worker's queue on ``node``: (payload, marked as resend)."""
    connection = pika.BlockingConnection(pika.URLParameters(pika_url(url(node))))
    taken = []
    try:
        channel = connection.channel()
        queue = topology.worker_queue(worker_id, namespace)
        while True:
            method, properties, payload = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((payload, bool((properties.headers or {}).get(RESEND_HEADER))))
    finally:
        connection.close()


@pytest.mark.timeout(300)
def test_a_stream_cut_by_a_node_stop_arrives_whole_on_the_next_node(tmp_path: Path) -> None:
    """Publish batches while the node in use stops: every batch is on one node or the other."""
    namespace = f"tffo-{uuid.uuid4().hex[:6]}"
    with (
        private_rabbitmq(tmp_path / "first") as first,
        private_rabbitmq(tmp_path / "second") as second,
    ):
        for node in (first, second):
            declare_worker_queue(node, "bob", namespace)
        settings = Settings.from_env(
            {
                "TENSORFLEET_BROKER_URL": f"{url(first)};{url(second)}",
                "TENSORFLEET_NAMESPACE": namespace,
            }
        )
        transport = FleetTransport(settings)
        try:
            assert transport.node is not None and str(first.port) in transport.node
            stop_publishing = threading.Event()
            published: list[int] = []

            def stream() -> None:
                number = 0
                while not stop_publishing.is_set():
                    transport.publish("bob", f"batch-{number:06d}.".encode() * 64)
                    published.append(number)
                    number += 1
                    time.sleep(0.001)  # pacing: a steady stream (~1000 batches/s), not a burst

            publisher = threading.Thread(target=stream)
            publisher.start()
            try:
                wait_until(lambda: len(published) >= STREAM, "the stream started")
                stopping = time.monotonic()
                first.ctl("stop_app")  # every connection to it drops; its durable queue stays
                wait_until(
                    lambda: transport.node is not None and str(second.port) in transport.node,
                    "the client reconnected to the second node",
                )
                assert transport.reconnected_at is not None
                reconnected = transport.reconnected_at - stopping
                count_at_reconnect = len(published)
                wait_until(lambda: len(published) >= count_at_reconnect + STREAM, "more batches")
            finally:
                stop_publishing.set()
                publisher.join()
            wait_until(
                lambda: not transport._outbox and not transport._unconfirmed,
                "every batch published and confirmed",
            )
            first.ctl("start_app")
            messages = drain(first, "bob", namespace) + drain(second, "bob", namespace)
        finally:
            transport.close()
    seen = {payload.split(b"batch-", 1)[1][:6] for payload, _ in messages}
    missing = [n for n in published if f"{n:06d}".encode() not in seen]
    assert not missing, f"{len(missing)} batches lost, the first: {missing[:5]}"
    resent = sum(1 for _, marked in messages if marked)
    assert resent >= len(messages) - len(published)  # what came twice came as a resend
    print(
        f"\nclient failover: {len(published)} batches; connected to the second node "
        f"{reconnected:.3f} s after `rabbitmqctl stop_app` began (its own run included); "
        f"{transport.republished} unconfirmed batches published again, {resent} resends arrived"
    )
