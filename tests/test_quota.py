"""Per-client quotas: what one client keeps on a worker is bounded, the others are unaffected."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import client as sy
from broker import codec, protocol
from broker.errors import QuotaExceededError
from worker.engine import Delivery, Engine

QUOTA = 1024 * 1024  # 1 MiB


def _store(engine: Engine, principal: str, obj_id: int, tensor: torch.Tensor) -> list[Any]:
    body = codec.encode(
        protocol.envelope(obj_id, principal, None, [[protocol.STORE, obj_id, tensor, 1]])
    )
    return engine.handle(body, Delivery(principal=principal)).replies


def test_the_engine_refuses_what_would_go_above_a_principals_quota() -> None:
    engine = Engine("bob", quota=QUOTA)
    half = torch.zeros(QUOTA // 8)  # 512 KiB of float32
    assert _store(engine, "carol", 1, half)[0][1] is True
    assert _store(engine, "carol", 2, half)[0][1] is True
    (refused,) = _store(engine, "carol", 3, torch.zeros(1))
    assert refused[1] is False and refused[2]["type"] == "QuotaExceededError"
    assert "TENSORFLEET_CLIENT_QUOTA_BYTES" in refused[2]["message"]
    assert _store(engine, "dave", 4, half)[0][1] is True  # another client has its own quota
    ops = [[protocol.OP, "Tensor.repeat", [protocol.Ref(1), 2], {}, [5], True, 2]]
    body = codec.encode(protocol.envelope(9, "dave", None, ops))
    (op_refused,) = engine.handle(body, Delivery(principal="carol")).replies
    assert op_refused[2]["type"] == "QuotaExceededError"  # known before the op ran
    assert set(engine.store.objects) == {1, 2, 4}


@pytest.fixture(scope="module")
def small_quota_fleet() -> Iterator[Any]:
    import fleet_fixture

    with fleet_fixture.fleet(
        ("bob",), env={"TENSORFLEET_CLIENT_QUOTA_BYTES": str(QUOTA)}
    ) as running:
        yield running


def test_a_fleet_worker_enforces_the_quota_and_keeps_serving(
    small_quota_fleet: Any, hook: Any
) -> None:
    bob = sy.FleetWorker(hook, id="bob")
    kept = torch.arange(QUOTA // 8, dtype=torch.float32).send(bob)
    too_much = torch.zeros(QUOTA // 4).send(bob)
    with pytest.raises(QuotaExceededError):
        bob.synchronize()
    del too_much
    assert torch.equal(kept.get(), torch.arange(QUOTA // 8, dtype=torch.float32))
    again = torch.zeros(QUOTA // 4).send(bob)  # the space is free again after the get
    assert torch.equal(again.get(), torch.zeros(QUOTA // 4))
