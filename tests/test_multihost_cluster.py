"""A fleet on a three-node RabbitMQ cluster with quorum worker queues, across hosts.

Three broker hosts (tests/multihost.py, ``brokers=3``) form one cluster; the workers
(``bob``, ``alice``, each on a host of its own with its own Redis) get
``TENSORFLEET_BROKER_URL`` as the list of the three nodes and connect to the first;
the client (this process) uses the third. Worker queues are quorum queues
(``TENSORFLEET_QUEUE_TYPE=quorum``), replicated on the three nodes. The first node is
killed (every process of its host): the workers fail over to the second node, the
queues keep their messages, and objects sent before the crash are still exact.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from multihost import MultiHost

import client as sy

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


@pytest.mark.timeout(600)  # includes booting three nodes and joining them, on shared cores
def test_workers_fail_over_when_a_node_dies(cluster: MultiHost, hook: Any) -> None:
    bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
    local = torch.arange(8.0)
    x = local.send(bob)
    y = (x * 3).move(alice)
    bob.synchronize()

    killed_at = time.monotonic()
    cluster.kill_broker(0)
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
            }
        )
    )
    del x, pending
    gc.collect()
