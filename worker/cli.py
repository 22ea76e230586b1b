"""``tensorfleet worker`` and ``tensorfleet up``: run fleet workers on this machine.

Both check the broker and Redis before Celery starts, so an unreachable server is
one ``Error:`` line naming it (after ``TENSORFLEET_CONNECT_RETRIES`` attempts)
rather than Celery retrying it, with tracebacks, a hundred times.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from broker import topology

_LOGLEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


class WorkerIdType(click.ParamType):
    """A worker id that can name a queue (``bob``, ``secure_worker``): a usage error if not."""

    name = "worker id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            topology.worker_queue(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        return str(value)


WORKER_ID = WorkerIdType()


def check_servers(worker_ids: Sequence[str]) -> None:
    """Reach the broker and Redis now: BrokerConnectionError / StoreUnavailableError if not.

    The broker gets ``TENSORFLEET_CONNECT_RETRIES`` more attempts, a second apart at
    first, as a client does; Redis the retries of the worker's own Redis client.
    """
    import kombu
    import kombu.exceptions
    import redis

    from broker.amqp import safe_url
    from broker.errors import BrokerConnectionError, StoreUnavailableError
    from broker.settings import get_settings
    from broker.tls import kombu_ssl, redis_ssl_kwargs
    from worker.redis_store import connect

    settings = get_settings()
    urls = list(settings.broker_urls)  # kombu tries each in turn (failover)
    connection = kombu.Connection(";".join(urls), connect_timeout=5, ssl=kombu_ssl(settings))
    try:
        connection.ensure_connection(
            max_retries=settings.connect_retries, interval_start=1, interval_step=1, interval_max=5
        )
    except kombu.exceptions.OperationalError as error:  # kombu re-raises socket errors as it
        attempts = settings.connect_retries + 1
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        reason = f"{str(error).rstrip('.')} (gave up after {tries})"
        raise BrokerConnectionError("; ".join(safe_url(url) for url in urls), reason) from None
    finally:
        connection.release()
    client = connect(settings.redis_url, redis_ssl_kwargs(settings, settings.redis_url))
    try:
        client.ping()
    except redis.RedisError as error:
        reason = str(error).rstrip(".")
        workers = ", ".join(worker_ids)
        raise StoreUnavailableError(workers, safe_url(settings.redis_url), reason) from None
    finally:
        client.close()


@click.command()
@click.argument("worker_id", type=WORKER_ID)
@click.option("--loglevel", "-l", type=_LOGLEVELS, default="WARNING", show_default=True)
def worker(worker_id: str, loglevel: str) -> None:
    """Run fleet worker WORKER_ID in the foreground: a Celery solo worker on its queue.

    It consumes tensorfleet.worker.WORKER_ID (TENSORFLEET_NAMESPACE changes the
    prefix), keeps its objects in Redis and reloads them when restarted.
    SIGTERM or Ctrl-C stops it after the message it is running.
    """
    from worker.runner import run_worker

    check_servers([worker_id])
    run_worker(worker_id, loglevel.upper())


@click.command()
@click.argument("worker_ids", nargs=-1, required=True, type=WORKER_ID)
@click.option("--loglevel", "-l", type=_LOGLEVELS, default="WARNING", show_default=True)
def up(worker_ids: Sequence[str], loglevel: str) -> None:
    """Run several fleet workers (one process each) until Ctrl-C or SIGTERM stops them all."""
    from worker.runner import run_fleet

    duplicates = sorted({w for w in worker_ids if list(worker_ids).count(w) > 1})
    if duplicates:
        raise click.BadParameter(
            f"{', '.join(duplicates)} given more than once: one process serves each worker id",
            param_hint="WORKER_IDS",
        )
    check_servers(worker_ids)
    sys.exit(run_fleet(worker_ids, loglevel.upper()))
