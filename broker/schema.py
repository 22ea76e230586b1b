"""One schema per command, checked where the envelope is decoded.

The codec (broker.codec) guarantees a message decodes to plain data, tensors and the
protocol's records, within bounded sizes. This module says which of those values
each field of each command may hold, so the engine's handlers and the store never
see an id that is a string, a shape of a billion dimensions or a name that is a
float: a worker that stored such an id under Redis once could not reload (issue 8).

:func:`check_command` returns ``None`` for a valid command or the reason it is not;
the engine reports the reason to the sender and dead-letters the message. Checking is
a walk over the command's fields with explicit depth limits: a value tree deeper than
:data:`MAX_VALUE_DEPTH` is refused before any handler recurses into it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from broker import protocol
from broker.protocol import PointerRecord, Ref, Slot

#: Object ids are non-negative 64-bit signed integers (they travel in a Ref as "<q").
MAX_ID = 2**63 - 1
#: How deep the arguments of an op may nest (lists, tuples, dicts inside each other).
MAX_VALUE_DEPTH = 32
#: Most results one op (or plan run) may name.
MAX_RESULT_IDS = 1024
#: Longest name (op name, worker id, attribute, tag) a command may carry.
MAX_NAME_LENGTH = 256
#: Requests are echoed back; any 64-bit integer, or None for a pipelined command.
_INT64 = (-(2**63), 2**64 - 1)

_LEAF_TYPES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    slice,
    type(Ellipsis),
    torch.dtype,
    torch.device,
    torch.memory_format,
    Ref,
    Slot,
    PointerRecord,
)

Check = Callable[[Any], str | None]


def is_id(value: Any) -> bool:
    """Whether ``value`` can name a stored object."""
    return type(value) is int and 0 <= value <= MAX_ID


def _id(value: Any) -> str | None:
    return None if is_id(value) else f"an object id must be an int in [0, 2**63), not {value!r:.40}"


def _ids(value: Any) -> str | None:
    if type(value) is not list or len(value) > MAX_RESULT_IDS:
        return f"ids must be a list of at most {MAX_RESULT_IDS} object ids"
    for item in value:
        if not is_id(item):
            return _id(item)
    return None


def _request(value: Any) -> str | None:
    if value is None or (type(value) is int and _INT64[0] <= value <= _INT64[1]):
        return None
    return f"a request must be an int or None, not {value!r:.40}"


def _name(value: Any) -> str | None:
    if type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH:
        return None
    return f"a name must be a non-empty string of at most {MAX_NAME_LENGTH} characters"


def _op_name(value: Any) -> str | None:
    # any string: the engine refuses names outside the allowlist with ForbiddenOperationError
    if type(value) is str and len(value) <= MAX_NAME_LENGTH:
        return None
    return f"an op name must be a string of at most {MAX_NAME_LENGTH} characters"


def _flag(value: Any) -> str | None:
    return None if type(value) is bool else "a flag must be true or false"


def _ref_or_id(value: Any) -> str | None:
    if type(value) is Ref:
        return _id(value.id)
    return _id(value)


def _anything(value: Any) -> str | None:
    return _value(value, 0)


def _args(value: Any) -> str | None:
    if type(value) is not list:
        return "op arguments must be a list"
    return _value(value, 0)


def _kwargs(value: Any) -> str | None:
    if type(value) is not dict or not all(type(key) is str for key in value):
        return "op keyword arguments must be a map with string keys"
    return _value(value, 0)


def _value(value: Any, depth: int) -> str | None:
    """None if ``value`` is an argument tree of allowed leaves at most MAX_VALUE_DEPTH deep."""
    kind = type(value)
    if kind is list or kind is tuple:
        if depth >= MAX_VALUE_DEPTH:
            return f"arguments nest deeper than {MAX_VALUE_DEPTH} levels"
        for item in value:
            reason = _value(item, depth + 1)
            if reason is not None:
                return reason
        return None
    if kind is dict:
        if depth >= MAX_VALUE_DEPTH:
            return f"arguments nest deeper than {MAX_VALUE_DEPTH} levels"
        for key, item in value.items():
            if type(key) not in (str, int):
                return "argument map keys must be strings or ints"
            reason = _value(item, depth + 1)
            if reason is not None:
                return reason
        return None
    if kind is Ref:
        return _id(value.id)
    if isinstance(value, (*_LEAF_TYPES, torch.Tensor)):
        return None
    return f"a {kind.__name__} cannot be an argument"  # pragma: no cover - codec decodes none


def _query(value: Any) -> str | None:
    if type(value) is not list or len(value) > 64:
        return "a search query must be a list of at most 64 tags or ids"
    for item in value:
        if type(item) is str:
            if _name(item) is not None:
                return _name(item)
        elif not is_id(item):
            return "a search query holds tags (strings) and object ids"
    return None


def _error_record(value: Any) -> str | None:
    if type(value) is dict and all(
        type(key) is str and type(item) is str and len(item) <= 65536 for key, item in value.items()
    ):
        return None
    return "an error record must map strings to strings"


def _id_or_tag(value: Any) -> str | None:
    if type(value) is str:
        return _name(value)
    if is_id(value):
        return None
    return f"a plan is named by an object id (an int in [0, 2**63)) or a tag, not {value!r:.40}"


def _plan_data(value: Any) -> str | None:
    # broker.plan_format parses the plan fully (ops, slots, state) before it is kept;
    # here only its depth is bounded, so that parsing cannot recurse without limit
    return _value(value, 0) if type(value) is dict else "plan data is not a map"


#: command -> one check per field after the name (protocol.COMMAND_ARITY's order)
SCHEMA: dict[str, tuple[Check, ...]] = {
    protocol.STORE: (_id, _anything, _request),
    protocol.OP: (_op_name, _args, _kwargs, _ids, _flag, _request),
    protocol.GET: (_ref_or_id, _request),
    protocol.DELETE: (_id,),
    protocol.SETATTR: (
        _ref_or_id,
        _name,
        _anything,
    ),
    protocol.SEND_TO: (_id, _name, _id, _request),
    protocol.REMOTE_GET: (_id, _request),
    protocol.OBJECTS: (_request,),
    protocol.COUNT: (_request,),
    protocol.CLEAR: (_request,),
    protocol.PING: (_request,),
    protocol.SEARCH: (_query, _request),
    protocol.FORWARD_FAILED: (_ids, _error_record),
    protocol.PLAN: (_id, _plan_data, _request),
    protocol.RUN_PLAN: (_id, _args, _ids, _flag, _request),
    protocol.FETCH_PLAN: (_id_or_tag, _request),
    protocol.ALLOWED_TO_GET: (_id, _request),
}

assert SCHEMA.keys() == protocol.COMMAND_ARITY.keys(), "every command needs a schema"
assert all(len(SCHEMA[name]) == arity for name, arity in protocol.COMMAND_ARITY.items())


#: leaves an op's arguments usually are: a flat argument list of these needs no walk
_FLAT_LEAVES = frozenset({type(None), bool, int, float, str, torch.Tensor, torch.nn.Parameter})


def _plain_op(command: list[Any]) -> bool:
    """The hot path: an op on refs and scalars, checked without the general walk.

    True only if every field is valid; False means "take the general check", which
    then finds the reason (or accepts what this shortcut does not cover).
    """
    _, name, args, kwargs, result_ids, grad_enabled, request = command
    if not (
        type(name) is str
        and len(name) <= MAX_NAME_LENGTH
        and type(args) is list
        and type(kwargs) is dict
        and type(result_ids) is list
        and len(result_ids) <= MAX_RESULT_IDS
        and type(grad_enabled) is bool
        and (request is None or type(request) is int)  # msgpack ints fit 64 bits
    ):
        return False
    for result_id in result_ids:
        if type(result_id) is not int or not 0 <= result_id <= MAX_ID:
            return False
    for arg in args:
        kind = type(arg)
        if kind is Ref:
            if not 0 <= arg.id <= MAX_ID:
                return False
        elif kind not in _FLAT_LEAVES:
            return False
    return not kwargs or all(
        type(key) is str and type(value) in _FLAT_LEAVES for key, value in kwargs.items()
    )


def check_command(command: list[Any]) -> str | None:
    """Why ``[name, *fields]`` is not a valid command of a known name, or None if it is.

    The caller has already checked that the name is known and the length right.
    """
    name = command[0]
    if name == protocol.OP and _plain_op(command):
        return None
    for index, (check, field) in enumerate(zip(SCHEMA[name], command[1:], strict=True)):
        reason = check(field)
        if reason is not None:
            return f"{name} field {index + 1}: {reason}"
    return None


#: The envelope's fields share the commands' checks (worker.engine).
check_request = _request
check_name = _name


def request_of(command: list[Any]) -> int | None:
    """The request a command of any shape asks to be answered on, if it names a valid one."""
    if len(command) > 1 and command[0] in SCHEMA and SCHEMA[command[0]][-1] is _request:
        last = command[-1]
        if _request(last) is None:
            return last
    return None
