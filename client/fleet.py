"""The pika transport of ``FleetWorker``: batches to worker exchanges, replies from our own queue.

pika is not thread-safe, so one I/O thread owns the connection. ``publish``
only appends to an outbox and wakes that thread with
``add_callback_threadsafe``; the thread publishes each batch, in call order, on
one channel (so RabbitMQ keeps the order across workers too) as a Celery
protocol-v2 task message, and feeds replies into a thread-safe inbox that
``receive`` reads. Questions about workers (:meth:`FleetTransport.worker_state`)
are answered on the same thread with passive declarations, which create nothing
and need no permission.

Who is who (README, "Security"): the client connects as the RabbitMQ
user in its URL; every message it publishes carries that ``user_id`` (RabbitMQ
refuses a message whose ``user_id`` is not the connection's user). Batches go to
the worker's own direct exchange ``<ns>.worker.<id>`` (declared by the worker;
the client declares nothing of a worker's), published ``mandatory`` so a batch
that reaches no queue comes back and is reported, never lost in silence. Replies
come to an exclusive queue ``<ns>.reply.<user>.<suffix>`` nobody else can read,
and are believed only if RabbitMQ says a worker published them: ``user_id`` is the
user (``<ns>.worker.<id>``) of a worker this client talks to or, in fleets where
every party shares one account, that shared account. Anything else is dropped and
counted.

A dropped connection is re-opened in one place (:meth:`FleetTransport._run`),
with the bounded backoff of :mod:`broker.backoff`, for as long as the transport
is open, so the first call after a broker restart finds it connected again. A
call that needs the broker while it is down waits for
``TENSORFLEET_CONNECT_RETRIES`` attempts, then gets
:class:`~broker.errors.BrokerConnectionError`; no pika error reaches a caller.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika
import pika.exceptions

from broker import topology
from broker.amqp import (
    CHUNK_HEADER,
    PERSISTENT,
    Chunk,
    broker_user,
    message_properties,
    new_task_id,
    safe_url,
    split_pieces,
    task_message,
)
from broker.backoff import Backoff
from broker.chunking import Reassembler
from broker.codec import Body
from broker.errors import BrokerConnectionError, TensorFleetError, WorkerNeverStartedError
from broker.settings import Settings, get_settings
from broker.tls import pika_parameters
from client.transport import WorkerState

log = logging.getLogger(__name__)

#: Everything pika or the socket layer raises when the broker goes away.
_BROKER_ERRORS = (pika.exceptions.AMQPError, OSError)
#: How long the constructor waits for the first connection.
_CONNECT_WAIT = 30.0
#: AMQP reply code of a passive declare of another connection's exclusive queue.
_RESOURCE_LOCKED = 405
#: What the transport reports for a batch that reached no worker queue.
_UNDELIVERED = "a batch of commands"


class FleetTransport:
    """A :class:`~client.transport.Transport` over RabbitMQ; one per client process."""

    def __init__(self, settings: Settings | None = None, client_id: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.client_id = client_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        #: the RabbitMQ user this client connects as; its messages carry it as user_id
        self.user = broker_user(self.settings.broker_url)
        suffix = client_id or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.reply_address = topology.client_reply_queue(self.user, suffix, self.settings.namespace)
        self._url = safe_url(self.settings.broker_url)
        self._outbox: deque[tuple[str, Body, bool]] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        #: replies with the worker that sent each (None: a shared account), or an error
        self._inbox: queue.SimpleQueue[tuple[Body, str | None] | BaseException] = (
            queue.SimpleQueue()
        )
        self._reassembler = Reassembler(self.settings.max_object_bytes)
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._probe: Any = None
        self._exchanges: set[str] = set()
        self._wake_pending = False
        self._closing = False
        #: which workers may answer this client (set by its session: the workers it has
        #: handles for, every hop of its chains included); None: any of the namespace
        self.expected_workers: Callable[[str], bool] | None = None
        #: replies dropped because RabbitMQ said no worker published them
        self.forged_replies = 0
        #: successful connections so far (a new one means a new reply queue)
        self.generation = 0
        #: when (time.monotonic()) the latest reconnection after a drop happened, if any:
        #: workers reconnect on their own schedule after a broker restart
        self.reconnected_at: float | None = None
        self._state = threading.Condition()
        self._failed_attempts = 0
        self._last_error = ""
        self._retry_now = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._start()

    # ------------------------------------------------------------------ Transport
    def publish(self, worker_id: str, body: Body, resend: bool = False) -> None:
        """Queue ``body`` for worker ``worker_id``; returns before it is sent.

        ``resend``: the batch was sent before and its reply did not come (see
        :data:`~broker.amqp.RESEND_HEADER`).
        """
        if self._closing:
            raise BrokerConnectionError(self._url, "this transport was closed")
        topology.worker_queue(worker_id, self.settings.namespace)  # a bad id fails here, not later
        self._outbox.append((worker_id, body, resend))
        self._wake()

    def receive(self, timeout: float) -> Body | None:
        """The next reply for this client, or None after ``timeout`` seconds."""
        reply = self.receive_from(timeout)
        return None if reply is None else reply[0]

    def receive_from(self, timeout: float) -> tuple[Body, str | None] | None:
        """The next reply and the worker whose own RabbitMQ user published it."""
        try:
            item = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the I/O thread and close the connection (queued batches are sent first)."""
        self._closing = True
        self._retry_now.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    # ------------------------------------------------------------------ questions
    @property
    def connected(self) -> bool:
        return self._connection is not None

    def worker_state(
        self, worker_id: str, timeout: float, look_for_marker: bool = False
    ) -> WorkerState:
        """What RabbitMQ says of ``worker_id``'s queue (passive declarations; nothing created).

        The store-down marker is looked for when the queue has no consumer, or when
        ``look_for_marker`` asks (the worker said its store is down and may still be
        pausing). While the broker is unreachable this waits for a connection, at most ``timeout``
        seconds and ``TENSORFLEET_CONNECT_RETRIES`` attempts, then raises
        :class:`~broker.errors.BrokerConnectionError`.
        """
        names = (
            topology.worker_queue(worker_id, self.settings.namespace),
            topology.store_down_marker(worker_id, self.settings.namespace),
        )
        return self._call(lambda: self._probe_worker(*names, look_for_marker), timeout)

    def wait_connected(self, timeout: float) -> None:
        """Return once connected; BrokerConnectionError after ``timeout`` or the retries."""
        deadline = time.monotonic() + timeout
        with self._state:
            start = self._failed_attempts
            if self._connection is None:
                self._retry_now.set()  # a caller is waiting: do not sit out the backoff
            while self._connection is None:
                if self._closing:
                    raise BrokerConnectionError(self._url, "this transport was closed")
                failed = self._failed_attempts - start
                left = deadline - time.monotonic()
                if failed >= max(self.settings.connect_retries, 1) or left <= 0:
                    raise BrokerConnectionError(
                        self._url,
                        f"{self._last_error or 'not connected'} (still failing after "
                        f"{failed} more attempts)",
                    )
                self._state.wait(left)

    def _call(self, function: Callable[[], Any], timeout: float) -> Any:
        """Run ``function`` on the I/O thread and return its result (broker errors translated)."""
        deadline = time.monotonic() + timeout
        self.wait_connected(timeout)
        future: Future[Any] = Future()
        self._calls.append((function, future))
        self._wake()
        try:
            return future.result(timeout=max(deadline - time.monotonic(), 0.5))
        except TimeoutError:
            raise BrokerConnectionError(self._url, "the broker did not answer in time") from None
        except _BROKER_ERRORS as error:
            raise BrokerConnectionError(self._url, f"{type(error).__name__}: {error}") from None

    # ------------------------------------------------------------------ I/O thread
    def _start(self) -> None:
        """Start the I/O thread and wait until it is connected (or gave up)."""
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="tensorfleet-io", daemon=True)
        self._thread.start()
        if not self._ready.wait(_CONNECT_WAIT) or self._connection is None:
            self._closing = True
            self._retry_now.set()
            raise BrokerConnectionError(
                self._url, self._last_error or f"no connection within {_CONNECT_WAIT:g} s"
            )

    def _wake(self) -> None:
        connection = self._connection
        if connection is None or self._wake_pending:
            return  # the I/O thread drains the outbox as soon as it is connected
        self._wake_pending = True
        try:
            connection.add_callback_threadsafe(self._drain)
        except _BROKER_ERRORS:
            self._wake_pending = False  # reconnecting: the new connection drains

    def _run(self) -> None:
        """Connect, serve, and reconnect after a drop: the one place that retries."""
        backoff = Backoff()
        while not self._closing:
            try:
                self._connect()
            except _BROKER_ERRORS as error:
                self._disconnect()
                self._failed(error)
                if backoff.attempts >= self.settings.connect_retries:
                    self._ready.set()  # the constructor gives up; later callers retry
                self._retry_now.wait(backoff.next_delay())
                self._retry_now.clear()
                continue
            backoff.reset()
            with self._state:
                self._state.notify_all()
            self._ready.set()
            try:
                self._serve()
            except _BROKER_ERRORS as error:
                log.warning("broker connection lost (%s); reconnecting", error)
                self._disconnect()
                self._failed(error)
        self._disconnect()

    def _failed(self, error: BaseException) -> None:
        with self._state:
            self._failed_attempts += 1
            self._last_error = f"{type(error).__name__}: {error or 'connection lost'}"
            self._state.notify_all()
        for _, future in self._take_calls():
            future.set_exception(BrokerConnectionError(self._url, self._last_error))

    def _take_calls(self) -> list[tuple[Callable[[], Any], Future[Any]]]:
        taken = []
        while self._calls:
            taken.append(self._calls.popleft())
        return taken

    def _connect(self) -> None:
        parameters = pika_parameters(self.settings)  # amqps://: TLS options (broker/tls.py)
        parameters.connection_attempts = 1
        parameters.socket_timeout = 10
        parameters.blocked_connection_timeout = 300
        parameters.client_properties = {"connection_name": f"tensorfleet client {self.client_id}"}
        connection = pika.BlockingConnection(parameters)
        try:
            channel = connection.channel()
            # exclusive: only this connection may consume it, and it goes with the connection
            # (RESOURCE_LOCKED while the broker still holds a dropped one: retried)
            channel.queue_declare(self.reply_address, durable=False, exclusive=True)
            channel.basic_qos(prefetch_count=64)
            channel.basic_consume(self.reply_address, self._on_reply, auto_ack=True, exclusive=True)
            channel.add_on_return_callback(self._on_return)
        except BaseException:
            connection.close()
            raise
        self._exchanges = set()
        self._probe = None
        self._channel = channel
        self._connection = connection
        self.generation += 1
        if self.generation > 1:
            self.reconnected_at = time.monotonic()

    def _serve(self) -> None:
        assert self._connection is not None
        while not self._closing:
            self._drain()
            self._connection.process_data_events(time_limit=1.0)
        self._drain()

    def _disconnect(self) -> None:
        connection = self._connection
        self._connection, self._channel, self._probe = None, None, None
        self._wake_pending = False
        if connection is not None and connection.is_open:
            try:
                connection.close()  # the exclusive reply queue goes with it
            except _BROKER_ERRORS:
                log.debug("closing a broken connection failed", exc_info=True)

    def _drain(self) -> None:
        """Answer questions, then publish every queued batch (one that fails stays queued)."""
        self._wake_pending = False
        for function, future in self._take_calls():
            try:
                future.set_result(function())
            except _BROKER_ERRORS as error:
                future.set_exception(error)
                raise
        while self._outbox:
            worker_id, body, resend = self._outbox[0]
            self._publish_batch(worker_id, body, resend)
            self._outbox.popleft()

    def _passive_queue(self, name: str) -> tuple[int, int] | None:
        """(messages, consumers) of queue ``name``, or None if it does not exist."""
        try:
            channel = self._probe_channel()
            declared = channel.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as error:  # closes the probe channel
            self._probe = None
            if error.reply_code == _RESOURCE_LOCKED:
                return 0, 0  # another connection's exclusive queue: it exists
            return None  # 404: no such queue
        return int(declared.method.message_count), int(declared.method.consumer_count)

    def _probe_channel(self) -> Any:
        if self._probe is None or not self._probe.is_open:
            assert self._connection is not None
            self._probe = self._connection.channel()
        return self._probe

    def _probe_worker(self, queue_name: str, marker: str, look_for_marker: bool) -> WorkerState:
        found = self._passive_queue(queue_name)
        if found is None:
            return WorkerState(exists=False)
        messages, consumers = found
        if consumers and not look_for_marker:
            return WorkerState(True, consumers, messages)
        return WorkerState(True, consumers, messages, self._passive_queue(marker) is not None)

    def _exchange_exists(self, name: str) -> bool:
        try:
            self._probe_channel().exchange_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            self._probe = None
            return False
        return True

    def _publish_batch(self, worker_id: str, body: Body, resend: bool = False) -> None:
        channel = self._channel
        assert channel is not None
        namespace = self.settings.namespace
        exchange = topology.worker_exchange(worker_id, namespace)
        if exchange not in self._exchanges:
            # publishing to an exchange that does not exist would close our channel
            if not self._exchange_exists(exchange):
                self._inbox.put(WorkerNeverStartedError(worker_id, _UNDELIVERED))
                return
            self._exchanges.add(exchange)
        routing_key = topology.worker_queue(worker_id, namespace)
        for chunk, part in split_pieces(body, self.settings.max_message_bytes):
            task_id = new_task_id()
            headers, payload = task_message(part, task_id, self.client_id, chunk, resend=resend)
            properties = pika.BasicProperties(
                headers=headers,
                reply_to=self.reply_address,
                correlation_id=task_id,
                delivery_mode=PERSISTENT,
                priority=0,
                user_id=self.user,
                **message_properties(),
            )
            del part
            channel.basic_publish(exchange, routing_key, payload, properties, mandatory=True)
            del payload

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """A batch reached no queue (the worker's queue was deleted): report it, once a batch."""
        worker_id = topology.worker_id_from_queue(method.routing_key, self.settings.namespace)
        if worker_id is not None and _first_part(properties.headers or {}):
            self._inbox.put(WorkerNeverStartedError(worker_id, _UNDELIVERED))

    def trusted_sender(self, user_id: str | None) -> bool:
        """Whether a reply published as RabbitMQ user ``user_id`` comes from a worker."""
        if not user_id:
            return False
        if user_id == (self.settings.worker_user or self.user):  # the workers' shared account
            return True
        worker_id = topology.worker_id_from_queue(user_id, self.settings.namespace)
        if worker_id is None:
            return False
        return self.expected_workers is None or self.expected_workers(worker_id)

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if not self.trusted_sender(properties.user_id):
            self.forged_replies += 1
            log.warning(
                "dropped a reply on %s published by %r, which is no worker of namespace %s",
                self.reply_address,
                properties.user_id,
                self.settings.namespace,
            )
            return
        sender = topology.worker_id_from_queue(properties.user_id, self.settings.namespace)
        headers = properties.headers or {}
        wire_chunk = headers.get(CHUNK_HEADER)
        if wire_chunk is None:
            self._inbox.put((body, sender))
            return
        try:
            whole = self._reassembler.add(Chunk.from_wire(wire_chunk), body, properties.user_id)
        except TensorFleetError as error:
            self._inbox.put(error)
            return
        if whole is not None:
            self._inbox.put((whole, sender))  # writable: big tensors decode without a copy


def _first_part(headers: dict[str, Any]) -> bool:
    """Whether a task message is a whole batch or the first part of a chunked one."""
    kwargs = str(headers.get("kwargsrepr", "{}"))  # "{'chunk': ['<transfer>', index, ...]}"
    return kwargs == "{}" or kwargs.split(",")[1].strip() == "0"


_transport: FleetTransport | None = None
_transport_lock = threading.Lock()


def get_fleet_transport() -> FleetTransport:
    """The process-wide transport, connected on first use with :func:`get_settings`."""
    global _transport
    with _transport_lock:
        if _transport is None or _transport._closing:
            _transport = FleetTransport()
        return _transport


def reset_fleet_transport() -> None:
    """Close the process-wide transport (tests that change settings call this)."""
    global _transport
    with _transport_lock:
        if _transport is not None:
            _transport.close()
        _transport = None
