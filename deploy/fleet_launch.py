"""Fleet workers for a job (the demo, a benchmark): a running fleet's, or a private fleet's.

* :func:`private_fleet` starts ``tensorfleet worker <id>`` for every id in a fresh
  ``TENSORFLEET_NAMESPACE`` (queues ``<ns>.worker.<id>``, Redis keys ``<ns>:<id>:...``),
  so the job can reach nobody else's objects and nobody can reach its workers. On
  the way out it stops them and deletes the namespace's queues, exchanges and Redis
  keys: nothing of the job is left. Benchmarks always run on one.
* :func:`fleet_workers` uses the running fleet if every worker is consuming its
  queue and answers a ping, and runs a private fleet otherwise. The demo uses it. A
  job on a running fleet shares it with other clients: it must delete exactly the
  objects it made (by dropping its pointers) and never clear a worker.

Probing a running fleet publishes nothing to a queue without a consumer: publishing
declares the queue, so a ping to a worker that is not there would leave a durable
queue holding that ping in the shared namespace. A passive declaration asks RabbitMQ
for the queue's consumer count instead, and only workers that have one are pinged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from broker import topology
from broker.errors import BrokerConnectionError, WorkerUnavailableError
from broker.settings import Settings, get_settings
from client.fleet import reset_fleet_transport
from worker.runner import purge_namespace, start_worker_process, stop_processes

#: how long a worker of a running fleet has to answer a ping
PROBE_SECONDS = 3.0
#: how long a worker started here has to answer (it imports torch first)
START_SECONDS = 120.0
#: how long one readiness ping waits before the worker process is checked again
_PING_SECONDS = 2.0

Announce = Callable[[str], None]


def _quiet(line: str) -> None:
    """The default ``announce``: say nothing."""


@contextlib.contextmanager
def fleet_workers(
    worker_ids: Sequence[str], hook: Any, announce: Announce = _quiet
) -> Iterator[list[Any]]:
    """``FleetWorker`` handles of the running fleet if all of ``worker_ids`` serve; else private."""
    workers = _handles(worker_ids, hook)
    silent = _not_serving(workers, get_settings())
    if not silent:
        announce(
            f"using the running fleet (namespace {get_settings().namespace}): "
            f"{', '.join(worker_ids)}; this run deletes what it creates there"
        )
        yield workers
        return
    announce(
        f"fleet worker{'s' if len(silent) > 1 else ''} {', '.join(silent)} not serving in "
        f"namespace {get_settings().namespace}"
    )
    with private_fleet(worker_ids, hook, announce) as private:
        yield private


def serving_workers(worker_ids: Sequence[str], hook: Any) -> list[Any] | None:
    """``FleetWorker`` handles of the running fleet if all of ``worker_ids`` serve, else None."""
    workers = _handles(worker_ids, hook)
    return None if _not_serving(workers, get_settings()) else workers


@contextlib.contextmanager
def private_fleet(
    worker_ids: Sequence[str],
    hook: Any,
    announce: Announce = _quiet,
    worker_env: Mapping[str, Mapping[str, str]] | None = None,
    datasets: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[list[Any]]:
    """Run ``worker_ids`` in a fresh namespace for the duration; stop and purge them after.

    ``worker_env`` gives some workers settings of their own (``{"carol":
    {"TENSORFLEET_TASK_EVENTS": "0"}}``), on top of this process's environment;
    ``datasets`` maps a worker id to the ``NAME=PATH`` datasets it hosts (``--dataset``).
    """
    previous = os.environ.get("TENSORFLEET_NAMESPACE")
    namespace = f"tfrun-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _switch_namespace(namespace)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    log_dir: Path | None = None
    keep_logs = False
    settings: Settings | None = None
    try:
        settings = get_settings()  # a bad TENSORFLEET_* value fails here, before anything starts
        workers = _handles(worker_ids, hook)  # connects first: a broker that is down fails here
        announce(
            f"starting fleet workers {', '.join(worker_ids)} in private namespace {namespace} "
            "for this run (stopped and deleted afterwards)"
        )
        log_dir = Path(tempfile.mkdtemp(prefix=f"{namespace}-"))
        for worker_id in worker_ids:
            with open(log_dir / f"{worker_id}.log", "wb") as log:
                extra = (worker_env or {}).get(worker_id)
                processes[worker_id] = start_worker_process(
                    worker_id,
                    None if extra is None else {**os.environ, **extra},
                    log=log,
                    die_with_parent=True,
                    datasets=(datasets or {}).get(worker_id, ()),
                )
        try:
            _wait_until_serving(workers, processes, log_dir, announce)
        except WorkerUnavailableError:
            keep_logs = True  # the announcement names the log of the worker that did not start
            raise
        yield workers
    finally:
        stop_processes(list(processes.values()))
        if settings is not None:
            purge_namespace(namespace, worker_ids, settings)
        _switch_namespace(previous)
        if log_dir is not None and not keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)


def _handles(worker_ids: Sequence[str], hook: Any) -> list[Any]:
    import client as sy

    return [sy.FleetWorker(hook, id=worker_id) for worker_id in worker_ids]


def _not_serving(workers: list[Any], settings: Settings) -> list[str]:
    """Ids of the workers whose queue has no consumer, or that do not answer a ping."""
    counts = consumer_counts([worker.id for worker in workers], settings)
    silent = [worker.id for worker in workers if counts[worker.id] == 0]
    for worker in workers:
        if worker.id not in silent and not _answers(worker, PROBE_SECONDS):
            silent.append(worker.id)
    return silent


def consumer_counts(worker_ids: Sequence[str], settings: Settings) -> dict[str, int]:
    """How many consumers each worker's queue has (0 if the queue does not exist).

    A passive queue declaration: it creates nothing and publishes nothing.
    """
    import pika
    import pika.exceptions

    from broker.amqp import safe_url
    from broker.tls import pika_parameters

    counts: dict[str, int] = {}
    try:
        connection = pika.BlockingConnection(pika_parameters(settings))
    except pika.exceptions.AMQPError as error:
        raise BrokerConnectionError(safe_url(settings.broker_url), repr(error)) from None
    try:
        for worker_id in worker_ids:
            channel = connection.channel()
            queue = topology.worker_queue(worker_id, settings.namespace)
            try:
                declared = channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:  # 404: no such queue
                counts[worker_id] = 0
                continue
            counts[worker_id] = int(declared.method.consumer_count)
            channel.close()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()
    return counts


def _answers(worker: Any, seconds: float) -> bool:
    """Whether ``worker`` serves its queue and answers a ping within ``seconds``."""
    try:
        worker.wait_ready(seconds)
    except WorkerUnavailableError:
        return False
    return True


def _wait_until_serving(
    workers: list[Any],
    processes: dict[str, subprocess.Popen[bytes]],
    log_dir: Path,
    announce: Announce,
) -> None:
    """Return once every worker serves and answered a ping; WorkerUnavailableError if not.

    ``FleetWorker.wait_ready`` asks RabbitMQ for the worker's consumer (nothing is
    published before there is one), then pings; between its rounds the process is
    checked, so a worker that died is reported at once, not after the whole wait.
    """
    deadline = time.monotonic() + START_SECONDS
    for worker in workers:
        while not _answers(worker, _PING_SECONDS):
            process = processes[worker.id]
            if process.poll() is not None or time.monotonic() > deadline:
                announce(
                    f"fleet worker {worker.id} did not start; its log: {log_dir / worker.id}.log"
                )
                raise WorkerUnavailableError(worker.id, "ping", START_SECONDS)


def _switch_namespace(namespace: str | None) -> None:
    """Point this process's settings and fleet connection at ``namespace`` (None: unset)."""
    if namespace is None:
        os.environ.pop("TENSORFLEET_NAMESPACE", None)
    else:
        os.environ["TENSORFLEET_NAMESPACE"] = namespace
    get_settings.cache_clear()
    reset_fleet_transport()  # the next FleetWorker opens a new session on a new transport
