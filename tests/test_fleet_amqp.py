"""The AMQP message format: Celery task messages, chunking and reassembly (no server needed)."""

from __future__ import annotations

import os

import msgpack
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from broker import codec
from broker.amqp import (
    FORWARD_HEADER,
    TASK_NAME,
    Chunk,
    pika_url,
    safe_url,
    split_pieces,
    task_message,
)
from broker.chunking import Reassembler
from broker.errors import MalformedMessageError, MessageTooLargeError


def test_task_message_is_celery_protocol_2() -> None:
    headers, payload = task_message(b"envelope", "id-1", "client-1")
    assert headers["task"] == TASK_NAME
    assert headers["id"] == headers["root_id"] == "id-1"
    assert headers["lang"] == "py"
    assert headers["ignore_result"] is True
    assert FORWARD_HEADER not in headers
    args, kwargs, embed = msgpack.unpackb(payload, raw=False)
    assert args == [b"envelope"] and kwargs == {}
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}


def test_task_message_headers_are_the_ones_the_installed_celery_sends() -> None:
    from celery import Celery

    celery_app = Celery("drift-check", broker="memory://", set_as_current=False)
    reference = celery_app.amqp.as_task_v2("id-1", TASK_NAME, args=[b"envelope"], kwargs={})
    headers, payload = task_message(b"envelope", "id-1", "client-1")
    assert set(headers) == set(reference.headers)
    same_values = ("lang", "task", "id", "root_id", "retries")
    celery_5_7 = ("replaced_task_nesting", "stamped_headers", "stamps")  # lacked once
    for name in same_values + celery_5_7:
        assert headers[name] == reference.headers[name], name
    assert msgpack.unpackb(payload, raw=False) == [
        list(part) if isinstance(part, tuple) else part for part in reference.body
    ]


def test_chunked_task_message_carries_the_chunk_in_kwargs() -> None:
    chunk = Chunk("t", 1, 3, 30, 10)
    headers, payload = task_message(memoryview(b"0123456789"), "id", "w", chunk, forward=True)
    args, kwargs, _ = msgpack.unpackb(payload, raw=False)
    assert args == [b"0123456789"]
    assert Chunk.from_wire(kwargs["chunk"]) == chunk
    assert headers[FORWARD_HEADER] is True


def split(body: bytes, limit: int) -> list[tuple[Chunk | None, bytes]]:
    """The parts :func:`split_pieces` sends ``body`` as, each joined into bytes."""
    return [(chunk, b"".join(part)) for chunk, part in split_pieces(body, limit)]


def test_a_small_body_is_one_unchunked_part() -> None:
    assert split(b"abc", 10) == [(None, b"abc")]


@given(st.binary(min_size=0, max_size=300), st.integers(min_value=1, max_value=64))
def test_split_then_reassemble_in_any_order_gives_the_body(body: bytes, limit: int) -> None:
    parts = split(body, limit)
    if len(body) <= limit:
        assert len(parts) == 1 and parts[0][0] is None
        return
    assert all(len(part) <= limit for _, part in parts)
    now = [0.0]
    reassembler = Reassembler(max_bytes=1000, clock=lambda: now[0])
    results = [reassembler.add(chunk, part) for chunk, part in reversed(parts) if chunk is not None]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert bytes(results[-1] or b"") == body
    now[0] = reassembler.ttl
    assert reassembler.expire() == 0  # the finished transfer left nothing behind


def test_split_does_not_copy_the_body() -> None:
    body = os.urandom(100)
    parts = list(split_pieces(body, 30))
    assert all(piece.obj is body for _, pieces in parts for piece in pieces)


def test_reassembler_refuses_oversized_and_inconsistent_chunks() -> None:
    with pytest.raises(MessageTooLargeError):
        Reassembler(max_bytes=10).add(Chunk("t", 0, 2, 11, 0), b"x")
    with pytest.raises(MalformedMessageError):
        Reassembler(max_bytes=100).add(Chunk("t", 0, 2, 10, 8), b"xyz")


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        ["t", 0, 1, 10],
        ["t", 2, 2, 10, 0],
        [1, 0, 1, 1, 0],
        ["t", 0, 1, 10, 11],
        ["x" * 65, 0, 1, 1, 0],
    ],
)
def test_bad_chunk_descriptions_are_malformed(wire: object) -> None:
    with pytest.raises(MalformedMessageError):
        Chunk.from_wire(wire)


@pytest.mark.parametrize(
    ("celery_url", "pika_form"),
    [
        ("amqp://guest:guest@localhost:5672//", "amqp://guest:guest@localhost:5672/%2F"),
        ("amqp://guest:guest@localhost:5672", "amqp://guest:guest@localhost:5672/%2F"),
        ("amqp://u:p@h:1/prod", "amqp://u:p@h:1/prod"),
        ("pyamqp://h//", "amqp://h/%2F"),
    ],
)
def test_broker_urls_mean_the_same_vhost_to_pika(celery_url: str, pika_form: str) -> None:
    assert pika_url(celery_url) == pika_form


def test_safe_url_hides_the_password() -> None:
    assert safe_url("amqp://guest:secret@h:5672//") == "amqp://guest:**@h:5672//"
    assert safe_url("amqp://h//") == "amqp://h//"
    failover = safe_url("amqps://a:one@h1:5671//;amqps://b:two@h2:5671//")
    assert "one" not in failover and "two" not in failover
    assert failover == "amqps://a:**@h1:5671//;amqps://b:**@h2:5671//"


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 100_000])
def test_task_message_around_pieces_is_the_msgpack_celery_payload(size: int) -> None:
    body = os.urandom(size)
    pieces = [memoryview(body)[: size // 3], memoryview(body)[size // 3 :]]
    _, payload = task_message(pieces, "id", "w", Chunk("t", 0, 2, 2 * size, 0))
    args, kwargs, embed = msgpack.unpackb(payload, raw=False)
    assert args == [body] and kwargs["chunk"] == ["t", 0, 2, 2 * size, 0]
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}


def test_frames_split_into_small_parts_without_joining_and_reassemble() -> None:
    big = torch.arange(600_000, dtype=torch.float32)
    body = codec.encode([1, big, "tail"])
    assert isinstance(body, codec.Frames)
    parts = list(split_pieces(body, limit=1_000_000, chunk_bytes=300_000))
    assert len(parts) == -(-len(body) // 300_000)
    assert all(sum(len(piece) for piece in pieces) <= 300_000 for _, pieces in parts)
    reassembler = Reassembler(max_bytes=len(body))
    whole = None
    for chunk, pieces in reversed(parts):
        assert chunk is not None
        whole = reassembler.add(chunk, b"".join(pieces))
    assert whole is not None
    decoded = codec.decode(whole)
    assert torch.equal(decoded[1], big) and decoded[2] == "tail"
    assert [chunk for chunk, _ in split_pieces(body, limit=len(body))] == [None]  # fits
