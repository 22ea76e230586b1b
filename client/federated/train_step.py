"""A whole training step as one plan: one ``run_plan`` command per batch.

Step by step, a batch on a worker is about 27 commands: two to build the batch,
the forward ops, the loss, ``backward``, ``zero_grad`` (a ``.grad`` read and set
per parameter), the optimizer's ``add_`` per parameter, the running loss and the
deletes of every intermediate. Here the step is traced once (per model, loss,
SGD settings, batch size and worker) into a plan that does all of it, and each
batch is one command that runs it.

Why the plan stays data. The step is recorded by the ordinary plan tracer
(:func:`client.plan.trace`) as allowlisted torch ops and nothing else:

* **the forward pass** is the model's own, run by ``torch.func.functional_call``
  with the plan's parameter inputs in place of the module's, so its ops read the
  inputs (not constants);
* **backward** is ``torch.autograd.grad(loss, params)``, one op whose results are
  the gradients (``.grad`` is never read or written, so no gradient is captured
  as a constant and no ``.grad`` state is left on the worker);
* **the update** is SGD written as in-place ops on ``p.detach()``, which shares
  the parameter's memory, so it needs no ``no_grad`` switch inside the plan:
  ``buf.mul_(momentum).add_(g)``, ``p.detach().add_(g, alpha=-lr)``, in the order
  and with the arithmetic of ``torch.optim.SGD``'s single-tensor step, so the
  results are the same to the bit;
* **the batch** is picked on the worker: the plan takes the owner's whole share
  and an index tensor of the sample order of every epoch of the fit (sent once per
  fit, drawn from the loader's own generator as ``iter_worker`` would) and a
  cursor it advances in place, so a batch needs no command of its own;
* **the running loss** is ``total.add_(loss.detach() * batch_size)``.

``torch.func.grad`` would express the same functionally, but it is a function
transform (it calls a Python function), which cannot travel as data; an op
taking tensors and returning tensors can. The worker checks every op of the
plan against its allowlist like any plan (``torch.autograd.grad`` is on it), and
its per-op size limits the first time the plan runs on inputs of given shapes
(``torch.autograd.grad``'s results are sized from the tensors it differentiates for).

Where things live. The parameters are the model copy's own tensors on the
worker; the plan takes them as inputs and changes them in place, so the model's
pointers stay valid (``model.move(aggregator)`` moves the trained values). The
momentum buffers are tensors on the worker, made by ``zeros_like`` at the start
of a fit. The worker writes through only the inputs the plan changes
(:func:`worker.plans.mutated_inputs`), never the share it reads.

What it covers: ``torch.optim.SGD`` with one parameter group (momentum,
nesterov, weight decay and maximize included; dampening only without momentum)
on a model without buffers. :func:`supports` says whether a model and optimizer
qualify; the federated loop falls back to the step-by-step path otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call

from broker import protocol
from client.federated.loader import FederatedDataLoader, batch_indices
from client.plan import Plan, PointerPlan
from client.pointer import PointerTensor

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SGDSettings:
    """The hyperparameters of a plain ``torch.optim.SGD`` that a plan can replay exactly."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> SGDSettings | None:
        """The settings of ``optimizer``, or None when a plan could not reproduce its step."""
        if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        lr, momentum = group["lr"], group["momentum"]
        if isinstance(lr, torch.Tensor) or group.get("differentiable"):
            return None
        if momentum and group["dampening"]:  # torch's first step ignores dampening
            return None
        if any(optimizer.state.get(p) for p in group["params"]):
            return None  # momentum already under way: the plan's buffers would start at zero
        return cls(
            float(lr),
            float(momentum),
            float(group["weight_decay"]),
            bool(group["nesterov"]),
            bool(group.get("maximize", False)),
        )


