"""``tensorfleet loadtest``: many client processes, a mix of pointer ops, every result checked.

The command starts ``--clients`` processes (:mod:`deploy.loadclient`), each running a
random mix of pipelined ops, synchronous ops, send + get and moves on ``--workers``
for ``--duration`` seconds (or until ``--ops`` operations in all), and checks every
result against the same computation on local torch. It prints, per kind of
operation, throughput and latency percentiles (HdrHistogram, merged across processes
from their encoded form), errors by type and wrong results, and what the run left
behind; ``--json FILE`` writes the same figures.

By default the run gets a private fleet (:func:`deploy.fleet_launch.private_fleet`:
the workers in a fresh ``TENSORFLEET_NAMESPACE``, stopped and deleted afterwards), as
``tensorfleet bench --fleet`` does; ``--use-running-fleet`` targets the fleet of the
current namespace instead, whose workers must be serving. Either way the clients
delete their objects at the end, and the command then checks that no object, queue
or Redis key of the run is left (:mod:`deploy.loadcheck`). The merged figures, the
printed table and the JSON are :mod:`deploy.loadreport`'s.

Exit status: 0 when every result was right and nothing was left behind; 1 when a
result was wrong, a client failed, or something of the run was left; 2 for a bad
option; 130 after Ctrl-C otherwise. The first Ctrl-C ends the run after each client's
current operation (the clients ignore SIGINT; the command tells them to stop), then
the clients delete what they made and the report covers the operations done; a
second Ctrl-C stops waiting for them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import queue
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from deploy.interrupt import stop_between_steps
from deploy.loadcheck import (
    Leftovers,
    namespace_queues,
    objects_left,
    queues_left,
    redis_left,
    rss_mib,
)
from deploy.loadclient import KINDS, ClientPlan, client_main
from deploy.loadreport import RunFigures, report, to_json
from deploy.options import POSITIVE_INT, OutputFile, PositiveFloat, WorkerIds

DEFAULT_MIX = "pipelined=4,sync=2,sendget=1,move=1"
#: seconds the clients have to connect and send their operands before the run gives up
READY_SECONDS = 600.0
#: seconds between two refreshes of the progress bar
REFRESH_SECONDS = 0.25


class Mix(click.ParamType):
    """``kind=weight,...``: known kinds, integer weights >= 0, at least one above 0."""

    name = "mix"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        weights: dict[str, int] = {}
        for part in str(value).split(","):
            kind, sep, weight = part.strip().partition("=")
            kind = kind.strip()
            if not sep:
                self.fail(
                    f"{part.strip()!r} is not kind=weight (for example {DEFAULT_MIX})", param, ctx
                )
            if kind not in KINDS:
                self.fail(f"unknown kind {kind!r}: choose from {', '.join(KINDS)}", param, ctx)
            if kind in weights:
                self.fail(f"{kind} given more than once", param, ctx)
            try:
                number = int(weight)
            except ValueError:
                number = -1
            if number < 0:
                self.fail(f"weight of {kind} must be an integer >= 0, not {weight!r}", param, ctx)
            weights[kind] = number
        if not any(weights.values()):
            self.fail("give at least one kind a weight above 0", param, ctx)
        return tuple((kind, weight) for kind, weight in weights.items() if weight)


def _announce(line: str) -> None:
    click.echo(line, err=True)


def run_clients(
    plans: Sequence[ClientPlan], total: float, unit: str, progress_bar: bool
) -> RunFigures:
    """Start a process per plan, start them together, show progress, merge their figures."""
    from tqdm.auto import tqdm

    context = multiprocessing.get_context("spawn")
    channel: Any = context.Queue()
    start = context.Event()
    stop = context.Event()
    progress = context.Array("q", len(plans), lock=False)
    processes = [
        context.Process(
            target=client_main,
            args=(plan, channel, start, stop, progress),
            name=f"loadtest-client-{plan.index}",
            daemon=True,
        )
        for plan in plans
    ]
    figures = RunFigures(len(plans))
    done: set[int] = set()
    try:
        for process in processes:
            process.start()
        _announce(f"{len(plans)} client processes starting (each imports torch, connects) ...")
        ready: set[int] = set()
        deadline = time.monotonic() + READY_SECONDS
        while len(ready | done) < len(plans):
            _receive(channel, figures, ready, done, processes, deadline - time.monotonic())
            if time.monotonic() > deadline:
                raise click.ClickException("the load-test clients did not get ready in time")
        start.set()
        began = time.monotonic()
        _announce(
            f"running: {len(plans)} clients, "
            + (f"{total:g} s" if unit == "s" else f"{total:g} operations")
            + " (Ctrl-C stops them after their current operation)"
        )
        with (
            stop_between_steps(_announce) as interrupt,
            tqdm(total=total, unit=unit, desc="loadtest", disable=not progress_bar) as bar,
        ):
            while len(done) < len(plans):
                _receive(channel, figures, ready, done, processes, REFRESH_SECONDS)
                if interrupt.requested and not stop.is_set():
                    stop.set()  # the clients end after their current operation and clean up
                    figures.interrupted = True
                value = time.monotonic() - began if unit == "s" else sum(progress)
                bar.n = min(value, total)
                bar.set_postfix(ops=sum(progress), refresh=False)
                bar.refresh()
    finally:
        stop.set()  # on an error or a second Ctrl-C: the clients end and clean up now
        start.set()
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
    return figures


def _receive(
    channel: Any,
    figures: RunFigures,
    ready: set[int],
    done: set[int],
    processes: list[Any],
    timeout: float,
) -> None:
    """Take one message from the clients (or notice a client that died without one)."""
    try:
        kind, payload = channel.get(timeout=max(timeout, 0.01))
    except queue.Empty:
        for index, process in enumerate(processes):
            if index not in done and process.exitcode is not None and channel.empty():
                done.add(index)
                figures.failed_clients.append(
                    f"client {index}: the process exited with {process.exitcode} without a report"
                )
        return
    if kind == "ready":
        ready.add(payload)
    else:
        done.add(payload.index)
        figures.add(payload)


@click.command()
@click.option("--clients", type=POSITIVE_INT, default=8, show_default=True, help="Processes.")
@click.option(
    "--workers",
    "worker_ids",
    type=WorkerIds(aggregator=""),
    default="bob,alice",
    show_default=True,
    help="Fleet workers to load, comma-separated.",
)
@click.option(
    "--mix",
    type=Mix(),
    default=DEFAULT_MIX,
    show_default=True,
    help=f"Relative weights of the operation kinds ({', '.join(KINDS)}).",
)
@click.option(
    "--size", type=POSITIVE_INT, default=100, show_default=True, help="Elements per tensor."
)
@click.option(
    "--duration",
    type=PositiveFloat(),
    default=None,
    help="Seconds to run (default 10, unless --ops is given).",
)
@click.option("--ops", type=POSITIVE_INT, default=None, help="Run this many operations in all.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the op draws.")
@click.option(
    "--json",
    "json_path",
    type=OutputFile(),
    default=None,
    metavar="FILE",
    help="Also write the figures to FILE.",
)
@click.option(
    "--use-running-fleet",
    is_flag=True,
    help="Load the running fleet of TENSORFLEET_NAMESPACE instead of a private one.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def loadtest(
    clients: int,
    worker_ids: tuple[str, ...],
    mix: tuple[tuple[str, int], ...],
    size: int,
    duration: float | None,
    ops: int | None,
    seed: int,
    json_path: Path | None,
    use_running_fleet: bool,
    progress: bool,
) -> None:
    """Load fleet workers with many clients; check every result; report latency and leaks."""
    if duration is not None and ops is not None:
        raise click.UsageError("give --duration or --ops, not both")
    if ops is not None and ops < clients:
        raise click.UsageError(f"--ops {ops} is fewer than --clients {clients}")
    if dict(mix).get("move") and len(worker_ids) < 2:
        raise click.UsageError("move needs two workers at least: add one to --workers")
    if duration is None and ops is None:
        duration = 10.0
    import torch

    import client as sy
    from broker.settings import get_settings
    from client.fleet import get_fleet_transport, reset_fleet_transport
    from deploy.fleet_launch import private_fleet, running_workers

    hook = sy.TorchHook(torch)
    click.echo(
        f"machine: {platform.machine()}, {os.cpu_count() or 1} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average before: "
        + " ".join(f"{load:.2f}" for load in os.getloadavg())
    )
    settings = get_settings()
    if use_running_fleet:
        try:
            own_queue = get_fleet_transport().reply_address
            workers = running_workers(worker_ids, hook)
            _announce(f"using the running fleet (namespace {settings.namespace})")
            figures, leftovers, rss = _run(
                workers, worker_ids, mix, size, duration, ops, seed, clients, progress, False
            )
        finally:
            reset_fleet_transport()  # deletes this process's reply queue
        leftovers.queues += queues_left([own_queue], settings)
    else:
        with private_fleet(worker_ids, hook, _announce) as workers:
            namespace = get_settings().namespace
            settings = get_settings()
            own_queue = get_fleet_transport().reply_address
            figures, leftovers, rss = _run(
                workers, worker_ids, mix, size, duration, ops, seed, clients, progress, True
            )
        # the fleet is gone: nothing of its namespace may be left
        queues = namespace_queues(namespace, worker_ids, [*figures.reply_queues, own_queue])
        leftovers.queues += queues_left(queues, settings)
        keys, _ = redis_left(settings, namespace, worker_ids, None)
        leftovers.redis += keys
    click.echo(report(figures, leftovers, rss))
    if json_path is not None:
        extra = {
            "workers": list(worker_ids),
            "mix": dict(mix),
            "size": size,
            "fleet": "running" if use_running_fleet else "private",
            "load_average_after": list(os.getloadavg()),
        }
        text = json.dumps(to_json(figures, leftovers, rss, extra), indent=2, allow_nan=False)
        json_path.write_text(text + "\n", encoding="utf-8")
        _announce(f"figures written to {json_path}")
    if sum(figures.wrong.values()) or figures.failed_clients or not leftovers.clean:
        raise click.exceptions.Exit(1)
    if figures.interrupted:
        raise click.exceptions.Exit(130)  # the shell's status for Ctrl-C; the report is out


def _broker_port(url: str) -> int:
    """The port of the (first) broker URL: where RabbitMQ listens."""
    from urllib.parse import urlsplit

    parsed = urlsplit(url.split(";")[0])
    return parsed.port or (5671 if parsed.scheme == "amqps" else 5672)


def _run(
    workers: list[Any],
    worker_ids: tuple[str, ...],
    mix: tuple[tuple[str, int], ...],
    size: int,
    duration: float | None,
    ops: int | None,
    seed: int,
    clients: int,
    progress: bool,
    private: bool,
) -> tuple[RunFigures, Leftovers, dict[str, Any]]:
    """Run the clients on ``workers``; then RSS and what is left, while the fleet still runs."""
    from broker.settings import get_settings

    settings = get_settings()
    namespace = settings.namespace
    shares = [ops // clients + (index < ops % clients) for index in range(clients)] if ops else []
    plans = [
        ClientPlan(
            index=index,
            namespace=namespace,
            workers=worker_ids,
            mix=mix,
            size=size,
            duration=duration,
            ops=shares[index] if ops else None,
            seed=seed * 1_000_003 + index,
        )
        for index in range(clients)
    ]
    total, unit = (duration, "s") if duration is not None else (float(ops or 0), "op")
    port = _broker_port(settings.broker_url)
    before = rss_mib(namespace, worker_ids, port)
    figures = run_clients(plans, total, unit, progress)
    rss = {**rss_mib(namespace, worker_ids, port), "before": before}
    created = None if private else figures.created
    leftovers = Leftovers(objects=objects_left(workers, created))
    leftovers.queues += queues_left(figures.reply_queues, settings)
    if not private:
        records, markers = redis_left(
            settings, namespace, worker_ids, figures.created, figures.senders
        )
        leftovers.redis += records
        leftovers.expiring_markers = markers
    return figures, leftovers, rss
