"""Stores are per owner: workers sharing one Redis each use a Redis ACL user of their own.

A real fleet (tests/fleet_fixture.py) of two workers, each given its own
``TENSORFLEET_REDIS_URL`` naming an ACL user made from deploy/grants.py's rules
(``~<ns>:<worker>:*``, only the commands a worker sends). Both serve normally,
Redis logs no refusal of anything they did, and one worker's user reading or
writing the other's keys is refused by Redis itself (NOPERM). And a worker given
a Redis of its own (a private redis-server) keeps everything there.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis
import redis.exceptions
import torch
from fleet_fixture import fleet, new_namespace

import client as sy
from broker.settings import get_settings
from deploy import grants
from worker import keys

WORKERS = ("alice", "bob")


def acl_url(base: str, user: str, password: str) -> str:
    """``base`` (a redis:// URL without credentials) with ``user:password@`` in it."""
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"


@pytest.fixture
def admin() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(get_settings().redis_url)
    yield client
    client.close()


def test_each_worker_reads_and_writes_only_its_own_keys(hook, admin: redis.Redis) -> None:
    namespace = new_namespace()
    base = "redis://127.0.0.1:6379/0"
    urls = {}
    for worker_id in WORKERS:
        user, password = grants.worker_user(namespace, worker_id), secrets.token_hex(16)
        rules = grants.worker_redis_rules(namespace, worker_id)
        admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)
        urls[worker_id] = acl_url(base, user, password)
    users = {grants.worker_user(namespace, w) for w in WORKERS}
    try:
        worker_env = {w: {"TENSORFLEET_REDIS_URL": urls[w]} for w in WORKERS}
        with fleet(WORKERS, namespace, worker_env=worker_env):
            alice, bob = sy.FleetWorker(hook, id="alice"), sy.FleetWorker(hook, id="bob")
            x = torch.tensor([1.0, 2.0]).send(alice)
            y = torch.tensor([3.0]).send(bob)
            kept = x * 2
            assert torch.equal((x + 1).get(), torch.tensor([2.0, 3.0]))
            assert torch.equal((y * 2).get(), torch.tensor([6.0]))
            assert set(alice._objects) == {x.id_at_location, kept.id_at_location}

            # everything the workers did was allowed: Redis refused none of it (but redis-py's
            # CLIENT SETINFO on connect, on Redis 7.2+, which redis-py ignores)
            refused = [
                e
                for e in admin.acl_log(count=128)
                if _name(e) in users and _text(e.get("object")) != "client|setinfo"
            ]
            assert refused == []

            # each wrote through to its own keys, under its own user
            alice_objects = keys.objects(namespace, "alice")
            assert str(kept.id_at_location).encode() in admin.hgetall(alice_objects)
            as_bob = redis.Redis.from_url(urls["bob"])
            assert str(y.id_at_location).encode() in as_bob.hgetall(keys.objects(namespace, "bob"))

            # bob's user cannot read, change or list alice's keys, nor run anything else
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_bob.hgetall(alice_objects)
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_bob.hset(alice_objects, "1", b"T")
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_bob.delete(keys.owners(namespace, "alice"))
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_bob.keys("*")
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_bob.flushall()
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_bob.publish("anything", b"x")
            as_bob.close()
            refused = [
                e
                for e in admin.acl_log(count=128)
                if _name(e) in users and _text(e.get("object")) != "client|setinfo"
            ]
            assert {_name(e) for e in refused} == {grants.worker_user(namespace, "bob")}
            assert alice_objects in {_text(e.get("object")) for e in refused}

            # both still serve, and alice's data is untouched
            assert torch.equal(x.get(), torch.tensor([1.0, 2.0]))
            assert torch.equal(kept.get(), torch.tensor([2.0, 4.0]))
            assert torch.equal(y.get(), torch.tensor([3.0]))
    finally:
        for user in users:
            admin.execute_command("ACL", "DELUSER", user)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _name(entry: dict[str, object]) -> str:
    return _text(entry.get("username"))


def test_a_worker_keeps_its_objects_in_a_redis_of_its_own(
    hook, admin: redis.Redis, tmp_path
) -> None:
    """TENSORFLEET_REDIS_URL per worker: alice on a private redis-server, bob on the shared one."""
    from private_servers import private_redis

    namespace = new_namespace()
    with private_redis(tmp_path / "alice-redis") as port:
        own = f"redis://127.0.0.1:{port}/0"
        worker_env = {"alice": {"TENSORFLEET_REDIS_URL": own}}
        with fleet(WORKERS, namespace, worker_env=worker_env):
            alice, bob = sy.FleetWorker(hook, id="alice"), sy.FleetWorker(hook, id="bob")
            x = torch.tensor([5.0]).send(bob)
            y = (x + 1).move(alice)  # bob's data moves into alice's own store
            kept = torch.tensor([7.0]).send(alice)
            assert torch.equal(y.get(), torch.tensor([6.0]))

            alice_store = redis.Redis.from_url(own)
            alice_objects = alice_store.hgetall(keys.objects(namespace, "alice"))
            assert str(kept.id_at_location).encode() in alice_objects
            # nothing of alice's reached the shared Redis; bob's objects are there
            assert admin.exists(keys.objects(namespace, "alice")) == 0
            bob_objects = admin.hgetall(keys.objects(namespace, "bob"))
            assert str(x.id_at_location).encode() in bob_objects
            assert alice_store.exists(keys.objects(namespace, "bob")) == 0
            alice_store.close()
            assert torch.equal(kept.get(), torch.tensor([7.0]))
