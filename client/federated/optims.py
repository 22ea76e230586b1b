"""Optims: one optimizer per worker over the same parameters.

An optimizer with state (momentum, Adam's moments) keeps that state next to the
parameters: after ``model.send(bob)`` its state tensors are made by ops on bob's
pointers, so they live on bob. One shared optimizer would then mix bob's state
with alice's parameters (PySyft 0.2 issues #2070, #3349, #3507). ``Optims`` gives
each worker its own copy: the same Parameter objects and hyper-parameters, its
own state, so bob's moments stay on bob and alice's on alice.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch


def _worker_id(worker: Any) -> str:
    return worker if isinstance(worker, str) else str(worker.id)


def _copy_state(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def _per_worker_copy(optim: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A copy sharing the Parameter objects, with its own param_groups and state."""
    twin = copy.copy(optim)
    twin.param_groups = [dict(group) for group in optim.param_groups]
    state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
    for param, param_state in optim.state.items():
        state[param] = {key: _copy_state(value) for key, value in param_state.items()}
    twin.state = state
    return twin


class Optims:
    """``Optims(["bob", "alice"], optim=torch.optim.Adam(model.parameters()))``.

    ``get_optim("bob")`` (or ``get_optim(bob)``) is bob's optimizer; an unknown
    worker raises ``KeyError`` naming the workers it knows.
    """

    def __init__(self, workers: Iterable[Any], optim: torch.optim.Optimizer) -> None:
        if not isinstance(optim, torch.optim.Optimizer):
            raise TypeError(
                "Optims takes an optimizer instance: "
                "Optims(workers, optim=torch.optim.SGD(model.parameters(), lr=0.1))"
            )
        self.workers = [_worker_id(worker) for worker in workers]
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            worker_id: _per_worker_copy(optim) for worker_id in self.workers
        }

    def get_optim(self, worker: Any) -> torch.optim.Optimizer:
        """The optimizer of ``worker`` (an id or a worker handle)."""
        worker_id = _worker_id(worker)
        try:
            return self.optimizers[worker_id]
        except KeyError:
            raise KeyError(
                f"Optims has no optimizer for worker {worker_id!r}; it has {self.workers}"
            ) from None

    def count(self) -> int:
        """How many workers have an optimizer."""
        return len(self.optimizers)

    def __repr__(self) -> str:
        return f"<Optims {self.workers}>"
