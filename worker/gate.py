"""The refusal gate: what a fleet worker refuses before its task ever runs.

Celery's extension points, used as they are meant to be:

* :func:`fleet_strategy` wraps Celery's default task strategy (the code that turns
  a message into a task request) with checks on the raw message: content type
  (msgpack only, never pickle), size, and the shape of the task payload;
* :class:`FleetConsumer` is Celery's consumer with its "unknown message",
  "unknown task", "invalid task" and "decode error" hooks dead-lettering instead of
  dropping; it also hands the runtime the controls to pause and resume consuming
  (the store-down state of :mod:`worker.runtime`) and settles background writes;
* :class:`FleetRequest` is Celery's task request whose acknowledgement the runtime
  may hold back until a background Redis write is done;
* :func:`refuse_compressed_bodies` makes kombu refuse compressed bodies (a
  ``compression`` header) *before* inflating them, so 113 bytes of bzip2 cannot
  become 100 MiB: TensorFleet never compresses, and the refused message is
  dead-lettered as it arrived.

Every refused message is published to the namespace's dead-letter exchange with
the reason in ``x-tensorfleet-reason``, its kind in ``x-tensorfleet-refusal``, and
acknowledged; the worker keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.compression
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from celery.worker.strategy import default as default_strategy

from broker import codec
from broker.amqp import TASK_NAME
from broker.settings import get_settings
from worker import runtime as runtime_module

log = logging.getLogger(__name__)

#: Room for the task envelope around a chunk of TENSORFLEET_MAX_MESSAGE_BYTES.
HEADROOM = 1024 * 1024
#: How often (seconds) the worker's event loop settles finished background writes.
ACK_POLL = 0.01


#: why messages are refused, as operators count them (metrics, `tensorfleet status`)
REFUSAL_KINDS = (
    "content_type",  # not msgpack (pickle, JSON...)
    "too_large",  # above TENSORFLEET_MAX_MESSAGE_BYTES (+ headroom) or a reassembly limit
    "bad_payload",  # not a [args, kwargs, embed] task payload of one envelope
    "not_a_task",  # no Celery task header
    "unknown_task",  # a task other than tensorfleet.execute
    "invalid_task",  # a task message Celery cannot read
    "undecodable",  # kombu could not decode it (a compressed body, bad encoding)
    "malformed",  # not a valid TensorFleet envelope
    "refused_command",  # an unknown command, a forbidden op, a refused plan
)


class CompressedBodyRefused(Exception):
    """A message came with a ``compression`` header: refused before inflating it."""


def _refuse_compressed(body: Any) -> bytes:
    raise CompressedBodyRefused(
        "compressed bodies are refused (TensorFleet never compresses; nothing was inflated)"
    )


def refuse_compressed_bodies() -> None:
    """Make every compression kombu knows refuse to decompress, in this process."""
    for name in kombu.compression.encoders():
        found: Any = kombu.compression.get_encoder(name)  # (encoder, content type)
        encoder, content_type = found
        kombu.compression.register(encoder, _refuse_compressed, content_type)


def refusal(message: Any, limit: int) -> tuple[str, str] | None:
    """(kind, reason) a message for ``tensorfleet.execute`` must be refused for, or None."""
    content_type = message.content_type or ""
    if content_type != codec.CONTENT_TYPE:
        return "content_type", (
            f"content type {content_type!r} refused: TensorFleet accepts only "
            f"{codec.CONTENT_TYPE} (never pickle)"
        )
    size = len(message.body)
    if size > limit:
        return "too_large", (
            f"message of {size} bytes is above TENSORFLEET_MAX_MESSAGE_BYTES + headroom "
            f"({limit}); big bodies must be sent in chunks"
        )
    try:  # kombu caches the decoded payload: Celery's own strategy reuses it
        args, kwargs, _embed = message.payload
    except Exception as error:
        return "bad_payload", (
            f"body is not a msgpack [args, kwargs, embed] task payload ({type(error).__name__})"
        )
    if (
        not isinstance(args, list)
        or len(args) != 1
        or not isinstance(args[0], bytes)
        or not isinstance(kwargs, dict)
        or set(kwargs) - {"chunk"}
    ):
        return (
            "bad_payload",
            "task arguments must be [envelope bytes] with at most a 'chunk' keyword",
        )
    return None


def refuse(message: Any, kind: str, reason: str) -> None:
    """Dead-letter ``message`` as it arrived, with ``reason``, and acknowledge it."""
    runtime = runtime_module.current()
    try:
        if runtime is not None:
            runtime.publisher.dead_letter(
                message.body,
                reason,
                kind=kind,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                headers=message.headers,
            )
    except Exception:  # the message is refused either way: never let it stop the consumer
        log.exception("dead-lettering a refused message failed; it is dropped")
    finally:
        message.ack()


def fleet_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default task strategy, behind a gate that dead-letters refused messages."""
    handler = default_strategy(task, app, consumer, **kwargs)
    limit = get_settings().max_message_bytes + HEADROOM

    def handle(message: Any, *args: Any, **options: Any) -> Any:
        refused = refusal(message, limit)
        if refused is not None:
            refuse(message, *refused)
            return None
        return handler(message, *args, **options)

    return handle


class FleetRequest(Request):
    """A task request whose acknowledgement may wait for a background Redis write."""

    def acknowledge(self) -> None:
        runtime = runtime_module.current()
        if self.acknowledged or runtime is None:
            super().acknowledge()
            return
        if not runtime.hold_ack(
            lambda: Request.acknowledge(self), lambda: self.reject(requeue=True)
        ):
            super().acknowledge()


class FleetConsumer(Consumer):
    """Celery's consumer, dead-lettering (with a reason) what it would reject or drop."""

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)
        runtime = runtime_module.current()
        if runtime is None:
            return
        hub.call_repeatedly(ACK_POLL, runtime.settle_finished_write)
        queue = runtime.queue

        def pause() -> None:
            self.cancel_task_queue(queue)

        def resume() -> None:
            self.add_task_queue(queue)

        runtime.attach_consumer(pause, resume, hub.call_repeatedly)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        refuse(message, "not_a_task", "not a Celery task message (no 'task' header)")

    def on_unknown_task(self, body: Any, message: Any, exc: Any) -> None:
        name = (message.headers or {}).get("task")
        refuse(
            message, "unknown_task", f"unknown task {name!r}: worker queues run only {TASK_NAME}"
        )

    def on_invalid_task(self, body: Any, message: Any, exc: Any) -> None:
        refuse(message, "invalid_task", f"invalid task message ({exc})")

    def on_decode_error(self, message: Any, exc: Any) -> None:
        refuse(message, "undecodable", f"message body cannot be decoded ({exc})")