def supports(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether a training step of ``model`` with ``optimizer`` can run as one plan."""
    if SGDSettings.of(optimizer) is None or any(True for _ in model.buffers()):
        return False
    params = list(model.parameters())
    return [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in params]


def _sgd_update(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    buffers: Sequence[torch.Tensor],
    settings: SGDSettings,
) -> None:
    """``torch.optim.SGD``'s single-tensor step, as ops on the parameters' memory."""
    for position, (param, grad) in enumerate(zip(params, grads, strict=True)):
        value = param.detach()  # the parameter's memory, outside the autograd graph
        if settings.maximize:
            grad = torch.neg(grad)
        if settings.weight_decay:
            grad = grad.add(value, alpha=settings.weight_decay)
        if settings.momentum:
            buffer = buffers[position]  # starts at zero: 0 * m + g is torch's clone(g)
            buffer.mul_(settings.momentum).add_(grad)
            grad = grad.add(buffer, alpha=settings.momentum) if settings.nesterov else buffer
        value.add_(grad, alpha=-settings.lr)


class TrainStep:
    """The training-step plans of one model shape, loss and SGD settings.

    ``fit`` trains a model that is on a worker for some epochs over a
    :class:`FederatedDataLoader`'s share there, one ``run_plan`` per batch. The
    plans are traced on first use for each batch size and share, and sent once
    per worker; they are deleted on the workers when this object goes.
    """

    def __init__(self, loss_fn: Loss, settings: SGDSettings) -> None:
        self.loss_fn = loss_fn
        self.settings = settings
        self._plans: dict[Any, Plan] = {}
        self._sent: dict[Any, PointerPlan] = {}
        #: how many plans were traced (a test reads it: once per worker and batch size)
        self.traced = 0
        self._release: Callable[[], None] = lambda: None

    def _step(
        self, model: nn.Module, names: list[str], batch_size: int
    ) -> Callable[..., torch.Tensor]:
        settings, loss_fn, count = self.settings, self.loss_fn, len(names)
        # the module is needed only while tracing (its forward's ops, on the plan's
        # parameters); holding it after would keep the first copy's pointers alive
        holder = [model]
        self._release = holder.clear

        def train_step(
            data: torch.Tensor,
            targets: torch.Tensor,
            order: torch.Tensor,
            cursor: torch.Tensor,
            total: torch.Tensor,
            *tensors: torch.Tensor,
        ) -> torch.Tensor:
            params, buffers = tensors[:count], tensors[count:]
            index = order.index_select(0, cursor + torch.arange(batch_size))
            batch, target = data.index_select(0, index), targets.index_select(0, index)
            loss = loss_fn(
                functional_call(holder[0], dict(zip(names, params, strict=True)), (batch,)), target
            )
            grads = torch.autograd.grad(loss, params)
            _sgd_update(params, grads, buffers, settings)
            total.add_(loss.detach() * batch_size)
            cursor.add_(batch_size)
            return total

        return train_step

    def _pointer_plan(
        self, model: nn.Module, batch_size: int, inputs: Sequence[PointerTensor]
    ) -> PointerPlan:
        location = inputs[0].child.location
        metas = tuple(pointer.child.meta for pointer in inputs)
        key = (batch_size, metas)
        worker_key = (key, id(location.session), location.id)
        sent = self._sent.get(worker_key)
        if sent is not None:
            return sent
        plan = self._plans.get(key)
        if plan is None:
            names = [name for name, _ in model.named_parameters()]
            plan = Plan(self._step(model, names, batch_size), "train_step")
            try:
                plan.build(*(_example(pointer.child.meta) for pointer in inputs))
            finally:
                self._release()
            self._plans[key] = plan
            self.traced += 1
        sent = self._sent[worker_key] = plan.send(location)
        return sent

    def fit(
        self,
        model: nn.Module,
        loader: FederatedDataLoader,
        worker: Any,
        epochs: int,
        on_batch: Callable[[], None] | None = None,
    ) -> torch.Tensor | None:
        """Train ``model`` (on ``worker``) for ``epochs`` over its share; the last epoch's loss sum.

        The same batches, in the same order, as ``loader.iter_worker(worker)`` once per
        epoch (the loader's generator is drawn from the same way). Returns a pointer to
        the summed loss of the last epoch, as :func:`~client.federated.fedavg.train_epochs`.
        """
        share = loader.federated_dataset[worker]
        data, targets = share.data, share.targets
        location = share.location
        epoch_batches: list[list[list[int]]] = []
        for _ in range(epochs):
            epoch_batches.append(
                [
                    _as_list(index)
                    for index in batch_indices(
                        len(share),
                        loader.batch_size,
                        loader.shuffle,
                        loader.drop_last,
                        loader.generator,
                    )
                ]
            )
        flat = [i for batches in epoch_batches for batch in batches for i in batch]
        if not flat:
            return None
        params = list(model.parameters())
        for param in params:
            if type(param) is not PointerTensor or param.child.location is not location:
                raise ValueError(
                    f"the model must be on {location.id}, where the share is: "
                    f"model.send({location.id}) first"
                )
        order = cast(Any, torch.tensor(flat, dtype=torch.int64)).send(location)
        cursor = cast(Any, torch.zeros((), dtype=torch.int64)).send(location)
        buffers = [torch.zeros_like(p) for p in params] if self.settings.momentum else []
        total: Any = None
        for batches in epoch_batches:
            total = cast(Any, torch.zeros(())).send(location)
            for batch in batches:
                inputs = [data, targets, order, cursor, total, *params, *buffers]
                plan = self._pointer_plan(model, len(batch), inputs)
                command = [
                    protocol.RUN_PLAN,
                    plan.id_at_location,
                    [pointer.child.ref for pointer in inputs],
                    [],  # no results: the step changes its inputs in place
                    True,  # grad mode: the step differentiates
                    None,
                ]
                location._enqueue(command)
                if on_batch is not None:
                    on_batch()
        return cast(torch.Tensor | None, total)


def _example(meta: tuple[tuple[int, ...], torch.dtype, bool]) -> torch.Tensor:
    """A local tensor to trace on: ones, but zeros for integers (a valid index and class)."""
    shape, dtype, requires_grad = meta
    fill = torch.ones if dtype.is_floating_point or dtype.is_complex else torch.zeros
    return fill(shape, dtype=dtype).requires_grad_(requires_grad)


def _as_list(index: slice | list[int]) -> list[int]:
    return list(range(index.start, index.stop)) if isinstance(index, slice) else index


def train_step_for(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Loss,
    cache: dict[Any, TrainStep],
) -> TrainStep | None:
    """The :class:`TrainStep` for this model and optimizer from ``cache`` (made if missing).

    None when the step cannot be one plan (:func:`supports`): train step by step.
    """
    settings = SGDSettings.of(optimizer)
    if settings is None or not supports(model, optimizer):
        return None
    # same class, layers and parameters: the same forward (a copy of the global model)
    key = (loss_fn, settings, type(model), repr(model), _architecture(model.named_parameters()))
    step = cache.get(key)
    if step is None:
        step = cache[key] = TrainStep(loss_fn, settings)
    return step


def _architecture(named: Iterable[tuple[str, nn.Parameter]]) -> tuple[Any, ...]:
    return tuple((name, tuple(p.shape), p.dtype) for name, p in named)
