"""A fleet on a three-node RabbitMQ cluster with quorum worker queues, across hosts.

Three broker hosts (tests/multihost.py, ``brokers=3``) form one cluster; the workers
(``bob``, ``alice``, each on a host of its own with its own Redis) get
``TENSORFLEET_BROKER_URL`` as the list of the three nodes and connect to the first;
the client (this process) gets the list starting with the third. Worker queues are
quorum queues (``TENSORFLEET_QUEUE_TYPE=quorum``), replicated on the three nodes.

One node is stopped (``rabbitmqctl stop_app``) in the middle of a stream of pipelined
in-place ops, or of a 100 MiB send and get: the node the client is connected to, or
the one leading bob's queue (``rabbitmqctl list_queues name leader``). The client
reconnects to a surviving node through its URL list and publishes again what RabbitMQ
had not confirmed; workers replay what they ran already, so the in-place ops count
exactly once and the 100 MiB come back bit for bit. The stopped node is started again
after each case. Each case reports which parties were on the stopped node (the
leader can be the client's node too, after earlier stops moved the client). Last, the
node bob is connected to is killed (every process of its host, SIGKILL): the workers
fail over to another node, the queues keep their messages, and objects sent before the
crash are still exact.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from multihost import MultiHost

import client as sy
from broker import topology
from client.fleet import get_fleet_transport

pytestmark = pytest.mark.multihost

TIMEOUT = 10.0
FAILOVER_DEADLINE = 120.0


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> MultiHost:
    root = Path(tempfile.mkdtemp(prefix="tfmulticluster-"))
    running = MultiHost(("bob", "alice"), TIMEOUT, root, brokers=3, queue_type="quorum")
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    request.addfinalizer(running.close)
    running.start()
    return running


#: In-place ops on bob each stream case publishes, at least (more while the node stops).
OPS = 400
#: 100 MiB of float32.
BIG = 100 * 2**20 // 4


def stop_target(cluster: MultiHost, which: str) -> int:
    """The node a case stops: the client's own, or the leader of bob's quorum queue."""
    if which == "client node":
        return cluster.node_number(get_fleet_transport().node)
    queue = topology.worker_queue("bob", cluster.namespace)
    return cluster.queue_leader(queue, ask=cluster.node_number(get_fleet_transport().node))


def serving(cluster: MultiHost) -> None:
    """Wait until bob and alice answer: an earlier case's stopped node just rejoined.

    A node coming back can move a worker's connections again for a moment (seen once:
    bob's queue without a consumer right after the previous case's ``start_app``).
    """
    since = time.monotonic()
    for worker_id in ("bob", "alice"):
        cluster.wait_answers(worker_id, since + FAILOVER_DEADLINE)


def placement(cluster: MultiHost, number: int) -> dict[str, float]:
    """Who is on node ``number`` before it stops: 1.0 for the client and for bob if they are."""
    client_node = cluster.node_number(get_fleet_transport().node)
    return {
        "client_on_stopped_node": float(client_node == number),
        "bob_on_stopped_node": float(cluster.consumer_node("bob", ask=client_node) == number),
    }


def serve_again(cluster: MultiHost, since: float) -> dict[str, float]:
    """Seconds from ``since`` until bob and alice answer pings again."""
    return {
        f"{worker_id}_answers_s": cluster.wait_answers(worker_id, since + FAILOVER_DEADLINE) - since
        for worker_id in ("bob", "alice")
    }


def report(name: str, figures: dict[str, float]) -> None:
    print(
        f"\nmultihost cluster {name}: " + json.dumps({k: round(v, 3) for k, v in figures.items()})
    )


@pytest.mark.timeout(600)  # the first case includes booting three nodes and joining them
@pytest.mark.parametrize("which", ["queue leader", "client node"])
def test_pipelined_ops_survive_a_node_stop(cluster: MultiHost, hook: Any, which: str) -> None:
    serving(cluster)
    bob = sy.FleetWorker(hook, id="bob")
    x = torch.zeros(4).send(bob)
    bob.synchronize()  # acknowledged: x is on bob
    transport = get_fleet_transport()
    republished = transport.republished
    generation = transport.generation
    number = stop_target(cluster, which)
    where = placement(cluster, number)
    stopper_done = threading.Event()
    stopped_at: list[float] = []

    def stop() -> None:
        stopped_at.append(time.monotonic())
        try:
            cluster.stop_node(number)
        finally:
            stopper_done.set()

    snapshots: list[tuple[int, Any]] = []
    count = 0
    stopper = threading.Thread(target=stop)
    try:
        while count < OPS or not stopper_done.is_set():
            if count == OPS // 4:
                stopper.start()  # the stop begins with the stream a quarter through
            x.add_(1)  # in place: run twice, it would count twice
            count += 1
            if count % 50 == 0:
                snapshots.append((count, x * 1))
            if count % 100 == 0:
                time.sleep(0.01)  # pacing: the stream lasts as long as the stop, not a burst
        stopper.join()
        figures = serve_again(cluster, stopped_at[0])
        assert torch.equal(x.get(), torch.full((4,), float(count)))
        for expected, snapshot in snapshots:
            assert torch.equal(snapshot.get(), torch.full((4,), float(expected)))
    finally:
        if stopper.is_alive() or stopper_done.is_set():
            stopper.join()
            cluster.start_node(number)
    if which == "client node":
        assert transport.generation > generation  # it reconnected ...
        assert cluster.node_number(transport.node) != number  # ... to a surviving node
        assert transport.reconnected_at is not None
        figures["client_reconnected_s"] = transport.reconnected_at - stopped_at[0]
    figures["ops"] = count
    figures.update(where)
    figures["batches_published_again"] = transport.republished - republished
    report(f"pipelined ops, {which} (node {number}) stopped", figures)


@pytest.mark.timeout(600)  # may be the first test: booting the cluster included
@pytest.mark.parametrize("which", ["queue leader", "client node"])
def test_a_100_mib_transfer_survives_a_node_stop(cluster: MultiHost, hook: Any, which: str) -> None:
    serving(cluster)
    bob = sy.FleetWorker(hook, id="bob")
    big = torch.randn(BIG, generator=torch.Generator().manual_seed(13))
    transport = get_fleet_transport()
    republished = transport.republished
    number = stop_target(cluster, which)
    where = placement(cluster, number)
    started = time.monotonic()
    pointer = big.send(bob)
    bob.session.flush()  # out now, not at the next synchronising call
    # the stop begins while the 100 MiB are out and not yet confirmed by a majority
    while not transport._unconfirmed and transport._outbox:
        time.sleep(0.001)  # polling a state (the batch is being published), bounded below
        assert time.monotonic() - started < FAILOVER_DEADLINE
    stopped_at = time.monotonic()
    try:
        cluster.stop_node(number)
        figures = serve_again(cluster, stopped_at)  # a ping after the send: it has landed
        back = pointer.get()
        figures["get_done_s"] = time.monotonic() - stopped_at
    finally:
        cluster.start_node(number)
    assert torch.equal(back, big)
    figures["batches_published_again"] = transport.republished - republished
    figures.update(where)
    report(f"100 MiB send and get, {which} (node {number}) stopped", figures)
    del pointer
    gc.collect()


@pytest.mark.timeout(600)  # includes booting three nodes and joining them, on shared cores
def test_workers_fail_over_when_a_node_dies(cluster: MultiHost, hook: Any) -> None:
    serving(cluster)
    bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
    local = torch.arange(8.0)
    x = local.send(bob)
    y = (x * 3).move(alice)
    bob.synchronize()

    # the node bob is connected to now (earlier tests' stops moved the workers around)
    number = cluster.consumer_node("bob", ask=cluster.node_number(get_fleet_transport().node))
    killed_at = time.monotonic()
    cluster.kill_broker(number)
    pending = x + 1  # sent while bob is reconnecting: waits in his quorum queue
    bob_back = cluster.wait_answers("bob", killed_at + FAILOVER_DEADLINE)
    alice_back = cluster.wait_answers("alice", killed_at + FAILOVER_DEADLINE)

    assert torch.equal(pending.get(), local + 1)
    assert torch.equal(x.copy().get(), local)
    assert torch.equal(y.get(), local * 3)
    assert torch.equal((x * 2).move(alice).get(), local * 2)
    print(
        "\nmultihost cluster node crash: "
        + json.dumps(
            {
                "bob_answers_s": round(bob_back - killed_at, 3),
                "alice_answers_s": round(alice_back - killed_at, 3),
                "node": number,
            }
        )
    )
    del x, pending
    gc.collect()
