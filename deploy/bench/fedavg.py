"""FedAvg benchmark: one round of the demo (3 owners, digits), split into compute and transport.

A round is timed end to end (:meth:`FedAvg.fit_round`: copies sent, local epochs
on every owner, copies moved to the aggregator, the average fetched). Its
*compute* is the same round replayed on local tensors in this process, timed in
the same run: the torch work the workers must do, nothing else. Everything
else, *transport* = round - compute, is what TensorFleet adds: encoding
commands, messages, dispatch on the workers, and (on the fleet) RabbitMQ,
Celery and Redis write-through. In-process workers share the client's thread,
so compute is the sum over owners; fleet owners train at the same time, so
compute is the critical path (the slowest owner plus the averaging).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from client.federated.fedavg import FedAvg, LocalTraining, train_epochs
from client.federated.loader import local_batches
from deploy.bench.common import Row, counting_messages

OWNERS = ("bob", "alice", "jon")
AGGREGATOR = "secure_worker"
#: the fleet workers the fleet round needs (on the bench's private fleet)
FLEET_WORKERS = (*OWNERS, AGGREGATOR)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from deploy.demo import DemoConfig, load_digits_split

    split = load_digits_split(DemoConfig())
    return split.train_x, split.train_y


def _model() -> nn.Module:
    from deploy.demo import DemoConfig, make_model

    return make_model(64, DemoConfig.hidden, 10, seed=0)


def _local_round(
    model: nn.Module, shares: Sequence[tuple[torch.Tensor, torch.Tensor]], training: LocalTraining
) -> tuple[float, float]:
    """The round on local tensors: (sum over owners, critical path), in seconds."""
    generator = torch.Generator().manual_seed(1)
    owner_seconds = []
    trained = []
    for data, targets in shares:
        start = time.perf_counter()
        local = copy.deepcopy(model)
        optimizer = training.make_optimizer(local.parameters())
        train_epochs(
            local,
            lambda d=data, t=targets: local_batches(  # type: ignore[misc]
                d, t, training.batch_size, training.shuffle, training.drop_last, generator
            ),
            optimizer,
            training.loss,
            training.epochs,
        )
        trained.append(local)
        owner_seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    with torch.no_grad():
        for params in zip(model.parameters(), *(m.parameters() for m in trained), strict=True):
            average = params[1] * (1 / len(trained))
            for param in params[2:]:
                average = average + param * (1 / len(trained))
            params[0].copy_(average)
    averaging = time.perf_counter() - start
    return sum(owner_seconds) + averaging, max(owner_seconds) + averaging


def _counted_round(strategy: FedAvg, model: nn.Module, dataset: Any) -> dict[str, float]:
    """Commands, messages and bytes the client publishes in one (untimed) round."""
    transport = dataset[dataset.workers[0]].location.session.transport
    with counting_messages(transport) as counts:
        strategy.fit_round(model, dataset)
    return counts


def _timed_rounds(
    aggregator: Any, training: LocalTraining, dataset: Any, repeats: int
) -> tuple[float, float, dict[str, float]]:
    """The best of ``repeats`` rounds (after a warm one): seconds, fit seconds, and counts."""
    strategy = FedAvg(aggregator, training, generator=torch.Generator().manual_seed(1))
    model = _model()
    strategy.fit_round(model, dataset)  # warm: shape cache, plans, connections, allocator
    best_round = best_fit = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = strategy.fit_round(model, dataset)
        elapsed = time.perf_counter() - start
        if elapsed < best_round:
            best_round, best_fit = elapsed, result.timings["fit"]
    return best_round, best_fit, _counted_round(strategy, model, dataset)


def _rows(owners: Sequence[Any], aggregator: Any, quick: bool, kind: str) -> list[Row]:
    """The rows of one kind of worker, ``inprocess`` or ``fleet``."""
    from client.federated.dataset import federate
    from deploy.demo import release

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only contend
    try:
        x, y = _digits()
        training = LocalTraining(epochs=1 if quick else 3, batch_size=16, lr=0.2)
        dataset = federate(torch.utils.data.TensorDataset(x, y), owners)
        shares = [(dataset[w].data.get(), dataset[w].targets.get()) for w in dataset.workers]
        dataset = federate(torch.utils.data.TensorDataset(x, y), owners)  # (get() took them)
        repeats = 1 if quick else 3
        # the same round step by step (27 commands a batch), timed in the same run
        stepwise = replace(training, one_message_per_batch=False)
        step_round, _, step_counts = _timed_rounds(aggregator, stepwise, dataset, repeats)
        best_round, best_fit, counts = _timed_rounds(aggregator, training, dataset, repeats)
        local_sum = local_path = float("inf")
        for _ in range(repeats + 1):
            total, path = _local_round(_model(), shares, training)
            local_sum, local_path = min(local_sum, total), min(local_path, path)
        del dataset
        release([*owners, aggregator])
    finally:
        torch.set_num_threads(threads)
    parallel = kind == "fleet"
    label = "fleet" if parallel else "in-process"
    compute = local_path if parallel else local_sum
    transport = max(best_round - compute, 0.0)
    batches = training.epochs * sum(-(-len(share[0]) // training.batch_size) for share in shares)
    epochs = f"{training.epochs} local epoch{'s' if training.epochs > 1 else ''}"
    figure = f"{label} FedAvg round (3 owners, digits, {epochs})"
    # the fleet's count of commands per batch keeps the short name (the count is the same)
    per_batch = "fedavg_commands_per_batch" + ("" if parallel else "_inprocess")
    return [
        Row(
            f"fedavg_round_{kind}_vs_local",
            figure,
            best_round * 1e3,
            "ms",
            "same round, local torch",
            local_sum * 1e3,
        ),
        Row(
            f"fedavg_compute_{kind}",
            f"{label} FedAvg round: compute ({'critical path' if parallel else 'sum'})",
            compute * 1e3,
            "ms",
            "round total",
            best_round * 1e3,
        ),
        Row(
            f"fedavg_transport_{kind}",
            f"{label} FedAvg round: transport (round - compute)",
            transport * 1e3,
            "ms",
            "round total",
            best_round * 1e3,
        ),
        Row(
            f"fedavg_aggregation_{kind}",
            f"{label} FedAvg round: aggregation (move, average, get)",
            (best_round - best_fit) * 1e3,
            "ms",
            "round total",
            best_round * 1e3,
        ),
        Row(
            per_batch,
            f"{label} FedAvg round: commands sent (deletes included)",
            counts["commands"],
            "cmd",
            "training batches",
            batches,
        ),
        Row(
            f"fedavg_round_{kind}_step_by_step",
            f"{label} FedAvg round, each batch step by step (no training-step plan)",
            step_round * 1e3,
            "ms",
            "same round, local torch",
            local_sum * 1e3,
        ),
        Row(
            f"fedavg_commands_per_batch_step_by_step{'' if parallel else '_inprocess'}",
            f"{label} FedAvg round step by step: commands sent (deletes included)",
            step_counts["commands"],
            "cmd",
            "training batches",
            batches,
        ),
        Row(
            f"fedavg_messages_{kind}",
            f"{label} FedAvg round: messages sent",
            counts["messages"],
            "msg",
            "owners",
            3,
        ),
        Row(
            f"fedavg_transport_per_command_{kind}",
            f"{label} FedAvg round: transport per command",
            transport / max(counts["commands"], 1) * 1e6,
            "µs/cmd",
            "local torch per command",
            local_sum / max(counts["commands"], 1) * 1e6,
        ),
    ]


def run(quick: bool) -> list[Row]:
    """One FedAvg round on in-process workers."""
    import client as sy

    hook = sy.TorchHook(torch)
    workers = [sy.VirtualWorker(hook, id=worker_id) for worker_id in (*OWNERS, AGGREGATOR)]
    return _rows(workers[:-1], workers[-1], quick, "inprocess")


def run_fleet(quick: bool, workers: Mapping[str, Any]) -> list[Row]:
    """One FedAvg round on fleet workers (the bench's private fleet)."""
    return _rows([workers[owner] for owner in OWNERS], workers[AGGREGATOR], quick, "fleet")
