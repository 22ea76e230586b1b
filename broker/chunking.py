"""Putting chunked bodies back together, with every limit a hostile sender could abuse.

A body above ``TENSORFLEET_MAX_MESSAGE_BYTES`` travels as parts (broker.amqp.split),
each with a chunk header ``[transfer, index, count, total, offset]``. The header is the
sender's word, so the receiver trusts none of it:

- a transfer is keyed by the *sender* and its transfer id, so nobody can write into
  another party's transfer;
- ``total`` is bounded by ``max_bytes`` per transfer, and the totals of one sender's
  unfinished transfers by ``max_pending_bytes``: lying about sizes reserves nothing
  beyond that;
- every part of a transfer must repeat its first part's ``count`` and ``total``, fit
  inside ``total``, and the parts must cover exactly ``total`` bytes;
- an unfinished transfer is dropped ``ttl`` seconds after its first part
  (``TENSORFLEET_TRANSFER_TTL``), so abandoned parts do not stay in memory.

A part seen twice (a redelivery) is ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.amqp import Buffer, Chunk
from broker.codec import new_buffer
from broker.errors import MalformedMessageError, MessageTooLargeError


@dataclass(slots=True)
class _Transfer:
    buffer: memoryview
    count: int
    total: int
    deadline: float
    received: int = 0
    seen: set[int] = field(default_factory=set)


class Reassembler:
    """Chunked bodies of every sender, each copied part by part into one buffer.

    Each transfer gets one preallocated writable buffer (:func:`~broker.codec.new_buffer`)
    that parts are copied into as they arrive, so a reassembled body costs its size once,
    not twice, and its big tensors decode without a copy.
    """

    def __init__(
        self,
        max_bytes: int,
        ttl: float = 600.0,
        max_pending_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.max_pending_bytes = max_bytes if max_pending_bytes is None else max_pending_bytes
        self._clock = clock
        self._partial: dict[tuple[str, str], _Transfer] = {}
        self._pending_bytes: dict[str, int] = {}

    def add(self, chunk: Chunk, part: Buffer, sender: str = "") -> memoryview | None:
        """Take one part from ``sender``; the whole body once its last part arrived, else None."""
        self.expire()
        if chunk.total > self.max_bytes:
            raise MessageTooLargeError(chunk.total, self.max_bytes, "chunked message")
        if chunk.offset + len(part) > chunk.total or chunk.count > max(chunk.total, 1):
            raise MalformedMessageError(f"chunk {chunk.index} runs past the end of its message")
        key = (sender, chunk.transfer)
        transfer = self._partial.get(key)
        if transfer is None:
            transfer = self._start(key, chunk)
        elif (transfer.count, transfer.total) != (chunk.count, chunk.total):
            self._drop(key)
            raise MalformedMessageError(
                f"chunk {chunk.index} of transfer {chunk.transfer!r} disagrees with its "
                "first part about the message's size; the transfer was dropped"
            )
        if chunk.index in transfer.seen:
            return None  # a redelivered part
        transfer.buffer[chunk.offset : chunk.offset + len(part)] = part
        transfer.seen.add(chunk.index)
        transfer.received += len(part)
        if len(transfer.seen) < transfer.count:
            return None
        self._drop(key)
        if transfer.received != transfer.total:
            raise MalformedMessageError(
                f"the parts of transfer {chunk.transfer!r} hold {transfer.received} bytes, "
                f"not the {transfer.total} its header declares"
            )
        return transfer.buffer

    def _start(self, key: tuple[str, str], chunk: Chunk) -> _Transfer:
        sender = key[0]
        pending = self._pending_bytes.get(sender, 0) + chunk.total
        if pending > self.max_pending_bytes:
            raise MessageTooLargeError(
                pending,
                self.max_pending_bytes,
                "total of this sender's unfinished chunked messages",
            )
        self._pending_bytes[sender] = pending
        transfer = _Transfer(
            new_buffer(chunk.total), chunk.count, chunk.total, self._clock() + self.ttl
        )
        self._partial[key] = transfer
        return transfer

    def _drop(self, key: tuple[str, str]) -> None:
        transfer = self._partial.pop(key)
        left = self._pending_bytes.get(key[0], 0) - transfer.total
        if left > 0:
            self._pending_bytes[key[0]] = left
        else:
            self._pending_bytes.pop(key[0], None)

    def expire(self) -> int:
        """Drop unfinished transfers older than the TTL; returns how many were dropped."""
        if not self._partial:
            return 0
        now = self._clock()
        expired = [key for key, transfer in self._partial.items() if transfer.deadline <= now]
        for key in expired:
            self._drop(key)
        return len(expired)
