"""TensorFleet on AMQP: Celery task messages, chunking of big bodies, and their reassembly.

Both sides use this module: the client's pika transport (:mod:`client.fleet`)
publishes batches as Celery protocol-v2 task messages built by
:func:`task_message`; a worker (:mod:`worker.celery_app`) forwards work to
other workers with the same function and answers clients with plain messages.

RabbitMQ refuses messages above 128 MiB, so a body larger than
``TENSORFLEET_MAX_MESSAGE_BYTES`` travels as several messages, each carrying a
:class:`Chunk` (in the task's kwargs for task messages, in the
:data:`CHUNK_HEADER` header for replies). The receiver puts the parts back
together with a :class:`~broker.chunking.Reassembler` (client and worker, in
memory), so the engine only ever sees whole envelopes. Splitting slices a ``memoryview``: the
sender never holds a second copy of the body, only one chunk at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import msgpack
from kombu.utils.url import sanitize_url

from broker.codec import CONTENT_ENCODING, CONTENT_TYPE, Frames
from broker.errors import MalformedMessageError

#: The one Celery task every TensorFleet worker runs.
TASK_NAME = "tensorfleet.execute"
#: Header of a reply message that is one part of a bigger reply.
CHUNK_HEADER = "x-tensorfleet-chunk"
#: Task-message header saying a worker (not a client) sent it; Celery hands it to the
#: task as ``request.tensorfleet_forward``.
FORWARD_HEADER = "tensorfleet_forward"
#: Task-message header saying a client sends a batch again (its reply was lost with a
#: dropped connection): the worker looks the batch up before applying it, so a batch
#: that ran already only has its replies sent again. Celery hands it to the task as
#: ``request.tensorfleet_resend``.
RESEND_HEADER = "tensorfleet_resend"
#: Task messages are persistent (they survive a broker restart); replies are not.
PERSISTENT = 2
TRANSIENT = 1

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

#: Size of the parts a body above the message limit travels in. Parts this small keep
#: the transient copies on both sides (the task payload, pika's frames, pika's
#: reassembly of a received body) a small fraction of a big tensor, and let sender,
#: broker and receiver work on different parts at once.
CHUNK_BYTES = 16 * 1024 * 1024

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Chunk:
    """Part ``index`` of ``count`` of a ``total``-byte transfer; this part starts at ``offset``."""

    transfer: str
    index: int
    count: int
    total: int
    offset: int

    def to_wire(self) -> list[Any]:
        return [self.transfer, self.index, self.count, self.total, self.offset]

    @classmethod
    def from_wire(cls, value: Any) -> Chunk:
        """Validate a chunk description that arrived on the wire."""
        if not (
            isinstance(value, list | tuple)
            and len(value) == 5
            and isinstance(value[0], str)
            and all(isinstance(v, int) for v in value[1:])
        ):
            raise MalformedMessageError(
                "a chunk description is not [transfer, index, count, total, offset]"
            )
        transfer, index, count, total, offset = value
        if not (0 <= index < count and 0 <= offset <= total) or len(transfer) > 64:
            raise MalformedMessageError(f"chunk {index}/{count} at {offset} of {total} is invalid")
        return cls(transfer, index, count, total, offset)


def split_pieces(
    body: Buffer | Frames, limit: int, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[Chunk | None, list[memoryview]]]:
    """The parts to send ``body`` as: one unchunked part if it fits ``limit``, else chunks.

    ``body`` may be :class:`~broker.codec.Frames`. Each part is a list of views of the
    body's pieces (no copy); a body above ``limit`` travels in parts of at most
    ``min(limit, chunk_bytes)`` bytes.
    """
    pieces = body.parts if isinstance(body, Frames) else (memoryview(body).cast("B"),)
    total = sum(len(piece) for piece in pieces)
    if total <= limit:
        yield None, list(pieces)
        return
    size = min(limit, chunk_bytes)
    transfer = uuid.uuid4().hex
    count = -(-total // size)
    index, offset, current, filled = 0, 0, [], 0
    for piece in pieces:
        start = 0
        while start < len(piece):
            take = min(size - filled, len(piece) - start)
            current.append(piece[start : start + take])
            start += take
            filled += take
            if filled == size:
                yield Chunk(transfer, index, count, total, offset), current
                index, offset, current, filled = index + 1, offset + filled, [], 0
    if filled:
        yield Chunk(transfer, index, count, total, offset), current


def _bin_header(size: int) -> bytes:
    if size < 2**8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 2**16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def new_task_id() -> str:
    return str(uuid.uuid4())


def task_message(
    body: Buffer | list[memoryview],
    task_id: str,
    origin: str,
    chunk: Chunk | None = None,
    forward: bool = False,
    resend: bool = False,
) -> tuple[dict[str, Any], bytes]:
    """Headers and msgpack payload of a Celery protocol-v2 ``tensorfleet.execute`` message.

    Built here rather than with Celery's ``app.amqp.as_task_v2`` so a client needs no
    Celery app and the body is written around the envelope without a copy;
    ``tests/test_fleet_amqp.py`` fails if these headers drift from what the installed
    Celery sends.

    ``ignore_result`` is set: TensorFleet senders read replies from their own
    reply queue, so the worker publishes them itself and no result backend is
    involved. (A plain Celery caller leaves it unset and gets the reply as the
    task's result.) ``forward`` marks a message one worker sends another, ``resend`` a
    batch a client sends again (:data:`RESEND_HEADER`).
    """
    pieces = body if isinstance(body, list) else [memoryview(body).cast("B")]
    size = sum(len(piece) for piece in pieces)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": f"(<{size} bytes>,)",
        "kwargsrepr": "{}" if chunk is None else f"{{'chunk': {chunk.to_wire()!r}}}",
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if forward:
        headers[FORWARD_HEADER] = True
    if resend:
        headers[RESEND_HEADER] = True
    kwargs = {} if chunk is None else {"chunk": chunk.to_wire()}
    # msgpack [[body], kwargs, embed], written around the body's pieces: one copy
    head = b"\x93\x91" + _bin_header(size)
    tail = msgpack.packb(kwargs, use_bin_type=True) + msgpack.packb(_EMBED, use_bin_type=True)
    return headers, b"".join([head, *pieces, tail])


def message_properties() -> dict[str, str]:
    """Content type and encoding every TensorFleet message carries."""
    return {"content_type": CONTENT_TYPE, "content_encoding": CONTENT_ENCODING}


def pika_url(url: str) -> str:
    """A Celery (kombu) broker URL in the form pika reads the same way.

    kombu reads the path after the first ``/`` as the vhost, and an empty one as
    ``/`` (``amqp://host//`` and ``amqp://host`` both mean vhost ``/``); pika wants
    the vhost percent-encoded, and knows no ``pyamqp://``.
    """
    parts = urlsplit(url)
    scheme = "amqp" if parts.scheme == "pyamqp" else parts.scheme
    vhost = unquote(parts.path[1:]) if parts.path else ""
    path = "/" + quote(vhost or "/", safe="")
    return urlunsplit((scheme, parts.netloc, path, parts.query, parts.fragment))


def broker_user(url: str) -> str:
    """The RabbitMQ user name in a broker URL (``guest`` when it names none, as kombu does)."""
    username = urlsplit(url).username
    return unquote(username) if username else "guest"


def safe_url(url: str) -> str:
    """``url`` without its passwords, for error messages and logs.

    kombu's own ``sanitize_url``, applied to each URL of a ``;``-separated failover
    list (kombu masks only the first one of such a list).
    """
    return ";".join(sanitize_url(part) for part in url.split(";"))
