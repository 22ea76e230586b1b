"""Shared fixtures: one behaviour suite, run against every worker kind.

Behaviour tests ask for ``bob``, ``alice``, ``secure_worker``, ``jon`` or
``make_worker("julie")`` and never name a worker kind. The ``worker_kind``
fixture is parametrized (``virtual``, ``fleet``), so every behaviour test runs
once on in-process workers and once on a real fleet. The fleet (RabbitMQ,
Celery workers, Redis) is started only when a fleet-kind test is collected, once
per session, in an isolated namespace, by ``tests/fleet_fixture.py``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import client as sy

#: Every worker id the lessons use; the fleet starts one process for each.
FLEET_WORKER_IDS = ("bob", "alice", "secure_worker", "jon", "julie", "toby", "charlie")

WORKER_KINDS = ("virtual", "fleet")


@pytest.fixture(scope="session")
def hook() -> Any:
    """``sy.TorchHook(torch)``: idempotent, so one per session is the same as one per test."""
    return sy.TorchHook(torch)


@pytest.fixture(scope="session")
def hosted_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The toy dataset files bob and alice host (tests/hosted_data.py): owner id -> path."""
    import hosted_data

    return hosted_data.write_files(tmp_path_factory.mktemp("hosted"))


@pytest.fixture(scope="session")
def fleet(hosted_files: dict[str, Any]) -> Iterator[Any]:
    """Real ``tensorfleet worker <id>`` processes for every lesson worker, for the session.

    bob and alice host the toy dataset of tests/hosted_data.py (``--dataset``): it is
    private to their operator, so no test's object counts or listings see it.
    """
    import fleet_fixture  # tests/ is on sys.path (rootdir conftest); imported only when needed
    import hosted_data

    with fleet_fixture.fleet(
        FLEET_WORKER_IDS, datasets=hosted_data.dataset_options(hosted_files)
    ) as running:
        yield running


@pytest.fixture(params=WORKER_KINDS)
def worker_kind(request: pytest.FixtureRequest) -> str:
    """The kind of worker a behaviour test runs on; the fleet starts lazily on first use."""
    if request.param == "fleet":
        request.getfixturevalue("fleet")
    return str(request.param)


@pytest.fixture
def attacker(worker_kind: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Another client speaking the raw protocol (tests/attacker.py), on the test's kind."""
    import attacker as attackers

    if worker_kind == "virtual":
        client: Any = attackers.InProcessAttacker()
    else:
        client = attackers.FleetAttacker(request.getfixturevalue("fleet").settings)
    yield client
    client.close()


@pytest.fixture
def make_worker(hook: Any, worker_kind: str) -> Iterator[Callable[[str], Any]]:
    """``make_worker("bob")``: a worker of this test's kind with an empty store."""
    made: dict[str, Any] = {}

    def make(worker_id: str) -> Any:
        if worker_id not in made:
            if worker_kind == "virtual":
                worker = sy.VirtualWorker(hook, id=worker_id)
            else:
                worker = sy.FleetWorker(hook, id=worker_id)
            worker.clear_objects()
            made[worker_id] = worker
        return made[worker_id]

    yield make
    # Pointers a test left behind must not delete anything in the next test's stores.
    gc.collect()
    for worker in made.values():
        try:
            worker.clear_objects()
        except Exception:  # a pipelined failure the test left unreported is raised once
            worker.clear_objects()


@pytest.fixture
def bob(make_worker: Callable[[str], Any]) -> Any:
    return make_worker("bob")


@pytest.fixture
def alice(make_worker: Callable[[str], Any]) -> Any:
    return make_worker("alice")


@pytest.fixture
def secure_worker(make_worker: Callable[[str], Any]) -> Any:
    return make_worker("secure_worker")


@pytest.fixture
def jon(make_worker: Callable[[str], Any]) -> Any:
    return make_worker("jon")


@pytest.fixture
def me(hook: Any) -> Any:
    """The local worker, ``hook.local_worker``."""
    return hook.local_worker
