"""Federated averaging with a trusted aggregator, as in the lessons.

One round (:meth:`FedAvg.fit_round`), over whatever workers hold the data:

1. **configure**: a copy of the global model goes to each data owner
   (``model.copy().send(owner)``) with its own optimizer;
2. **fit**: each copy trains for ``epochs`` local epochs on its owner's batches
   (built on the owner by a :class:`FederatedDataLoader`); each batch is one call of
   a training-step plan (:mod:`client.federated.train_step`) when the optimizer is a
   plain SGD, else its separate commands; every command is pipelined, so on a fleet
   the owners train at the same time;
3. **aggregate**: the trained copies move to the aggregator (``.move``, worker to
   worker), are averaged there, weighted by share size, under ``torch.no_grad()``,
   and only the average comes back, as one tensor, into the global model.

The client never sees one owner's parameters or gradients. The same loop runs on
local tensors (:func:`train_epochs` with :func:`local_batches`), which is how the
centralized baseline and the replay tests are made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from client.federated.dataset import FederatedDataset
from client.federated.loader import FederatedDataLoader
from client.federated.train_step import train_step_for

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class LocalTraining:
    """How each owner trains its copy in a round (and how the baseline trains)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    shuffle: bool = True
    drop_last: bool = False
    loss: Loss = F.cross_entropy
    #: builds the optimizer of a copy; plain SGD with ``lr`` when None
    optimizer: OptimizerFactory | None = None
    #: run each batch's step (forward, loss, backward, SGD step, running loss) as one plan
    #: call on the owner (client/federated/train_step.py); step by step when False, or when
    #: the optimizer is not a plain SGD the plan can replay
    one_message_per_batch: bool = True

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer(params)
        return torch.optim.SGD(params, lr=self.lr)


def train_epochs(
    model: nn.Module,
    batches: Callable[[], Iterable[tuple[torch.Tensor, Any]]],
    optimizer: torch.optim.Optimizer,
    loss_fn: Loss,
    epochs: int,
    on_batch: Callable[[], None] | None = None,
) -> torch.Tensor | None:
    """Train ``epochs`` passes over ``batches()``; the summed loss of the last epoch.

    Works the same on local tensors and on pointers (then nothing waits: the
    returned loss is a pointer, fetch it when you need it).
    """
    total: torch.Tensor | None = None
    for _ in range(epochs):
        total = None
        for data, target in batches():
            optimizer.zero_grad()
            loss = loss_fn(model(data), target)
            loss.backward()
            optimizer.step()
            summed = loss.detach() * data.shape[0]
            total = summed if total is None else total + summed
            if on_batch is not None:
                on_batch()
    return total


def secure_average(
    models: Sequence[nn.Module], aggregator: Any, weights: Sequence[float] | None = None
) -> list[torch.Tensor]:
    """Move ``models`` (on workers) to ``aggregator``, average them there, fetch only that.

    Returns the weighted average of each parameter, in ``parameters()`` order, as
    local tensors. The average travels as one flat tensor (one round trip).
    """
    if not models:
        raise ValueError("secure_average needs at least one model")
    if weights is None:
        weights = [1.0 / len(models)] * len(models)
    if len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} models")
    for model in models:
        cast(Any, model).move(aggregator)
    shapes = [param.shape for param in models[0].parameters()]
    with torch.no_grad():
        averages = []
        for params in zip(*(model.parameters() for model in models), strict=True):
            average = params[0] * weights[0]
            for param, weight in zip(params[1:], weights[1:], strict=True):
                average = average + param * weight
            averages.append(average.reshape(-1))
        flat = cast(Any, torch.cat(averages)).get()
    return [
        part.reshape(shape)
        for part, shape in zip(flat.split([shape.numel() for shape in shapes]), shapes, strict=True)
    ]


def load_parameters(model: nn.Module, values: Sequence[torch.Tensor]) -> None:
    """Copy ``values`` into the (local) model's parameters, in place."""
    params = list(model.parameters())
    if len(params) != len(values):
        raise ValueError(f"{len(values)} values for {len(params)} parameters")
    with torch.no_grad():
        for param, value in zip(params, values, strict=True):
            param.copy_(value)


