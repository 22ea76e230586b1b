"""The ``tensorfleet bench`` command: runs the sections and prints one table.

Absolute numbers drift on a shared 2-core machine; a ratio against a baseline
taken seconds apart in the same process holds. An in-process section exposes
``run(quick) -> list[Row]``; a fleet section ``run(quick, workers)``, where
``workers`` maps the ids it needs to ``FleetWorker`` handles of one private
fleet that the command starts for the run (every fleet section shares it) and
deletes afterwards: the bench never measures, or disturbs, anyone else's fleet.

``--json FILE`` also writes every figure as a list of ``{"name", "value", "unit",
"baseline", "ratio"}`` objects: ``name`` is stable snake_case
(``sync_op_vs_pika_rpc``), ``baseline`` the baseline's value, and a number that
is not finite (a ratio over a zero baseline) is ``null``.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from deploy.bench.common import Row
from deploy.options import OutputFile

_DEMO_WORKERS = ("bob", "alice", "jon", "secure_worker")


@dataclass(frozen=True)
class Section:
    """A benchmark section: its name for ``--only``, its function, the fleet workers it needs."""

    name: str
    target: str  # "module:function"
    fleet_workers: tuple[str, ...] = ()  # empty: an in-process section

    def load(self) -> Callable[..., list[Row]]:
        module_name, function_name = self.target.split(":")
        function: Callable[..., list[Row]] = getattr(
            importlib.import_module(module_name), function_name
        )
        return function


SECTIONS = (
    Section("in-process", "deploy.bench.inprocess:run"),
    Section("fedavg", "deploy.bench.fedavg:run"),
    Section("plans", "deploy.bench.plans:run"),
    Section("fleet", "deploy.bench.fleet:run", ("bob", "alice", "carol")),
    Section("fedavg-fleet", "deploy.bench.fedavg:run_fleet", _DEMO_WORKERS),
    Section("plans-fleet", "deploy.bench.plans:run_fleet", ("bob",)),
    Section("demo-soak", "deploy.bench.demo_soak:run", _DEMO_WORKERS),
)
_BY_NAME = {section.name: section for section in SECTIONS}
#: carol runs with Celery task events off: the fleet section measures what they cost on bob
WORKER_ENV = {"carol": {"TENSORFLEET_TASK_EVENTS": "0"}}


def format_rows(rows: list[Row]) -> str:
    """A plain table: figure, value, baseline, ratio."""
    header = f"{'figure':<52} {'TensorFleet':>16} {'baseline':>36} {'ratio':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        value = f"{row.value:,.2f} {row.unit}"
        baseline = f"{row.baseline}: {row.baseline_value:,.2f}"
        lines.append(f"{row.figure:<52} {value:>16} {baseline:>36} {row.ratio:>7.2f}x")
    return "\n".join(lines)


def write_json(rows: list[Row], path: Path) -> None:
    """Every row as ``{"name", "value", "unit", "baseline", "ratio"}``, in table order."""
    names = [row.name for row in rows]
    repeated = sorted({name for name in names if names.count(name) > 1})
    assert not repeated, f"row names must be unique: {repeated}"
    text = json.dumps(
        [row.to_json() for row in rows], indent=2, allow_nan=False, ensure_ascii=False
    )
    path.write_text(text + "\n", encoding="utf-8")


def choose(only: tuple[str, ...], fleet: bool) -> list[Section]:
    """The sections to run: ``--only`` ones, else every in-process one (and fleet ones)."""
    if not only:
        return [section for section in SECTIONS if fleet or not section.fleet_workers]
    needs_fleet = [name for name in only if _BY_NAME[name].fleet_workers and not fleet]
    if needs_fleet:
        raise click.UsageError(
            f"{', '.join(needs_fleet)} run{'s' if len(needs_fleet) == 1 else ''} on a fleet: "
            "add --fleet"
        )
    return [section for section in SECTIONS if section.name in only]


@click.command()
@click.option(
    "--fleet",
    is_flag=True,
    help="Also run the fleet sections, on a private fleet started for the run and deleted "
    "after it (never on a running fleet).",
)
@click.option("--quick", is_flag=True, help="Fewer iterations: a smoke run, not a measurement.")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice([section.name for section in SECTIONS]),
    help="Run only these sections (repeatable).",
)
@click.option(
    "--json",
    "json_path",
    type=OutputFile(),
    default=None,
    metavar="FILE",
    help='Also write every figure to FILE: [{"name", "value", "unit", "baseline", "ratio"}].',
)
def bench(fleet: bool, quick: bool, only: tuple[str, ...], json_path: Path | None) -> None:
    """Print TensorFleet's figures, each beside a baseline measured in the same run."""
    sections = choose(only, fleet)
    click.echo(
        f"machine: {platform.machine()}, {os.cpu_count() or 1} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    rows: list[Row] = []
    for section in sections:
        if not section.fleet_workers:
            click.echo(f"running {section.name} ...", err=True)
            rows.extend(section.load()(quick))
    on_fleet = [section for section in sections if section.fleet_workers]
    if on_fleet:
        rows.extend(_run_on_private_fleet(on_fleet, quick))
    click.echo(format_rows(rows))
    if json_path is not None:
        write_json(rows, json_path)
        click.echo(f"figures written to {json_path}", err=True)


def _announce(line: str) -> None:
    click.echo(line, err=True)


def _run_on_private_fleet(sections: list[Section], quick: bool) -> list[Row]:
    """Run the fleet sections on one private fleet of every worker they need."""
    import client as sy
    from deploy.fleet_launch import private_fleet

    ids = list(dict.fromkeys(worker_id for s in sections for worker_id in s.fleet_workers))
    rows: list[Row] = []
    with private_fleet(ids, sy.TorchHook(torch), _announce, WORKER_ENV) as workers:
        by_id = {worker.id: worker for worker in workers}
        for section in sections:
            click.echo(f"running {section.name} ...", err=True)
            rows.extend(section.load()(quick, {i: by_id[i] for i in section.fleet_workers}))
    return rows
