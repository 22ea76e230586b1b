"""The TensorFleet protocol: what a batch message and a reply contain.

A message (an *envelope*) is a msgpack map::

    {"v": 1, "batch": <int>, "sender": <str>, "reply_to": <str|None>, "commands": [...]}

(a worker forwarding work adds ``"forwarded": true`` and ``"on_behalf_of": <principal>``)

``batch`` is unique per sender and makes redelivery idempotent; ``reply_to`` is the
address that replies and errors go to (a client's reply queue, or an in-process
mailbox); delivery options never share a namespace with a command's torch call.

Each command is a list whose first item names it. Object ids are ints chosen by
the client; ``Ref`` marks an argument that names a stored object (optionally one
of its attributes, ``grad`` or ``data``); ``request`` is an int the worker echoes
in its reply, or None when no reply is wanted (pipelined commands).

==================  ===========================================================
command             fields and meaning
==================  ===========================================================
store               [id, obj, request]: keep ``obj`` (tensor or PointerRecord) under id
op                  [name, args, kwargs, result_ids, grad_enabled, request]: run an
                    allowlisted callable, keep its tensor results under result_ids;
                    a request asks for the results' metadata in the reply
get                 [ref, request]: reply with the object; a plain ref deletes it
delete              [id]: drop the object; a stored pointer that owns its target
                    deletes that too (chains are deleted hop by hop)
setattr             [ref, attr, value]: ``tensor.grad = value`` and the like
send_to             [id, dest, dest_id, request]: give the object to worker ``dest``
                    under ``dest_id`` and forget it here (move, remote_get)
remote_get          [id, request]: the object is a pointer; pull its data here,
                    keep it under the same id
objects             [request]: reply with every stored object, for display
count               [request]: reply with the number of stored objects
clear               [request]: forget every object (no cascade)
ping                [request]: reply ``True``; a health check
search              [query, request]: reply ``[id, shape, dtype, requires_grad, tags,
                    description, private]`` of every object the caller may use whose tags
                    hold every query item (or whose id is one), for pointers; ``private``:
                    the operator hosts it, so it may be used, never taken (worker.datasets)
forward_failed      [ids, error]: (worker to worker) the op forwarded under these ids
                    failed; mark the pointers to them failed too, and tell the hop before
plan, run_plan      see worker/plans.py
plan                [plan_id, plan_data, request]: check a plan (worker/plans.py) and
                    keep it under plan_id
run_plan            [plan_id, args, result_ids, grad_enabled, request]: run a stored
                    plan on stored inputs, keep its outputs under result_ids
fetch_plan          [plan_id or tag, request]: reply with the stored plan's data (its
                    owner only; a tag must name exactly one of the caller's plans); the
                    worker keeps the plan (PointerPlan.get, worker.fetch_plan)
allowed_to_get      [id, request]: reply whether the caller may .get() the object
                    (worker.access: False for data the operator hosts)
==================  ===========================================================

A reply is ``{"v": 1, "replies": [[request, ok, payload], ...]}``: ``ok`` is True
with the result as payload, or False with ``{type, message, command}``. An error of
a pipelined command (request None) is reported with request None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.tree import map_leaves

PROTOCOL_VERSION = 1

STORE = "store"
OP = "op"
GET = "get"
DELETE = "delete"
SETATTR = "setattr"
SEND_TO = "send_to"
REMOTE_GET = "remote_get"
OBJECTS = "objects"
COUNT = "count"
CLEAR = "clear"
PING = "ping"
SEARCH = "search"
FORWARD_FAILED = "forward_failed"
PLAN = "plan"
RUN_PLAN = "run_plan"
FETCH_PLAN = "fetch_plan"
ALLOWED_TO_GET = "allowed_to_get"

#: Command name -> number of fields after the name.
COMMAND_ARITY: dict[str, int] = {
    STORE: 3,
    OP: 6,
    GET: 2,
    DELETE: 1,
    SETATTR: 3,
    SEND_TO: 4,
    REMOTE_GET: 2,
    OBJECTS: 1,
    COUNT: 1,
    CLEAR: 1,
    PING: 1,
    SEARCH: 2,
    FORWARD_FAILED: 2,
    PLAN: 3,
    RUN_PLAN: 5,
    FETCH_PLAN: 2,
    ALLOWED_TO_GET: 2,
}


@dataclass(frozen=True, slots=True)
class Ref:
    """An argument that names a stored object (or its ``grad``/``data``) on the receiver."""

    id: int
    attr: str | None = None


# -- Plans (client/plan.py, worker/plans.py) -------------------------------------------
@dataclass(frozen=True, slots=True)
class Slot:
    """A value inside a plan's op list: input, state tensor or an earlier op's result, by index.

    Its own extension type on the wire, so no user value (an int, a list) can pose as one.
    """

    index: int


def bind_slots(value: Any, slots: list[Any]) -> Any:
    """``value`` with every Slot replaced by ``slots[slot.index]`` (lists, tuples, dicts too)."""
    return map_leaves(value, lambda leaf: slots[leaf.index] if type(leaf) is Slot else leaf)


# -- end Plans ------------------------------------------------------------------------


@dataclass(slots=True)
class PointerRecord:
    """A pointer kept *on* a worker: the object lives at ``location`` under ``id_at_location``.

    ``owns`` says whether dropping this record deletes its target (ownership passes
    to the newest hop of a chain). Shape, dtype and requires_grad travel with it so a
    client that receives it (``get`` on a pointer-to-pointer) needs no extra call.
    """

    location: str
    id_at_location: int
    owns: bool
    shape: tuple[int, ...]
    dtype: str
    requires_grad: bool


def envelope(
    batch: int,
    sender: str,
    reply_to: str | None,
    commands: list[Any],
    forwarded: bool = False,
    on_behalf_of: str | None = None,
) -> dict[str, Any]:
    """Build a batch message; ``forwarded`` marks one a worker sent on behalf of a client.

    ``on_behalf_of`` (forwarded messages only) names the principal the original message
    ran for; the receiving worker believes it only from another worker of the fleet.
    """
    message = {
        "v": PROTOCOL_VERSION,
        "batch": batch,
        "sender": sender,
        "reply_to": reply_to,
        "commands": commands,
    }
    if forwarded:
        message["forwarded"] = True
        if on_behalf_of is not None:
            message["on_behalf_of"] = on_behalf_of
    return message


def reply_envelope(replies: list[list[Any]]) -> dict[str, Any]:
    """Build a reply message."""
    return {"v": PROTOCOL_VERSION, "replies": replies}
