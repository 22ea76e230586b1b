"""Shape inference on meta tensors: what an op returns, without running it on data.

Running an op on ``meta`` tensors gives the result's shape, dtype and
requires_grad but costs ~130 µs; a pipelined op must cost a few µs. So results
are cached by op and *signature*: the inputs' (shape, dtype, requires_grad), the
non-tensor arguments, and the grad mode. An op meta tensors cannot run (a
data-dependent shape, a bad argument) returns None.

Both sides use it: the client to give a pipelined op's result pointer its shape
without a round trip (an op it cannot infer is asked of the worker, which also
surfaces the real error), and the worker to know an op's result size and work
before it runs (:mod:`worker.limits`). The cache key is built in one place,
:func:`arg_key`, so the client's hot path and :meth:`ShapeCache.infer` agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from broker.ops import FACTORIES
from broker.tree import map_leaves

#: (shape, dtype, requires_grad) of one tensor
Meta = tuple[tuple[int, ...], torch.dtype, bool]


@dataclass(frozen=True, slots=True)
class Inferred:
    """The result of an op, as the client pictures it before it runs."""

    #: one Meta per tensor result, in order; empty for an op that returns None
    outputs: tuple[Meta, ...]
    #: None for a single tensor; otherwise the container type of several results (tuple or a
    #: torch.return_types class)
    container: type | None
    #: True if the op returned something that is not tensors (a bool, a number)
    is_value: bool = False
    #: that value: computed on meta tensors, so it depends on metadata only (is_complex, dim)
    value: Any = None


class _Unhashable(Exception):
    pass


def arg_key(value: Any, meta_of: Callable[[Any], Meta | None]) -> Any:
    """The cache-key part of one argument: its Meta for a tensor, else a hashable stand-in."""
    meta = meta_of(value)
    return meta if meta is not None else _key_of(value, meta_of)


def _key_of(value: Any, meta_of: Callable[[Any], Meta | None]) -> Any:
    meta = meta_of(value)
    if meta is not None:
        return meta
    if isinstance(value, list | tuple):
        return (type(value).__name__, *(_key_of(item, meta_of) for item in value))
    if isinstance(value, slice):
        return ("slice", value.start, value.stop, value.step)
    if isinstance(value, dict):
        return ("dict", *sorted((k, _key_of(v, meta_of)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        raise _Unhashable from None
    return (type(value), value)


class ShapeCache:
    """Memoised meta-tensor inference."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._cache: dict[Any, Inferred | None] = {}
        self._max_entries = max_entries

    def infer(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        meta_of: Callable[[Any], Meta | None],
        grad: bool,
    ) -> Inferred | None:
        """Infer ``func(*args, **kwargs)`` under grad mode ``grad``.

        ``meta_of`` gives a pointer's Meta, or None for anything that is not a pointer.
        """
        try:
            key = self.key(func, grad, args, kwargs, meta_of)
        except _Unhashable:
            return _run_on_meta(func, args, kwargs, meta_of, grad)
        try:
            return self._cache[key]
        except KeyError:
            pass
        inferred = _run_on_meta(func, args, kwargs, meta_of, grad)
        if inferred is not None:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[key] = inferred
        return inferred

    @staticmethod
    def key(
        func: Callable[..., Any],
        grad: bool,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        meta_of: Callable[[Any], Meta | None],
    ) -> tuple[Any, ...]:
        """The cache key of a call: ``(func, grad, *arg_keys[, kwargs_key])``.

        Each argument's part comes from :func:`arg_key`, which the client's hot path
        (``client.pointer._fast_call``) calls too, so the two keys are built alike.
        """
        parts: list[Any] = [func, grad]
        for arg in args:
            parts.append(arg_key(arg, meta_of))
        if kwargs:
            parts.append(_key_of(kwargs, meta_of))
        return tuple(parts)

    def cached(self, key: tuple[Any, ...]) -> Inferred | None:
        """A cached result by its key, as :meth:`key` builds it."""
        return self._cache.get(key)


#: torch functions that make a tensor from sizes alone (:data:`broker.ops.FACTORIES`)
FACTORY_FUNCTIONS = frozenset(getattr(torch, name) for name in FACTORIES)

_CPU = torch.device("cpu")
_META = torch.device("meta")


def _to_meta(value: Any, meta_of: Callable[[Any], Meta | None]) -> Any:
    """``value`` with every tensor (or pointer) replaced by a meta tensor like it."""

    def leaf_to_meta(leaf: Any) -> Any:
        meta = meta_of(leaf)
        if meta is not None:
            shape, dtype, requires_grad = meta
            tensor = torch.empty(shape, dtype=dtype, device="meta")
            return tensor.requires_grad_(True) if requires_grad else tensor
        if (type(leaf) is torch.device and leaf == _CPU) or (type(leaf) is str and leaf == "cpu"):
            return _META  # x.to(x.device), x.to("cpu"): stay on meta
        return leaf

    return map_leaves(value, leaf_to_meta)


def meta_failure(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    meta_of: Callable[[Any], Meta | None],
    grad: bool,
) -> Exception | None:
    """Why ``func`` cannot run on meta tensors for these arguments (None if it can)."""
    try:
        _call_on_meta(func, args, kwargs, meta_of, grad)
    except Exception as error:
        return error
    return None


def _call_on_meta(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    meta_of: Callable[[Any], Meta | None],
    grad: bool,
) -> Any:
    """``func`` called with every tensor argument replaced by a meta tensor of its Meta."""
    meta_args = _to_meta(args, meta_of)
    meta_kwargs = _to_meta(kwargs, meta_of) if kwargs else {}
    if func in FACTORY_FUNCTIONS:  # no tensor argument: make it on meta, never allocate here
        meta_kwargs = {**meta_kwargs, "device": _META}
    with torch._C.DisableTorchFunctionSubclass(), torch.set_grad_enabled(grad):
        return func(*meta_args, **meta_kwargs)


def is_data_dependent(error: Exception) -> bool:
    """Whether a meta-tensor failure means the result depends on the data (not a bad call)."""
    return isinstance(error, NotImplementedError) or "meta" in str(error)


def _run_on_meta(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    meta_of: Callable[[Any], Meta | None],
    grad: bool,
) -> Inferred | None:
    try:
        result = _call_on_meta(func, args, kwargs, meta_of, grad)
    except Exception:  # meta kernels are missing or the call is invalid: the worker will tell
        return None
    if result is None:
        return Inferred((), None)
    if isinstance(result, torch.Tensor):
        return Inferred(((tuple(result.shape), result.dtype, result.requires_grad),), None)
    if (
        isinstance(result, list | tuple)
        and result
        and all(isinstance(item, torch.Tensor) for item in result)
    ):
        outputs = tuple((tuple(item.shape), item.dtype, item.requires_grad) for item in result)
        return Inferred(outputs, type(result))
    return Inferred((), None, is_value=True, value=result)
