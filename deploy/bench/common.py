"""What every benchmark section shares: the :class:`Row` of a figure, timing and counting."""

from __future__ import annotations

import contextlib
import gc
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: a row's ``name``: stable snake_case, what scripts reading ``--json`` key on
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


@dataclass(frozen=True)
class Row:
    """One figure and its baseline. ``lower_is_better`` says how to read the ratio.

    ``name`` is stable across runs and versions (``sync_op_vs_pika_rpc``); ``figure``
    and ``baseline`` are the words of the printed table.
    """

    name: str
    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    lower_is_better: bool = True

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"row name {self.name!r} is not snake_case")

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    def to_json(self) -> dict[str, Any]:
        """``{"name", "value", "unit", "baseline", "ratio"}``; a non-finite number is null."""
        return {
            "name": self.name,
            "value": _finite(self.value),
            "unit": self.unit,
            "baseline": _finite(self.baseline_value),
            "ratio": _finite(self.ratio),
        }


def _finite(number: float) -> float | None:
    return number if math.isfinite(number) else None


def per_call_us(function: Callable[[], object], calls: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` µs per call of ``function`` (the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


@contextlib.contextmanager
def counting_messages(transport: Any) -> Iterator[dict[str, float]]:
    """Count the messages, commands and bytes a client transport publishes while inside.

    Wraps ``publish`` on this transport instance only, and restores it on the way out.
    """
    from broker import codec

    counts = {"commands": 0.0, "messages": 0.0, "bytes": 0.0}
    publish = transport.publish

    def counting_publish(worker_id: str, body: Any) -> None:
        counts["messages"] += 1
        counts["bytes"] += len(body)
        counts["commands"] += len(codec.decode(body)["commands"])
        publish(worker_id, body)

    setattr(transport, "publish", counting_publish)  # noqa: B010  # on this instance only
    try:
        yield counts
    finally:
        delattr(transport, "publish")  # back to the class's method
