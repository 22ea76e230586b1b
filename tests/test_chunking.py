"""The reassembler trusts no chunk header: lies about sizes, other senders' transfers, and
parts that never come are each refused or expired, and honest transfers still complete."""

from __future__ import annotations

import pytest

from broker.amqp import Chunk, split_pieces
from broker.chunking import Reassembler
from broker.errors import MalformedMessageError, MessageTooLargeError


class Clock:
    """A clock the test moves by hand (the reassembler's TTL is in its seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def parts_of(body: bytes, limit: int) -> list[tuple[Chunk, bytes]]:
    parts = split_pieces(body, limit)
    return [(chunk, b"".join(part)) for chunk, part in parts if chunk is not None]


def test_a_part_of_one_sender_never_lands_in_another_senders_transfer() -> None:
    reassembler = Reassembler(max_bytes=1000)
    honest = parts_of(b"a" * 30, 10)
    assert reassembler.add(*honest[0], sender="carol") is None
    forged_chunk = honest[1][0]
    # mallory names carol's transfer id: it starts a transfer of mallory's own
    assert reassembler.add(forged_chunk, b"X" * 10, sender="mallory") is None
    assert reassembler.add(*honest[1], sender="carol") is None
    whole = reassembler.add(*honest[2], sender="carol")
    assert bytes(whole or b"") == b"a" * 30


def test_a_part_disagreeing_with_the_first_about_size_drops_the_transfer() -> None:
    clock = Clock()
    reassembler = Reassembler(max_bytes=1000, clock=clock)
    assert reassembler.add(Chunk("t", 0, 3, 30, 0), b"a" * 10) is None
    with pytest.raises(MalformedMessageError, match="disagrees"):
        reassembler.add(Chunk("t", 1, 3, 900, 10), b"a" * 10)
    clock.now = reassembler.ttl
    assert reassembler.expire() == 0  # nothing was left to expire: the transfer is gone


def test_parts_that_do_not_cover_the_message_are_refused() -> None:
    reassembler = Reassembler(max_bytes=1000)
    assert reassembler.add(Chunk("t", 0, 2, 30, 0), b"a" * 10) is None
    with pytest.raises(MalformedMessageError, match="hold 20 bytes"):
        reassembler.add(Chunk("t", 1, 2, 30, 10), b"a" * 10)


def test_more_parts_than_bytes_is_refused() -> None:
    with pytest.raises(MalformedMessageError):
        Reassembler(max_bytes=1000).add(Chunk("t", 0, 10**9, 10, 0), b"a")


def test_a_redelivered_part_is_counted_once() -> None:
    reassembler = Reassembler(max_bytes=1000)
    first, second = parts_of(b"xy" * 10, 10)
    assert reassembler.add(*first) is None
    assert reassembler.add(*first) is None
    assert bytes(reassembler.add(*second) or b"") == b"xy" * 10


def test_one_sender_cannot_reserve_more_than_its_budget_in_lying_totals() -> None:
    reassembler = Reassembler(max_bytes=1000, max_pending_bytes=1500)
    assert reassembler.add(Chunk("a", 0, 2, 1000, 0), b"x", sender="mallory") is None
    with pytest.raises(MessageTooLargeError, match="unfinished chunked messages"):
        reassembler.add(Chunk("b", 0, 2, 1000, 0), b"x", sender="mallory")
    # another sender's budget is its own
    assert reassembler.add(Chunk("c", 0, 2, 1000, 0), b"x", sender="carol") is None


def test_an_abandoned_transfer_expires_and_frees_its_budget() -> None:
    clock = Clock()
    reassembler = Reassembler(max_bytes=1000, ttl=60, clock=clock)
    assert reassembler.add(Chunk("a", 0, 2, 1000, 0), b"x", sender="mallory") is None
    clock.now = 59.0
    assert reassembler.expire() == 0
    clock.now = 60.0
    assert reassembler.expire() == 1
    clock.now = 10 * reassembler.ttl
    assert reassembler.expire() == 0
    assert reassembler.add(Chunk("b", 0, 2, 1000, 0), b"x", sender="mallory") is None
