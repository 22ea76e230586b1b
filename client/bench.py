"""``tensorfleet bench``: every figure beside a baseline measured in the same run.

Absolute numbers drift on a shared 2-core machine; a ratio against a baseline
taken seconds apart in the same process holds. Each benchmark module exposes
``run(quick: bool) -> list[Row]``; this command runs them and prints one table.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click
import torch


@dataclass(frozen=True)
class Row:
    """One figure and its baseline. ``lower_is_better`` says how to read the ratio."""

    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    lower_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")


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


def in_process_rows(quick: bool) -> list[Row]:
    """Pipelined and synchronous pointer ops on a VirtualWorker, beside local torch."""
    import client as sy

    hook = sy.TorchHook(torch)
    bench_worker = sy.VirtualWorker(hook, id="bench")
    bench_worker.clear_objects()
    local_a, local_b = torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([1.0, 1, 1, 1, 1])
    a = local_a.send(bench_worker)  # type: ignore[attr-defined]
    b = local_b.send(bench_worker)  # type: ignore[attr-defined]
    calls = 5_000 if quick else 50_000

    def pipelined_loop() -> None:
        for _ in range(calls):
            result = a + b
        del result
        bench_worker.synchronize()

    def local_loop() -> None:
        for _ in range(calls):
            torch.add(local_a, local_b)

    pipelined_loop()  # warm the shape cache and the allocator
    pipelined = per_call_us(pipelined_loop, 1) / calls
    local = per_call_us(local_loop, 1) / calls
    sync_calls = 500 if quick else 5_000
    sync = per_call_us(lambda: (a + b).get(), sync_calls)
    local_sync = per_call_us(lambda: torch.add(local_a, local_b).clone(), sync_calls)
    return [
        Row(
            "in-process pipelined pointer op (a + b)", pipelined, "µs/op", "local torch.add", local
        ),
        Row(
            "in-process synchronous op ((a + b).get())",
            sync,
            "µs/op",
            "local torch.add + clone",
            local_sync,
        ),
    ]


#: benchmark modules that contribute rows: "module:function", each run(quick) -> list[Row]
SECTIONS: dict[str, str] = {
    "in-process": "client.bench:in_process_rows",
    "fedavg": "client.bench_fedavg:run",
    "plans": "client.bench_plans:run",
}
FLEET_SECTIONS: dict[str, str] = {
    "fleet": "client.bench_fleet:run",
    "fedavg-fleet": "client.bench_fedavg:run_fleet",
    "plans-fleet": "client.bench_plans:run_fleet",
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
