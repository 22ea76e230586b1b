"""The ``tensorfleet bench`` command: runs the sections and prints one table.

Absolute numbers drift on a shared 2-core machine; a ratio against a baseline
taken seconds apart in the same process holds. Each section module exposes
``run(quick: bool) -> list[Row]``.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable

import click
import torch

from deploy.bench.common import Row

#: benchmark modules that contribute rows: "module:function", each run(quick) -> list[Row]
SECTIONS: dict[str, str] = {
    "in-process": "deploy.bench.inprocess:run",
    "fedavg": "deploy.bench.fedavg:run",
    "plans": "deploy.bench.plans:run",
}
FLEET_SECTIONS: dict[str, str] = {
    "fleet": "deploy.bench.fleet:run",
    "fedavg-fleet": "deploy.bench.fedavg:run_fleet",
    "plans-fleet": "deploy.bench.plans:run_fleet",
}


def _load(target: str) -> Callable[[bool], list[Row]] | None:
    module_name, function_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return None
        raise
    return getattr(module, function_name, None)


def format_rows(rows: list[Row]) -> str:
    """A plain table: figure, value, baseline, ratio."""
    header = f"{'figure':<52} {'TensorFleet':>16} {'baseline':>36} {'ratio':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        value = f"{row.value:,.2f} {row.unit}"
        baseline = f"{row.baseline}: {row.baseline_value:,.2f}"
        lines.append(f"{row.figure:<52} {value:>16} {baseline:>36} {row.ratio:>7.2f}x")
    return "\n".join(lines)


@click.command()
@click.option(
    "--fleet",
    is_flag=True,
    help="Also benchmark a running fleet (RabbitMQ, Celery, "
    "Redis), starting workers if none answer.",
)
@click.option("--quick", is_flag=True, help="Fewer iterations: a smoke run, not a measurement.")
@click.option("--only", multiple=True, help="Run only these sections (repeatable).")
def bench(fleet: bool, quick: bool, only: tuple[str, ...]) -> None:
    """Print TensorFleet's figures, each beside a baseline measured in the same run."""
    sections = dict(SECTIONS)
    if fleet:
        sections.update(FLEET_SECTIONS)
    click.echo(
        f"machine: {platform.machine()}, {_cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    rows: list[Row] = []
    for name, target in sections.items():
        if only and name not in only:
            continue
        function = _load(target)
        if function is None:
            continue
        click.echo(f"running {name} ...", err=True)
        rows.extend(function(quick))
    click.echo(format_rows(rows))


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1
