"""The Celery app of a fleet worker: one task, ``tensorfleet.execute(body)``, around the engine.

Start it with ``tensorfleet worker bob`` or with plain Celery::

    celery -A worker.celery_app worker -P solo -Q tensorfleet.worker.bob

(the worker id comes from ``TENSORFLEET_WORKER_ID`` or from the one worker queue
given with ``-Q``). Messages are msgpack only; nothing is ever unpickled.

Two kinds of caller are served:

* TensorFleet clients and workers send task messages with ``ignore_result`` set
  (:func:`broker.amqp.task_message`). The task publishes the engine's outgoing
  messages itself, replies to the envelope's ``reply_to`` queue and forwards
  as task messages onto other workers' queues, through one producer (one
  channel) so RabbitMQ keeps their causal order. No result backend is used.
* A plain Celery caller (``send_task("tensorfleet.execute", args=[body],
  queue="tensorfleet.worker.bob").get()``) gets the reply envelope as the
  task's result through the ``rpc://`` backend.

A message the worker refuses (not msgpack, pickle, not a task, an unknown task,
too big, not an envelope, an unknown or forbidden op) is published with the
reason in ``x-tensorfleet-reason`` to the namespace's dead-letter exchange and
acknowledged; the worker keeps serving. Worker queues carry no dead-letter
arguments (see :mod:`broker.topology`), so refusal is always done here.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from celery import Celery, signals
from celery.exceptions import Reject
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from celery.worker.strategy import default as default_strategy
from kombu import Exchange, Queue

from broker import codec, protocol, topology
from broker.amqp import (
    CHUNK_HEADER,
    FORWARD_HEADER,
    PERSISTENT,
    TASK_NAME,
    TRANSIENT,
    Chunk,
    Reassembler,
    message_properties,
    new_task_id,
    split_pieces,
    task_message,
)
from broker.errors import ConfigurationError, MalformedMessageError, MessageTooLargeError
from broker.settings import Settings, get_settings
from worker.engine import Engine
from worker.redis_store import RedisObjectStore, StoreUnavailableError, connect

log = logging.getLogger(__name__)

#: A commit carrying at least this many tensor bytes is written to Redis by a background
#: thread, and the messages handled meanwhile are acknowledged once it is written.
BACKGROUND_WRITE_BYTES = 1024 * 1024
#: How often (seconds) the worker's event loop looks for finished background writes.
_ACK_POLL = 0.01

#: Room for the task envelope around a chunk of TENSORFLEET_MAX_MESSAGE_BYTES.
_HEADROOM = 1024 * 1024
_RETRY_POLICY = {"max_retries": 5, "interval_start": 0.1, "interval_step": 0.5, "interval_max": 2.0}


def make_app(settings: Settings) -> Celery:
    """The worker's Celery app, configured from ``settings``."""
    app = Celery("tensorfleet", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        result_backend="rpc://",
        result_persistent=False,
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["msgpack"],
        result_accept_content=["msgpack"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_create_missing_queues=True,
        worker_prefetch_multiplier=settings.prefetch,
        worker_pool="solo",
        worker_concurrency=1,
        worker_consumer="worker.celery_app:FleetConsumer",
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


app = make_app(get_settings())


class FleetRuntime:
    """One worker process's engine, store and publishing: created when the worker starts."""

    def __init__(self, worker_id: str, settings: Settings) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.namespace = settings.namespace
        self.queue = topology.worker_queue(worker_id, settings.namespace)
        self.store = RedisObjectStore(
            worker_id,
            connect(settings.redis_url),
            settings.namespace,
            part_bytes=settings.max_message_bytes,
            batch_ttl=settings.batch_ttl,
        )
        self.store.defer_commits = True  # replies go out first; see execute()
        #: chunked messages still arriving, each copied into one buffer part by part, in
        #: memory only: a worker that dies mid-transfer loses the parts it acknowledged,
        #: the sender's synchronising call reports it unavailable, and nothing of that
        #: message was applied (a message's commands are durable once it has run)
        self.reassembler = Reassembler(settings.max_object_bytes)
        self.engine = Engine(worker_id, self.store)
        self.stale = True
        self.dead_letter_exchange = Exchange(
            topology.dead_letter_exchange(self.namespace), "fanout", durable=True
        )
        self.dead_letter_queue = Queue(
            topology.dead_letter_queue(self.namespace), self.dead_letter_exchange, durable=True
        )
        self._queues: dict[str, Queue] = {}
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tensorfleet-redis")
        self._write: Future[None] | None = None
        #: requests whose acknowledgement waits for the background write
        self._unacked: list[Request] = []

    # ------------------------------------------------------------------ durability
    def commit(self) -> None:
        """Write the store's deferred commit: a big one in the background, else now.

        While a background write runs, the worker goes on with messages whose commands
        never change a tensor's memory (:data:`_NON_MUTATING`), and holds back every
        acknowledgement until the write is done: a crash before that redelivers those
        messages, which then run again from what Redis holds. Any other message first
        waits for the write, and so does the next commit, so commits reach Redis in order.
        """
        job = self.store.take_pending()
        if job is None:
            return
        self.wait_for_write()  # commits reach Redis in the order their messages ran
        write, size = job
        if size < BACKGROUND_WRITE_BYTES:
            write()
            return
        self._write = self._writer.submit(write)

    def writing(self) -> bool:
        return self._write is not None

    def defer_ack(self, request: Request) -> bool:
        """Hold ``request``'s acknowledgement until the background write is done."""
        if self._write is None:
            return False
        self._unacked.append(request)
        return True

    def wait_for_write(self) -> None:
        """Wait for the background write, then settle the held-back acknowledgements.

        A failed write leaves memory ahead of Redis: the held-back messages are
        requeued, the worker reloads from Redis, and StoreUnavailableError is raised.
        """
        future, self._write = self._write, None
        if future is None:
            return
        unacked, self._unacked = self._unacked, []
        try:
            future.result()
        except StoreUnavailableError:
            self.stale = True
            for request in unacked:
                request.reject(requeue=True)
            raise
        for request in unacked:
            Request.acknowledge(request)

    def settle_finished_write(self) -> None:
        """On the event loop: settle a background write that has finished."""
        if self._write is not None and self._write.done():
            try:
                self.wait_for_write()
            except StoreUnavailableError as error:
                log.warning("writing to Redis failed (%s); reloading before the next one", error)

    def load(self) -> int:
        """(Re)load every object of this worker from Redis."""
        count = self.store.load()
        self.stale = False
        return count

    def worker_queue(self, worker_id: str) -> Queue:
        """The kombu Queue of another worker, declared once per connection by kombu."""
        queue = self._queues.get(worker_id)
        if queue is None:
            name = topology.worker_queue(worker_id, self.namespace)
            queue = self._queues[worker_id] = Queue(
                name, Exchange(name, "direct", durable=True), name, durable=True
            )
        return queue

    # ------------------------------------------------------------------ publishing
    def publish(self, outgoing: list[tuple[str, str, codec.Body]]) -> None:
        """Send a message's outgoing messages in order, on one producer (one channel)."""
        if not outgoing:
            return
        limit = self.settings.max_message_bytes
        with app.producer_or_acquire() as producer:
            for kind, address, body in outgoing:
                if kind == "worker":
                    queue = self.worker_queue(address)
                    for chunk, part in split_pieces(body, limit):
                        task_id = new_task_id()
                        headers, payload = task_message(
                            part, task_id, self.worker_id, chunk, forward=True
                        )
                        producer.publish(
                            payload,
                            exchange="",
                            routing_key=queue.name,
                            headers=headers,
                            correlation_id=task_id,
                            delivery_mode=PERSISTENT,
                            declare=[queue],
                            retry=True,
                            retry_policy=_RETRY_POLICY,
                            **message_properties(),
                        )
                elif kind == "reply":
                    for chunk, part in split_pieces(body, limit):
                        headers = {} if chunk is None else {CHUNK_HEADER: chunk.to_wire()}
                        producer.publish(
                            b"".join(part),
                            exchange="",
                            routing_key=address,
                            headers=headers,
                            delivery_mode=TRANSIENT,
                            retry=True,
                            retry_policy=_RETRY_POLICY,
                            **message_properties(),
                        )
                else:
                    log.error("engine produced an outgoing message of unknown kind %r", kind)

    def dead_letter(
        self,
        body: bytes,
        reason: str,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Keep a refused message in the dead-letter queue, with why it was refused."""
        headers = {
            key: value
            for key, value in (headers or {}).items()
            if isinstance(value, str | int | float | bool | bytes | type(None))
        }
        headers[topology.REASON_HEADER] = reason
        headers[topology.ORIGIN_HEADER] = self.queue
        log.warning("dead-lettering a message from %s: %s", self.queue, reason)
        with app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange=self.dead_letter_exchange,
                routing_key=self.queue,
                headers=headers,
                content_type=content_type or "application/octet-stream",
                content_encoding=content_encoding or "binary",
                delivery_mode=PERSISTENT,
                declare=[self.dead_letter_queue],
                retry=True,
                retry_policy=_RETRY_POLICY,
            )

    def dead_letter_envelope(self, body: bytes, reason: str, request: Any = None) -> None:
        """Dead-letter an envelope that arrived inside a valid task message.

        The task message is rebuilt around it, keeping the sender's own ``x-`` headers
        (Celery hands every message header to the task's request).
        """
        headers, payload = task_message(body, new_task_id(), self.worker_id)
        if request is not None:
            headers.update(
                {key: value for key, value in vars(request).items() if key.startswith("x-")}
            )
        self.dead_letter(payload, reason, headers=headers, **message_properties())


_runtime: FleetRuntime | None = None


def start_runtime(worker_id: str, settings: Settings | None = None) -> FleetRuntime:
    """Create this process's runtime for ``worker_id`` and load its objects from Redis."""
    global _runtime
    runtime = FleetRuntime(worker_id, settings or get_settings())
    count = runtime.load()
    with app.connection_for_write() as connection:  # the dead-letter queue exists from the start
        runtime.dead_letter_queue.bind(connection.default_channel).declare()
    log.info(
        "worker %s serving %s with %d objects loaded from Redis", worker_id, runtime.queue, count
    )
    _runtime = runtime
    return runtime


def _settle_finished_write() -> None:
    if _runtime is not None:
        _runtime.settle_finished_write()


def get_runtime() -> FleetRuntime:
    if _runtime is None:
        worker_id = get_settings().worker_id
        if worker_id is None:
            raise ConfigurationError(
                "TENSORFLEET_WORKER_ID",
                "",
                "the id of this worker, or start it with `tensorfleet worker <id>`",
            )
        return start_runtime(worker_id)
    return _runtime


#: Celery loggers that write a line or two per task at INFO: a fleet worker runs one
#: task per batch, so at INFO they cost more than small batches themselves.
_PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.worker.request")


@signals.after_setup_logger.connect
def _quiet_per_task_logs(loglevel: Any = None, **_: Any) -> None:
    """Keep Celery's per-task lines out of the log unless the worker runs at DEBUG."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    if not isinstance(level, int) or level > logging.DEBUG:
        for name in _PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@signals.celeryd_after_setup.connect
def _on_worker_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Find this worker's id (env or ``-Q``) and load its objects before consuming starts."""
    if instance is None or instance.app is not app:
        return
    settings = get_settings()
    worker_id = settings.worker_id
    if worker_id is None:
        names = list(instance.app.amqp.queues.consume_from or {})
        found = (topology.worker_id_from_queue(name, settings.namespace) for name in names)
        ids = [worker_id for worker_id in found if worker_id]
        if len(ids) != 1:
            raise ConfigurationError(
                "TENSORFLEET_WORKER_ID",
                "",
                "a worker id: set it, or consume exactly one "
                f"{topology.worker_queue('<id>', settings.namespace)} queue with -Q "
                f"(got {names})",
            )
        worker_id = ids[0]
    # a worker runs one small op at a time; torch's default of a thread per core only
    # makes several workers on one machine contend (a FedAvg round went from 0.3 s to 5-18 s)
    torch.set_num_threads(settings.torch_threads)
    start_runtime(worker_id, settings)


# ---------------------------------------------------------------------- the task


@app.task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=False,
    typing=False,
    Strategy="worker.celery_app:fleet_strategy",
    Request="worker.celery_app:FleetRequest",
)
def execute(self: Any, body: bytes, chunk: list[Any] | None = None) -> bytes | None:
    """Run one envelope (or one part of a chunked one) on this worker's engine.

    The engine's outgoing messages (replies, forwards) are published *before* its
    changes are written to Redis, and the message is acknowledged (``acks_late``) only
    after that write. A crash in between leaves the message unacknowledged: it is
    redelivered and runs again from the state in Redis, which does not have its
    effects, so it produces the same messages again. Forwarded batches carry ids
    derived from the original batch, and forwarded deliveries always check the replay
    marker, so the next worker applies a repeated forward once; a client may see a
    repeated reply, which it ignores.
    """
    runtime = get_runtime()
    direct = bool(getattr(self.request, "ignore_result", False))
    envelope: bytes | memoryview = body
    try:
        if runtime.stale:
            runtime.wait_for_write()
            runtime.load()
        if chunk is not None:
            whole = runtime.reassembler.add(Chunk.from_wire(chunk), body)
            if whole is None:
                return None
            envelope = whole  # writable: big tensors are decoded without a copy
        if runtime.writing() and not _non_mutating(envelope):
            runtime.wait_for_write()  # nothing may change the tensors being written
        request = self.request
        # a TensorFleet client's first delivery cannot be a repeat: skip the replay lookup
        runtime.store.first_delivery = direct and not (
            getattr(request, FORWARD_HEADER, False)
            or chunk is not None
            or (request.delivery_info or {}).get("redelivered", True)
        )
        try:
            result = runtime.engine.handle(envelope)
        except MalformedMessageError as error:
            runtime.dead_letter_envelope(bytes(envelope), str(error), request)
            if direct:
                return None
            raise
        try:
            runtime.publish(result.outgoing)
        except BaseException:
            if runtime.store.discard_pending():
                runtime.stale = True  # memory is ahead of Redis: reload before the next one
            raise
        runtime.commit()
        if result.rejected is not None:
            runtime.dead_letter_envelope(bytes(envelope), result.rejected, request)
    except StoreUnavailableError as error:
        runtime.store.discard_pending()
        runtime.stale = True  # memory may be ahead of Redis: reload before the next message
        time.sleep(1.0)
        raise Reject(str(error), requeue=True) from None
    except MessageTooLargeError as error:
        runtime.dead_letter_envelope(bytes(envelope), str(error), self.request)
        return None
    if direct:
        return None
    return codec.encode_inline(protocol.reply_envelope(result.replies))


# ------------------------------------------------------------- refusing bad messages


def _refusal(message: Any, limit: int) -> str | None:
    """Why a message for ``tensorfleet.execute`` must be refused, or None to run it."""
    content_type = message.content_type or ""
    if content_type != codec.CONTENT_TYPE:
        return (
            f"content type {content_type!r} refused: TensorFleet accepts only "
            f"{codec.CONTENT_TYPE} (never pickle)"
        )
    size = len(message.body)
    if size > limit:
        return (
            f"message of {size} bytes is above TENSORFLEET_MAX_MESSAGE_BYTES + headroom "
            f"({limit}); big bodies must be sent in chunks"
        )
    try:  # kombu caches the decoded payload: Celery's own strategy reuses it
        args, kwargs, _embed = message.payload
    except Exception as error:
        return f"body is not a msgpack [args, kwargs, embed] task payload ({type(error).__name__})"
    if (
        not isinstance(args, list)
        or len(args) != 1
        or not isinstance(args[0], bytes)
        or not isinstance(kwargs, dict)
        or set(kwargs) - {"chunk"}
    ):
        return "task arguments must be [envelope bytes] with at most a 'chunk' keyword"
    return None


def _refuse(message: Any, reason: str) -> None:
    runtime = get_runtime()
    runtime.dead_letter(
        message.body,
        reason,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=message.headers,
    )
    message.ack()


def fleet_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default task strategy, behind a gate that dead-letters refused messages."""
    handler = default_strategy(task, app, consumer, **kwargs)
    limit = get_settings().max_message_bytes + _HEADROOM

    def handle(message: Any, *args: Any, **options: Any) -> Any:
        reason = _refusal(message, limit)
        if reason is not None:
            _refuse(message, reason)
            return None
        return handler(message, *args, **options)

    return handle


#: Commands that never change a tensor's memory in place: they read, drop, hand on
#: or add objects. They may run while a background write sends views of tensors.
_NON_MUTATING = frozenset(
    {protocol.PING, protocol.GET, protocol.DELETE, protocol.SEND_TO, protocol.STORE}
)


def _non_mutating(body: bytes | memoryview) -> bool:
    """Whether a (small) envelope holds only :data:`_NON_MUTATING` commands."""
    if len(body) > 4096:
        return False
    try:
        commands = codec.decode(body).get("commands")
        return bool(commands) and all(command[0] in _NON_MUTATING for command in commands)
    except Exception:  # the engine reports a malformed envelope properly
        return False


class FleetRequest(Request):
    """A task request whose acknowledgement waits for a background Redis write."""

    def acknowledge(self) -> None:
        runtime = _runtime
        if self.acknowledged or runtime is None or not runtime.defer_ack(self):
            super().acknowledge()


class FleetConsumer(Consumer):
    """Celery's consumer, dead-lettering (with a reason) what it would reject or drop."""

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)
        hub.call_repeatedly(_ACK_POLL, _settle_finished_write)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _refuse(message, "not a Celery task message (no 'task' header)")

    def on_unknown_task(self, body: Any, message: Any, exc: Any) -> None:
        name = (message.headers or {}).get("task")
        _refuse(message, f"unknown task {name!r}: worker queues run only {TASK_NAME}")

    def on_invalid_task(self, body: Any, message: Any, exc: Any) -> None:
        _refuse(message, f"invalid task message ({exc})")

    def on_decode_error(self, message: Any, exc: Any) -> None:
        _refuse(message, f"message body cannot be decoded ({exc})")
