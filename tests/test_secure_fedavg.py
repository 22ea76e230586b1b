"""FedAvg's secure mode: no single party sees an individual update, and the average is right.

Each owner's weighted update is encoded and split into additive shares on its own
worker; the shares go to the other owners worker to worker; each owner adds what it
holds, and the client reconstructs only the sum, which is the weighted average. The
tests look into every worker's store while the shares exist, and at every command
the client sends.
"""

from __future__ import annotations

import gc
import re

import pytest
import torch
from recording import recording_commands
from torch import nn
from torch.utils.data import TensorDataset

from broker.errors import TooFewShareHoldersError
from client.federated import FedAvg, LocalTraining, SecureFedAvg, federate
from client.federated.secure_fedavg import SECURE_PRECISION, secure_sum, share_updates

SCALE = 10**SECURE_PRECISION


def _equal(stored: object, secret: torch.Tensor) -> bool:
    return (
        isinstance(stored, torch.Tensor)
        and stored.dtype == secret.dtype
        and (stored.shape == secret.shape and torch.equal(stored, secret))
    )


def test_no_party_stores_an_individual_update(bob, alice, jon, secure_worker):
    owners = [bob, alice, jon]
    torch.manual_seed(3)
    updates = [torch.randn(40) for _ in owners]
    weights = [0.5, 0.3, 0.2]
    weighted = [update * weight for update, weight in zip(updates, weights, strict=True)]
    encoded = [(value.double() * SCALE).round().long() for value in weighted]
    pointers = [
        update.send(owner) * weight
        for update, owner, weight in zip(updates, owners, weights, strict=True)
    ]
    assert [owner.object_count() for owner in owners] == [1, 1, 1]  # its weighted update
    with recording_commands(bob) as sent:
        shared = share_updates(pointers, owners)
        total = secure_sum(shared)
        stores = {w.id: list(w._objects.values()) for w in (*owners, secure_worker)}
    # the client sent no tensor and fetched nothing while the updates were shared
    assert not [command for _, command in sent if command[0] in ("store", "get")]
    assert stores["secure_worker"] == []  # the crypto provider is not even involved
    for index, owner in enumerate(owners):
        # an owner holds its own update, its own shares, one random share from each other
        # owner and its share of the sum; never another owner's update in any form
        others = [i for i in range(len(owners)) if i != index]
        for stored in stores[owner.id]:
            for other in others:
                for secret in (updates[other], weighted[other], encoded[other]):
                    assert not _equal(stored, secret), f"{owner.id} holds {owners[other].id}'s"
        held = [
            s for s in stores[owner.id] if isinstance(s, torch.Tensor) and s.dtype == torch.int64
        ]
        assert len(held) >= len(owners)  # the shares it received are there, and random
    del shared
    # what the client receives: one summed share per owner, none of them an update
    received = [total.child.child[owner.id].get() for owner in owners]
    for piece in received:
        assert not any(_equal(piece, secret) for secret in encoded)
    average = sum(received[1:], received[0]).double() / SCALE
    expected = sum(weighted[1:], weighted[0])
    # each owner's encoding rounds by half a unit of 10**-6
    assert torch.allclose(average.float(), expected, atol=len(owners) * 0.5 / SCALE + 1e-7)


def _dataset(owners):
    torch.manual_seed(0)
    x = torch.randn(90, 4)
    y = (x.sum(dim=1) > 0).long()
    return federate(TensorDataset(x, y), owners)


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_secure_round_equals_the_plain_round(bob, alice, jon, secure_worker):
    owners = [bob, alice, jon]
    dataset = _dataset(owners)
    plain, secure = _model(), _model()
    training = LocalTraining(epochs=2, batch_size=16, lr=0.1)
    plain_result = FedAvg(
        secure_worker, training, generator=torch.Generator().manual_seed(2)
    ).fit_round(plain, dataset)
    gc.collect()
    assert secure_worker.object_count() == 0  # the plain round's copies are gone
    with recording_commands(bob) as sent:
        secure_result = SecureFedAvg(
            training, generator=torch.Generator().manual_seed(2)
        ).fit_round(secure, dataset)
    assert secure_result.losses == pytest.approx(plain_result.losses)
    for a, b in zip(plain.parameters(), secure.parameters(), strict=True):
        assert torch.allclose(a, b, atol=len(owners) * 0.5 / SCALE + 1e-6)
    # the secure round never used the aggregator, and left only the owners' data behind
    assert not [w for w, _ in sent if w == "secure_worker"]
    assert secure_worker.object_count() == 0
    assert [owner.object_count() for owner in owners] == [2, 2, 2]
    assert set(secure_result.timings) == {"fit", "aggregate"}


def test_secure_mode_needs_two_owners(bob, secure_worker):
    dataset = _dataset([bob])
    with pytest.raises(TooFewShareHoldersError, match="at least 2"):
        SecureFedAvg(LocalTraining(epochs=1)).fit_round(_model(), dataset)


def test_demo_secure_agg_reaches_the_plain_accuracy_and_reports_its_cost(
    bob, alice, jon, secure_worker
):
    from deploy.demo import DemoConfig, run_demo

    workers = (bob, alice, jon, secure_worker)
    lines: list[str] = []
    result = run_demo(
        DemoConfig(rounds=2, local_epochs=1, secure_agg=True),
        owners=[bob, alice, jon],
        aggregator=secure_worker,
        echo=lines.append,
        progress=False,
    )
    assert len(result.secure_accuracy) == len(result.federated_accuracy) == 2
    assert abs(result.secure_gap) <= 0.1
    assert len(result.secure_aggregate_seconds) == len(result.plain_aggregate_seconds) == 2
    text = "\n".join(lines)
    assert re.search(r"secure agg: acc +[\d.]+%, aggregation \d+ ms \(plain \d+ ms\)", text)
    assert re.search(
        r"secure aggregation: final accuracy [\d.]+% vs plain FedAvg [\d.]+% \(difference "
        r"[-+][\d.]+ points\); per round \(median\): aggregation \d+ ms secure vs \d+ ms plain",
        text,
    )
    assert [w.object_count() for w in workers] == [0, 0, 0, 0]  # the run left nothing


def test_the_demo_command_offers_secure_agg():
    from click.testing import CliRunner

    from deploy.demo import demo

    result = CliRunner().invoke(demo, ["--help"])
    assert result.exit_code == 0
    assert "--secure-agg" in result.output and "per-round cost" in result.output