@dataclass
class RoundResult:
    """What one round reports: per-owner mean training loss of the last local epoch."""

    losses: dict[str, float]
    samples: dict[str, int]
    #: seconds: "fit" (until every copy is trained and on the aggregator) and "aggregate"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        """The mean training loss over every owner's samples."""
        total = sum(self.samples.values())
        return sum(self.losses[w] * self.samples[w] for w in self.losses) / max(total, 1)


class FedAvg:
    """The FedAvg strategy: owners train copies, ``aggregator`` averages, the client gets it."""

    def __init__(
        self,
        aggregator: Any,
        training: LocalTraining | None = None,
        generator: torch.Generator | None = None,
        weighted: bool = True,
    ) -> None:
        self.aggregator = aggregator
        self.training = training or LocalTraining()
        self.generator = generator
        self.weighted = weighted
        #: the training-step plans, kept across rounds (deleted on the workers with this)
        self._train_steps: dict[Any, Any] = {}

    def configure_fit(
        self, model: nn.Module, owner: Any
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A copy of the global model on ``owner``, with its own optimizer."""
        local_copy = cast(Any, model).copy().send(owner)
        return local_copy, self.training.make_optimizer(local_copy.parameters())

    def fit(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: FederatedDataLoader,
        owner_id: str,
        on_batch: Callable[[], None] | None = None,
    ) -> torch.Tensor | None:
        """Local epochs on the owner; returns a pointer to the last epoch's summed loss."""
        if self.training.one_message_per_batch:
            step = train_step_for(model, optimizer, self.training.loss, self._train_steps)
            if step is not None:  # one run_plan command per batch
                return step.fit(model, loader, owner_id, self.training.epochs, on_batch)
        return train_epochs(
            model,
            lambda: loader.iter_worker(owner_id),
            optimizer,
            self.training.loss,
            self.training.epochs,
            on_batch,
        )

    def aggregate_weights(self, samples: Sequence[int]) -> list[float]:
        total = sum(samples)
        if self.weighted and total:
            return [count / total for count in samples]
        return [1.0 / len(samples)] * len(samples)

    def aggregate(
        self, copies: Sequence[nn.Module], weights: Sequence[float]
    ) -> tuple[float, list[torch.Tensor]]:
        """The weighted average of the trained ``copies``, and when their training was done.

        Here: the copies move to the aggregator (which waits for each owner's training to
        finish), are averaged there, and only the average comes back.
        """
        for local_copy in copies:  # waits for each owner's training to finish
            cast(Any, local_copy).move(self.aggregator)
        fitted = time.perf_counter()
        return fitted, secure_average(copies, self.aggregator, weights)

    def fit_round(
        self,
        model: nn.Module,
        dataset: FederatedDataset,
        on_batch: Callable[[], None] | None = None,
    ) -> RoundResult:
        """One round over every owner in ``dataset``; ``model`` (local) gets the average."""
        training = self.training
        loader = FederatedDataLoader(
            dataset,
            batch_size=training.batch_size,
            shuffle=training.shuffle,
            drop_last=training.drop_last,
            generator=self.generator,
        )
        start = time.perf_counter()
        copies: list[nn.Module] = []
        loss_sums: dict[str, torch.Tensor | None] = {}
        samples: dict[str, int] = {}
        for owner_id in dataset.workers:
            share = dataset[owner_id]
            local_copy, optimizer = self.configure_fit(model, share.location)
            loss_sums[owner_id] = self.fit(local_copy, optimizer, loader, owner_id, on_batch)
            copies.append(local_copy)
            samples[owner_id] = len(share)
            del optimizer
        weights = self.aggregate_weights(list(samples.values()))
        fitted, average = self.aggregate(copies, weights)
        load_parameters(model, average)
        losses = {
            owner: float(cast(Any, total).get()) / max(samples[owner], 1)
            if total is not None
            else float("nan")
            for owner, total in loss_sums.items()
        }
        return RoundResult(
            losses, samples, {"fit": fitted - start, "aggregate": time.perf_counter() - fitted}
        )
