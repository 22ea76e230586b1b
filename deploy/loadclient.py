"""One load-test client process: a mix of pointer ops against fleet workers, every result checked.

:func:`client_main` is the body of each process ``tensorfleet loadtest`` starts. It
connects to the workers of :attr:`ClientPlan.namespace`, sends one base tensor to each
(the operands, mirrored locally), reports ``ready`` and waits for the common start, then
runs operations drawn at random by the weights of the mix until the deadline or its
share of ``--ops``:

* ``pipelined``: ``r = a * c`` on a pointer, which returns at once (its latency is the
  client-side cost of the call); results are checked in batches of :data:`VERIFY_EVERY`
  per worker with one ``torch.stack(results).get()`` each (kind ``verify``);
* ``sync``: ``(a - c).get()``, one round trip;
* ``sendget``: ``t.send(w).get()`` of a fresh random tensor;
* ``move``: ``t.send(w1)``, ``.move(w2)``, ``.get()``.

Every result is compared with the same computation on local torch (``torch.equal``:
elementwise float32 ops are exact, so any difference is a wrong result). An exception
is counted by its type and the run goes on. Latencies go into one HdrHistogram per
kind (microseconds, 3 significant digits), sent to the parent in their encoded form,
which merges them across processes.

At the end the client drops every pointer (so the workers delete every object it
made), waits until each worker has run those deletes, closes its connection (which
deletes its reply queue), and sends the parent its figures plus what the leftover
check needs: the ids of every object it created, its reply queue, its sender id.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: operation kinds of ``--mix``, in the order they are reported
KINDS = ("pipelined", "sync", "sendget", "move")
#: the kind of the batched checks of pipelined results (reported, never in the mix)
VERIFY = "verify"
#: pipelined results per worker checked with one round trip
VERIFY_EVERY = 32
#: histogram range: 1 µs to 10 minutes, 3 significant digits
LOWEST_US, HIGHEST_US, DIGITS = 1, 600_000_000, 3


@dataclass(frozen=True)
class ClientPlan:
    """What one client process does; picklable, so it crosses into a spawned process."""

    index: int
    namespace: str
    workers: tuple[str, ...]
    mix: tuple[tuple[str, int], ...]
    size: int
    duration: float | None  # seconds, or None when ``ops`` bounds the run
    ops: int | None  # this client's share of ``--ops``
    seed: int


@dataclass
class ClientResult:
    """What one client reports: figures, histograms (encoded), and what it created."""

    index: int
    ops: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, bytes] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, str] = field(default_factory=dict)
    wrong: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: worker id -> ids of every object this client made there (for the leftover check)
    created: dict[str, list[int]] = field(default_factory=dict)
    reply_queue: str = ""
    sender: str = ""
    #: an error that stopped the client before or after its loop (setup, clean-up)
    fatal: str | None = None


def new_histogram() -> Any:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


class LoadClient:
    """The operations of one client on its workers, with their local mirrors."""

    def __init__(self, plan: ClientPlan, workers: list[Any]) -> None:
        import torch

        self.plan = plan
        self.workers = workers
        self.rng = random.Random(plan.seed)
        self.generator = torch.Generator().manual_seed(plan.seed)
        self.result = ClientResult(plan.index, created={w.id: [] for w in workers})
        self.histograms = {kind: new_histogram() for kind in (*KINDS, VERIFY)}
        self.errors: Counter[str] = Counter()
        self.wrong: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        self.kinds = [kind for kind, _ in plan.mix]
        self.weights = [weight for _, weight in plan.mix]
        #: worker id -> (pointer, local copy) of its base operand
        self.base: dict[str, tuple[Any, Any]] = {}
        #: worker id -> pipelined results not checked yet: (pointer, expected)
        self.unchecked: dict[str, list[tuple[Any, Any]]] = {w.id: [] for w in workers}

    # ------------------------------------------------------------------ helpers
    def _random(self) -> Any:
        import torch

        return torch.randn(self.plan.size, generator=self.generator)

    def _created(self, pointer: Any) -> Any:
        self.result.created[pointer.location.id].append(int(pointer.id_at_location))
        return pointer

    def _check(self, kind: str, got: Any, expected: Any) -> None:
        import torch

        if not (isinstance(got, torch.Tensor) and torch.equal(got, expected)):
            self.wrong[kind] += 1

    def _error(self, error: Exception) -> None:
        name = type(error).__name__
        self.errors[name] += 1
        self.result.error_samples.setdefault(name, " ".join(str(error).split())[:300])

    def _worker(self) -> Any:
        return self.workers[self.rng.randrange(len(self.workers))]

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Send each worker its base operand, warm up, and wait until the workers ran it all.

        The warm-up runs each kind of the mix once, unmeasured (the first op of a kind
        in a process pays for imports and the shape cache); its results are checked too.
        """
        for worker in self.workers:
            local = self._random()
            self.base[worker.id] = (self._created(local.send(worker)), local)
        for kind in self.kinds:
            getattr(self, kind)()
        for worker_id in list(self.unchecked):
            self.verify(worker_id)
        for histogram in self.histograms.values():
            histogram.reset()
        for worker in self.workers:
            worker.synchronize()

    # ------------------------------------------------------------------ operations
    def pipelined(self) -> None:
        worker = self._worker()
        pointer, local = self.base[worker.id]
        scale = self.rng.uniform(0.5, 2.0)
        result = self._created(pointer * scale)
        pending = self.unchecked[worker.id]
        pending.append((result, local * scale))
        if len(pending) >= VERIFY_EVERY:
            self.verify(worker.id)

    def verify(self, worker_id: str) -> None:
        """Check the pending pipelined results of one worker with one round trip."""
        import torch

        pending, self.unchecked[worker_id] = self.unchecked[worker_id], []
        if not pending:
            return
        pointers = [pointer for pointer, _ in pending]
        expected = [want for _, want in pending]
        del pending
        start = time.perf_counter()
        try:
            stacked = self._created(torch.stack(pointers))
            pointers.clear()  # the results are deleted once the stack holds their data
            got = stacked.get()
        except Exception as error:
            self._error(error)
            return
        finally:
            self._record(VERIFY, start)
        for row, want in zip(got, expected, strict=True):
            self._check("pipelined", row, want)

    def sync(self) -> None:
        worker = self._worker()
        pointer, local = self.base[worker.id]
        shift = self.rng.uniform(-1.0, 1.0)
        self._check("sync", (pointer - shift).get(), local - shift)

    def sendget(self) -> None:
        worker = self._worker()
        tensor = self._random()
        self._check("sendget", self._created(tensor.send(worker)).get(), tensor)

    def move(self) -> None:
        source = self._worker()
        destination = self.workers[
            (self.workers.index(source) + self.rng.randrange(1, len(self.workers)))
            % len(self.workers)
        ]
        tensor = self._random()
        pointer = self._created(tensor.send(source))
        pointer.move(destination)
        self.result.created[destination.id].append(int(pointer.id_at_location))
        self._check("move", pointer.get(), tensor)

    # ------------------------------------------------------------------ the loop
    def _record(self, kind: str, start: float) -> None:
        micros = max(int((time.perf_counter() - start) * 1e6), LOWEST_US)
        self.histograms[kind].record_value(min(micros, HIGHEST_US))

    def run(self, progress: Any, stop: Any) -> None:
        """Operations until the deadline, this client's share of ``--ops``, or ``stop`` is set."""
        plan = self.plan
        deadline = time.monotonic() + plan.duration if plan.duration is not None else None
        done = 0
        started = time.monotonic()
        operations = {kind: getattr(self, kind) for kind in KINDS}
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                break
            if stop.is_set():  # Ctrl-C in the parent: end after this operation
                break
            if plan.ops is not None and done >= plan.ops:
                break
            kind = self.rng.choices(self.kinds, self.weights)[0]
            start = time.perf_counter()
            try:
                operations[kind]()
            except Exception as error:
                self._error(error)
            self._record(kind, start)
            self.ops[kind] += 1
            done += 1
            progress[plan.index] = done
        for worker_id in list(self.unchecked):
            self.verify(worker_id)
        self.result.seconds = time.monotonic() - started

    def finish(self) -> ClientResult:
        """Drop every pointer, wait until the workers ran the deletes; the figures."""
        self.base.clear()
        self.unchecked.clear()
        gc.collect()
        for worker in self.workers:
            worker.synchronize()
        result = self.result
        result.ops = dict(self.ops)
        result.errors = dict(self.errors)
        result.wrong = dict(self.wrong)
        result.histograms = {
            kind: bytes(h.encode()) for kind, h in self.histograms.items() if h.get_total_count()
        }
        return result


