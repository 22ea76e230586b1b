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
from broker.backoff import RetryPolicy

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


class DatasetType(click.ParamType):
    """``NAME=PATH`` of a readable safetensors file, as an absolute path: a usage error if not."""

    name = "NAME=PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from safetensors import safe_open

        from broker.errors import ConfigurationError
        from worker.datasets import MAX_TENSORS, parse_option

        try:
            name, path = parse_option(str(value))
        except ConfigurationError:
            self.fail(
                f"{value!r} is not NAME=PATH (NAME of letters, digits, '_' or '-'; for "
                "example digits=/data/digits.safetensors)",
                param,
                ctx,
            )
        path = path.expanduser().resolve()
        if "," in str(path):
            self.fail(f"{str(path)!r}: a dataset path cannot contain ','", param, ctx)
        if not path.is_file():
            self.fail(f"{str(path)!r} is not a file (a safetensors file is needed)", param, ctx)
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensors = len(list(handle.keys()))
        except Exception as error:
            self.fail(f"{str(path)!r} is not a safetensors file ({error})", param, ctx)
        if not 0 < tensors <= MAX_TENSORS:
            self.fail(f"{str(path)!r} must hold 1 to {MAX_TENSORS} tensors", param, ctx)
        return f"{name}={path}"


DATASET = DatasetType()


def connect_retry(retries: int) -> RetryPolicy:
    """The start-up check's broker retries: 1 s, then growing to 5 s (kombu: 1, 2, 3, 4, 5 s)."""
    return RetryPolicy(first=1.0, maximum=5.0, retries=retries)


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
        # kombu takes float seconds, though its type stubs say int
        policy: dict[str, Any] = connect_retry(settings.connect_retries).kombu_policy()
        connection.ensure_connection(**policy)
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
@click.option(
    "--dataset",
    "datasets",
    type=DATASET,
    multiple=True,
    help="Host the tensors of a safetensors file as this worker's private data (repeatable), "
    "tagged #NAME, #<tensor name> and the tags in the file's metadata. Clients find them "
    "with bob.search('#NAME') and may compute and train on them, never .get(), .move() or "
    ".send() them. Replaces TENSORFLEET_DATASETS.",
)
def worker(worker_id: str, loglevel: str, datasets: Sequence[str]) -> None:
    """Run fleet worker WORKER_ID in the foreground: a Celery solo worker on its queue.

    It consumes tensorfleet.worker.WORKER_ID (TENSORFLEET_NAMESPACE changes the
    prefix), keeps its objects in Redis and reloads them when restarted.
    SIGTERM or Ctrl-C stops it after the message it is running.

    \b
    Hosting data (PySyft's private datasets):
      tensorfleet worker bob --dataset digits=/data/digits.safetensors
    loads the file at start (never written to Redis); a client finds it with
    bob.search("#digits", "#data").
    """
    import os

    from worker.runner import run_worker

    names = [entry.partition("=")[0] for entry in datasets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise click.BadParameter(
            f"dataset {', '.join(repeated)} given more than once: one file per name",
            param_hint="--dataset",
        )
    check_servers([worker_id])
    if datasets:
        os.environ["TENSORFLEET_DATASETS"] = ",".join(datasets)
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
