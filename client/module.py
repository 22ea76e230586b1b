"""``nn.Module.send/get/copy/move``: models travel to the data, in place.

``model.send(bob)`` turns each existing Parameter object *into* a pointer with
``torch.utils.swap_tensors``, so an optimizer built before the send holds the
pointers and its steps run on bob (optimizer state, such as momentum or Adam's
moments, is created by ops on those pointers and so lives on bob too).
``model.get()`` swaps the data back into the same objects.

Recurrent modules (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) keep weak references to
their weights, which ``swap_tensors`` refuses: they are dropped around the swap
and made again after it. Their forward pass on a pointer makes its zero initial
state on the worker (torch would make it here).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def _weights_unreferenced(module: nn.Module) -> Iterator[None]:
    """Drop recurrent modules' weak references to their weights while they are swapped."""
    recurrent = [sub for sub in module.modules() if isinstance(sub, nn.RNNBase)]
    for sub in recurrent:
        sub._flat_weight_refs = []
    try:
        yield
    finally:
        for sub in recurrent:
            sub._flat_weight_refs = [
                None if weight is None else weakref.ref(weight) for weight in sub._flat_weights
            ]


def _remote_initial_state(
    module: nn.RNNBase, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """A forward pre-hook: on a pointer input with no state, make the zero state on its worker."""
    data = args[0] if args else kwargs.get("input")
    state = args[1] if len(args) > 1 else kwargs.get("hx")
    if type(data) is not PointerTensor or state is not None:
        return None
    directions = 2 if module.bidirectional else 1
    shape = [module.num_layers * directions]
    if data.dim() == 3:
        shape.append(data.size(0 if module.batch_first else 1))
    output_size = module.proj_size if getattr(module, "proj_size", 0) > 0 else module.hidden_size
    hidden = data.new_zeros((*shape, output_size))
    if isinstance(module, nn.LSTM):
        made: Any = (hidden, data.new_zeros((*shape, module.hidden_size)))
    else:
        made = hidden
    kwargs = {key: value for key, value in kwargs.items() if key not in ("input", "hx")}
    return (data, made), kwargs


def _hook_recurrent(module: nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.RNNBase) and not any(
            hook is _remote_initial_state for hook in sub._forward_pre_hooks.values()
        ):
            sub.register_forward_pre_hook(_remote_initial_state, with_kwargs=True)


def _create_zero_grads(module: nn.Module) -> None:
    """As PySyft did: trainable parameters without a grad get a zero one before they go.

    Then a parameter outside the loss's graph comes back with a zero grad, not None.
    Existing grads are kept (PySyft zeroed them too, losing accumulated gradients).
    """
    for param in module.parameters():
        if type(param) is not PointerTensor and param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)


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
    _create_zero_grads(self)
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    with _weights_unreferenced(self):
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
    _hook_recurrent(self)
    return self


def module_get(self: nn.Module) -> nn.Module:
    """Bring every parameter back into the same Parameter objects; returns the module."""
    with _weights_unreferenced(self):
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
