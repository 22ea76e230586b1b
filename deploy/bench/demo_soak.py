"""Demo soak: the fleet demo at full length, ten times in a row, beside the in-process run.

Issue 16: ``tensorfleet demo --fleet`` failed in 5 of 6 runs (the session dropped
pipelined commands, so a model copy was missing when it moved to the aggregator).
This section runs the demo as the command does, with its defaults (20 rounds x 3
local epochs), :data:`RUNS` times on the bench's private fleet, after one run on
in-process workers with the same seed, and counts:

* the runs that finished (a run that fails is reported on stderr, and the next starts);
* the runs whose final accuracies, federated and centralized, equal the in-process
  run's to the printed precision (same seed, same ops: they must);
* the runs after which the workers hold no object at all (the demo deletes what it
  makes, even when it fails).

``--quick`` runs it twice, with 2 rounds of 1 local epoch: a smoke run.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import click
import torch

from deploy.bench.common import Row
from deploy.demo import AGGREGATOR, DATA_OWNERS, DemoConfig, DemoResult, count, run_demo

RUNS = 10
QUICK_RUNS = 2
#: the fleet workers the section needs (on the bench's private fleet)
FLEET_WORKERS = (*DATA_OWNERS, AGGREGATOR)


def printed_accuracy(result: DemoResult) -> tuple[str, str]:
    """The final accuracies as the demo prints them (federated, centralized)."""
    return f"{result.federated_accuracy[-1]:.2f}", f"{result.central_accuracy[-1]:.2f}"


def _silent(line: str) -> None:
    """run_demo's echo: the soak prints one line per run instead."""


def _progress(line: str) -> None:
    click.echo(line, err=True)


def run(quick: bool, workers: Mapping[str, Any]) -> list[Row]:
    """RUNS fleet demo runs; rows: finished, same accuracy, clean, and time vs in-process."""
    import client as sy

    config = replace(DemoConfig(), rounds=2, local_epochs=1) if quick else DemoConfig()
    runs = QUICK_RUNS if quick else RUNS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `tensorfleet demo` runs
    try:
        hook = sy.TorchHook(torch)
        in_process = [sy.VirtualWorker(hook, id=worker_id) for worker_id in FLEET_WORKERS]
        reference = run_demo(config, in_process[:-1], in_process[-1], echo=_silent, progress=False)
        expected = printed_accuracy(reference)
        _progress(
            f"demo-soak: in-process run: federated {expected[0]}%, centralized {expected[1]}%, "
            f"{reference.seconds:.1f} s"
        )
        owners = [workers[owner] for owner in DATA_OWNERS]
        fleet = list(workers.values())
        finished = identical = clean = 0
        seconds = []
        for number in range(1, runs + 1):
            outcome = _fleet_run(config, owners, workers[AGGREGATOR])
            left = sum(worker.object_count() for worker in fleet)
            clean += left == 0
            if outcome is not None:
                finished += 1
                accuracy = printed_accuracy(outcome)
                identical += accuracy == expected
                seconds.append(outcome.seconds)
                what = (
                    f"federated {accuracy[0]}%, centralized {accuracy[1]}% "
                    f"({'the same as' if accuracy == expected else 'NOT the same as'} "
                    f"in-process), {outcome.seconds:.1f} s"
                )
            else:
                what = "failed"
            _progress(f"demo-soak: fleet run {number}/{runs}: {what}; objects left: {left}")
    finally:
        torch.set_num_threads(threads)
    shape = f"{count(config.rounds, 'round')} x {count(config.local_epochs, 'local epoch')}"
    return [
        Row(
            "demo_soak_finished",
            f"fleet demo runs finished ({shape})",
            finished,
            "runs",
            "runs started",
            runs,
            lower_is_better=False,
        ),
        Row(
            "demo_soak_identical_accuracy",
            "fleet demo runs with the in-process accuracy",
            identical,
            "runs",
            "runs started",
            runs,
            lower_is_better=False,
        ),
        Row(
            "demo_soak_clean_runs",
            "fleet demo runs leaving no object behind",
            clean,
            "runs",
            "runs started",
            runs,
            lower_is_better=False,
        ),
        Row(
            "demo_soak_seconds_vs_inprocess",
            "fleet demo training (median run)",
            statistics.median(seconds) if seconds else float("nan"),
            "s",
            "in-process run",
            reference.seconds,
        ),
    ]


def _fleet_run(config: DemoConfig, owners: list[Any], aggregator: Any) -> DemoResult | None:
    """One demo run on the fleet; None (and the error on stderr) if it failed."""
    from client.cli import describe, one_line

    try:
        return run_demo(
            config, owners, aggregator, echo=_silent, progress=False, announce=_progress
        )
    except Exception as error:  # the soak counts failures; Ctrl-C still stops it
        _progress(f"demo-soak: {one_line(describe(error))}")
        return None
