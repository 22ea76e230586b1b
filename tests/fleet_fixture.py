"""A real fleet for tests: ``tensorfleet worker <id>`` processes in an isolated namespace.

Use :func:`fleet` (also exported as ``running_fleet``)::

    with fleet(("bob", "alice")) as running:      # returns once every worker answered a ping
        bob = sy.FleetWorker(hook, id="bob")
        ...
        running.kill("bob"); running.start("bob")  # SIGKILL and restart one worker

It starts one worker process per id with ``TENSORFLEET_NAMESPACE`` set to a
fresh namespace (queue names ``<ns>.worker.<id>``, Redis keys ``<ns>:<id>:...``),
so runs never see each other's messages or objects, and sets the same
namespace in this process's environment (clearing the cached settings and the
process-wide fleet transport), so ``sy.FleetWorker`` talks to these workers.
Readiness is a real round trip: a ``ping`` envelope to each worker's queue,
answered on a reply queue; no sleeps stand in for synchronisation. On exit the
workers get SIGTERM (then SIGKILL after a grace period), and the namespace's
queues, exchanges and Redis keys are deleted. The environment is restored.

Worker logs go to files in a temporary directory; a worker that dies or does
not answer raises :class:`FleetStartError` with the end of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from broker import codec, protocol
from broker.backoff import Backoff
from broker.errors import WorkerUnavailableError
from broker.settings import Settings, get_settings
from client.fleet import FleetTransport, reset_fleet_transport
from worker.runner import purge_namespace, start_worker_process

REPO = Path(__file__).resolve().parent.parent
#: Seconds a worker may take from spawn to answering its first ping (imports torch).
START_TIMEOUT = 90.0
#: Seconds a worker gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0


class FleetStartError(RuntimeError):
    """A test worker did not start: the message includes the end of its log."""


class RunningFleet:
    """Worker processes of one namespace, with controls for crash and restart tests."""

    def __init__(
        self,
        worker_ids: Sequence[str],
        namespace: str,
        env: Mapping[str, str],
        log_dir: Path,
        worker_env: Mapping[str, Mapping[str, str]] | None = None,
        datasets: Mapping[str, Sequence[str]] | None = None,
        worker_wrapper: Mapping[str, Sequence[str]] | None = None,
        purge_on_close: bool = True,
    ) -> None:
        self.worker_ids = tuple(worker_ids)
        #: worker id -> the NAME=PATH datasets it hosts (``tensorfleet worker --dataset``)
        self.datasets = {key: tuple(value) for key, value in (datasets or {}).items()}
        self.namespace = namespace
        self.env = dict(env)
        #: worker id -> variables only that worker gets (its own TENSORFLEET_REDIS_URL...)
        self.worker_env = {w: dict(v) for w, v in (worker_env or {}).items()}
        #: worker id -> command it runs under (``ip netns exec <host>``: tests/multihost.py)
        self.worker_wrapper = {w: tuple(v) for w, v in (worker_wrapper or {}).items()}
        #: False when the servers are private and thrown away with the fleet
        self.purge_on_close = purge_on_close
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.settings = Settings.from_env(self.env)
        self._pinger: FleetTransport | None = None
        self._batches = 0

    # ------------------------------------------------------------------ processes
    def start(self, worker_id: str, wait: bool = True) -> None:
        """Start worker ``worker_id`` (again) and, by default, wait until it answers."""
        process = self.processes.get(worker_id)
        if process is not None and process.poll() is None:
            raise RuntimeError(f"worker {worker_id} is already running")
        with open(self.log_path(worker_id), "ab") as log:
            env = {**self.env, **self.worker_env.get(worker_id, {})}
            self.processes[worker_id] = start_worker_process(
                worker_id,
                env,
                log=log,
                cwd=REPO,
                die_with_parent=True,
                wrapper=self.worker_wrapper.get(worker_id, ()),
                datasets=self.datasets.get(worker_id, ()),
            )
        if wait:
            self.wait_ready([worker_id])

    def kill(self, worker_id: str) -> None:
        """SIGKILL a worker (a crash: no cleanup, unacknowledged messages are redelivered)."""
        process = self.processes[worker_id]
        process.kill()
        process.wait()

    def stop(self, worker_id: str) -> int:
        """SIGTERM a worker and wait for it; its exit status."""
        process = self.processes[worker_id]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return int(process.returncode)

    def log_path(self, worker_id: str) -> Path:
        return self.log_dir / f"{worker_id}.log"

    def log_tail(self, worker_id: str, lines: int = 40) -> str:
        try:
            text = self.log_path(worker_id).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ readiness
    def ping(self, worker_id: str, timeout: float) -> bool:
        """One ping round trip to ``worker_id``; False if no answer within ``timeout``."""
        pinger = self._transport()
        self._batches += 1
        request = self._batches
        body = codec.encode(
            protocol.envelope(
                self._batches,
                f"fleet-fixture-{os.getpid()}",
                pinger.reply_address,
                [[protocol.PING, request]],
            )
        )
        pinger.publish(worker_id, body)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                reply = pinger.receive(remaining)
            except WorkerUnavailableError:  # its queue is gone: not there (yet)
                return False
            if reply is None:
                return False
            answers = codec.decode(reply).get("replies", ())
            if any(answer[0] == request for answer in answers):
                return True
        return False

    def wait_ready(
        self, worker_ids: Sequence[str] | None = None, timeout: float = START_TIMEOUT
    ) -> None:
        """Return once every worker in ``worker_ids`` answered a ping; FleetStartError if not."""
        deadline = time.monotonic() + timeout
        backoff = Backoff(maximum=0.5)
        for worker_id in worker_ids or self.worker_ids:
            while True:
                process = self.processes[worker_id]
                if process.poll() is not None:
                    raise FleetStartError(
                        f"worker {worker_id} exited with {process.returncode} while starting:\n"
                        f"{self.log_tail(worker_id)}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FleetStartError(
                        f"worker {worker_id} did not answer a ping within "
                        f"{timeout:g} s:\n{self.log_tail(worker_id)}"
                    )
                # the queue and its exchange appear when the worker starts, its consumer
                # when it is ready: ask RabbitMQ (passive declares), then ping it
                if not self._transport().worker_state(worker_id, remaining).serving:
                    time.sleep(backoff.next_delay())  # polls RabbitMQ's answer; no event exists
                    continue
                if self.ping(worker_id, min(remaining, 2.0)):
                    break

    def _transport(self) -> FleetTransport:
        if self._pinger is None:
            self._pinger = FleetTransport(
                self.settings, client_id=f"fixture-{uuid.uuid4().hex[:8]}"
            )
        return self._pinger

    # ------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Stop every worker, then delete the namespace's queues, exchanges and Redis keys."""
        for worker_id in list(self.processes):
            with contextlib.suppress(Exception):
                self.stop(worker_id)
        if self._pinger is not None:
            self._pinger.close()
        if self.purge_on_close:
            purge(self.namespace, self.worker_ids, self.settings)


