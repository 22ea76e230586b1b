"""``nn.Module.send/get/copy/move``: models travel to the data, in place.

``model.send(bob)`` turns each existing Parameter object *into* a pointer with
``torch.utils.swap_tensors``, so an optimizer built before the send holds the
pointers and its steps run on bob (optimizer state, such as momentum or Adam's
moments, is created by ops on those pointers and so lives on bob too).
``model.get()`` swaps the data back into the same objects.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from client.pointer import PointerTensor


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """Parameters and buffers (running statistics travel with the model)."""
    yield from module.parameters()
    yield from (buffer for buffer in module.buffers() if buffer is not None)


def _named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    named: list[tuple[str, torch.Tensor]] = list(module.named_parameters())
    named.extend((name, buffer) for name, buffer in module.named_buffers() if buffer is not None)
    return named


def _held_by_a_graph(tensor: torch.Tensor) -> bool:
    """Whether an autograd graph saved ``tensor`` (torch.utils.swap_tensors would refuse it).

    A leaf's own AccumulateGrad node is one extra use; anything beyond is a saved tensor.
    """
    uses: int = tensor._use_count()  # type: ignore[attr-defined]
    return uses > 2 or (uses == 2 and not tensor.is_leaf)


def module_send(self: nn.Module, *locations: Any) -> nn.Module:
    """Send every parameter to the worker, in place; returns the module.

    All or nothing: if a local autograd graph still uses a parameter, nothing is sent
    and the error says what to do.
    """
    from client.remote import send_pointer, send_tensor

    if len(locations) != 1:
        raise NotImplementedError(
            "Inplace send to several workers is currently not supported: "
            "send model.copy() to each worker instead."
        )
    named = _named_tensors(self)
    for name, tensor in named:  # check first: a failed swap would poison the graph's nodes
        if type(tensor) is not PointerTensor and _held_by_a_graph(tensor):
            raise RuntimeError(
                f"model.send({getattr(locations[0], 'id', locations[0])}): parameter {name!r} "
                "is still used by a local autograd graph (an output of a forward pass that was "
                "not backpropagated, kept in a variable?). Call .backward() on it, del it, or "
                "compute it under torch.no_grad(), then send the model."
            )
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for _, tensor in named:
            if type(tensor) is PointerTensor:
                pointer = send_pointer(tensor, locations)
            else:
                pointer = send_tensor(tensor, locations)
            torch.utils.swap_tensors(tensor, pointer)
            swapped.append((tensor, pointer))
    except BaseException:
        for tensor, pointer in reversed(swapped):  # swap back: the module is local again
            torch.utils.swap_tensors(tensor, pointer)
        raise
    return self


def module_get(self: nn.Module) -> nn.Module:
    """Bring every parameter back into the same Parameter objects; returns the module."""
    for tensor in list(_tensors(self)):
        if type(tensor) is PointerTensor:  # a parameter or buffer on a worker
            torch.utils.swap_tensors(tensor, tensor.get())
    return self


def module_copy(self: nn.Module) -> nn.Module:
    """A deep copy with new parameter objects (the way to send one model to several workers)."""
    if any(type(tensor) is PointerTensor for tensor in _tensors(self)):
        raise ValueError(
            "copy() works on a local model: call model.get() first, or copy it before sending it"
        )
    return copy.deepcopy(self)


def module_move(self: nn.Module, destination: Any) -> nn.Module:
    """Move every remote parameter to ``destination`` worker to worker; returns the module."""
    for tensor in _tensors(self):
        if type(tensor) is not PointerTensor:
            raise ValueError("move() moves a model that is on a worker: send it first")
        tensor.move(destination)
    return self
