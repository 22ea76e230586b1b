"""RedisObjectStore against a real Redis: write-through per message, replay, restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
import torch

from broker import codec
from broker.protocol import PointerRecord
from broker.settings import get_settings
from worker import keys
from worker.redis_store import Outgoing, RedisObjectStore, connect


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = connect(get_settings().redis_url)
    yield client
    client.close()


@pytest.fixture
def namespace(client: redis.Redis) -> Iterator[str]:
    namespace = f"tftest-store-{uuid.uuid4().hex[:8]}"
    yield namespace
    found = list(client.scan_iter(match=keys.pattern(namespace)))
    if found:
        client.delete(*found)


#: the principal the objects of these tests belong to
OWNER = "carol"


def commit(store: RedisObjectStore, batch_key: str, outgoing: list[Outgoing]) -> None:
    """What the worker's runtime does after publishing: record the commit, then write it."""
    store.commit(batch_key, outgoing)
    store.write_pending()


def new_store(client: redis.Redis, namespace: str, part_bytes: int = 1 << 20) -> RedisObjectStore:
    return RedisObjectStore("bob", client, namespace, part_bytes=part_bytes, batch_ttl=60)


def test_objects_survive_a_restart_with_grad_and_requires_grad(
    client: redis.Redis, namespace: str
) -> None:
    store = new_store(client, namespace)
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    (weight * 3).sum().backward()
    store.put(1, weight, OWNER)
    store.put(2, torch.arange(4), OWNER)
    store.put(3, PointerRecord("alice", 9, True, (2,), "float32", False), OWNER)
    store.mark_failed(4, {"type": "RuntimeError", "message": "boom", "command": "op"}, OWNER)
    commit(store, "c:1", [])

    restarted = new_store(client, namespace)
    assert restarted.load() == 3
    loaded = restarted.objects[1]
    assert isinstance(loaded, torch.nn.Parameter) and loaded.requires_grad
    assert torch.equal(loaded.data, weight.data) and torch.equal(loaded.grad, weight.grad)
    assert torch.equal(restarted.objects[2], torch.arange(4))
    assert restarted.objects[3] == PointerRecord("alice", 9, True, (2,), "float32", False)
    assert restarted.failures[4]["message"] == "boom"


def test_in_place_changes_are_written_when_touched(client: redis.Redis, namespace: str) -> None:
    store = new_store(client, namespace)
    tensor = torch.zeros(3)
    store.put(1, tensor, OWNER)
    commit(store, "c:1", [])
    tensor.add_(5)
    store.touch(1)
    commit(store, "c:2", [])
    restarted = new_store(client, namespace)
    restarted.load()
    assert torch.equal(restarted.objects[1], torch.full((3,), 5.0))


def test_created_and_deleted_in_one_message_is_never_written(
    client: redis.Redis, namespace: str
) -> None:
    store = new_store(client, namespace)
    store.put(1, torch.ones(2), OWNER)
    store.pop(1)
    store.put(2, torch.ones(2), OWNER)
    store.discard(2)
    commit(store, "c:1", [])
    assert client.hlen(keys.objects(namespace, "bob")) == 0
    assert not client.exists(keys.tensor_parts(namespace, "bob", 1))


def test_a_message_that_changed_nothing_writes_nothing(client: redis.Redis, namespace: str) -> None:
    store = new_store(client, namespace)
    commit(store, "c:1", [("reply", "q", b"pong")])
    assert not client.exists(keys.batch(namespace, "bob", "c:1"))


def test_deleting_a_persisted_object_removes_it(client: redis.Redis, namespace: str) -> None:
    store = new_store(client, namespace)
    store.put(1, torch.ones(2), OWNER)
    store.mark_failed(2, {"type": "ValueError", "message": "x", "command": "op"}, OWNER)
    commit(store, "c:1", [])
    store.pop(1)
    store.discard(2)
    commit(store, "c:2", [])
    assert client.hlen(keys.objects(namespace, "bob")) == 0
    assert client.hlen(keys.failures(namespace, "bob")) == 0


def test_a_failure_replaced_by_an_object_loses_its_marker(
    client: redis.Redis, namespace: str
) -> None:
    store = new_store(client, namespace)
    store.mark_failed(1, {"type": "ValueError", "message": "x", "command": "op"}, OWNER)
    commit(store, "c:1", [])
    store.put(1, torch.ones(1), OWNER)
    commit(store, "c:2", [])
    restarted = new_store(client, namespace)
    restarted.load()
    assert 1 in restarted.objects and 1 not in restarted.failures


