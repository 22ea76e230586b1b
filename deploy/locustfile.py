"""A Locust user that drives TensorFleet pointer ops on fleet workers.

Run it headless against a running fleet (``tensorfleet up bob alice``)::

    locust -f deploy/locustfile.py --headless -u 8 -r 8 -t 10s --tf-workers bob,alice \\
        --csv loadtest --only-summary

Each simulated user sends a base tensor to every worker, then runs tasks (weights in
brackets): a pipelined op ``a * c`` whose results are checked in batches with one
``torch.stack(...).get()`` [4], a synchronous op ``(a - c).get()`` [2], ``send`` +
``get`` of a fresh tensor [1] and ``send`` + ``move`` + ``get`` [1]. Every call fires
Locust's ``request`` event (request type ``tensorfleet``, name the kind), so the
statistics, the CSV files and the web UI show them like HTTP requests; an exception,
or a result that differs from the same computation on local torch
(:class:`WrongResult`), is a failure.

Locust runs its users as gevent greenlets in one process, and a TensorFleet client
process has one session (one reply queue) that serves one caller at a time: the
users of a process take turns (a lock), and each call is timed once it holds the
lock. For parallel clients, add processes (``--processes 4``) or run
``tensorfleet loadtest``, which starts one OS process per client. On stop, every
user drops its pointers, so the workers delete everything the run made.

Options (besides Locust's): ``--tf-workers`` (comma-separated worker ids, default
``bob,alice``), ``--tf-size`` (elements per tensor, default 100). The fleet is that of
``TENSORFLEET_NAMESPACE``, as for any TensorFleet client.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

import gevent
import torch
from locust import User, constant, events, task

import client as sy
from client import typed as tf
from client.fleet import reset_fleet_transport

logging.getLogger("pika").setLevel(logging.WARNING)  # its INFO lines drown Locust's summary

#: pipelined results per worker checked with one round trip
VERIFY_EVERY = 16
#: one caller at a time per process: the session's replies are read by whoever waits
_session_lock = threading.Lock()


class WrongResult(AssertionError):
    """A result differs from the same computation on local torch."""


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--tf-workers", default="bob,alice", help="TensorFleet worker ids, comma-separated"
    )
    parser.add_argument("--tf-size", type=int, default=100, help="elements per tensor")


@events.init.add_listener
def _warm_up(environment: Any, **kwargs: Any) -> None:
    """Each kind of op once, before the clock starts: the first op of a kind in a process
    pays for imports and shape inference (seconds on a loaded machine), not the fleet."""
    hook = sy.TorchHook(torch)
    workers = [sy.FleetWorker(hook, id=worker_id) for worker_id in _worker_ids(environment)]
    for worker in workers:
        local = torch.arange(4.0)
        pointer: Any = tf.send(local, worker)
        PointerUser._same((pointer * 2.0 - 1.0).get(), local * 2.0 - 1.0, "warm-up")
        PointerUser._same(_fetch(torch.stack([pointer])), torch.stack([local]), "warm-up")
        PointerUser._same(pointer.get(), local, "warm-up")
    if len(workers) > 1:
        moved = tf.send(torch.arange(3.0), workers[0])
        moved.move(workers[1])
        PointerUser._same(moved.get(), torch.arange(3.0), "warm-up")


@events.test_stop.add_listener
def _drain(environment: Any, **kwargs: Any) -> None:
    """After the users stopped: wait until the workers ran every delete, then disconnect."""
    gc.collect()
    with _session_lock:
        for worker_id in _worker_ids(environment):
            sy.FleetWorker(sy.TorchHook(torch), id=worker_id).synchronize()
        reset_fleet_transport()  # deletes this process's reply queue


def _worker_ids(environment: Any) -> list[str]:
    options = environment.parsed_options
    text = options.tf_workers if options is not None else "bob,alice"
    return [part.strip() for part in text.split(",") if part.strip()]


def _fetch(pointer: Any) -> Any:
    """``pointer.get()`` of an op's result (typed as a tensor, which has no ``get``)."""
    return pointer.get()


