"""The wire format of a Plan: what the client builds (client/plan.py) and the worker checks.

A plan travels as plain msgpack data, never pickle or Python source::

    {"version": 1,
     "name": "calcu",                      # for display only
     "inputs": 2,                          # slots 0 .. inputs-1 are the call's tensors
     "state": [<tensor>, ...],             # slots inputs .. inputs+len(state)-1 (parameters)
     "ops": [[wire_name, args, kwargs, outs], ...],
     "outputs": [slot, ...],               # what a call returns, in order
     "tags": ["#tag", ...],                # optional: plan.tag(...), for fetch_plan("#tag")
     "description": "..."}                 # optional: plan.describe(...)

``args`` and ``kwargs`` are wire values in which :class:`broker.protocol.Slot`
markers (their own msgpack extension type) stand for tensors. ``outs`` has one
entry per tensor the op returns (``[]`` when it returns None): the next free
slot, or None for a result the plan does not keep (an in-place op returns its
input). Slots are assigned in order, so a plan is checked in one pass
(:func:`parse_plan`): every slot is defined before it is read, every state entry
is a tensor, nothing but plain data and slots appears in arguments. Which op
names may run is the receiving worker's business (its allowlist:
``worker/plans.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from broker.errors import MalformedMessageError
from broker.protocol import PointerRecord, Ref, Slot

PLAN_VERSION = 1
#: the most ops a plan may hold (a bound on the work one message can ask for)
MAX_OPS = 100_000
PLAN_KEYS = frozenset({"version", "name", "inputs", "state", "ops", "outputs"})
#: keys a plan may also have
OPTIONAL_KEYS = frozenset({"tags", "description"})
#: the most tags a plan may carry, and the longest tag and description
MAX_TAGS, MAX_TAG_LENGTH, MAX_DESCRIPTION = 64, 256, 4096
_SCALARS = (bool, int, float, str, complex, torch.dtype, torch.memory_format, torch.device)


def plan_data(
    name: str,
    inputs: int,
    state: list[Any],
    ops: list[list[Any]],
    outputs: list[int],
    tags: list[str] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The plan data a client sends (``state``: tensors, or tensors already encoded)."""
    data: dict[str, Any] = {
        "version": PLAN_VERSION,
        "name": name,
        "inputs": inputs,
        "state": state,
        "ops": ops,
        "outputs": outputs,
    }
    if tags:
        data["tags"] = sorted(tags)
    if description:
        data["description"] = description
    return data


@dataclass(frozen=True)
class ParsedOp:
    """One op of a checked plan, its name not yet resolved to a callable."""

    position: int
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    outs: list[int | None]


@dataclass(frozen=True)
class ParsedPlan:
    """Plan data that passed :func:`parse_plan`."""

    name: str
    inputs: int
    state: list[torch.Tensor]
    ops: list[ParsedOp]
    outputs: list[int]
    tags: frozenset[str] = frozenset()
    description: str | None = None


def malformed(reason: str) -> MalformedMessageError:
    """The error for plan data that is not a plan."""
    return MalformedMessageError(f"plan refused: {reason}")


def parse_plan(data: Any) -> ParsedPlan:
    """Check plan data completely (but for op names); MalformedMessageError otherwise."""
    if not isinstance(data, dict):
        raise malformed("plan data is not a map")
    if not PLAN_KEYS <= set(data) <= PLAN_KEYS | OPTIONAL_KEYS:
        raise malformed(
            f"plan data needs exactly the keys {sorted(PLAN_KEYS)} (and may have "
            f"{sorted(OPTIONAL_KEYS)}), not {sorted(map(str, data))}"
        )
    tags, description = data.get("tags", []), data.get("description")
    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG_LENGTH for t in tags)
    ):
        raise malformed(
            f"tags must be a list of at most {MAX_TAGS} strings of 1 to {MAX_TAG_LENGTH} characters"
        )
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        raise malformed(f"the description must be a string of at most {MAX_DESCRIPTION} characters")
    if data["version"] != PLAN_VERSION:
        raise malformed(f"unsupported plan version {data['version']!r}")
    name, inputs, state = data["name"], data["inputs"], data["state"]
    ops, outputs = data["ops"], data["outputs"]
    if not isinstance(name, str):
        raise malformed("the name must be a string")
    if type(inputs) is not int or inputs < 0:
        raise malformed("inputs must be a count (an int >= 0)")
    if not isinstance(state, list) or not all(isinstance(t, torch.Tensor) for t in state):
        raise malformed("state must be a list of tensors")
    if not isinstance(ops, list) or len(ops) > MAX_OPS:
        raise malformed(f"ops must be a list of at most {MAX_OPS} ops")
    defined = inputs + len(state)
    parsed: list[ParsedOp] = []
    for position, op in enumerate(ops):
        parsed.append(_parse_op(position, op, defined))
        defined += sum(1 for out in parsed[-1].outs if out is not None)
    if not isinstance(outputs, list) or not outputs:
        raise malformed("outputs must be a non-empty list of slots")
    for out in outputs:
        if type(out) is not int or not 0 <= out < defined:
            raise malformed(f"output slot {out!r} is not defined (slots 0..{defined - 1} are)")
    return ParsedPlan(
        name, inputs, list(state), parsed, list(outputs), frozenset(tags), description
    )


def _parse_op(position: int, op: Any, defined: int) -> ParsedOp:
    """Check op ``position``; ``defined`` slots exist before it, its outs must come next."""
    where = f"op {position}"
    if not isinstance(op, list) or len(op) != 4:
        raise malformed(f"{where} is not [name, args, kwargs, outs]")
    op_name, args, kwargs, outs = op
    if not isinstance(op_name, str):
        raise malformed(f"{where} has no name")
    where = f"op {position} ({op_name})"
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise malformed(f"{where}: args must be a list and kwargs a map")
    _check_value(args, defined, where)
    _check_value(kwargs, defined, where)
    if not isinstance(outs, list):
        raise malformed(f"{where}: outs must be a list")
    for out in outs:
        if out is None:
            continue
        if type(out) is not int or out != defined:
            raise malformed(f"{where} writes slot {out!r}; the next free slot is {defined}")
        defined += 1
    return ParsedOp(position, op_name, args, kwargs, outs)


def _check_value(value: Any, defined: int, where: str) -> None:
    """Refuse anything in op arguments but plain data and slots already defined."""
    kind = type(value)
    if kind is Slot:
        if value.index >= defined:
            raise malformed(
                f"{where} reads slot {value.index}, which is not defined yet "
                f"(slots 0..{defined - 1} are)"
            )
    elif kind is list or kind is tuple:
        for item in value:
            _check_value(item, defined, where)
    elif kind is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise malformed(f"{where} has a non-string keyword")
            _check_value(item, defined, where)
    elif value is None or value is Ellipsis or isinstance(value, _SCALARS):
        pass
    elif kind is slice:
        _check_value([value.start, value.stop, value.step], defined, where)
    elif isinstance(value, Ref | PointerRecord):
        raise malformed(f"{where} names a stored object; plans take their tensors as inputs")
    elif isinstance(value, torch.Tensor):
        raise malformed(f"{where} holds a tensor; a plan's tensors travel in its state")
    else:
        raise malformed(f"{where} holds a {kind.__name__}")
