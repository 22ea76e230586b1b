"""Truth after faults (issue 8.7): a broker restart, a destination killed during a move.

Fleet-only: both faults are about processes and a broker. Each test has servers or
a fleet of its own, since it kills or restarts them: the RabbitMQ restart runs on a
private node (tests/private_servers.py), never the shared one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fleet_fixture import fleet
from private_servers import private_rabbitmq

import client as sy
from broker.backoff import Backoff
from broker.errors import TransferIncompleteError
from client.fleet import get_fleet_transport


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
