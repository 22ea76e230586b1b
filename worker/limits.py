"""Per-op limits: an op's result size and work are known, and bounded, before it runs.

A 200-byte command can ask for 2·10^10 elements (``x.repeat(100000, 200000)``)
and hold a worker for seconds, or make a result bigger than anything the worker
may keep. So before an op runs, its results are inferred on meta tensors
(:mod:`broker.meta`, cached by op signature: a cache hit costs about a
microsecond) and checked against two settings:

* ``TENSORFLEET_MAX_OBJECT_BYTES``: the bytes of the op's results;
* ``TENSORFLEET_MAX_OP_WORK``: its work, counted as the elements it reads and
  writes, and for contractions (matmul, linear, conv, einsum...) the multiply-adds
  (the output's elements times the contracted size; for the recurrent kernels,
  the input's rows times the weights' elements).

An op whose results meta tensors cannot describe because they depend on the data
(``F.one_hot`` without ``num_classes``) is refused unless its results are bounded
by its inputs (:data:`INPUT_BOUNDED`): its size cannot be known before it runs.
An op that fails on meta tensors because the call itself is wrong (mismatched
shapes, an index out of range) is let through: it raises its real error at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from broker.errors import (
    ForbiddenOperationError,
    OperationTooLargeError,
    UnboundedOperationError,
)
from broker.meta import FACTORY_FUNCTIONS, Meta, ShapeCache, is_data_dependent, meta_failure
from broker.tree import leaves

#: ops whose data-dependent results are never bigger than their inputs times their rank
INPUT_BOUNDED = frozenset({"torch.where"})

#: ops whose work is the output's elements times a contracted size, by how to find it
_CONTRACTIONS: dict[str, str] = {
    **{
        name: "last_dim_of_first"
        for name in (
            "torch.mm",
            "torch.matmul",
            "torch.bmm",
            "torch.mv",
            "torch.dot",
            "Tensor.mm",
            "Tensor.matmul",
            "Tensor.bmm",
            "Tensor.mv",
            "Tensor.dot",
            "Tensor.__matmul__",
            "Tensor.__rmatmul__",
            "torch.outer",
            "Tensor.outer",
            "torch.linalg.matmul",
        )
    },
    **{name: "last_dim_of_second" for name in ("torch.addmm", "Tensor.addmm")},
    **{
        name: "weight_fan_in"
        for name in ("torch.nn.functional.linear", "torch.nn.functional.bilinear")
    },
    **{
        name: "weight_fan_in"
        for name in (
            "torch.nn.functional.conv1d",
            "torch.nn.functional.conv2d",
            "torch.conv1d",
            "torch.conv2d",
        )
    },
    **{
        name: "largest_input"
        for name in ("torch.einsum", "torch.tensordot", "torch.cdist", "torch.trace")
    },
}

#: options a tensor factory (torch.zeros...) may not take: the tensor is made in memory
_FACTORY_REFUSED = ("device", "out", "layout", "pin_memory", "generator")

#: ops that take a device positionally (x.to("meta"))
_DEVICE_OPS = frozenset({"Tensor.to"})


def _device_other_than_cpu(args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """A device argument naming anything but the CPU (workers keep tensors in memory)."""
    candidates = [kwargs.get("device"), *args]
    for value in candidates:
        if isinstance(value, torch.device | str):
            try:
                device = torch.device(value)
            except (RuntimeError, TypeError):
                continue  # not a device (a reduction="mean", an einsum equation)
            if device.type != "cpu":
                return f"device={str(device)!r}"
    return None


#: recurrent kernels: every weight is applied once per step and batch row of the input
_RECURRENT = frozenset({"torch.lstm", "torch.gru", "torch.rnn_tanh", "torch.rnn_relu"})


def _meta_of(value: Any) -> Meta | None:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.requires_grad)
    return None


def _tensors(values: Iterable[Any]) -> Iterable[torch.Tensor]:
    for value in values:
        for leaf in leaves(value):
            if isinstance(leaf, torch.Tensor):
                yield leaf


class OpLimits:
    """Checks one op at a time against the worker's limits; see the module docstring."""

    def __init__(self, worker_id: str, max_result_bytes: int, max_work: int) -> None:
        self.worker_id = worker_id
        self.max_result_bytes = max_result_bytes
        self.max_work = max_work
        self._shapes = ShapeCache()
        #: how many checks could not size an op's results from its inputs' metadata (they
        #: depend on the data, or the call is wrong): a plan whose ops all could be sized
        #: passes again for inputs of the same metadata (see Engine._run_plan)
        self.inexact = 0

    def check(
        self,
        name: str,
        func: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        grad: bool,
    ) -> int:
        """Raise if ``func(*args, **kwargs)`` would exceed a limit; else its result bytes."""
        if func is torch.autograd.grad:
            return self._check_gradients(name, args, kwargs)
        if func in FACTORY_FUNCTIONS and kwargs:
            for key in _FACTORY_REFUSED:
                if key in kwargs:  # a tensor elsewhere than in memory, or written in place
                    raise ForbiddenOperationError(f"{name}(..., {key}=...)", self.worker_id)
        device = _device_other_than_cpu(args, kwargs) if name in _DEVICE_OPS or kwargs else None
        if device is not None:  # a meta (or absent GPU) tensor cannot be kept or sent back
            raise ForbiddenOperationError(f"{name}(..., {device})", self.worker_id)
        inputs = list(_tensors(args))
        if kwargs:
            inputs.extend(_tensors(kwargs.values()))
        input_elements = sum(tensor.numel() for tensor in inputs)
        inferred = self._shapes.infer(func, tuple(args), kwargs, _meta_of, grad)
        if inferred is None:
            self.inexact += 1
            failure = meta_failure(func, tuple(args), kwargs, _meta_of, grad)
            if failure is None or not is_data_dependent(failure):
                return 0  # a bad call: the op itself raises its real error, before allocating
            if name not in INPUT_BOUNDED:
                raise UnboundedOperationError(name, self.worker_id)
            bound = sum(tensor.numel() * max(tensor.dim(), 1) for tensor in inputs)
            self._check_work(name, input_elements + bound)
            self._check_bytes(name, bound * 8)
            return bound * 8
        output_elements = 0
        output_bytes = 0
        for shape, dtype, _ in inferred.outputs:
            numel = 1
            for size in shape:
                numel *= size
            output_elements += numel
            output_bytes += numel * _element_size(dtype)
        self._check_bytes(name, output_bytes)
        work = input_elements + output_elements
        contraction = _CONTRACTIONS.get(name)
        if contraction is not None:
            work += output_elements * _contracted_size(contraction, args, inputs)
        elif name in _RECURRENT and inputs and inputs[0].dim():
            rows = inputs[0].numel() // max(inputs[0].shape[-1], 1)
            work += rows * sum(tensor.numel() for tensor in inputs[1:])
        self._check_work(name, work)
        return output_bytes

    def _check_gradients(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> int:
        """``torch.autograd.grad``: one gradient per input, each the input's size.

        Meta tensors carry no graph, so the gradients are sized from the ``inputs``
        argument. The backward pass costs a small multiple of the forward ops that
        built the graph, each of which passed these limits when it ran.
        """
        wanted = args[1] if len(args) > 1 else kwargs.get("inputs", ())
        tensors = list(_tensors([wanted]))
        elements = sum(tensor.numel() for tensor in tensors)
        size = sum(tensor.numel() * _element_size(tensor.dtype) for tensor in tensors)
        self._check_work(name, 2 * elements)
        self._check_bytes(name, size)
        return size

    def _check_bytes(self, name: str, size: int) -> None:
        if size > self.max_result_bytes:
            raise OperationTooLargeError(
                name, self.worker_id, size, self.max_result_bytes, "TENSORFLEET_MAX_OBJECT_BYTES"
            )

    def _check_work(self, name: str, work: int) -> None:
        if work > self.max_work:
            raise OperationTooLargeError(
                name, self.worker_id, work, self.max_work, "TENSORFLEET_MAX_OP_WORK"
            )


_ELEMENT_SIZES: dict[torch.dtype, int] = {}


def _element_size(dtype: torch.dtype) -> int:
    size = _ELEMENT_SIZES.get(dtype)
    if size is None:
        size = _ELEMENT_SIZES[dtype] = torch.empty((), dtype=dtype).element_size()
    return size


def _contracted_size(how: str, args: list[Any], inputs: list[torch.Tensor]) -> int:
    """How many multiply-adds each output element of a contraction costs (an upper bound)."""
    if how == "last_dim_of_first" and args and isinstance(args[0], torch.Tensor):
        return max(args[0].shape[-1], 1) if args[0].dim() else 1
    if how == "last_dim_of_second" and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return max(args[1].shape[-1], 1) if args[1].dim() else 1
    if how == "weight_fan_in" and len(args) > 1 and isinstance(args[1], torch.Tensor):
        weight = args[1]
        return max(weight.numel() // max(weight.shape[0], 1), 1) if weight.dim() else 1
    return max((tensor.numel() for tensor in inputs), default=1)
