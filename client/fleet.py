"""The pika transport of ``FleetWorker``: batches to worker queues, replies from our own queue.

pika is not thread-safe, so one I/O thread owns the connection. ``publish``
only appends to an outbox and wakes that thread with
``add_callback_threadsafe``; the thread publishes each batch, in call order, on
one channel (so RabbitMQ keeps the order across worker queues too) as a Celery
protocol-v2 task message, and feeds replies into a thread-safe inbox that
``receive`` reads.

A dropped connection is re-opened in one place (:meth:`FleetTransport._run`),
with a bounded number of attempts; the reply queue outlives the connection
(it only expires when unused), so replies sent meanwhile wait for us. Broker
errors reach callers only as :class:`~broker.errors.BrokerConnectionError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any

import pika
import pika.exceptions

from broker import topology
from broker.amqp import (
    CHUNK_HEADER,
    PERSISTENT,
    Chunk,
    message_properties,
    new_task_id,
    safe_url,
    split_pieces,
    task_message,
)
from broker.chunking import Reassembler
from broker.codec import Body
from broker.errors import BrokerConnectionError, TensorFleetError
from broker.settings import Settings, get_settings
from broker.tls import pika_parameters

log = logging.getLogger(__name__)

#: Everything pika or the socket layer raises when the broker goes away.
_BROKER_ERRORS = (pika.exceptions.AMQPError, OSError)
#: How long the constructor waits for the first connection.
_CONNECT_WAIT = 30.0


class FleetTransport:
    """A :class:`~client.transport.Transport` over RabbitMQ; one per client process."""

    def __init__(self, settings: Settings | None = None, client_id: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.client_id = client_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.reply_address = topology.reply_queue(self.client_id, self.settings.namespace)
        self._url = safe_url(self.settings.broker_url)
        self._outbox: deque[tuple[str, Body]] = deque()
        self._inbox: queue.SimpleQueue[Body | BaseException] = queue.SimpleQueue()
        self._reassembler = Reassembler(self.settings.max_object_bytes)
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._declared: set[str] = set()
        self._wake_pending = False
        self._closing = False
        self._fatal: BrokerConnectionError | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._start()

    # ------------------------------------------------------------------ Transport
    def publish(self, worker_id: str, body: Body) -> None:
        """Queue ``body`` for ``worker_id``'s queue; returns before it is sent."""
        if self._closing:
            raise BrokerConnectionError(self._url, "this transport was closed")
        topology.worker_queue(worker_id, self.settings.namespace)  # a bad id fails here, not later
        if self._thread is None or not self._thread.is_alive():
            self._start()
        self._outbox.append((worker_id, body))
        self._wake()

    def receive(self, timeout: float) -> Body | None:
        """The next reply for this client, or None after ``timeout`` seconds."""
        try:
            item = (
                self._inbox.get(timeout=max(timeout, 0.0))
                if timeout > 0
                else (self._inbox.get_nowait())
            )
        except queue.Empty:
            if self._fatal is not None:
                raise self._fatal from None
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the I/O thread and close the connection (queued batches are sent first)."""
        self._closing = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    # ------------------------------------------------------------------ I/O thread
    def _start(self) -> None:
        """Start the I/O thread and wait until it is connected (or gave up)."""
        self._fatal = None
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="tensorfleet-io", daemon=True)
        self._thread.start()
        if not self._ready.wait(_CONNECT_WAIT):
            raise BrokerConnectionError(self._url, f"no connection within {_CONNECT_WAIT:g} s")
        if self._fatal is not None:
            raise self._fatal

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
        failures = 0
        while not self._closing:
            try:
                self._connect()
                failures = 0
                self._ready.set()
                self._serve()
            except _BROKER_ERRORS as error:
                self._disconnect()
                if self._closing:
                    break
                failures += 1
                if failures > self.settings.connect_retries:
                    self._fatal = BrokerConnectionError(
                        self._url,
                        f"{type(error).__name__}: {error or 'connection lost'} "
                        f"(gave up after {failures} attempts)",
                    )
                    self._inbox.put(self._fatal)
                    self._ready.set()
                    return
                delay = min(0.1 * 2 ** (failures - 1), 2.0)
                log.warning("broker connection lost (%s); reconnecting in %.1f s", error, delay)
                time.sleep(delay)
        self._disconnect()

    def _connect(self) -> None:
        parameters = pika_parameters(self.settings)  # amqps://: TLS options (broker/tls.py)
        parameters.connection_attempts = 1
        parameters.socket_timeout = 10
        parameters.blocked_connection_timeout = 300
        parameters.client_properties = {"connection_name": f"tensorfleet client {self.client_id}"}
        connection = pika.BlockingConnection(parameters)
        channel = connection.channel()
        channel.queue_declare(
            self.reply_address,
            durable=False,
            exclusive=False,
            auto_delete=False,
            arguments=topology.reply_queue_arguments(),
        )
        channel.basic_qos(prefetch_count=64)
        channel.basic_consume(self.reply_address, self._on_reply, auto_ack=True)
        self._declared = set()
        self._channel = channel
        self._connection = connection

    def _serve(self) -> None:
        assert self._connection is not None
        while not self._closing:
            self._drain()
            self._connection.process_data_events(time_limit=1.0)
        self._drain()

    def _disconnect(self) -> None:
        connection, channel = self._connection, self._channel
        self._connection, self._channel = None, None
        self._wake_pending = False
        if self._closing and channel is not None and channel.is_open:
            with contextlib.suppress(*_BROKER_ERRORS):  # nobody will read it any more
                channel.queue_delete(self.reply_address)
        if connection is not None and connection.is_open:
            with contextlib.suppress(*_BROKER_ERRORS):
                connection.close()

    def _drain(self) -> None:
        """Publish every queued batch; one that fails stays queued for the next connection."""
        self._wake_pending = False
        while self._outbox:
            worker_id, body = self._outbox[0]
            self._publish_batch(worker_id, body)
            self._outbox.popleft()

    def _publish_batch(self, worker_id: str, body: Body) -> None:
        channel = self._channel
        assert channel is not None
        queue_name = topology.worker_queue(worker_id, self.settings.namespace)
        if queue_name not in self._declared:
            channel.queue_declare(
                queue_name, durable=True, arguments=topology.worker_queue_arguments()
            )
            self._declared.add(queue_name)
        for chunk, part in split_pieces(body, self.settings.max_message_bytes):
            task_id = new_task_id()
            headers, payload = task_message(part, task_id, self.client_id, chunk)
            properties = pika.BasicProperties(
                headers=headers,
                reply_to=self.reply_address,
                correlation_id=task_id,
                delivery_mode=PERSISTENT,
                priority=0,
                **message_properties(),
            )
            del part
            channel.basic_publish("", queue_name, payload, properties)
            del payload

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        headers = properties.headers or {}
        wire_chunk = headers.get(CHUNK_HEADER)
        if wire_chunk is None:
            self._inbox.put(body)
            return
        try:
            whole = self._reassembler.add(Chunk.from_wire(wire_chunk), body)
        except TensorFleetError as error:
            self._inbox.put(error)
            return
        if whole is not None:
            self._inbox.put(whole)  # a writable buffer: big tensors decode without a copy


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
