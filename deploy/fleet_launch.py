"""Reach fleet workers, or run them on this machine for as long as a job needs them.

``tensorfleet demo --fleet`` and ``tensorfleet bench --fleet`` use it: a worker
that answers a ping within a few seconds is used as it is; one that does not is
started here (``tensorfleet worker <id>``) and stopped afterwards. ``private=True``
runs every worker in a fresh namespace instead, so a benchmark never measures, or
disturbs, a fleet someone else is using, and leaves no queue or key behind.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from broker.errors import WorkerUnavailableError
from broker.settings import get_settings
from client.fleet import reset_fleet_transport
from worker.runner import purge_namespace, start_worker_process, stop_processes

#: how long a worker that should already run has to answer a ping
PROBE_SECONDS = 3.0
#: how long a worker started here has to answer (it imports torch first)
START_SECONDS = 120.0


@contextlib.contextmanager
def fleet_workers(
    worker_ids: Sequence[str],
    hook: Any,
    private: bool = False,
    announce: Callable[[str], None] | None = None,
) -> Iterator[list[Any]]:
    """``FleetWorker`` handles for ``worker_ids``; missing workers run here meanwhile."""
    previous_namespace = os.environ.get("TENSORFLEET_NAMESPACE")
    namespace = None
    if private:
        namespace = f"tfrun-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        _switch_namespace(namespace)
    started: list[subprocess.Popen[bytes]] = []
    try:
        workers = _handles(worker_ids, hook)
        missing = workers if private else _silent(workers)
        for worker in missing:
            if announce is not None:
                announce(f"starting fleet worker {worker.id} (tensorfleet worker {worker.id})")
            started.append(start_worker_process(worker.id))
        _wait_for(missing, START_SECONDS)
        yield workers
    finally:
        stop_processes(started)
        if namespace is not None:
            purge_namespace(namespace, worker_ids, get_settings())
            _switch_namespace(previous_namespace)


def answering(worker_ids: Sequence[str], hook: Any) -> bool:
    """Whether every one of ``worker_ids`` answers a ping within PROBE_SECONDS."""
    return not _silent(_handles(worker_ids, hook))


def _handles(worker_ids: Sequence[str], hook: Any) -> list[Any]:
    import client as sy

    return [sy.FleetWorker(hook, id=worker_id) for worker_id in worker_ids]


def _silent(workers: list[Any]) -> list[Any]:
    """The workers that do not answer a ping within PROBE_SECONDS."""
    silent = []
    for worker in workers:
        try:
            _wait_for([worker], PROBE_SECONDS)
        except WorkerUnavailableError:
            silent.append(worker)
    return silent


def _wait_for(workers: list[Any], seconds: float) -> None:
    """Ping each worker, allowing ``seconds`` (a ping waits in the durable queue meanwhile)."""
    for worker in workers:
        session = worker.session
        timeout, session.timeout = session.timeout, seconds
        try:
            worker.synchronize()
        finally:
            session.timeout = timeout


def _switch_namespace(namespace: str | None) -> None:
    """Point this process's settings and fleet connection at ``namespace`` (None: unset)."""
    if namespace is None:
        os.environ.pop("TENSORFLEET_NAMESPACE", None)
    else:
        os.environ["TENSORFLEET_NAMESPACE"] = namespace
    get_settings.cache_clear()
    reset_fleet_transport()  # the next FleetWorker opens a new session on a new transport
