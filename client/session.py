"""A client's conversation with its workers over one transport: batching, replies, errors.

Pointer ops never wait. Commands queue per worker and go out as one message per
worker when a synchronising call needs an answer or when ``batch_size``
commands are waiting. Queues flush in the order workers first got a pending
command, so data a worker will forward to is published before the forward.

Finalizers (pointer garbage collection) only append a delete to a queue: they
never do I/O, never flush and never take a lock.

Threads and who owns what
-------------------------
Three kinds of thread touch a session: the user's thread (pointer ops, sync
calls), the periodic flusher (fleet sessions) and whichever thread runs a
pointer's finalizer. They hand commands over through **one** deque,
``_pending``, of ``(worker_id, command)`` pairs: ``deque.append`` and
``deque.popleft`` are atomic, so producers never lock and never lose a command.

* ``_pending`` (deque): appended by any thread; drained only inside
  :meth:`flush`, under ``_flush_lock``, which takes exactly the pairs present
  when it starts and groups them per worker in a dict local to that flush.
* ``_routes`` (deque): pointer-chain routes to wait for; appended by any thread,
  drained only by the synchronising call (the user's thread).
* ``_replies``, ``_errors``: written and read only by the thread that waits for
  an answer (:meth:`wait`), which is the user's thread.
* ``_expected``, ``_chains``: who may answer a request; written by the user's thread
  (requests, pointers made on chains) and read while it waits.

Who may answer
--------------
A reply is taken only from a worker the request was expected to be answered by:
the worker it went to, the workers it depends on (a move's destination), and any
worker reachable from those along a pointer chain this client made (a chain's last
hop answers for it). A reply for the request from any other worker, one that
RabbitMQ vouches is a worker of the fleet, is dropped and counted
(``misdirected_replies``): a data owner cannot answer for another owner. A
transport that cannot tell workers apart (a shared broker account) gives no sender,
and then only the transport's own checks apply.

(An earlier version kept a dict of per-worker deques that the flusher emptied
and removed while the user's thread appended to them: a command appended to a
deque just removed from the dict was never sent.)
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from broker import codec, protocol
from broker.errors import (
    WorkerNeverStartedError,
    WorkerNotRunningError,
    WorkerStoreUnavailableError,
    WorkerUnavailableError,
    error_from_wire,
)
from client.transport import Transport

log = logging.getLogger(__name__)

#: commands waiting in a session before it flushes by itself
DEFAULT_BATCH_SIZE = 1000
#: seconds a synchronising call waits for its reply before it asks the broker whether
#: anybody serves the worker (an answer usually takes milliseconds)
PROBE_AFTER = 0.2
#: seconds between such questions while the reply is still missing
PROBE_EVERY = 1.0


def _is_store_notice(payload: Any) -> bool:
    """Whether an error reply is a worker's "my store is down, your message waits" notice."""
    return (
        isinstance(payload, dict)
        and payload.get("type") == "StoreUnavailableError"
        and payload.get("command") == "store"
    )


