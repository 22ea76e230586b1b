"""Plans on the worker: a traced op list, checked on arrival, kept as data, replayed on inputs.

A plan arrives as plain msgpack data (never pickle, never Python source)::

    {"version": 1,
     "name": "calcu",                      # for display only
     "inputs": 2,                          # slots 0 .. inputs-1 are the call's tensors
     "state": [<tensor>, ...],             # slots inputs .. inputs+len(state)-1 (parameters)
     "ops": [[wire_name, args, kwargs, outs], ...],
     "outputs": [slot, ...]}               # what a call returns, in order

``args`` and ``kwargs`` are wire values in which :class:`broker.protocol.Slot`
markers (their own msgpack extension type) stand for tensors. ``outs`` has one
entry per tensor the op returns (``[]`` when it returns None): the next free
slot, or None for a result the plan does not keep (an in-place op returns its
input). Slots are assigned in order, so a plan is checked in one pass:
every op name resolves through the worker's allowlist, every slot is defined
before it is read, every state entry is a tensor. Anything else is refused with
:class:`~broker.errors.MalformedMessageError` or
:class:`~broker.errors.ForbiddenOperationError` before the plan is stored.

A call binds the inputs, runs the ops and returns the output tensors; the
intermediates live only inside :func:`run_plan`, so nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from broker.errors import MalformedMessageError
from broker.ops import is_inplace
from broker.protocol import PointerRecord, Ref, Slot, bind_slots
from worker.allowlist import Allowlist

PLAN_VERSION = 1
#: the most ops a plan may hold (a bound on the work one message can ask for)
MAX_OPS = 100_000
_KEYS = {"version", "name", "inputs", "state", "ops", "outputs"}
_SCALARS = (bool, int, float, str, complex, torch.dtype, torch.memory_format, torch.device)


class _Op:
    """One checked op: its callable, and where its slot arguments go."""

    __slots__ = ("args", "flat", "func", "kwargs", "name", "outs")

    def __init__(
        self,
        name: str,
        func: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        outs: list[int | None],
    ) -> None:
        self.name = name
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.outs = outs
        #: (position, slot) of top-level slot arguments when nothing deeper holds one
        self.flat: list[tuple[int, int]] | None = None
        nested = any(_has_slot(arg) for arg in args if type(arg) is not Slot)
        if not nested and not _has_slot(kwargs):
            self.flat = [(i, arg.index) for i, arg in enumerate(args) if type(arg) is Slot]


class StoredPlan:
    """A plan a worker keeps: ``wire`` is the data it arrived as (what Redis persists)."""

    def __init__(
        self,
        wire: Any,
        name: str,
        inputs: int,
        state: list[torch.Tensor],
        ops: list[_Op],
        outputs: list[int],
    ) -> None:
        self.wire = wire
        self.name = name
        self.inputs = inputs
        self.state = state
        self.ops = ops
        self.outputs = outputs
        #: an op writes into a tensor in place, possibly an input: the caller should treat
        #: the inputs as changed (write-through to a persistent store)
        self.mutates_inputs = any(
            is_inplace(op.name) or op.name == "Tensor.__setitem__" or "out" in op.kwargs
            for op in ops
        )

    def __repr__(self) -> str:
        names = ", ".join(dict.fromkeys(op.name.rpartition(".")[2] for op in self.ops))
        if len(names) > 60:
            names = names[:57] + "..."
        plural = "" if len(self.state) == 1 else "s"
        return (
            f"<Plan {self.name}: {self.inputs} input(s), {len(self.state)} state "
            f"tensor{plural}, {len(self.ops)} ops ({names}), {len(self.outputs)} output(s)>"
        )


def _has_slot(value: Any) -> bool:
    kind = type(value)
    if kind is Slot:
        return True
    if kind is list or kind is tuple:
        return any(_has_slot(item) for item in value)
    if kind is dict:
        return any(_has_slot(item) for item in value.values())
    return False


def _malformed(reason: str) -> MalformedMessageError:
    return MalformedMessageError(f"plan refused: {reason}")


def _check_value(value: Any, defined: int, where: str) -> None:
    """Refuse anything in op arguments but plain data and slots already defined."""
    kind = type(value)
    if kind is Slot:
        if value.index >= defined:
            raise _malformed(
                f"{where} reads slot {value.index}, which is not defined yet "
                f"(slots 0..{defined - 1} are)"
            )
    elif kind is list or kind is tuple:
        for item in value:
            _check_value(item, defined, where)
    elif kind is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise _malformed(f"{where} has a non-string keyword")
            _check_value(item, defined, where)
    elif value is None or value is Ellipsis or isinstance(value, _SCALARS):
        pass
    elif kind is slice:
        _check_value([value.start, value.stop, value.step], defined, where)
    elif isinstance(value, Ref | PointerRecord):
        raise _malformed(f"{where} names a stored object; plans take their tensors as inputs")
    elif isinstance(value, torch.Tensor):
        raise _malformed(f"{where} holds a tensor; a plan's tensors travel in its state")
    else:
        raise _malformed(f"{where} holds a {kind.__name__}")


def decode_plan(data: Any, allowlist: Allowlist, worker_id: str) -> StoredPlan:
    """Check plan data completely and turn it into a runnable :class:`StoredPlan`.

    Raises MalformedMessageError for anything but a well-formed plan, and
    ForbiddenOperationError (naming the op) for an op outside ``allowlist``.
    """
    if not isinstance(data, dict):
        raise _malformed("plan data is not a map")
    if set(data) != _KEYS:
        raise _malformed(
            f"plan data needs exactly the keys {sorted(_KEYS)}, not {sorted(map(str, data))}"
        )
    if data["version"] != PLAN_VERSION:
        raise _malformed(f"unsupported plan version {data['version']!r}")
    name, inputs, state = data["name"], data["inputs"], data["state"]
    ops, outputs = data["ops"], data["outputs"]
    if not isinstance(name, str):
        raise _malformed("the name must be a string")
    if type(inputs) is not int or inputs < 0:
        raise _malformed("inputs must be a count (an int >= 0)")
    if not isinstance(state, list) or not all(isinstance(t, torch.Tensor) for t in state):
        raise _malformed("state must be a list of tensors")
    if not isinstance(ops, list) or len(ops) > MAX_OPS:
        raise _malformed(f"ops must be a list of at most {MAX_OPS} ops")
    defined = inputs + len(state)
    checked: list[_Op] = []
    for position, op in enumerate(ops):
        where = f"op {position}"
        if not isinstance(op, list) or len(op) != 4:
            raise _malformed(f"{where} is not [name, args, kwargs, outs]")
        op_name, args, kwargs, outs = op
        if not isinstance(op_name, str):
            raise _malformed(f"{where} has no name")
        func = allowlist.resolve(op_name, worker_id)  # ForbiddenOperationError, by name
        where = f"op {position} ({op_name})"
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _malformed(f"{where}: args must be a list and kwargs a map")
        _check_value(args, defined, where)
        _check_value(kwargs, defined, where)
        if not isinstance(outs, list):
            raise _malformed(f"{where}: outs must be a list")
        for out in outs:
            if out is None:
                continue
            if type(out) is not int or out != defined:
                raise _malformed(f"{where} writes slot {out!r}; the next free slot is {defined}")
            defined += 1
        checked.append(_Op(op_name, func, args, kwargs, outs))
    if not isinstance(outputs, list) or not outputs:
        raise _malformed("outputs must be a non-empty list of slots")
    for out in outputs:
        if type(out) is not int or not 0 <= out < defined:
            raise _malformed(f"output slot {out!r} is not defined (slots 0..{defined - 1} are)")
    return StoredPlan(data, name, inputs, list(state), checked, list(outputs))


#: checks one op before it runs: (wire name, callable, args, kwargs); raises to refuse it
OpCheck = Callable[[str, Callable[..., Any], list[Any], dict[str, Any]], None]


def run_plan(
    plan: StoredPlan, inputs: list[Any], check: OpCheck | None = None
) -> list[torch.Tensor]:
    """Run ``plan`` on ``inputs`` (tensors); returns its output tensors.

    ``check`` sees every op with its bound arguments before it runs (the worker's per-op
    limits, :mod:`worker.limits`): sizes depend on the inputs, so they are checked per call.
    """
    if len(inputs) != plan.inputs:
        raise TypeError(
            f"the plan {plan.name} takes {plan.inputs} tensor(s), {len(inputs)} were given"
        )
    for position, value in enumerate(inputs):
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"input {position} of the plan {plan.name} is a "
                f"{type(value).__name__}, not a tensor"
            )
    slots: list[Any] = [*inputs, *plan.state]
    for op in plan.ops:
        if op.flat is not None:
            args = list(op.args)
            for position, index in op.flat:
                args[position] = slots[index]
            kwargs = op.kwargs
        else:
            args, kwargs = bind_slots(op.args, slots), bind_slots(op.kwargs, slots)
        if check is not None:
            check(op.name, op.func, args, kwargs)
        result = op.func(*args, **kwargs)
        outs = op.outs
        if not outs:
            continue
        if isinstance(result, torch.Tensor):
            results: Any = (result,)
        elif isinstance(result, list | tuple):
            results = result
        else:
            raise TypeError(
                f"{op.name} in the plan {plan.name} returned {type(result).__name__}, not tensors"
            )
        if len(results) != len(outs):
            raise TypeError(
                f"{op.name} in the plan {plan.name} returned {len(results)} "
                f"value(s), the plan expects {len(outs)}"
            )
        for out, value in zip(outs, results, strict=True):
            if out is not None:
                slots.append(value)
    return [slots[index] for index in plan.outputs]
