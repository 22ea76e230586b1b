"""``bob.remote.torch.zeros(2, 3)``: tensors made on a worker, without sending any data.

The call is pipelined like any op: the client infers the result's shape on the meta
device, queues one command and returns the pointer at once. Only the factories of
:data:`broker.ops.FACTORIES` exist; the worker checks their size against its limits
before it makes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from broker import protocol
from broker.meta import meta_failure
from broker.ops import ALLOWED, FACTORIES
from client.pointer import SHAPES, Pointer, PointerTensor, _Call, new_id

if TYPE_CHECKING:
    from client.workers import BaseWorker


def _no_meta(value: Any) -> None:
    return None


class RemoteTorch:
    """``worker.remote.torch``: the tensor factories, run on that worker."""

    def __init__(self, worker: BaseWorker) -> None:
        self._worker = worker

    def __getattr__(self, name: str) -> Any:
        if name not in FACTORIES:
            raise AttributeError(
                f"{self._worker.id}.remote.torch.{name}: only the tensor factories "
                f"{', '.join(FACTORIES)} run remotely; for other ops, make a tensor there and "
                "call the op on its pointer"
            )

        def factory(*args: Any, **kwargs: Any) -> Any:
            return make_remote(self._worker, name, args, kwargs)

        factory.__name__ = name
        return factory

    def __dir__(self) -> list[str]:
        return list(FACTORIES)


class Remote:
    """``worker.remote``: what can be made directly on the worker (``.torch``)."""

    def __init__(self, worker: BaseWorker) -> None:
        self.torch = RemoteTorch(worker)


def make_remote(
    worker: BaseWorker, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Queue ``torch.<name>(*args, **kwargs)`` on ``worker``; returns the pointer to it."""
    call = f"{worker.id}.remote.torch.{name}"
    for key in ("device", "out", "generator", "layout", "pin_memory"):
        if key in kwargs:
            raise TypeError(f"{call}() takes no {key}=: tensors are made in the worker's memory")
    args = tuple(tuple(arg) if isinstance(arg, torch.Size) else arg for arg in args)
    wire = _Call(f"torch.{name}")
    wire_args = tuple(wire.wire(arg) for arg in args)
    wire_kwargs = {key: wire.wire(value) for key, value in kwargs.items()}
    if wire.has_local or wire.location is not None:
        raise TypeError(f"{call}() takes sizes and numbers, not tensors")
    func = ALLOWED[f"torch.{name}"]
    grad = torch.is_grad_enabled()
    inferred = SHAPES.infer(func, args, kwargs, _no_meta, grad)
    if inferred is None or inferred.container is not None or len(inferred.outputs) != 1:
        failure = meta_failure(func, args, kwargs, _no_meta, grad)
        raise TypeError(f"{call}{args!r}: {failure}") from failure
    result_id = new_id()
    worker._enqueue(
        (protocol.OP, f"torch.{name}", wire_args, wire_kwargs, (result_id,), grad, None)
    )
    return PointerTensor._wrap(Pointer(worker, result_id, inferred.outputs[0]))