def test_large_tensors_are_stored_in_parts(client: redis.Redis, namespace: str) -> None:
    store = new_store(client, namespace, part_bytes=1024)
    big = torch.arange(1000, dtype=torch.float64)  # the header, then 8000 bytes in 8 parts
    store.put(7, big, OWNER)
    commit(store, "c:1", [])
    assert client.llen(keys.tensor_parts(namespace, "bob", 7)) == 1 + 8
    restarted = new_store(client, namespace, part_bytes=1024)
    restarted.load()
    assert torch.equal(restarted.objects[7], big)
    restarted.pop(7)
    commit(restarted, "c:2", [])
    assert not client.exists(keys.tensor_parts(namespace, "bob", 7))


def test_clear_forgets_everything_then_keeps_new_objects(
    client: redis.Redis, namespace: str
) -> None:
    store = new_store(client, namespace, part_bytes=64)
    store.put(1, torch.ones(100), OWNER)
    store.put(2, torch.ones(1), OWNER)
    commit(store, "c:1", [])
    store.clear()
    store.put(3, torch.zeros(1), OWNER)
    commit(store, "c:2", [])
    restarted = new_store(client, namespace)
    restarted.load()
    assert list(restarted.objects) == [3]
    assert not client.exists(keys.tensor_parts(namespace, "bob", 1))


def test_an_applied_batch_replays_its_outgoing_messages(
    client: redis.Redis, namespace: str
) -> None:
    store = new_store(client, namespace)
    outgoing: list[Outgoing] = [("reply", "q", b"reply-bytes"), ("worker", "alice", b"forward")]
    store.put(1, torch.ones(1), OWNER)
    commit(store, "c:1", outgoing)
    restarted = new_store(client, namespace)
    assert restarted.replay("c:1") == outgoing
    assert restarted.replay("c:2") is None


def test_a_commit_is_written_by_write_pending(client: redis.Redis, namespace: str) -> None:
    store = new_store(client, namespace)
    store.put(1, torch.ones(1), OWNER)
    store.commit("c:1", [("reply", "q", codec.encode([1, torch.ones(300_000)]))])
    assert new_store(client, namespace).load() == 0  # published first, written after
    store.write_pending()
    restarted = new_store(client, namespace)
    assert restarted.load() == 1
    replayed = restarted.replay("c:1")
    assert replayed is not None
    assert torch.equal(codec.decode(replayed[0][2])[1], torch.ones(300_000))
    store.put(2, torch.ones(1), OWNER)
    store.commit("c:2", [])
    assert store.discard_pending()
    store.write_pending()
    assert new_store(client, namespace).load() == 1


def test_unreadable_records_are_quarantined_and_every_good_object_served(
    client: redis.Redis, namespace: str
) -> None:
    store = new_store(client, namespace)
    store.put(1, torch.arange(3.0), OWNER)
    store.put(2, torch.ones(2, 2), OWNER)
    store.mark_failed(3, {"type": "RuntimeError", "message": "boom", "command": "op"}, OWNER)
    commit(store, "c:1", [])
    objects_key = keys.objects(namespace, "bob")
    garbage = {
        b"not-an-id": b"T" + codec.encode_tensor(torch.zeros(1)),  # a good tensor, bad id
        b"1.5": b"Tx",
        b"99999999999999999999999": b"T",  # beyond 64 bits
        b"4": b"T\xff\xff\xff\xff\xff\xff\xff\x7f",  # a header length past the buffer
        b"5": b"Z" + b"\x00" * 10,  # no such record kind
        b"6": b"V\xc1",  # not msgpack
    }
    client.hset(objects_key, mapping=garbage)
    client.hset(keys.failures(namespace, "bob"), mapping={b"x": b"\x80", b"7": b"\xc1"})
    client.hset(keys.owners(namespace, "bob"), mapping={b"owner-of-nothing": b"eve"})

    restarted = new_store(client, namespace)
    assert restarted.load() == 2
    assert torch.equal(restarted.objects[1], torch.arange(3.0))
    assert torch.equal(restarted.objects[2], torch.ones(2, 2))
    assert set(restarted.failures) == {3}
    assert restarted.owners == {1: OWNER, 2: OWNER, 3: OWNER}
    quarantine = client.hgetall(keys.quarantine(namespace, "bob"))
    assert {field.split(b":")[-1] for field in quarantine} == {
        *garbage,
        b"x",
        b"7",
        b"owner-of-nothing",
    }
    # moved, not copied: a second restart finds nothing bad left and the same good objects
    assert set(client.hkeys(objects_key)) == {b"1", b"2"}
    again = new_store(client, namespace)
    assert again.load() == 2
    assert len(client.hgetall(keys.quarantine(namespace, "bob"))) == len(quarantine)
