"""A fleet across hosts (network namespaces on a bridge, tests/multihost.py) and its faults.

FedAvg rounds run from this process (a client in the root namespace whose connections go
through the bridge to the broker host); one test runs a client on the client host. An
owner's link is cut mid-round, or its worker and Redis are killed: the client's next
synchronising call fails within TENSORFLEET_TIMEOUT with WorkerUnavailableError naming
that owner; once the owner is back the next round runs, and what was acknowledged before
the fault (the owners' data) is still exact. Detection and recovery times are printed
(``pytest -s``) and written in the README ("Across hosts").
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from multihost import MultiHost
from torch import nn

import client as sy
from broker.errors import WorkerUnavailableError
from client.federated.fedavg import load_parameters, secure_average, train_epochs

pytestmark = pytest.mark.multihost

OWNERS = ("bob", "alice")
AGGREGATOR = "secure_worker"
#: TENSORFLEET_TIMEOUT of the client and workers here: a fault must be reported within it.
TIMEOUT = 5.0
#: Slack on top of TIMEOUT for the error to reach the caller on 2 shared cores.
SLACK = 2.0
#: How long an owner may take to serve again after its link or process is back.
RECOVER_DEADLINE = 120.0


@pytest.fixture(scope="module")
def hosts(request: pytest.FixtureRequest) -> MultiHost:
    root = Path(tempfile.mkdtemp(prefix="tfmultihost-"))
    running = MultiHost((*OWNERS, AGGREGATOR), TIMEOUT, root)
    # finalizers run whatever happens: a failed start or test still removes every
    # namespace, link, process and folder
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    request.addfinalizer(running.close)
    running.start()
    return running


@pytest.fixture
def workers(hosts: MultiHost, hook: Any) -> Iterator[dict[str, Any]]:
    made = {w: sy.FleetWorker(hook, id=w) for w in hosts.worker_ids}
    for worker in made.values():
        worker.clear_objects()
    yield made
    gc.collect()
    for worker in made.values():
        worker.clear_objects()


def owner_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1


class Federation:
    """Small FedAvg: each owner trains a copy on its data; the copies are averaged elsewhere."""

    def __init__(self, workers: dict[str, Any]) -> None:
        torch.manual_seed(0)
        self.workers = workers
        self.model = nn.Linear(4, 1)
        self.local = {owner: owner_data(seed) for seed, owner in enumerate(OWNERS)}
        self.data = {
            owner: (x.send(workers[owner]), y.send(workers[owner]))
            for owner, (x, y) in self.local.items()
        }
        for owner in OWNERS:  # acknowledged: everything above is on the owners
            workers[owner].synchronize()
        self.copies: list[nn.Module] = []
        self.losses: dict[str, Any] = {}

    def train(self) -> None:
        """The first half of a round: pipelined, nothing waits."""
        self.copies = []
        for owner in OWNERS:
            local = self.model.copy().send(self.workers[owner])
            optimizer = torch.optim.SGD(local.parameters(), lr=0.05)
            x, y = self.data[owner]
            self.losses[owner] = train_epochs(
                local, lambda x=x, y=y: [(x, y)], optimizer, nn.functional.mse_loss, 3
            )
            self.copies.append(local)

    def fetch_losses(self) -> dict[str, float]:
        """The round's first synchronising call: each owner's loss (bob's first)."""
        return {owner: float(loss.get()) for owner, loss in self.losses.items()}

    def aggregate(self) -> None:
        """The second half: move the copies to the aggregator and fetch their average."""
        load_parameters(self.model, secure_average(self.copies, self.workers[AGGREGATOR]))
        self.copies = []

    def round(self) -> None:
        self.train()
        self.fetch_losses()
        self.aggregate()

    def abandon(self) -> None:
        """Drop a failed round's copies and losses (their deletes go out with the next batch)."""
        self.copies = []
        self.losses = {}
        gc.collect()

    def assert_data_exact(self) -> None:
        for owner, (x, y) in self.data.items():
            expected_x, expected_y = self.local[owner]
            assert torch.equal(x.copy().get(), expected_x)
            assert torch.equal(y.copy().get(), expected_y)


def report(name: str, **figures: float) -> None:
    print(f"\nmultihost {name}: " + json.dumps({k: round(v, 3) for k, v in figures.items()}))


def expect_unavailable(federation: Federation, owner: str) -> float:
    """Fetch the round's losses; it must fail naming ``owner`` within the timeout. Seconds."""
    start = time.monotonic()
    with pytest.raises(WorkerUnavailableError, match=f'"{owner}"'):
        federation.fetch_losses()
    took = time.monotonic() - start
    assert took <= TIMEOUT + SLACK, f"the failure took {took:.1f} s, timeout {TIMEOUT:g} s"
    return took


def test_client_host_uses_the_fleet_through_the_network(hosts: MultiHost) -> None:
    """A client in a namespace of its own: no broker or Redis on its 127.0.0.1, the fleet works."""
    script = """
import json, socket, torch, client as sy
closed = []
for port in (5672, 6379):
    with socket.socket() as probe:
        closed.append(probe.connect_ex(("127.0.0.1", port)) != 0)
hook = sy.TorchHook(torch)
bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
x = torch.arange(6.0).send(bob)
y = (x * 2).move(alice)
print(json.dumps({"closed": closed, "value": y.get().tolist(), "bob": bob.object_count()}))
"""
    # not a fault test: a loaded machine must not turn a slow first op into a failure
    done = hosts.run_client(script, env={"TENSORFLEET_TIMEOUT": "60"})
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"closed": [True, True], "value": [0, 2, 4, 6, 8, 10], "bob": 1}


def test_cut_link_mid_round(hosts: MultiHost, workers: dict[str, Any]) -> None:
    federation = Federation(workers)
    federation.round()
    federation.train()  # bob's work is on its way (or queued for it) when the link goes
    cut_at = time.monotonic()
    hosts.cut("bob")
    try:
        waited = expect_unavailable(federation, "bob")
        detected = time.monotonic() - cut_at
    finally:
        hosts.restore("bob")
    restored_at = time.monotonic()
    answered = hosts.wait_answers("bob", restored_at + RECOVER_DEADLINE)
    federation.abandon()
    federation.round()
    recovered = time.monotonic() - restored_at
    federation.assert_data_exact()
    report(
        "link cut",
        detect_s=detected,
        sync_call_s=waited,
        bob_answers_after_link_up_s=answered - restored_at,
        next_round_done_after_link_up_s=recovered,
    )


def test_owner_crash_mid_round(hosts: MultiHost, workers: dict[str, Any]) -> None:
    federation = Federation(workers)
    federation.round()
    federation.train()
    crashed_at = time.monotonic()
    hosts.kill_owner("bob")
    waited = expect_unavailable(federation, "bob")
    detected = time.monotonic() - crashed_at
    restart_at = time.monotonic()
    hosts.start_owner("bob")  # Redis replays its AOF, the worker loads its objects
    answered = time.monotonic()
    federation.abandon()
    federation.round()
    recovered = time.monotonic() - restart_at
    federation.assert_data_exact()
    report(
        "owner crash",
        detect_s=detected,
        sync_call_s=waited,
        bob_answers_after_restart_s=answered - restart_at,
        next_round_done_after_restart_s=recovered,
    )
