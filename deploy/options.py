"""click parameter types the tools share: each bad value is a usage error saying what to give.

A value is checked when the command line is parsed, before any worker starts or any
training runs, so a mistake costs nothing and names the option.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import click

from worker.cli import WORKER_ID

#: integers >= 1 (rounds, epochs, batch size, hidden units, samples)
POSITIVE_INT = click.IntRange(min=1)


class PositiveFloat(click.FloatRange):
    """A finite number above 0 (``--lr``): not 0, not negative, not nan or inf."""

    name = "positive number"

    def __init__(self) -> None:
        super().__init__(min=0.0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number above 0", param, ctx)
        return number


class OutputFile(click.Path):
    """A file to write, in a directory that exists and is writable; no directory is made."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, writable=True, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        parent = path.parent
        if not parent.is_dir():
            self.fail(
                f"directory {parent} does not exist: create it first, or write {path.name} "
                "somewhere else",
                param,
                ctx,
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            self.fail(f"directory {parent} is not writable: choose another place", param, ctx)
        return path


class WorkerIds(click.ParamType):
    """A non-empty, comma-separated list of distinct worker ids, the aggregator not among them."""

    name = "ids"

    def __init__(self, aggregator: str) -> None:
        self.aggregator = aggregator

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        ids = [part.strip() for part in str(value).split(",")]
        if not any(ids):
            self.fail("give at least one worker id, comma-separated (bob,alice,jon)", param, ctx)
        if "" in ids:
            self.fail(f"{value!r} has an empty id: separate ids with single commas", param, ctx)
        for worker_id in ids:
            WORKER_ID.convert(worker_id, param, ctx)
        repeated = sorted({worker_id for worker_id in ids if ids.count(worker_id) > 1})
        if repeated:
            self.fail(f"{', '.join(repeated)} given more than once: ids must differ", param, ctx)
        if self.aggregator in ids:
            self.fail(
                f"{self.aggregator} is the aggregator, not a data owner: choose other ids",
                param,
                ctx,
            )
        return tuple(ids)