def client_main(plan: ClientPlan, channel: Any, start: Any, stop: Any, progress: Any) -> None:
    """The body of a client process: ``ready``, then wait for ``start``, run, report.

    ``channel`` is a multiprocessing queue: the client puts ``("ready", index)``, then
    ``("done", ClientResult)``; ``start`` is the event every client waits on; ``stop``
    ends the run early. Ctrl-C is the parent's to handle: it sets ``stop``, and each
    client ends after its current operation and still deletes what it made.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TENSORFLEET_NAMESPACE"] = plan.namespace
    import torch

    import client as sy
    from broker.settings import get_settings
    from client.fleet import reset_fleet_transport

    get_settings.cache_clear()
    torch.set_num_threads(1)
    result = ClientResult(plan.index)
    load: LoadClient | None = None
    try:
        hook = sy.TorchHook(torch)
        workers = [sy.FleetWorker(hook, id=worker_id) for worker_id in plan.workers]
        session = workers[0].session
        result.reply_queue = session.transport.reply_address
        result.sender = session.client_id
        load = LoadClient(plan, workers)
        load.setup()
        channel.put(("ready", plan.index))
        start.wait()
        load.run(progress, stop)
        result = load.finish()
        result.reply_queue = session.transport.reply_address
        result.sender = session.client_id
    except BaseException as error:
        result.fatal = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=5)}"
        if load is not None:
            result.created = load.result.created
    finally:
        load = None
        gc.collect()
        reset_fleet_transport()  # sends what is queued, then deletes the reply queue
    channel.put(("done", result))
