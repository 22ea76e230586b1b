"""One contract for every object store: the in-memory store and the Redis store behave alike.

flwr runs one state test suite against its in-memory and SQL link states; this is
the same idea for ``worker.store.ObjectStore`` and ``worker.redis_store.RedisObjectStore``
(against a real Redis, in a namespace of its own). Each test ends with
:func:`settle`, which is what the worker's runtime does after a message (write the
pending commit), and, for the Redis store, checks that a restarted store loads
exactly the same objects, owners and failures.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import torch

from broker.protocol import PointerRecord
from broker.settings import get_settings
from worker import keys
from worker.redis_store import RedisObjectStore, connect
from worker.store import ObjectStore, object_bytes

FAILURE = {"type": "RuntimeError", "message": "boom", "command": "op"}


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], ObjectStore]]:
    """A factory of stores of one kind; for Redis, every store made shares one namespace."""
    if request.param == "memory":
        yield lambda: ObjectStore("bob")
        return
    client = connect(get_settings().redis_url)
    namespace = f"tftest-contract-{uuid.uuid4().hex[:8]}"
    yield lambda: RedisObjectStore("bob", client, namespace, part_bytes=1 << 16, batch_ttl=60)
    found = list(client.scan_iter(match=keys.pattern(namespace)))
    if found:
        client.delete(*found)
    client.close()


def settle(store: ObjectStore, make_store: Callable[[], ObjectStore]) -> None:
    """End a message: commit and write; a Redis store must then reload the very same state."""
    store.commit(f"test:{uuid.uuid4().hex}", [])
    if isinstance(store, RedisObjectStore):
        store.write_pending()
        restarted = make_store()
        assert isinstance(restarted, RedisObjectStore)
        restarted.load()
        assert set(restarted.objects) == set(store.objects)
        for obj_id, obj in store.objects.items():
            again = restarted.objects[obj_id]
            if isinstance(obj, torch.Tensor):
                assert torch.equal(again, obj)
            else:
                assert again == obj
        assert restarted.failures == store.failures
        assert restarted.owners == store.owners
        assert restarted.usage == store.usage


def test_put_keeps_the_object_its_owner_and_its_bytes(make_store) -> None:
    store = make_store()
    store.put(1, torch.ones(4), "carol")
    store.put(2, PointerRecord("alice", 9, True, (2,), "float32", False), "carol")
    store.put(3, torch.ones(2, dtype=torch.float64), "dave")
    assert store.owners == {1: "carol", 2: "carol", 3: "dave"}
    assert store.usage == {"carol": 16, "dave": 16}
    settle(store, make_store)


def test_replacing_pop_and_discard_keep_the_usage_exact(make_store) -> None:
    store = make_store()
    store.put(1, torch.ones(4), "carol")
    store.put(1, torch.ones(8), "carol")
    assert store.usage == {"carol": 32}
    assert torch.equal(store.pop(1), torch.ones(8))
    assert store.usage == {} and store.owners == {}
    with pytest.raises(KeyError):
        store.pop(1)
    store.put(2, torch.ones(1), "carol")
    assert store.discard(2) is not None and store.discard(2) is None
    settle(store, make_store)


def test_a_failure_replaces_an_object_and_keeps_its_owner(make_store) -> None:
    store = make_store()
    store.put(1, torch.ones(4), "carol")
    store.mark_failed(1, FAILURE, "carol")
    assert 1 not in store.objects and store.failures[1] == FAILURE
    assert store.owners[1] == "carol" and store.usage == {}
    store.put(1, torch.zeros(1), "carol")  # a later success under the same id clears it
    assert 1 not in store.failures
    settle(store, make_store)


def test_clear_of_one_owner_leaves_the_others(make_store) -> None:
    store = make_store()
    store.put(1, torch.ones(1), "carol")
    store.mark_failed(2, FAILURE, "carol")
    store.put(3, torch.ones(1), "dave")
    store.clear("carol")
    assert set(store.objects) == {3} and store.failures == {}
    assert store.owners == {3: "dave"} and store.usage == {"dave": 4}
    settle(store, make_store)
    store.clear()
    assert not store.objects and not store.owners and not store.usage
    settle(store, make_store)


def test_touch_counts_a_grad_that_appeared(make_store) -> None:
    store = make_store()
    weight = torch.nn.Parameter(torch.ones(3))
    store.put(1, weight, "carol")
    assert store.usage == {"carol": 12}
    (weight * 2).sum().backward()
    store.touch(1)
    assert store.usage == {"carol": 24} == {"carol": object_bytes(weight)}
    settle(store, make_store)


def test_failure_markers_expire_oldest_first_and_survive_a_restart_until_then(
    make_store,
) -> None:
    store = make_store()
    store.mark_failed(7, FAILURE, "carol")
    store.mark_failed(8, FAILURE, "carol")
    store.put(1, torch.ones(2), "carol")
    settle(store, make_store)
    due = store.failure_expiry[8]
    assert store.failure_expiry[7] <= due
    # just before 8's time only 7 (made first) may go; at 8's time both are gone
    assert store.expire_failures(now=store.failure_expiry[7] - 1) == 0
    assert store.expire_failures(now=due) == 2
    assert store.failures == {}
    assert set(store.owners) == {1}
    settle(store, make_store)
    if isinstance(store, RedisObjectStore):  # the expiry time itself was persisted
        again = make_store()
        again.load()  # type: ignore[attr-defined]
        again.mark_failed(9, FAILURE, "carol")
        settle(again, make_store)
        reloaded = make_store()
        reloaded.load()  # type: ignore[attr-defined]
        assert reloaded.failure_expiry[9] == again.failure_expiry[9]