def _timed(call: Any) -> tuple[float, Exception | None]:
    """Milliseconds ``call`` took once it held the session, and what it raised."""
    with _session_lock:
        start = time.perf_counter()
        try:
            call()
        except Exception as error:
            return (time.perf_counter() - start) * 1000, error
        return (time.perf_counter() - start) * 1000, None


class PointerUser(User):
    """Pointer ops on fleet workers, each call a Locust request, each result checked."""

    wait_time = constant(0)

    def on_start(self) -> None:
        hook = sy.TorchHook(torch)
        options = self.environment.parsed_options
        self.size = options.tf_size if options is not None else 100
        self.generator = torch.Generator().manual_seed(id(self) % 2**31)
        with _session_lock:
            self.workers = [sy.FleetWorker(hook, id=w) for w in _worker_ids(self.environment)]
            self.base = {}
            for worker in self.workers:
                local = self._random()
                self.base[worker.id] = (tf.send(local, worker), local)
        self.unchecked: dict[str, list[tuple[Any, Any]]] = {w.id: [] for w in self.workers}
        self.turn = 0

    def on_stop(self) -> None:
        for worker_id in list(self.unchecked):
            self._request("verify", lambda worker_id=worker_id: self._verify(worker_id))
        with _session_lock:
            self.base.clear()
            self.unchecked.clear()

    # ------------------------------------------------------------------ helpers
    def _random(self) -> torch.Tensor:
        return torch.randn(self.size, generator=self.generator)

    def _worker(self) -> Any:
        self.turn += 1
        return self.workers[self.turn % len(self.workers)]

    def _request(self, name: str, call: Any) -> None:
        """Run ``call`` holding the session; fire Locust's request event with its outcome.

        The call runs in a greenlet of its own, so when Locust kills a user at the end
        of the run, the call in flight still finishes (a move cut between sending the
        data and updating the pointer would leave the data on the destination with
        nobody to delete it); :func:`_drain` waits for it.
        """
        elapsed_ms, exception = gevent.spawn(_timed, call).get()
        self.environment.events.request.fire(
            request_type="tensorfleet",
            name=name,
            response_time=elapsed_ms,
            response_length=self.size * 4,
            exception=exception,
            context={},
        )

    @staticmethod
    def _same(got: Any, expected: torch.Tensor, what: str) -> None:
        if not (isinstance(got, torch.Tensor) and torch.equal(got, expected)):
            raise WrongResult(f"{what}: got {got!r}, expected {expected!r}")

    def _verify(self, worker_id: str) -> None:
        pending, self.unchecked[worker_id] = self.unchecked[worker_id], []
        if not pending:
            return
        pointers = [pointer for pointer, _ in pending]
        expected = torch.stack([want for _, want in pending])
        del pending
        stacked: Any = torch.stack(pointers)
        pointers.clear()
        self._same(stacked.get(), expected, "pipelined results")

    # ------------------------------------------------------------------ tasks
    @task(4)
    def pipelined(self) -> None:
        worker = self._worker()
        pointer, local = self.base[worker.id]
        scale = 0.5 + self.turn % 7 / 4
        pending = self.unchecked[worker.id]

        def call() -> None:
            pending.append((pointer * scale, local * scale))

        self._request("pipelined", call)
        if len(pending) >= VERIFY_EVERY:
            self._request("verify", lambda: self._verify(worker.id))

    @task(2)
    def sync(self) -> None:
        worker = self._worker()
        pointer, local = self.base[worker.id]
        shift = self.turn % 5 / 8
        self._request("sync", lambda: self._same(_fetch(pointer - shift), local - shift, "sync"))

    @task(1)
    def sendget(self) -> None:
        worker = self._worker()
        tensor = self._random()
        self._request(
            "sendget", lambda: self._same(tf.send(tensor, worker).get(), tensor, "sendget")
        )

    @task(1)
    def move(self) -> None:
        if len(self.workers) < 2:
            return
        source = self._worker()
        destination = self.workers[(self.workers.index(source) + 1) % len(self.workers)]
        tensor = self._random()

        def call() -> None:
            pointer = tf.send(tensor, source)
            pointer.move(destination)
            self._same(pointer.get(), tensor, "move")

        self._request("move", call)
