"""Truth after faults (issue 8.7): a broker restart, a destination killed during a move.

Fleet-only: both faults are about processes and a broker. Each test has servers or
a fleet of its own, since it kills or restarts them: the RabbitMQ restart runs on a
private node (tests/private_servers.py), never the shared one.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fleet_fixture import fleet
from private_servers import private_rabbitmq

import client as sy
from broker import codec, protocol
from broker.backoff import Backoff
from broker.errors import TransferIncompleteError
from broker.protocol import Ref
from broker.settings import get_settings
from client.fleet import FleetTransport, get_fleet_transport, reset_fleet_transport


@pytest.fixture(scope="module")
def pair() -> Iterator[Any]:
    """bob and alice, with small messages so a big tensor travels in many chunks."""
    previous = os.environ.get("TENSORFLEET_MAX_MESSAGE_BYTES")
    os.environ["TENSORFLEET_MAX_MESSAGE_BYTES"] = str(1 << 20)  # the client's and the workers'
    try:
        with fleet(("bob", "alice")) as running:
            yield running
    finally:
        if previous is None:
            os.environ.pop("TENSORFLEET_MAX_MESSAGE_BYTES", None)
        else:
            os.environ["TENSORFLEET_MAX_MESSAGE_BYTES"] = previous


def holds(worker: Any, pointer_id: int) -> bool:
    """Whether ``worker`` holds object ``pointer_id`` of ours (a search: no data moves)."""
    from client.locate import ask

    return bool(ask(worker, pointer_id).holds)


def test_a_move_to_a_stopped_worker_says_the_data_is_on_its_way_and_points_there(
    pair: Any,
) -> None:
    hook = sy.TorchHook(torch)
    bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
    data = torch.arange(1000.0)
    x = data.send(bob)
    bob.synchronize()
    pair.kill("alice")

    started = time.monotonic()
    with pytest.raises(TransferIncompleteError) as raised:
        x.move(alice)
    seconds = time.monotonic() - started
    message = str(raised.value)
    assert "no longer on bob" in message and "sent to alice, which is not running" in message
    assert seconds < 10, seconds  # not TENSORFLEET_TIMEOUT: alice's silence is seen at once
    assert x.location is alice  # where the data will be once alice runs
    assert not holds(bob, x.id_at_location)

    pair.start("alice")
    assert torch.equal(x.get(), data)


def test_a_destination_killed_during_a_big_move_leaves_a_true_pointer_or_error(
    pair: Any,
) -> None:
    """Kill alice while a 64 MiB tensor arrives in 1 MiB chunks; what the client says holds."""
    hook = sy.TorchHook(torch)
    bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
    data = torch.rand(16 * 2**20)  # 64 MiB
    x = data.send(bob)
    bob.synchronize()

    outcome: dict[str, Any] = {}

    def move() -> None:
        try:
            x.move(alice)
            outcome["done"] = True
        except TransferIncompleteError as error:
            outcome["error"] = error

    mover = threading.Thread(target=move)
    mover.start()
    # kill alice once the transfer reaches her queue (RabbitMQ's word; there is no event)
    prober = sy.FleetWorker(hook, id="bob").session.transport
    backoff = Backoff(first=0.005, maximum=0.05)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not outcome:
        state = prober.worker_state("alice", 10)
        if state.messages > 0:
            break
        time.sleep(backoff.next_delay())
    pair.kill("alice")
    mover.join(timeout=180)
    assert not mover.is_alive()
    pair.start("alice")

    if "done" in outcome:  # the move finished before the kill: the data is on alice
        assert x.location is alice
        assert torch.equal(x.get(), data)
        return
    message = str(outcome["error"])
    print(f"big move, alice killed mid-way: {message}")
    if "still on bob" in message:
        assert x.location is bob
        assert torch.equal(x.get(), data)
    elif "lands there once alice serves again" in message:
        check_in_transit_claim(x, bob, alice, data)
    else:
        assert "lost in transit" in message, message
        assert not holds(bob, x.id_at_location) and not holds(alice, x.id_at_location)


def check_in_transit_claim(x: Any, bob: Any, alice: Any, data: torch.Tensor) -> None:
    """The error said the data left bob for alice, which was not running: with alice back,
    it is on alice, or (if alice had taken part of it) on neither, and .get() says which."""
    assert x.location is alice and not holds(bob, x.id_at_location)
    if holds(alice, x.id_at_location):
        assert torch.equal(x.get(), data)
        return
    with pytest.raises(TransferIncompleteError) as raised:  # not a bare ObjectNotFoundError
        x.get()
    assert "on neither bob nor alice" in str(raised.value)


# ------------------------------------------------------------------ dropped connections


def test_a_resent_batch_runs_once_and_only_its_replies_come_again(pair: Any) -> None:
    """A client whose reply was lost sends the batch again (resend): the worker replays."""
    transport = FleetTransport(pair.settings, client_id=f"resend-{uuid.uuid4().hex[:8]}")
    try:
        obj = uuid.uuid4().int % 2**62

        def batch(number: int, commands: list[Any]) -> Any:
            envelope = protocol.envelope(number, "resender", transport.reply_address, commands)
            return codec.encode(envelope)

        def replies(count: int) -> list[Any]:
            found: list[Any] = []
            while len(found) < count:
                body = transport.receive(30)
                assert body is not None, found
                found.extend(codec.decode(body)["replies"])
            return found

        transport.publish("bob", batch(1, [[protocol.STORE, obj, torch.zeros(2), 1]]))
        ((request, ok, _),) = replies(1)
        assert request == 1 and ok
        add = batch(2, [[protocol.OP, "Tensor.add_", [Ref(obj), 1], {}, [], False, 2]])
        transport.publish("bob", add)
        transport.publish("bob", add, resend=True)
        first, second = replies(2)
        assert first[0] == second[0] == 2 and first[1] and second[1]
        transport.publish("bob", batch(3, [[protocol.GET, Ref(obj), 3]]))
        ((request, ok, value),) = replies(1)
        assert request == 3 and ok and torch.equal(value, torch.ones(2))  # added once
    finally:
        transport.close()


def test_a_reply_lost_with_a_dropped_connection_is_sent_again(pair: Any) -> None:
    """The exclusive reply queue goes with a dropped connection, and a reply sent while
    the client is away is lost. Here the client (a RabbitMQ user of its own) is kept
    away until bob has answered into the void; once it is back, the waiting call sends
    its batch again, bob replays what it ran, and the answer comes, with in-place work
    done once."""
    user, password = f"dora-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    _rabbitmqctl("add_user", user, password)
    grant = ("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    _rabbitmqctl(*grant)
    saved = {name: os.environ.get(name) for name in _CLIENT_VARIABLES}
    os.environ["TENSORFLEET_BROKER_URL"] = f"amqp://{user}:{password}@127.0.0.1:5672//"
    os.environ["TENSORFLEET_WORKER_USER"] = "guest"  # the fixture's workers share guest
    os.environ["TENSORFLEET_CONNECT_RETRIES"] = "1000"  # the call waits for the broker
    get_settings.cache_clear()
    reset_fleet_transport()
    try:
        hook = sy.TorchHook(torch)
        bob = sy.FleetWorker(hook, id="bob")
        counter = torch.zeros(1).send(bob)
        bob.synchronize()
        transport = get_fleet_transport()
        connection = _connection_pid(transport.client_id)

        counter.add_(1)  # in place: it must run exactly once
        m = torch.linalg.qr(torch.rand(512, 512))[0].send(bob)
        busy = m
        for _ in range(400):  # seconds of work ahead of the get: the drop comes first
            busy = busy @ m
        outcome: dict[str, Any] = {}
        _rabbitmqctl("clear_permissions", "-p", "/", user)  # dora cannot come back yet
        getter = threading.Thread(target=lambda: outcome.setdefault("value", counter.get()))
        getter.start()
        _rabbitmqctl("close_connection", connection, "test drop")
        assert pair.ping("bob", 60)  # bob ran dora's get (FIFO) and its reply was lost
        assert getter.is_alive()
        _rabbitmqctl(*grant)  # dora reconnects, sends the batch again, bob replays
        getter.join(timeout=120)
        assert not getter.is_alive()
        assert torch.equal(outcome["value"], torch.ones(1))
        assert bob.session.resent_batches >= 1
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()
        reset_fleet_transport()
        _rabbitmqctl("delete_user", user)


_CLIENT_VARIABLES = (
    "TENSORFLEET_BROKER_URL",
    "TENSORFLEET_WORKER_USER",
    "TENSORFLEET_CONNECT_RETRIES",
)


def _connection_pid(name_part: str) -> str:
    """RabbitMQ's pid of the connection whose name contains ``name_part``."""
    listing = _rabbitmqctl("list_connections", "pid", "client_properties", "--no-table-headers")
    (pid,) = [line.partition("\t")[0] for line in listing.splitlines() if name_part in line]
    return pid


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


