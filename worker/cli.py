"""``tensorfleet worker`` and ``tensorfleet up``: run fleet workers on this machine."""

from __future__ import annotations

import sys

import click

_LOGLEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


@click.command()
@click.argument("worker_id")
@click.option("--loglevel", "-l", type=_LOGLEVELS, default="WARNING", show_default=True)
def worker(worker_id: str, loglevel: str) -> None:
    """Run fleet worker WORKER_ID in the foreground: a Celery solo worker on its queue.

    It consumes tensorfleet.worker.WORKER_ID (TENSORFLEET_NAMESPACE changes the
    prefix), keeps its objects in Redis and reloads them when restarted.
    SIGTERM or Ctrl-C stops it after the message it is running.
    """
    from worker.runner import run_worker

    run_worker(worker_id, loglevel.upper())


@click.command()
@click.argument("worker_ids", nargs=-1, required=True)
@click.option("--loglevel", "-l", type=_LOGLEVELS, default="WARNING", show_default=True)
def up(worker_ids: tuple[str, ...], loglevel: str) -> None:
    """Run several fleet workers (one process each) until Ctrl-C or SIGTERM stops them all."""
    from worker.runner import run_fleet

    sys.exit(run_fleet(worker_ids, loglevel.upper()))
