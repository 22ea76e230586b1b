"""Plans on the worker: checked on arrival, kept as data, replayed on inputs.

The wire format and its structural checks are in :mod:`broker.plan_format`; here
every op name is resolved through the worker's allowlist (anything else is
refused with :class:`~broker.errors.ForbiddenOperationError` before the plan is
stored), and a call binds the inputs, runs the ops and returns the output
tensors. The intermediates live only inside :func:`run_plan`, so nothing is left
behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from broker.ops import is_inplace
from broker.plan_format import parse_plan
from broker.protocol import Slot, bind_slots
from broker.tree import leaves
from worker.allowlist import Allowlist


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
        tags: frozenset[str] = frozenset(),
    ) -> None:
        self.wire = wire
        #: plan.tag(...) on the client: fetch_plan("#tag") finds the plan by them
        self.tags = tags
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
        #: the input positions an op may change (in place, through any view of them): only
        #: these need CHANGE access and a write-through after a call
        self.mutated_inputs: tuple[int, ...] = mutated_inputs(inputs, len(state), ops)

    def __repr__(self) -> str:
        names = ", ".join(dict.fromkeys(op.name.rpartition(".")[2] for op in self.ops))
        if len(names) > 60:
            names = names[:57] + "..."
        plural = "" if len(self.state) == 1 else "s"
        return (
            f"<Plan {self.name}: {self.inputs} input(s), {len(self.state)} state "
            f"tensor{plural}, {len(self.ops)} ops ({names}), {len(self.outputs)} output(s)>"
        )


def mutated_inputs(inputs: int, state: int, ops: list[_Op]) -> tuple[int, ...]:
    """The inputs a plan's in-place ops may write to, in order.

    Conservative: any op's result may alias any tensor it was given (a view, a detach),
    so a slot stands for every input it was made from; an in-place op (or ``out=``,
    or item assignment) writes to every input behind its first argument. A
    training step that updates its parameters through ``p.detach().add_(...)``
    marks the parameters, not the data it read.
    """
    roots: list[frozenset[int]] = [frozenset({i}) for i in range(inputs)]
    roots += [frozenset()] * state
    mutated: set[int] = set()
    for op in ops:
        if is_inplace(op.name) or op.name == "Tensor.__setitem__":
            for leaf in leaves(op.args[:1]):
                if type(leaf) is Slot:
                    mutated |= roots[leaf.index]
        if "out" in op.kwargs:
            for leaf in leaves(op.kwargs["out"]):
                if type(leaf) is Slot:
                    mutated |= roots[leaf.index]
        if any(out is not None for out in op.outs):
            made = frozenset().union(
                *(roots[leaf.index] for leaf in leaves([op.args, op.kwargs]) if type(leaf) is Slot)
            )
            roots += [made for out in op.outs if out is not None]
    return tuple(sorted(mutated))


def _has_slot(value: Any) -> bool:
    return any(type(leaf) is Slot for leaf in leaves(value))


def decode_plan(data: Any, allowlist: Allowlist, worker_id: str) -> StoredPlan:
    """Check plan data completely and turn it into a runnable :class:`StoredPlan`.

    Raises MalformedMessageError for anything but a well-formed plan, and
    ForbiddenOperationError (naming the op) for an op outside ``allowlist``.
    """
    parsed = parse_plan(data)
    checked = [
        _Op(op.name, allowlist.resolve(op.name, worker_id), op.args, op.kwargs, op.outs)
        for op in parsed.ops
    ]
    return StoredPlan(
        data, parsed.name, parsed.inputs, parsed.state, checked, parsed.outputs, parsed.tags
    )


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