def purge(namespace: str, worker_ids: Sequence[str], settings: Settings) -> None:
    """Delete every queue, exchange and Redis key of ``namespace`` (best effort)."""
    purge_namespace(namespace, worker_ids, settings)


def new_namespace() -> str:
    """A namespace no other run uses."""
    return f"tftest-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def fleet(
    worker_ids: Sequence[str],
    namespace: str | None = None,
    env: Mapping[str, str] | None = None,
    worker_env: Mapping[str, Mapping[str, str]] | None = None,
    datasets: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[RunningFleet]:
    """Run ``tensorfleet worker <id>`` for every id in a fresh namespace; see the module doc.

    ``env`` adds environment variables for the workers (for example a small
    ``TENSORFLEET_MAX_MESSAGE_BYTES``); this process keeps its own settings
    except for the namespace. ``worker_env`` adds variables for one worker each
    (``{"bob": {"TENSORFLEET_REDIS_URL": ...}}``: a store, or a Redis user, of its own);
    ``datasets`` maps a worker id to the ``NAME=PATH`` datasets it hosts (``--dataset``).
    """
    namespace = namespace or new_namespace()
    shared_env = {**os.environ, **(env or {}), "TENSORFLEET_NAMESPACE": namespace}
    shared_env.pop("TENSORFLEET_WORKER_ID", None)
    previous = os.environ.get("TENSORFLEET_NAMESPACE")
    os.environ["TENSORFLEET_NAMESPACE"] = namespace
    get_settings.cache_clear()
    reset_fleet_transport()
    with tempfile.TemporaryDirectory(prefix=f"{namespace}-") as log_dir:
        running = RunningFleet(
            worker_ids, namespace, shared_env, Path(log_dir), worker_env, datasets
        )
        try:
            for worker_id in worker_ids:
                running.start(worker_id, wait=False)
            running.wait_ready()
            yield running
        finally:
            running.close()
            if previous is None:
                os.environ.pop("TENSORFLEET_NAMESPACE", None)
            else:
                os.environ["TENSORFLEET_NAMESPACE"] = previous
            get_settings.cache_clear()
            reset_fleet_transport()


running_fleet = fleet

__all__ = ["FleetStartError", "RunningFleet", "fleet", "new_namespace", "purge", "running_fleet"]


def _main(argv: list[str]) -> Any:  # pragma: no cover - a manual smoke check
    with fleet(argv or ["bob"]) as running:
        print(f"fleet {running.namespace} ready: {', '.join(running.worker_ids)}")


if __name__ == "__main__":  # pragma: no cover
    _main(sys.argv[1:])
