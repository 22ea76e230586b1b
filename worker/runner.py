"""Running fleet workers: one Celery solo worker per worker id, in the foreground.

``run_worker`` turns this process into worker ``<id>`` (Celery's own signal
handling gives a warm shutdown on SIGTERM and Ctrl-C: the running message
finishes, unacknowledged ones go back to the queue). ``run_fleet`` starts one
such process per id and stops them all when it is told to stop or one dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import IO, Any

from broker import topology
from broker.settings import Settings, get_settings


def worker_argv(worker_id: str, namespace: str, loglevel: str = "INFO") -> list[str]:
    """The ``celery worker`` arguments of worker ``worker_id``."""
    return [
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--queues",
        topology.worker_queue(worker_id, namespace),
        "--hostname",
        f"{worker_id}.{namespace}@%h",
        "--loglevel",
        loglevel,
        # gossip and mingle only add start-up delay and broadcast traffic to a solo worker
        # that shares nothing with its peers; heartbeats stay on (without them a solo
        # worker was seen to stall on a backlog).
        "--without-gossip",
        "--without-mingle",
    ]


def run_worker(worker_id: str, loglevel: str = "INFO") -> None:
    """Serve ``worker_id``'s queue in this process until SIGTERM or Ctrl-C."""
    os.environ["TENSORFLEET_WORKER_ID"] = worker_id
    get_settings.cache_clear()
    settings = get_settings()
    topology.worker_queue(worker_id, settings.namespace)  # a bad id fails before Celery starts

    from worker.celery_app import app

    app.worker_main(worker_argv(worker_id, settings.namespace, loglevel))


def run_fleet(worker_ids: Sequence[str], loglevel: str = "INFO") -> int:
    """Run one worker process per id; SIGTERM/Ctrl-C (or one dying) stops all. Exit status.

    With TENSORFLEET_METRICS_PORT set, the workers serve metrics on that port and the
    ones after it, in the order given.
    """
    settings = get_settings()
    for worker_id in worker_ids:
        topology.worker_queue(worker_id, settings.namespace)
    processes = []
    for number, worker_id in enumerate(worker_ids):
        env = None
        if settings.metrics_port:  # one port each: TENSORFLEET_METRICS_PORT, +1, +2, ...
            env = {**os.environ, "TENSORFLEET_METRICS_PORT": str(settings.metrics_port + number)}
        processes.append(start_worker_process(worker_id, env, loglevel=loglevel, quiet=False))
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(0.2)
    finally:
        stop_processes(processes)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [p.returncode for p in processes if p.returncode not in (0, -signal.SIGTERM)]
    return 0 if stopping or not failed else failed[0]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the worker when its parent dies, so no worker outlives its run."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_worker_process(
    worker_id: str,
    env: Mapping[str, str] | None = None,
    *,
    loglevel: str = "WARNING",
    log: IO[bytes] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    quiet: bool = True,
    die_with_parent: bool = False,
    wrapper: Sequence[str] = (),
    datasets: Sequence[str] = (),
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``tensorfleet worker <id>`` as a child process: the one launcher of worker processes.

    The CLI (``tensorfleet up``), the demo and benchmarks, and the test fixture all start
    workers here. ``log`` receives the worker's stdout and stderr (default: stdout is
    dropped when ``quiet``, stderr is inherited); ``die_with_parent`` makes Linux stop the
    worker if this process dies first (tests and temporary fleets). ``datasets`` are
    ``NAME=PATH`` entries the worker hosts (``--dataset``); ``own_session`` starts
    it in a session of its own, so the terminal's Ctrl-C reaches only the job that started
    it, which stops it when it is done (a job's private fleet keeps serving the job's
    clean-up after the first Ctrl-C).
    ``wrapper`` is a command the worker runs under, such as ``("ip", "netns", "exec",
    "owner-bob")`` to put it on another (network namespace) host; it must exec the worker
    in place.
    """
    stdout: Any = log if log is not None else (subprocess.DEVNULL if quiet else None)
    return subprocess.Popen(
        [
            *wrapper,
            sys.executable,
            "-m",
            "client.cli",
            "worker",
            worker_id,
            "--loglevel",
            loglevel,
            *(argument for entry in datasets for argument in ("--dataset", entry)),
        ],
        stdout=stdout,
        stderr=subprocess.STDOUT if log is not None else None,
        env=None if env is None else dict(env),
        cwd=cwd,
        preexec_fn=_die_with_parent if die_with_parent else None,
        start_new_session=own_session,
    )


def stop_processes(processes: Sequence[subprocess.Popen[Any]], grace: float = 30.0) -> None:
    """SIGTERM every process (a warm shutdown), then SIGKILL any still there after ``grace``."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def purge_namespace(namespace: str, worker_ids: Sequence[str], settings: Settings) -> None:
    """Delete a namespace's worker queues, dead-letter queue and Redis keys (best effort).

    For runs that made a namespace of their own (tests, benchmarks): nothing may be
    left behind, and a half-gone broker or Redis must not turn clean-up into a failure.
    """
    import pika
    import redis

    from broker.tls import pika_parameters, redis_ssl_kwargs
    from worker import keys

    with contextlib.suppress(Exception):
        connection = pika.BlockingConnection(pika_parameters(settings))
        channel = connection.channel()
        for worker_id in worker_ids:
            name = topology.worker_queue(worker_id, namespace)
            channel.queue_delete(name)
            channel.exchange_delete(name)
        channel.queue_delete(topology.dead_letter_queue(namespace))
        channel.exchange_delete(topology.dead_letter_exchange(namespace))
        connection.close()
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(
            settings.redis_url, **redis_ssl_kwargs(settings, settings.redis_url)
        )
        found = list(client.scan_iter(match=keys.pattern(namespace), count=1000))
        for start in range(0, len(found), 500):
            client.delete(*found[start : start + 500])
        client.close()
