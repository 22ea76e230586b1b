"""Fleet-only behaviour on real servers: crashes, dropped connections, several clients,
plain Celery callers and hostile messages. The fleet is the session fleet of conftest.py."""

from __future__ import annotations

import itertools
import pickle
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pika
import pytest
import torch
from celery import Celery

import client as sy
from broker import codec, protocol, topology
from broker.amqp import TASK_NAME, pika_url, task_message
from broker.protocol import PointerRecord, Ref
from client.fleet import FleetTransport, get_fleet_transport

_batches = itertools.count(1)


class RawClient:
    """A client speaking the raw protocol on its own transport (its own reply queue)."""

    def __init__(self, running: Any) -> None:
        self.transport = FleetTransport(running.settings, client_id=f"raw-{uuid.uuid4().hex[:8]}")
        self.sender = f"raw-{uuid.uuid4().hex}"

    def send(self, worker_id: str, commands: list[Any]) -> None:
        body = codec.encode(
            protocol.envelope(next(_batches), self.sender, self.transport.reply_address, commands)
        )
        self.transport.publish(worker_id, body)

    def replies(self, count: int, timeout: float = 60) -> list[list[Any]]:
        found: list[list[Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            body = self.transport.receive(deadline - time.monotonic())
            assert body is not None, f"only {len(found)} of {count} replies arrived: {found}"
            found.extend(codec.decode(body)["replies"])
        return found

    def call(self, worker_id: str, commands: list[Any]) -> list[Any]:
        """Send commands and return the payload of each reply, in request order."""
        self.send(worker_id, commands)
        wanted = [
            command[-1]
            for command in commands
            if command[0] != protocol.DELETE and command[-1] is not None
        ]
        replies = {request: (ok, payload) for request, ok, payload in self.replies(len(wanted))}
        for request in wanted:
            ok, payload = replies[request]
            assert ok, payload
        return [replies[request][1] for request in wanted]


@pytest.fixture
def raw(fleet: Any) -> Iterator[RawClient]:
    client = RawClient(fleet)
    yield client
    client.transport.close()


def new_id() -> int:
    return uuid.uuid4().int % 10**12


def test_store_op_and_get_through_the_raw_protocol(raw: RawClient) -> None:
    x, y = new_id(), new_id()
    raw.call(
        "bob",
        [
            [protocol.STORE, x, torch.tensor([1.0, 2.0]), None],
            [protocol.OP, "torch.add", [Ref(x), Ref(x)], {}, [y], True, None],
            [protocol.PING, 1],
        ],
    )
    (value,) = raw.call("bob", [[protocol.GET, Ref(y), 2]])
    assert torch.equal(value, torch.tensor([2.0, 4.0]))
    raw.call("bob", [[protocol.DELETE, x], [protocol.PING, 3]])


def test_sigkill_and_restart_keeps_every_acknowledged_object(fleet: Any, raw: RawClient) -> None:
    w, p, later = new_id(), new_id(), new_id()
    weight = torch.tensor([1.0, -2.0], requires_grad=True)
    (weight * weight).sum().backward()
    raw.call(
        "bob",
        [
            [protocol.STORE, w, weight, 1],
            [protocol.STORE, p, PointerRecord("alice", 5, False, (1,), "float32", False), 2],
        ],
    )
    fleet.kill("bob")
    # sent while bob is down: it waits in bob's durable queue
    raw.send("bob", [[protocol.STORE, later, torch.arange(3), None]])
    fleet.start("bob")
    got_weight, got_pointer, got_later = raw.call(
        "bob", [[protocol.GET, Ref(w), 3], [protocol.GET, Ref(p), 4], [protocol.GET, Ref(later), 5]]
    )
    assert torch.equal(got_weight.detach(), weight.detach()) and got_weight.requires_grad
    assert torch.equal(got_weight.grad, weight.grad)
    assert got_pointer == PointerRecord("alice", 5, False, (1,), "float32", False)
    assert torch.equal(got_later, torch.arange(3))


def test_pointers_still_work_after_their_worker_was_killed_and_restarted(fleet: Any) -> None:
    hook = sy.TorchHook(torch)
    bob = sy.FleetWorker(hook, id="bob")
    x = torch.tensor([1.0, 2.0, 3.0]).send(bob)
    y = x * 2
    bob.synchronize()
    fleet.kill("bob")
    fleet.start("bob")
    assert torch.equal((y + x).get(), torch.tensor([3.0, 6.0, 9.0]))
    assert torch.equal(x.get(), torch.tensor([1.0, 2.0, 3.0]))


def _close_connections(name_part: str) -> int:
    """Close, from RabbitMQ's side, every connection whose name contains ``name_part``."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "-q", "--no-table-headers"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    closed = 0
    for line in listing.splitlines():
        pid, _, properties = line.partition("\t")
        if name_part in properties:
            subprocess.run(
                ["rabbitmqctl", "close_connection", pid, "test drop"],
                capture_output=True,
                check=True,
                timeout=60,
            )
            closed += 1
    return closed


def test_a_client_survives_a_connection_dropped_by_the_broker(fleet: Any) -> None:
    hook = sy.TorchHook(torch)
    bob = sy.FleetWorker(hook, id="bob")
    x = torch.tensor([4.0, 5.0]).send(bob)
    bob.synchronize()
    transport = get_fleet_transport()
    assert _close_connections(transport.client_id) == 1
    assert torch.equal((x + 1).get(), torch.tensor([5.0, 6.0]))
    assert torch.equal(x.get(), torch.tensor([4.0, 5.0]))


def test_a_raw_client_survives_a_dropped_connection(raw: RawClient) -> None:
    obj = new_id()
    raw.call("bob", [[protocol.STORE, obj, torch.ones(2), 1]])
    assert _close_connections(raw.transport.client_id) == 1
    (value,) = raw.call("bob", [[protocol.GET, Ref(obj), 2]])
    assert torch.equal(value, torch.ones(2))


def test_two_clients_on_one_worker_get_only_their_own_replies(fleet: Any) -> None:
    first, second = RawClient(fleet), RawClient(fleet)
    try:
        a, b = new_id(), new_id()
        for request in range(1, 51):  # interleaved pipelined traffic
            first.send("alice", [[protocol.PING, request]])
            second.send("alice", [[protocol.PING, 1000 + request]])
        assert sorted(r[0] for r in first.replies(50)) == list(range(1, 51))
        assert sorted(r[0] for r in second.replies(50)) == list(range(1001, 1051))
        first.call("alice", [[protocol.STORE, a, torch.zeros(1), 1]])
        second.call("alice", [[protocol.STORE, b, torch.ones(1), 2]])
        (theirs,) = first.call("alice", [[protocol.GET, Ref(b), 3]])  # objects are shared by id
        assert torch.equal(theirs, torch.ones(1))
        assert first.transport.receive(0.2) is None and second.transport.receive(0.2) is None
        first.call("alice", [[protocol.DELETE, a], [protocol.PING, 4]])
    finally:
        first.transport.close()
        second.transport.close()


def plain_celery_app(running: Any) -> Celery:
    """What a plain Celery caller configures (see the README section in the report)."""
    app = Celery(
        "caller", broker=running.settings.broker_url, backend="rpc://", set_as_current=False
    )
    app.conf.update(
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["msgpack"],
        result_accept_content=["msgpack"],
    )
    return app


def test_a_plain_celery_caller_gets_the_reply_as_the_task_result(fleet: Any) -> None:
    app = plain_celery_app(fleet)
    obj = new_id()
    sender = f"celery-{uuid.uuid4().hex}"
    store = codec.encode(
        protocol.envelope(
            1,
            sender,
            None,
            [
                [protocol.STORE, obj, torch.tensor([7.0, 8.0]), None],
                [protocol.OP, "torch.mul", [Ref(obj), 3.0], {}, [obj + 1], True, 1],
            ],
        )
    )
    queue = topology.worker_queue("bob", fleet.namespace)
    result = app.send_task(TASK_NAME, args=[store], queue=queue).get(timeout=60)
    assert codec.decode(result)["replies"] == [[1, True, [[[2], "float32", False]]]]
    get = codec.encode(protocol.envelope(2, sender, None, [[protocol.GET, Ref(obj + 1), 2]]))
    replies = codec.decode(app.send_task(TASK_NAME, args=[get], queue=queue).get(timeout=60))
    assert torch.equal(replies["replies"][0][2], torch.tensor([21.0, 24.0]))
    app.close()


# ------------------------------------------------------------------ hostile messages


def _dead_letters(running: Any, tag: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Headers of the dead-lettered messages carrying ``x-test-tag: tag``."""
    return [headers for headers, _ in _dead_letter_messages(running, tag, count, timeout)]


def _dead_letter_messages(
    running: Any, tag: str, count: int, timeout: float = 60
) -> list[tuple[dict[str, Any], bytes]]:
    """(headers, body) of the dead-lettered messages carrying ``x-test-tag: tag``."""
    connection = pika.BlockingConnection(pika.URLParameters(pika_url(running.settings.broker_url)))
    channel = connection.channel()
    found: list[tuple[dict[str, Any], bytes]] = []
    deadline = time.monotonic() + timeout
    queue = topology.dead_letter_queue(running.namespace)
    tags: list[tuple[int, bool]] = []
    try:  # fetch without acknowledging, so other tests' dead letters are not seen twice
        while len(found) < count and time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue)
            if method is None:
                time.sleep(0.05)
                continue
            headers = properties.headers or {}
            mine = headers.get("x-test-tag") == tag
            tags.append((method.delivery_tag, mine))
            if mine:
                found.append((headers, body))
        for delivery_tag, mine in tags:
            if mine:
                channel.basic_ack(delivery_tag)
            else:
                channel.basic_nack(delivery_tag, requeue=True)
    finally:
        connection.close()
    return found


def test_hostile_messages_are_dead_lettered_with_a_reason(fleet: Any, raw: RawClient) -> None:
    tag = uuid.uuid4().hex
    queue = topology.worker_queue("bob", fleet.namespace)
    connection = pika.BlockingConnection(pika.URLParameters(pika_url(fleet.settings.broker_url)))
    channel = connection.channel()

    def publish(
        payload: bytes, content_type: str, extra: dict[str, Any] | None = None, task: bool = True
    ) -> None:
        headers = dict(task_message(b"", str(uuid.uuid4()), "test")[0]) if task else {}
        headers.update(extra or {})
        headers["x-test-tag"] = tag
        channel.basic_publish(
            "",
            queue,
            payload,
            pika.BasicProperties(
                headers=headers,
                content_type=content_type,
                content_encoding="binary",
                user_id=raw.transport.user,  # replies go only to the sender's own queue
            ),
        )

    unknown_op = codec.encode(
        protocol.envelope(1, f"evil-{tag}", raw.transport.reply_address, [["frobnicate", 1, None]])
    )
    publish(task_message(unknown_op, "t", "test")[1], "application/x-msgpack")
    publish(b"\xc1\xff garbage", "application/x-msgpack")
    publish(pickle.dumps(([b"x"], {}, {})), "application/x-python-serialize")
    publish(
        msgpack.packb([[b"\x00" * (fleet.settings.max_message_bytes + 2**21)], {}, {}]),
        "application/x-msgpack",
    )
    publish(msgpack.packb([[b"not an envelope"], {}, {}]), "application/x-msgpack")
    publish(b"{}", "application/json", task=False)
    publish(msgpack.packb([[], {}, {}]), "application/x-msgpack", {"task": "os.system"})
    connection.close()

    reasons = [headers[topology.REASON_HEADER] for headers in _dead_letters(fleet, tag, 7)]
    assert len(reasons) == 7, reasons
    joined = "\n".join(reasons)
    assert "unknown command" in joined  # the unknown op
    assert "never pickle" in joined
    assert "above TENSORFLEET_MAX_MESSAGE_BYTES" in joined
    assert "not a Celery task message" in joined or "cannot be decoded" in joined  # no header
    assert "unknown task 'os.system'" in joined
    assert joined.count("Malformed TensorFleet message") + joined.count("not a msgpack") >= 2
    # the sender of the unknown op got its error, and bob still serves
    (error,) = raw.replies(1)
    assert error[1] is False and error[2]["type"] == "UnknownCommandError"
    assert raw.call("bob", [[protocol.PING, 9]]) == [True]


def test_a_moved_big_tensor_survives_a_kill_right_after_the_move(fleet: Any) -> None:
    """The Redis write of a big tensor runs in the background; the message is acknowledged
    only once it is written, so a crash right after the client saw the move done still
    finds the tensor (written, or redelivered and applied again)."""
    hook = sy.TorchHook(torch)
    bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
    data = torch.arange(4 * 2**20, dtype=torch.float32)  # 16 MiB: written in the background
    x = data.send(bob)
    x.move(alice)
    alice.synchronize()
    fleet.kill("alice")
    fleet.start("alice")
    assert torch.equal(x.get(), data)


def test_compression_bombs_are_refused_before_they_inflate(fleet: Any, raw: RawClient) -> None:
    """113 bytes of bzip2 that would inflate to 100 MiB: refused as they are, never inflated."""
    import bz2
    import zlib

    tag = uuid.uuid4().hex
    queue = topology.worker_queue("bob", fleet.namespace)
    payload = msgpack.packb([[b"\x00" * (100 * 2**20)], {}, {}])
    bombs = {
        "application/x-bz2": bz2.compress(payload, 9),
        "application/x-gzip": zlib.compress(payload, 9),
    }
    connection = pika.BlockingConnection(pika.URLParameters(pika_url(fleet.settings.broker_url)))
    channel = connection.channel()
    for compression, bomb in bombs.items():
        headers = dict(task_message(b"", str(uuid.uuid4()), "test")[0])
        headers.update({"compression": compression, "x-test-tag": tag})
        channel.basic_publish(
            "",
            queue,
            bomb,
            pika.BasicProperties(
                headers=headers, content_type="application/x-msgpack", content_encoding="binary"
            ),
        )
    connection.close()
    refused = _dead_letter_messages(fleet, tag, len(bombs))
    assert sorted(body for _, body in refused) == sorted(bombs.values())  # as they came
    for headers, _ in refused:
        assert "compressed bodies are refused" in headers[topology.REASON_HEADER]
    assert raw.call("bob", [[protocol.PING, 1]]) == [True]


def test_a_worker_declares_no_queue_a_client_names(fleet: Any, raw: RawClient) -> None:
    """send_to and replies to made-up names create nothing on the broker."""
    obj = new_id()
    raw.call("bob", [[protocol.STORE, obj, torch.ones(2), 1]])
    ghosts = [f"ghost-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    for number, ghost in enumerate(ghosts):
        raw.send("bob", [[protocol.SEND_TO, obj, ghost, new_id(), 100 + number]])
    errors = raw.replies(len(ghosts))
    assert all(not ok and payload["type"] == "UnknownWorkerError" for _, ok, payload in errors)
    # a reply address that is no reply queue gets nothing, and no queue appears
    body = codec.encode(
        protocol.envelope(next(_batches), raw.sender, "made.up.queue", [[protocol.PING, 1]])
    )
    raw.transport.publish("bob", body)
    assert raw.call("bob", [[protocol.GET, Ref(obj), 2]])[0].tolist() == [1.0, 1.0]
    connection = pika.BlockingConnection(pika.URLParameters(pika_url(fleet.settings.broker_url)))
    try:
        for name in [topology.worker_queue(g, fleet.namespace) for g in ghosts] + ["made.up.queue"]:
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                channel.queue_declare(name, passive=True)
    finally:
        connection.close()
