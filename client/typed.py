"""The hooked methods as typed functions, for code a type checker reads.

``x.send(bob)``, ``model.send(bob)`` and ``dataset.federate(...)`` are attached to
torch's classes at run time by :class:`~client.hook.TorchHook` (as in PySyft
0.2, so the lessons run unchanged), which is why mypy and IDEs cannot see them on
``torch.Tensor``. These functions are the same operations with types::

    from client import typed as tf

    pointer = tf.send(torch.ones(3), bob)      # PointerTensor
    tf.move(pointer, alice)                    # PointerTensor, now on alice
    values = tf.get(pointer)                   # torch.Tensor

Pointers themselves (:class:`~client.pointer.PointerTensor`) are typed classes:
their ``get``, ``move``, ``send`` and ``remote_get`` methods are visible as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar, cast

import torch
from torch import nn

from client.federated.dataset import FederatedDataset
from client.multipointer import MultiPointerTensor
from client.pointer import PointerTensor
from client.workers import BaseWorker

Module = TypeVar("Module", bound=nn.Module)


def send(tensor: torch.Tensor, worker: BaseWorker) -> PointerTensor:
    """``tensor.send(worker)``: the worker keeps a copy; a pointer to it."""
    from client.remote import send_tensor

    return cast(PointerTensor, send_tensor(tensor, [worker]))


def send_to_each(tensor: torch.Tensor, workers: Sequence[BaseWorker]) -> MultiPointerTensor:
    """``tensor.send(bob, alice)``: one copy on each worker, one multi-pointer to them."""
    from client.remote import send_tensor

    if len(workers) < 2:
        raise ValueError("send_to_each takes two workers or more; use send() for one")
    return cast(MultiPointerTensor, send_tensor(tensor, list(workers)))


def get(pointer: PointerTensor) -> torch.Tensor:
    """``pointer.get()``: the data comes here and the worker forgets it."""
    return cast(torch.Tensor, pointer.get())


def move(pointer: PointerTensor, worker: BaseWorker) -> PointerTensor:
    """``pointer.move(worker)``: the data goes worker to worker; the same pointer."""
    return cast(PointerTensor, pointer.move(worker))


def remote_get(pointer: PointerTensor) -> PointerTensor:
    """``pointer.remote_get()`` on a pointer to a pointer: the data comes to the first hop."""
    return cast(PointerTensor, pointer.remote_get())


def send_model(model: Module, worker: BaseWorker) -> Module:
    """``model.send(worker)``: its parameters become pointers, in place; the same module."""
    from client.module import module_send

    return cast(Module, module_send(model, worker))


def get_model(model: Module) -> Module:
    """``model.get()``: its parameters come back into the same Parameter objects."""
    from client.module import module_get

    return cast(Module, module_get(model))


def federate(
    dataset: torch.utils.data.Dataset[Any], workers: Sequence[BaseWorker]
) -> FederatedDataset:
    """``dataset.federate(workers)``: contiguous shares of ``dataset``, one per worker."""
    from client.federated.dataset import federate as federate_dataset

    return federate_dataset(dataset, tuple(workers))