class Session:
    """Request ids, per-worker command queues and reply routing for one transport."""

    def __init__(
        self,
        transport: Transport,
        timeout: float,
        batch_size: int = DEFAULT_BATCH_SIZE,
        client_id: str | None = None,
        flush_interval: float | None = None,
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.batch_size = batch_size
        self.client_id = client_id or f"client-{os.getpid()}-{random.getrandbits(32):08x}"
        #: (worker id, command) pairs waiting to be sent, oldest first (see the module doc)
        self._pending: deque[tuple[str, list[Any] | tuple[Any, ...]]] = deque()
        self._requests = itertools.count(1)
        self._batches = itertools.count(random.getrandbits(40))
        self._replies: dict[int, tuple[bool, Any]] = {}
        self._errors: list[Exception] = []
        #: batches sent again because the transport reconnected while a call waited
        self.resent_batches = 0
        #: the batches a request's flush sent, per worker (kept while ``_keep_sent``)
        self._sent: dict[str, codec.Body] = {}
        self._keep_sent = False
        #: request ids whose caller stopped waiting: their late replies are dropped
        self._abandoned: set[int] = set()
        #: workers that could not answer last time: asked about before the next request
        self._suspects: set[str] = set()
        #: workers that said their store is down (worker/runtime.py), until they answer
        self._store_notices: set[str] = set()
        #: chains that forwarded commands since the last synchronising call (worker id paths)
        self._routes: deque[tuple[str, ...]] = deque()
        #: every hop of every pointer chain made so far: worker id -> the next hops
        self._chains: dict[str, set[str]] = {}
        #: request id -> the workers it was sent to or depends on (see "Who may answer")
        self._expected: dict[int, tuple[str, ...]] = {}
        #: replies dropped because a worker answered a request it was not asked
        self.misdirected_replies = 0
        #: worker id -> client-side handle, so pointers that arrive by id find their worker
        self.workers: dict[str, Any] = {}
        self.worker_factory: Callable[[str], Any] | None = None
        #: one flush at a time: the periodic flusher and the user's thread both flush
        self._flush_lock = threading.RLock()
        self._flush_interval = flush_interval
        self._closed = threading.Event()
        if flush_interval is not None:
            threading.Thread(
                target=self._flush_periodically, name="tensorfleet-flush", daemon=True
            ).start()

    # ------------------------------------------------------------------ queueing
    def enqueue(self, worker_id: str, command: list[Any] | tuple[Any, ...]) -> None:
        """Queue a pipelined command; flush when the batch is full."""
        pending = self._pending
        pending.append((worker_id, command))
        if len(pending) >= self.batch_size:
            self.flush()

    def enqueue_from_finalizer(
        self,
        worker_id: str,
        command: list[Any] | tuple[Any, ...],
        route: tuple[str, ...] | None = None,
    ) -> None:
        """Queue a command from a finalizer: append only, never flush (no I/O in __del__)."""
        self._pending.append((worker_id, command))
        if route is not None:
            self._routes.append(route)

    def note_route(self, route: tuple[str, ...]) -> None:
        """A queued command will be forwarded along ``route``: the next sync call waits for it."""
        self._routes.append(route)
        self.note_chain(route)

    def note_chain(self, route: tuple[str, ...]) -> None:
        """A pointer chain passes ``route``: its later hops may answer requests to the first."""
        chains = self._chains
        for hop, next_hop in itertools.pairwise(route):
            if next_hop not in chains.get(hop, ()):
                chains.setdefault(hop, set()).add(next_hop)

    def _answerers(self, workers: tuple[str, ...]) -> set[str]:
        """``workers`` and every worker reachable from them along this client's chains."""
        found, todo = set(workers), list(workers)
        while todo:
            for next_hop in self._chains.get(todo.pop(), ()):
                if next_hop not in found:
                    found.add(next_hop)
                    todo.append(next_hop)
        return found

    def pending(self) -> int:
        """How many commands are queued and not yet sent."""
        return len(self._pending)

    def flush(self) -> None:
        """Send every queued command, one message per worker."""
        with self._flush_lock:
            self._flush_locked()

    def _flush_periodically(self) -> None:
        """Send commands that waited ``flush_interval`` seconds, so idle pipelines still run."""
        assert self._flush_interval is not None
        while not self._closed.wait(self._flush_interval):
            if self._pending:
                try:
                    self.flush()
                except Exception:  # the next synchronising call reports a broken transport
                    self._closed.wait(1.0)

    def close(self) -> None:
        """Stop the periodic flusher; queued commands are dropped with the session."""
        self._closed.set()

    def _flush_locked(self) -> None:
        """Take the commands queued now, group them per worker, publish one batch per worker.

        Workers are published in the order they first got a pending command, so data a
        worker will forward to is published before the forward.
        """
        pending = self._pending
        batches: dict[str, list[Any]] = {}
        popleft = pending.popleft
        for _ in range(len(pending)):  # only what is here now: producers may go on appending
            worker_id, command = popleft()
            commands = batches.get(worker_id)
            if commands is None:
                commands = batches[worker_id] = []
            commands.append(command)
        for worker_id, commands in batches.items():
            body = codec.encode_marked(
                protocol.envelope(
                    next(self._batches), self.client_id, self.transport.reply_address, commands
                )
            )
            self.transport.publish(worker_id, body)
            if self._keep_sent:
                self._sent[worker_id] = body

    # ------------------------------------------------------------------ requests
    def request(
        self,
        worker_id: str,
        command: list[Any],
        label: str,
        watch: tuple[str, ...] = (),
        timeout: float | None = None,
    ) -> Any:
        """Send ``command`` (its last field, the request id, is filled in) and wait for the answer.

        Errors of earlier pipelined commands are raised first, with their original type.
        ``watch`` names more workers the answer depends on (a move's destination
        answers it); ``timeout`` shortens the wait (``repr`` of a worker).
        """
        if self._routes:
            self._barrier()
        for suspect in (worker_id, *watch):
            if suspect in self._suspects:  # it failed last time: ask before sending anything
                self._check_worker(suspect, label, time.monotonic() + self.timeout)
        request_id = next(self._requests)
        command[-1] = request_id
        self._expected[request_id] = (worker_id, *watch)
        with self._flush_lock:  # keep the batch the request goes in, to send it again
            self._keep_sent = True
            try:
                self.enqueue(worker_id, command)
                self._flush_locked()
                sent = self._sent.get(worker_id)
            finally:
                self._keep_sent = False
                self._sent.clear()
        return self.wait(request_id, worker_id, label, watch, timeout, sent)

    def _barrier(self) -> None:
        """Wait until work forwarded along pointer chains has landed at every hop.

        A worker forwards on the same channel it replies on, so once hop *k* answers a
        ping, everything it forwarded is queued at hop *k+1* ahead of our next message.
        Pinging the hops in order therefore orders this call after all forwarded work.
        """
        routes: set[tuple[str, ...]] = set()
        while self._routes:
            routes.add(self._routes.popleft())
        for position in range(max(len(route) for route in routes)):
            hops = {route[position] for route in routes if len(route) > position}
            pending = []
            for worker_id in hops:
                request_id = next(self._requests)
                self._expected[request_id] = (worker_id,)
                self.enqueue(worker_id, [protocol.PING, request_id])
                pending.append((request_id, worker_id))
            self.flush()
            for request_id, worker_id in pending:
                self.wait(request_id, worker_id, "ping (waiting for a pointer chain)")

    def wait(
        self,
        request_id: int,
        worker_id: str,
        label: str,
        watch: tuple[str, ...] = (),
        timeout: float | None = None,
        sent: codec.Body | None = None,
    ) -> Any:
        """Wait for the reply to ``request_id``.

        ``sent`` is the batch the request went in: if the transport reconnects meanwhile
        (a dropped connection takes the exclusive reply queue, and any reply in it, along)
        the batch is sent again, marked as a resend, and the worker replays its replies
        if it ran it already.

        A reply that is not there after :data:`PROBE_AFTER` seconds makes the client
        ask the broker whether anybody serves the workers the answer depends on, and
        fail at once with the matching :class:`~broker.errors.WorkerUnavailableError`
        (never started, not running, store down) instead of waiting out the timeout;
        after ``timeout`` (default ``TENSORFLEET_TIMEOUT``) it is WorkerUnavailableError.
        A reply that arrives after its caller gave up is dropped.
        """
        timeout = self.timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        next_probe = started + min(PROBE_AFTER, timeout)
        workers = (worker_id, *watch)
        generation = getattr(self.transport, "generation", 0)
        resent = False
        try:
            while request_id not in self._replies:
                if sent is not None and getattr(self.transport, "generation", 0) != generation:
                    generation = self.transport.generation  # type: ignore[attr-defined]
                    self.transport.publish(worker_id, sent, resend=True)
                    self.resent_batches += 1
                    resent = True
                now = time.monotonic()
                try:
                    reply = self.transport.receive_from(max(min(deadline, next_probe) - now, 0.0))
                except WorkerUnavailableError as error:  # a batch reached no worker queue
                    self._undelivered(error, workers, label)
                    continue
                if reply is not None:
                    self._dispatch(*reply)
                    if self._store_notices & set(workers):
                        next_probe = 0.0  # ask now: is that store still down?
                    continue
                now = time.monotonic()
                if now >= deadline:
                    self._suspects.update(workers)
                    raise WorkerUnavailableError(worker_id, label, timeout)
                if now >= next_probe:
                    for watched in workers:
                        self._check_worker(watched, label, deadline)
                    next_probe = time.monotonic() + PROBE_EVERY
        except BaseException:
            self._abandoned.add(request_id)
            raise
        finally:
            self._expected.pop(request_id, None)
        ok, payload = self._replies.pop(request_id)
        if resent:
            self._abandoned.add(request_id)  # a second reply may come: nobody reads it
        self._suspects.difference_update(workers)
        self._store_notices.difference_update(workers)
        self.raise_pending_errors()
        if not ok:
            raise error_from_wire(payload)
        return payload

    def _check_worker(self, worker_id: str, label: str, deadline: float) -> None:
        """Raise the WorkerUnavailableError that says why ``worker_id`` cannot answer, if it can't.

        No consumer right after this client reconnected is not an answer yet: after a
        broker restart, workers reconnect on their own schedule, and the message waits
        in the worker's durable queue meanwhile.
        """
        state = self.transport.worker_state(
            worker_id, max(deadline - time.monotonic(), 1.0), worker_id in self._store_notices
        )
        if state is None or state.serving:
            return
        self._suspects.add(worker_id)
        if not state.exists:
            raise WorkerNeverStartedError(worker_id, label)
        if state.store_down or (state.consumers == 0 and worker_id in self._store_notices):
            raise WorkerStoreUnavailableError(worker_id, label)
        reconnected = getattr(self.transport, "reconnected_at", None)
        if reconnected is not None and time.monotonic() - reconnected < self.timeout:
            return
        raise WorkerNotRunningError(worker_id, label)

    def _undelivered(
        self, error: WorkerUnavailableError, workers: tuple[str, ...], label: str
    ) -> None:
        """A batch for a worker that does not exist was not sent: raise now, or at the next call."""
        worker_id = getattr(error, "worker", None)
        if worker_id in workers:
            self._suspects.add(str(worker_id))
            raise WorkerNeverStartedError(str(worker_id), label)
        self._errors.append(error)

    def raise_pending_errors(self) -> None:
        """Raise the first error a pipelined command reported (and forget the rest of the burst)."""
        if self._errors:
            error, self._errors = self._errors[0], []
            raise error

    def synchronize(self, worker_id: str) -> None:
        """Flush and wait until ``worker_id`` has run everything sent so far."""
        self.request(worker_id, [protocol.PING, None], "ping")

    def _dispatch(self, body: codec.Body, sender: str | None = None) -> None:
        message = codec.decode(body)
        for request_id, ok, payload in message.get("replies", ()):
            if request_id is None:
                if ok:
                    continue
                if _is_store_notice(payload):
                    # the worker put our message back and stopped taking messages until
                    # its Redis answers: nothing failed, so it is not an error of ours
                    worker_id = str(payload.get("worker") or "")
                    self._store_notices.add(worker_id)
                    self._suspects.add(worker_id)  # ask before sending it anything more
                    continue
                self._errors.append(error_from_wire(payload))
            elif request_id in self._abandoned:
                self._abandoned.discard(request_id)  # its caller gave up: nobody reads it
            elif self._may_answer(request_id, sender):
                self._replies[request_id] = (ok, payload)
            else:
                self.misdirected_replies += 1
                log.warning(
                    "dropped a reply from worker %s to request %s, which it was not asked",
                    sender,
                    request_id,
                )

    def _may_answer(self, request_id: Any, sender: str | None) -> bool:
        """Whether worker ``sender`` may answer ``request_id`` (see "Who may answer").

        Nobody may answer a request this client has not sent (a reply made up ahead for
        a request id it will use next would otherwise be taken when it does).
        """
        expected = self._expected.get(request_id)
        if expected is None:
            return False
        return sender is None or sender in expected or sender in self._answerers(expected)

    # ------------------------------------------------------------------ workers
    def worker(self, worker_id: str) -> Any:
        """The handle of ``worker_id`` in this session, created on first use."""
        handle = self.workers.get(worker_id)
        if handle is None:
            if self.worker_factory is None:
                raise KeyError(worker_id)
            handle = self.worker_factory(worker_id)
        return handle
