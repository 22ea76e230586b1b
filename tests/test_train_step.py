"""A training step as one plan: the same results as step by step, one command per batch."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from broker import codec, protocol
from client.federated import FedAvg, LocalTraining
from client.federated.dataset import federate
from client.federated.train_step import SGDSettings, TrainStep, supports
from worker.allowlist import DEFAULT_ALLOWLIST
from worker.plans import decode_plan, mutated_inputs

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer] | None] = {
    "sgd": None,
    "momentum": lambda params: torch.optim.SGD(
        params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01
    ),
}


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(70, 6, generator=generator)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long())


def _model() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _rounds(
    owners: list[Any], aggregator: Any, training: LocalTraining, rounds: int = 2
) -> tuple[list[dict[str, float]], list[torch.Tensor]]:
    """FedAvg ``rounds`` on ``owners``: per-round losses and the final parameters."""
    dataset = federate(_data(), owners)
    strategy = FedAvg(aggregator, training, generator=torch.Generator().manual_seed(4))
    model = _model()
    losses = [strategy.fit_round(model, dataset).losses for _ in range(rounds)]
    return losses, [param.detach().clone() for param in model.parameters()]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_the_plan_path_gives_the_step_by_step_results(
    bob: Any, alice: Any, jon: Any, secure_worker: Any, optimizer: str
) -> None:
    owners = [bob, alice, jon]
    make = OPTIMIZERS[optimizer]
    # batch 8 over shares of 24, 24 and 22 samples: a short last batch on jon
    training = LocalTraining(epochs=2, batch_size=8, lr=0.2, optimizer=make)
    step_losses, step_params = _rounds(
        owners,
        secure_worker,
        LocalTraining(**{**training.__dict__, "one_message_per_batch": False}),
    )
    plan_losses, plan_params = _rounds(owners, secure_worker, training)

    for stepped, planned in zip(step_losses, plan_losses, strict=True):
        assert stepped.keys() == planned.keys()
        for owner in stepped:
            assert planned[owner] == pytest.approx(stepped[owner], rel=1e-6, abs=1e-7)
    for stepped_param, planned_param in zip(step_params, plan_params, strict=True):
        assert torch.allclose(planned_param, stepped_param, rtol=1e-6, atol=1e-7)
    assert step_losses[1] != step_losses[0]  # it trained
    gc.collect()
    for owner in owners:  # nothing left behind but the data shares
        assert len(owner._objects) == 0


@contextmanager
def _counting(worker: Any) -> Iterator[Counter[str]]:
    """Count, by name, the commands the client publishes to ``worker`` while inside."""
    counts: Counter[str] = Counter()
    transport = worker.session.transport
    publish = transport.publish

    def counting(worker_id: str, body: Any, **options: Any) -> None:
        if worker_id == worker.id:
            counts.update(str(command[0]) for command in codec.decode(body)["commands"])
        publish(worker_id, body, **options)

    setattr(transport, "publish", counting)  # noqa: B010  # this instance only
    try:
        yield counts
    finally:
        delattr(transport, "publish")


def _owner_commands(bob: Any, aggregator: Any, epochs: int) -> tuple[Counter[str], int]:
    dataset = federate(_data(), [bob])
    training = LocalTraining(epochs=epochs, batch_size=8, lr=0.2, optimizer=OPTIMIZERS["momentum"])
    strategy = FedAvg(aggregator, training, generator=torch.Generator().manual_seed(4))
    model = _model()
    strategy.fit_round(model, dataset)  # the plans are traced and sent in the first round
    with _counting(bob) as counts:
        strategy.fit_round(model, dataset)
        del strategy
        gc.collect()
        bob.synchronize()
    batches = epochs * -(-len(dataset["bob"]) // 8)
    return counts, batches


def test_a_training_batch_is_one_command(bob: Any, secure_worker: Any) -> None:
    one, batches_one = _owner_commands(bob, secure_worker, epochs=1)
    three, batches_three = _owner_commands(bob, secure_worker, epochs=3)

    assert one[protocol.RUN_PLAN] == batches_one == 9
    assert three[protocol.RUN_PLAN] == batches_three == 27
    assert protocol.OP in one  # the copy's momentum buffers, the running loss...
    others_one = sum(one.values()) - one[protocol.RUN_PLAN]
    others_three = sum(three.values()) - three[protocol.RUN_PLAN]
    # 18 more batches cost 18 commands; each more epoch adds its running loss (make, delete)
    assert others_three - others_one <= 2 * 2
    # what a round costs besides its batches does not grow with them
    assert others_three <= 32


def test_optimizers_the_plan_cannot_replay_train_step_by_step(
    bob: Any, alice: Any, secure_worker: Any
) -> None:
    training = LocalTraining(
        epochs=1, batch_size=8, optimizer=lambda params: torch.optim.Adam(params, lr=0.01)
    )
    adam_losses, _ = _rounds([bob, alice], secure_worker, training, rounds=1)
    assert all(loss == loss for loss in adam_losses[0].values())  # not NaN: it trained
    model = _model()
    assert not supports(model, torch.optim.Adam(model.parameters()))
    assert not supports(
        model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
    )
    assert supports(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert not supports(nn.BatchNorm1d(3), torch.optim.SGD(nn.BatchNorm1d(3).parameters(), lr=0.1))


def test_the_step_is_allowlisted_ops_and_changes_only_parameters_and_counters(bob: Any) -> None:
    model = _model()
    settings = SGDSettings(lr=0.1, momentum=0.9)
    step = TrainStep(nn.functional.cross_entropy, settings)
    data = _data()
    shares = [t.send(bob) for t in data.tensors]
    order = torch.arange(8).send(bob)
    cursor = torch.zeros((), dtype=torch.int64).send(bob)
    total = torch.zeros(()).send(bob)
    sent = model.copy().send(bob)
    params = list(sent.parameters())
    buffers = [torch.zeros_like(p) for p in params]
    pointer_plan = step._pointer_plan(sent, 8, [*shares, order, cursor, total, *params, *buffers])
    trace = pointer_plan._trace
    names = [op[0] for op in trace.ops]
    assert "torch.autograd.grad" in names
    assert not any("grad" in name and name != "torch.autograd.grad" for name in names)
    plan = decode_plan(codec.decode(codec.encode(trace.wire())), DEFAULT_ALLOWLIST, "bob")
    # inputs: data, targets, order, cursor, total, 4 parameters, 4 momentum buffers
    assert plan.mutated_inputs == tuple(range(3, 13))
    assert mutated_inputs(plan.inputs, len(plan.state), plan.ops) == plan.mutated_inputs
    assert step.traced == 1


def test_a_loader_loop_on_one_worker_trains_with_the_step_plan(bob: Any) -> None:
    from client.federated import FederatedDataLoader, train_epochs

    def train(planned: bool) -> tuple[float, list[torch.Tensor]]:
        dataset = federate(_data(), [bob])
        loader = FederatedDataLoader(
            dataset, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(2)
        )
        model = _model().send(bob)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
        loss = nn.functional.cross_entropy
        if planned:
            settings = SGDSettings.of(optimizer)
            assert settings is not None
            total = TrainStep(loss, settings).fit(model, loader, "bob", epochs=2)
        else:
            total = train_epochs(model, lambda: loader.iter_worker("bob"), optimizer, loss, 2)
        assert total is not None
        return float(total.get()), [p.detach().clone() for p in model.get().parameters()]

    stepped_loss, stepped = train(planned=False)
    planned_loss, planned = train(planned=True)
    assert planned_loss == pytest.approx(stepped_loss, rel=1e-6)
    for a, b in zip(planned, stepped, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