# ------------------------------------------------------------------ broker restart


def test_the_first_call_after_a_broker_restart_succeeds(tmp_path: Path) -> None:
    with private_rabbitmq(tmp_path / "rabbit") as node:
        url = f"amqp://guest:guest@127.0.0.1:{node.port}//"
        # guest may only log in from localhost, which 127.0.0.1 is
        previous = os.environ.get("TENSORFLEET_BROKER_URL")
        os.environ["TENSORFLEET_BROKER_URL"] = url
        try:
            with fleet(("bob",), env={"TENSORFLEET_BROKER_URL": url}):
                hook = sy.TorchHook(torch)
                bob = sy.FleetWorker(hook, id="bob")
                x = torch.tensor([1.0, 2.0, 3.0]).send(bob)
                bob.synchronize()
                transport = get_fleet_transport()
                generation = transport.generation

                node.ctl("stop_app")  # every connection drops; durable queues stay
                node.ctl("start_app")

                started = time.monotonic()
                assert torch.equal((x + 1).get(), torch.tensor([2.0, 3.0, 4.0]))
                first_call = time.monotonic() - started
                assert transport.generation > generation  # it did reconnect
                assert torch.equal(x.get(), torch.tensor([1.0, 2.0, 3.0]))
                print(f"first call after the broker restart: {first_call:.2f} s")
        finally:
            if previous is None:
                os.environ.pop("TENSORFLEET_BROKER_URL", None)
            else:
                os.environ["TENSORFLEET_BROKER_URL"] = previous
