"""``x.send(bob, alice)``: one tensor, a copy on each worker, ops run on every copy."""

from __future__ import annotations

from typing import Any

import torch

from broker.tree import map_leaves
from client.pointer import PointerTensor


class MultiPointer:
    """The ``.child`` of a multi-pointer: worker id -> pointer, in the order sent."""

    def __init__(self, children: dict[str, Any]) -> None:
        self.child = children

    def __repr__(self) -> str:
        return f"MultiPointerTensor>{self.child!r}"


class MultiPointerTensor(torch.Tensor):
    """A wrapper over pointers to copies of one tensor on several workers."""

    child: MultiPointer

    @staticmethod
    def from_children(children: dict[str, Any]) -> Any:
        first = next(iter(children.values()))
        shape, dtype, requires_grad = first.child.meta
        wrapper = torch.Tensor._make_wrapper_subclass(
            MultiPointerTensor,
            shape,
            dtype=dtype,
            device=torch.device("cpu"),
            requires_grad=requires_grad,
        )
        wrapper.child = MultiPointer(children)
        return wrapper

    def __repr__(self, *, tensor_contents: Any = None) -> Any:  # type: ignore[override]
        lines = "".join(f"\n\t-> {pointer!r}" for pointer in self.child.child.values())
        return f"(Wrapper)>[MultiPointerTensor]{lines}"

    __str__ = __repr__

    def __hash__(self) -> int:
        return id(self)

    def get(self, sum_results: bool = False) -> Any:
        """Every copy, in the order sent; with ``sum_results`` their sum."""
        results = [pointer.get() for pointer in self.child.child.values()]
        return sum(results[1:], results[0]) if sum_results else results

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if type(func).__name__ == "method-wrapper":
            name = func.__self__.__name__ if hasattr(func.__self__, "__name__") else ""
            if name in ("shape", "dtype", "requires_grad", "ndim", "device", "is_leaf"):
                with torch._C.DisableTorchFunctionSubclass():
                    return func(*args, **kwargs)
        if func in (torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        workers = _workers_of(args, kwargs)
        results = {}
        for worker_id in workers:
            results[worker_id] = func(*_pick(args, worker_id), **_pick(kwargs, worker_id))
        first = next(iter(results.values()))
        if isinstance(first, PointerTensor):
            return MultiPointerTensor.from_children(results)
        if first is None or all(
            result is args[0].child.child.get(worker_id) for worker_id, result in results.items()
        ):
            return args[0] if first is not None else None
        return results

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        raise RuntimeError(f"{func} reached a MultiPointerTensor below __torch_function__")


def combine_pointers(*pointers: Any) -> Any:
    """``sy.combine_pointers(p_bob, p_alice)``: one multi-pointer over pointers on distinct workers.

    The pointers must agree in shape and dtype, as the copies of ``x.send(bob, alice)`` do.
    """
    children: dict[str, Any] = {}
    for pointer in pointers:
        if type(pointer) is not PointerTensor:
            raise TypeError(
                f"combine_pointers() takes pointers (x.send(worker)), not {type(pointer).__name__}"
            )
        location = pointer.child.location.id
        if location in children:
            raise ValueError(
                f"combine_pointers(): two pointers are on {location}; a multi-pointer holds one "
                "pointer per worker"
            )
        if children and pointer.child.meta[:2] != next(iter(children.values())).child.meta[:2]:
            raise ValueError(
                "combine_pointers(): the pointers differ in shape or dtype; a multi-pointer "
                "holds copies of one tensor"
            )
        children[location] = pointer
    if not children:
        raise TypeError("combine_pointers() needs at least one pointer")
    return MultiPointerTensor.from_children(children)


def _workers_of(args: Any, kwargs: Any) -> list[str]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, MultiPointerTensor):
            return list(value.child.child)
    raise TypeError("no multi-pointer among the arguments")


def _pick(value: Any, worker_id: str) -> Any:
    return map_leaves(
        value,
        lambda leaf: leaf.child.child[worker_id] if isinstance(leaf, MultiPointerTensor) else leaf,
    )
