"""A fleet worker's runtime: the order in which a message's effects reach the world.

One message (a Celery task, run by the solo pool in the worker's only thread)
goes through these states; nothing else in the worker decides when a message's
effects are published, written to Redis or acknowledged::

    received ── store down? ──────────────────────────────────> requeue (Reject)
       │
       ├─ stale? ── reload every object from Redis
       │
       ├─ a chunk? ── copy into its transfer's buffer ─ incomplete ─> done (ack)
       │
       ▼
    run on the engine: memory changes, the store keeps one pending commit
       │   refused (malformed) ─────────────────────> dead-letter, done (ack)
       ▼
    publish replies and forwards (one channel: their order holds)
       │   publish fails ── drop the commit, reload later ──> requeue
       ▼
    commit: small ─ write to Redis now
            big ─── hand to the background writer (messages that change no tensor
                    go on meanwhile; any other waits for the write)
       │   Redis fails ── reload later, stop consuming until Redis answers ──> requeue
       ▼
    acknowledge: now, or held back until the background write is done

Why this order. Replies go out before the write so a client waiting on a 100 MiB
``get`` is not also waiting for Redis; the acknowledgement waits for the write
(``acks_late``), so a crash anywhere before it redelivers the message, which then
runs again from what Redis holds and produces the same messages (forwarded batch
ids are derived from the original batch, and the next worker applies a repeat
once; a client ignores a repeated reply).

**Store down.** When Redis cannot be reached the worker stops consuming its queue
(so the compose healthcheck, which asks RabbitMQ for the queue's consumers, fails),
tells the sender of the message it had to put back (a ``StoreUnavailableError``
notice to its reply queue), requeues what it holds, and probes Redis once a second;
when Redis answers it reloads and consumes again. Nothing acknowledged is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from broker import codec, protocol, topology
from broker.amqp import Chunk
from broker.chunking import Reassembler
from broker.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    StoreUnavailableError,
    error_to_wire,
)
from broker.settings import Settings
from broker.tls import redis_ssl_kwargs
from worker.access import ANONYMOUS
from worker.datasets import load_dataset, parse_option
from worker.engine import Delivery, Engine
from worker.limits import OpLimits
from worker.publisher import Publisher, broker_user
from worker.redis_store import RedisObjectStore, connect, connect_probe

log = logging.getLogger(__name__)

#: A commit carrying at least this many tensor bytes is written by the background writer.
BACKGROUND_WRITE_BYTES = 1024 * 1024
#: Seconds between Redis probes while the store is down.
STORE_PROBE_SECONDS = 1.0
#: Commands that never change a tensor's memory in place: they read, drop, hand on or add
#: objects, so they may run while the background writer sends views of tensors.
_NON_MUTATING = frozenset(
    {protocol.PING, protocol.GET, protocol.DELETE, protocol.SEND_TO, protocol.STORE}
)


@dataclass(frozen=True, slots=True)
class Arrival:
    """What the runtime needs to know about one delivered message, besides its body."""

    #: the chunk description of a part of a bigger message (None: a whole envelope)
    chunk: list[Any] | None
    #: sent by a TensorFleet client or worker (replies go to its reply queue) rather than
    #: a plain Celery caller (the reply is the task's result)
    direct: bool
    #: a worker (not a client) sent it
    forwarded: bool
    #: RabbitMQ says it was delivered before
    redelivered: bool
    #: the sender's message headers (its ``x-`` headers are kept when dead-lettering)
    headers: dict[str, Any]
    #: the AMQP ``user_id`` property: the RabbitMQ user that published it (RabbitMQ checks
    #: it against the connection), None if the publisher did not set it
    user_id: str | None = None


class Runtime:
    """One worker process's engine, store, publisher and background writer."""

    def __init__(self, app: Celery, worker_id: str, settings: Settings) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.queue = topology.worker_queue(worker_id, settings.namespace)
        self.store = RedisObjectStore(
            worker_id,
            connect(settings.redis_url, redis_ssl_kwargs(settings, settings.redis_url)),
            settings.namespace,
            part_bytes=settings.max_message_bytes,
            batch_ttl=settings.batch_ttl,
        )
        self.publisher = Publisher(app, worker_id, settings)
        #: the RabbitMQ user this worker connects as: in fleets where every party shares one
        #: account (the default guest), forwards from that account are believed too
        self.broker_user = broker_user(settings.broker_url)
        self.engine = Engine(
            worker_id,
            self.store,
            limits=OpLimits(worker_id, settings.max_object_bytes, settings.max_op_work),
            is_worker=self.publisher.worker_exists,
            quota=settings.client_quota_bytes,
            trusts_forwarder=self.trusts_forwarder,
            owns_reply_to=self.owns_reply_to,
        )
        #: chunked messages still arriving, each copied into one buffer part by part, in
        #: memory only: a worker that dies mid-transfer loses the parts it acknowledged, the
        #: sender's synchronising call reports it unavailable, and nothing of that message
        #: was applied (a message's commands are durable once it has run)
        self.reassembler = Reassembler(settings.max_object_bytes, ttl=settings.transfer_ttl)
        #: memory may be ahead of Redis: reload before the next message
        self.stale = True
        #: Redis is unreachable: consuming is paused until a probe succeeds
        self.store_down = False
        self.started = time.monotonic()
        #: called with the seconds each Redis write took (worker.metrics)
        self.on_write: Callable[[float], None] = lambda seconds: None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tensorfleet-redis")
        self._write: Future[None] | None = None
        #: acknowledgements (callables) held back until the background write is done
        self._held_acks: list[tuple[Callable[[], None], Callable[[], None]]] = []
        #: how to pause and resume consuming, and the event loop's timer: the consumer's
        #: (worker.gate), given by :meth:`attach_consumer` once it runs
        self.pause_consuming: Callable[[], None] = lambda: None
        self.resume_consuming: Callable[[], None] = lambda: None
        self.call_repeatedly: Callable[[float, Callable[[], None]], Any] | None = None
        self._probe: Any = None
        #: the connection holding the store-down marker queue while the store is down
        self._marker: Any = None
        self._probe_client = connect_probe(
            settings.redis_url, redis_ssl_kwargs(settings, settings.redis_url)
        )

    def attach_consumer(
        self,
        pause: Callable[[], None],
        resume: Callable[[], None],
        call_repeatedly: Callable[[float, Callable[[], None]], Any],
    ) -> None:
        """Take the consumer's controls: the store-down state pauses and resumes consuming
        with them and probes Redis on the event loop's timer (``call_repeatedly``)."""
        self.pause_consuming, self.resume_consuming = pause, resume
        self.call_repeatedly = call_repeatedly

    # ------------------------------------------------------------------ one message
    def run(self, body: bytes, arrival: Arrival) -> bytes | None:
        """Take one delivered message through the states in the module docstring.

        Returns the reply envelope for a plain Celery caller (None otherwise). Raises
        Reject(requeue=True) when the message must come back later.
        """
        if self.store_down:
            raise Reject("the store (Redis) is down", requeue=True)
        envelope: bytes | memoryview = body
        try:
            if self.stale:
                self.wait_for_write()
                self.store.load()
                self.stale = False
            if arrival.chunk is not None:
                whole = self._reassemble(body, arrival)
                if whole is None:
                    return None
                envelope = whole  # writable: big tensors are decoded without a copy
            if self._write is not None and not _non_mutating(envelope):
                self.wait_for_write()  # nothing may change the tensors being written
            delivery = Delivery(
                principal=arrival.user_id or ANONYMOUS,
                first_delivery=arrival.direct
                and not (arrival.forwarded or arrival.chunk is not None or arrival.redelivered),
            )
            try:
                result = self.engine.handle(envelope, delivery)
            except MalformedMessageError as error:
                self.publisher.dead_letter_envelope(envelope, str(error), arrival.headers)
                if arrival.direct:
                    return None
                raise
            try:
                self.publisher.publish(result.outgoing)
            except Exception as error:
                if self.store.discard_pending():
                    self.stale = True  # memory is ahead of Redis: reload before the next one
                log.warning("publishing failed (%s); the message will be redelivered", error)
                raise Reject(f"publishing failed: {error}", requeue=True) from None
            self._commit()
            if result.rejected is not None:
                self.publisher.dead_letter_envelope(
                    envelope, result.rejected, arrival.headers, kind="refused_command"
                )
        except StoreUnavailableError as error:
            self.store.discard_pending()
            self.stale = True
            self._store_lost(error, envelope, arrival.user_id)
            raise Reject(str(error), requeue=True) from None
        except MessageTooLargeError as error:
            self.publisher.dead_letter_envelope(
                envelope, str(error), arrival.headers, kind="too_large"
            )
            return None
        if arrival.direct:
            return None
        return bytes(codec.encode_inline(protocol.reply_envelope(result.replies)))

    def _reassemble(self, part: bytes, arrival: Arrival) -> memoryview | None:
        """Add one part of a chunked message; the whole message once its last part is in.

        A part whose chunk header lies is dead-lettered on its own (broker.chunking says
        which lies are caught); unfinished transfers past their TTL are dropped here.
        """
        self.reassembler.expire()
        try:
            return self.reassembler.add(
                Chunk.from_wire(arrival.chunk), part, arrival.user_id or ANONYMOUS
            )
        except MalformedMessageError as error:
            self.publisher.dead_letter_envelope(part, str(error), arrival.headers)
            if arrival.direct:
                return None
            raise

    def trusts_forwarder(self, principal: str, sender: str) -> bool:
        """Whether RabbitMQ user ``principal`` is worker ``sender`` (or the shared account)."""
        return principal == self.broker_user or principal == topology.worker_user(
            sender, self.settings.namespace
        )

    def owns_reply_to(self, principal: str, reply_to: str) -> bool:
        """Whether ``reply_to`` is one of RabbitMQ user ``principal``'s reply queues."""
        return topology.is_reply_queue_of(principal, reply_to, self.settings.namespace)

    # ------------------------------------------------------------------ durability
    def _commit(self) -> None:
        """Write the store's pending commit: a big one in the background, else now.

        While a background write runs, the worker goes on with messages whose commands
        never change a tensor's memory (:data:`_NON_MUTATING`) and holds back every
        acknowledgement until the write is done: a crash before that redelivers those
        messages, which then run again from what Redis holds. Any other message first
        waits for the write, and so does the next commit, so commits reach Redis in order.
        """
        job = self.store.take_pending()
        if job is None:
            return
        self.wait_for_write()
        write, size = job

        def timed_write() -> None:
            started = time.perf_counter()
            write()
            self.on_write(time.perf_counter() - started)

        if size < BACKGROUND_WRITE_BYTES:
            timed_write()
            return
        self._write = self._writer.submit(timed_write)

    def hold_ack(self, ack: Callable[[], None], requeue: Callable[[], None]) -> bool:
        """Hold an acknowledgement until the background write is done; False if none runs."""
        if self._write is None:
            return False
        self._held_acks.append((ack, requeue))
        return True

    def wait_for_write(self) -> None:
        """Wait for the background write, then settle the held-back acknowledgements.

        A failed write leaves memory ahead of Redis: the held-back messages are requeued,
        the worker reloads before the next message, and StoreUnavailableError is raised.
        """
        future, self._write = self._write, None
        if future is None:
            return
        held, self._held_acks = self._held_acks, []
        try:
            future.result()
        except StoreUnavailableError:
            self.stale = True
            for _, requeue in held:
                requeue()
            raise
        for ack, _ in held:
            ack()

    def settle_finished_write(self) -> None:
        """On the event loop: settle a background write that has finished."""
        if self._write is not None and self._write.done():
            try:
                self.wait_for_write()
            except StoreUnavailableError as error:
                self._store_lost(error, None)

    # ------------------------------------------------------------------ store down
    def _store_lost(
        self,
        error: StoreUnavailableError,
        envelope: bytes | memoryview | None,
        publisher_user: str | None = None,
    ) -> None:
        """Stop consuming until Redis answers, and tell the waiting sender why."""
        log.error("%s", error)
        if not self.store_down:
            self._hold_marker()  # before the notice: a client asking then finds it
        if envelope is not None:
            self._notify_sender(envelope, error, publisher_user)
        if self.store_down:
            return
        self.store_down = True
        self.pause_consuming()
        if self.call_repeatedly is not None and self._probe is None:
            self._probe = self.call_repeatedly(STORE_PROBE_SECONDS, self._probe_store)

    def _probe_store(self) -> None:
        """On the event loop, while the store is down: once Redis answers, reload and resume."""
        if not self.store_down:
            return
        try:
            self.store.ping(self._probe_client)
            self.store.load()
        except StoreUnavailableError:
            return
        self.stale = False
        self.store_down = False
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        log.warning("worker %s: its store is back; consuming again", self.worker_id)
        self.resume_consuming()
        self._drop_marker()

    def _hold_marker(self) -> None:
        """Declare the store-down marker queue (exclusive, on a connection of its own).

        Clients that find no consumer on this worker's queue look for it (a passive
        declare) to tell "its store is down" from "not running"; it goes away with
        this process's connection, so it never outlives the worker.
        """
        if self._marker is not None:
            return
        try:
            connection = self.publisher.app.connection_for_write(heartbeat=0)
            channel: Any = connection.channel()
            channel.queue_declare(
                queue=topology.store_down_marker(self.worker_id, self.settings.namespace),
                exclusive=True,
                auto_delete=True,
            )
            self._marker = connection
        except Exception:  # the marker only sharpens clients' errors; the pause is what counts
            log.warning("could not declare the store-down marker", exc_info=True)

    def _drop_marker(self) -> None:
        connection, self._marker = self._marker, None
        if connection is not None:
            try:
                connection.close()  # the exclusive marker queue goes with it
            except Exception:
                log.debug("closing the store-down marker's connection failed", exc_info=True)

    def _notify_sender(
        self,
        envelope: bytes | memoryview,
        error: StoreUnavailableError,
        publisher_user: str | None,
    ) -> None:
        """Send the message's sender a StoreUnavailableError notice (request None).

        Only to a reply queue of the party the message came from (for a forward from a
        worker of the fleet, the party it was forwarded for), as any reply.
        """
        try:
            message = codec.decode(envelope)
            reply_to = message.get("reply_to") if isinstance(message, dict) else None
            if not isinstance(reply_to, str) or not publisher_user:
                return
            principal = publisher_user
            if message.get("forwarded") is True and self.trusts_forwarder(
                publisher_user, str(message.get("sender"))
            ):
                principal = str(message.get("on_behalf_of", publisher_user))
            if not self.owns_reply_to(principal, reply_to):
                return
            notice = [[None, False, {**error_to_wire(error, "store"), "worker": self.worker_id}]]
            self.publisher.publish(
                [("reply", reply_to, codec.encode(protocol.reply_envelope(notice)))]
            )
        except Exception:  # the notice is a courtesy: the requeue is what keeps the data safe
            log.debug("could not notify the sender of a message put back", exc_info=True)

    # ------------------------------------------------------------------ for operators
    def status(self) -> dict[str, Any]:
        """What ``tensorfleet status`` and the metrics show of this worker, right now."""
        store, stats = self.store, self.engine.stats
        clients: dict[str, dict[str, int]] = {}
        for obj_id in store.objects:
            owner = store.owners.get(obj_id, "?")
            entry = clients.setdefault(owner, {"objects": 0, "bytes": 0})
            entry["objects"] += 1
        for owner, size in store.usage.items():
            clients.setdefault(owner, {"objects": 0, "bytes": 0})["bytes"] = size
        return {
            "worker": self.worker_id,
            "namespace": self.settings.namespace,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "store_up": not self.store_down,
            "objects": len(store.objects),
            "bytes": sum(store.usage.values()),
            "clients": clients,
            "messages": stats.messages,
            "commands": stats.commands,
            "errors": stats.errors,
            "busy_s": round(stats.seconds, 6),
            "commands_by_kind": dict(stats.by_command),
            "refusals": dict(self.publisher.refusals),
            "dropped_replies": self.publisher.dropped_replies,
        }

    # ------------------------------------------------------------------ start-up
    def start(self) -> int:
        """Host the operator's datasets, load every object from Redis, declare dead letters."""
        for option in self.settings.datasets:
            name, path = parse_option(option)
            for hosted in load_dataset(self.worker_id, name, path):
                self.engine.host(hosted)
        count = self.store.load()
        self.stale = False
        self.publisher.declare_dead_letters()
        return count


def _non_mutating(body: bytes | memoryview) -> bool:
    """Whether a (small) envelope holds only :data:`_NON_MUTATING` commands."""
    if len(body) > 4096:
        return False
    try:
        commands = codec.decode(body).get("commands")
        return bool(commands) and all(command[0] in _NON_MUTATING for command in commands)
    except Exception:  # the engine reports a malformed envelope properly
        return False


_current: Runtime | None = None


def current() -> Runtime | None:
    """This process's runtime, once the worker has started (None before)."""
    return _current


def start(app: Celery, worker_id: str, settings: Settings) -> Runtime:
    """Create this process's runtime for ``worker_id`` and load its objects from Redis."""
    global _current
    runtime = Runtime(app, worker_id, settings)
    count = runtime.start()
    log.info(
        "worker %s serving %s with %d objects loaded from Redis", worker_id, runtime.queue, count
    )
    _current = runtime
    return runtime
