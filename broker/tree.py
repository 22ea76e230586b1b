"""The one walker over argument trees: lists, tuples and dicts of leaves, nested.

Commands carry their arguments as such trees (``[Ref(1), (2, Ref(3)), {"dim": 0}]``),
and the engine, the plan checker, the op limits and the client each need to look at
or replace the leaves: refs to resolve, slots to bind, tensors to measure. They all
use these two functions, so what counts as a container is decided here once: exactly
``list``, ``tuple`` and ``dict`` (a ``torch.Size`` or a named tuple is a leaf, as it
is a value of its own). Depth is bounded where trees come from the wire
(broker.schema), so recursion here stays shallow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def map_leaves(value: Any, replace: Callable[[Any], Any]) -> Any:
    """``value`` rebuilt with every leaf replaced by ``replace(leaf)``; containers kept."""
    kind = type(value)
    if kind is list or kind is tuple:
        return kind(map_leaves(item, replace) for item in value)
    if kind is dict:
        return {key: map_leaves(item, replace) for key, item in value.items()}
    return replace(value)


def leaves(value: Any) -> Iterator[Any]:
    """Every leaf of ``value``, depth first, in order (dict values in insertion order)."""
    kind = type(value)
    if kind is list or kind is tuple:
        for item in value:
            yield from leaves(item)
    elif kind is dict:
        for item in value.values():
            yield from leaves(item)
    else:
        yield value
