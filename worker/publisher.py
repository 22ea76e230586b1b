"""What a fleet worker sends: replies, forwards to other workers, dead letters.

Everything goes through the Celery app's producer pool, on one producer (one
channel) per message, so RabbitMQ keeps the causal order of a message's replies
and forwards. A worker creates nothing a client names:

* **Forwards** go only to workers of the fleet: the destination's queue must
  exist (a passive declare, which creates nothing; the answer is cached), and the
  message goes to that worker's own direct exchange (named like its queue, declared
  by the worker when it starts). The engine asks :meth:`Publisher.worker_exists`
  before anything moves (:class:`~broker.errors.UnknownWorkerError` otherwise).
* **Replies** go only to reply queues (``<ns>.reply.``...) that exist; a reply to
  anything else is dropped and counted, never a new queue.
* **Dead letters** go to the namespace's fanout exchange, with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from amqp.exceptions import ResourceLocked
from celery import Celery
from kombu import Exchange, Queue

from broker import codec, topology
from broker.amqp import (
    CHUNK_HEADER,
    PERSISTENT,
    TRANSIENT,
    broker_user,
    message_properties,
    new_task_id,
    split_pieces,
    task_message,
)
from broker.backoff import RetryPolicy
from broker.settings import Settings

__all__ = ["PUBLISH_RETRY", "RETRY_POLICY", "Outgoing", "Publisher", "broker_user"]

log = logging.getLogger(__name__)

#: a publish on a dropped connection reconnects at once, then up to 5 times more, waiting as
#: broker.backoff says (kombu ramps linearly: 0.4, 0.8, 1.2, 1.6, 2 s), then raises
PUBLISH_RETRY = RetryPolicy(first=0.4, maximum=2.0, retries=5)
#: the same, as kombu's publish ``retry_policy``
RETRY_POLICY = PUBLISH_RETRY.kombu_policy()
#: how long "no such queue" is believed before it is asked again (seconds)
_NEGATIVE_TTL = 1.0

#: (kind, address, body): kind "worker" -> address is a worker id; "reply" -> a reply queue
Outgoing = tuple[str, str, codec.Body]


class Publisher:
    """The one place a worker publishes from; see the module docstring."""

    def __init__(self, app: Celery, worker_id: str, settings: Settings) -> None:
        self.app = app
        self.worker_id = worker_id
        self.settings = settings
        self.namespace = settings.namespace
        self.queue = topology.worker_queue(worker_id, settings.namespace)
        self.dead_letter_exchange = Exchange(
            topology.dead_letter_exchange(self.namespace), "fanout", durable=True
        )
        self.dead_letter_queue = Queue(
            topology.dead_letter_queue(self.namespace), self.dead_letter_exchange, durable=True
        )
        #: every message carries the AMQP user_id, which RabbitMQ checks against the
        #: connection: receivers know a worker sent it
        self.user_id = broker_user(settings.broker_url)
        self._existing: set[str] = {self.queue}
        self._missing: dict[str, float] = {}
        #: replies that could not be delivered (no such reply queue), for operators
        self.dropped_replies = 0
        #: refusal kind (worker.gate.REFUSAL_KINDS) -> how many messages were dead-lettered
        self.refusals: dict[str, int] = {}

    # ------------------------------------------------------------------ existence
    def worker_exists(self, worker_id: str) -> bool:
        """Whether ``worker_id`` is a worker of this fleet: its queue exists."""
        try:
            name = topology.worker_queue(worker_id, self.namespace)
        except ValueError:
            return False
        return self._queue_exists(name)

    def _queue_exists(self, name: str) -> bool:
        if name in self._existing:
            return True
        missing_since = self._missing.get(name)
        if missing_since is not None and time.monotonic() - missing_since < _NEGATIVE_TTL:
            return False
        with self.app.connection_for_write() as connection:
            channel: Any = connection.channel()
            try:
                channel.queue_declare(queue=name, passive=True)
            except ResourceLocked:
                pass  # another connection's exclusive queue (a client's reply queue): it exists
            except connection.channel_errors:
                if len(self._missing) > 10_000:
                    self._missing.clear()
                self._missing[name] = time.monotonic()
                return False
            finally:
                _close_quietly(channel)
        self._existing.add(name)
        self._missing.pop(name, None)
        return True

    def is_reply_queue(self, address: str) -> bool:
        """Whether ``address`` names an existing reply queue of this namespace."""
        return address.startswith(f"{self.namespace}.reply.") and self._queue_exists(address)

    # ------------------------------------------------------------------ publishing
    def publish(self, outgoing: Iterable[Outgoing]) -> None:
        """Send a message's outgoing messages in order, on one producer (one channel)."""
        outgoing = list(outgoing)
        if not outgoing:
            return
        limit = self.settings.max_message_bytes
        with self.app.producer_or_acquire() as producer:
            for kind, address, body in outgoing:
                if kind == "worker":
                    self._forward(producer, address, body, limit)
                elif kind == "reply":
                    if not self.is_reply_queue(address):
                        self.dropped_replies += 1
                        log.warning(
                            "dropping a reply to %r: not a reply queue that exists", address
                        )
                        continue
                    for chunk, part in split_pieces(body, limit):
                        headers = {} if chunk is None else {CHUNK_HEADER: chunk.to_wire()}
                        producer.publish(
                            b"".join(part),
                            exchange="",
                            routing_key=address,
                            headers=headers,
                            delivery_mode=TRANSIENT,
                            user_id=self.user_id,
                            retry=True,
                            retry_policy=RETRY_POLICY,
                            **message_properties(),
                        )
                else:
                    log.error("engine produced an outgoing message of unknown kind %r", kind)

    def _forward(self, producer: Any, worker_id: str, body: codec.Body, limit: int) -> None:
        name = topology.worker_queue(worker_id, self.namespace)
        for chunk, part in split_pieces(body, limit):
            task_id = new_task_id()
            headers, payload = task_message(part, task_id, self.worker_id, chunk, forward=True)
            producer.publish(
                payload,
                exchange=name,
                routing_key=name,
                headers=headers,
                correlation_id=task_id,
                delivery_mode=PERSISTENT,
                user_id=self.user_id,
                retry=True,
                retry_policy=RETRY_POLICY,
                **message_properties(),
            )

    # ------------------------------------------------------------------ dead letters
    def declare_dead_letters(self) -> None:
        """Make sure the dead-letter exchange and queue exist (at start-up)."""
        with self.app.connection_for_write() as connection:
            self.dead_letter_queue.bind(connection.default_channel).declare()

    def dead_letter(
        self,
        body: bytes | memoryview | str,
        reason: str,
        *,
        kind: str = "refused",
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Keep a refused message in the dead-letter queue, with why it was refused."""
        kept = {
            key: value
            for key, value in (headers or {}).items()
            if isinstance(value, str | int | float | bool | bytes | type(None))
        }
        kept[topology.REASON_HEADER] = reason
        kept[topology.KIND_HEADER] = kind
        kept[topology.ORIGIN_HEADER] = self.queue
        self.refusals[kind] = self.refusals.get(kind, 0) + 1
        log.warning("dead-lettering a message from %s: %s", self.queue, reason)
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                _as_bytes(body),
                exchange=self.dead_letter_exchange,
                routing_key=self.queue,
                headers=kept,
                content_type=content_type or "application/octet-stream",
                content_encoding=content_encoding or "binary",
                delivery_mode=PERSISTENT,
                user_id=self.user_id,
                declare=[self.dead_letter_queue],
                retry=True,
                retry_policy=RETRY_POLICY,
            )

    def dead_letter_envelope(
        self,
        envelope: bytes | memoryview,
        reason: str,
        sender_headers: dict[str, Any],
        kind: str = "malformed",
    ) -> None:
        """Dead-letter an envelope that arrived inside a valid task message.

        The task message is rebuilt around it, keeping the sender's own ``x-`` headers.
        """
        headers, payload = task_message(bytes(envelope), new_task_id(), self.worker_id)
        headers.update({k: v for k, v in sender_headers.items() if k.startswith("x-")})
        self.dead_letter(payload, reason, kind=kind, headers=headers, **message_properties())


def _close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # a channel the broker closed (NOT_FOUND) is already gone
        log.debug("closing a probe channel failed", exc_info=True)


def _as_bytes(body: bytes | memoryview | str) -> bytes:
    """The body as it arrived: kombu hands a body it thinks is text over as ``str``."""
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    return bytes(body)
