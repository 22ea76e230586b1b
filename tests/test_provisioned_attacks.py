"""Issue 9.6: two owners, two clients, a provisioned fleet, and one of the clients hostile.

The fleet is what ``tensorfleet provision`` makes: owners ``alice`` and ``bob`` run as
RabbitMQ users of their own with Redis ACL users limited to their own keys; the clients
``carol`` (the victim, using the pointer API through ``FleetWorker``) and ``dave`` (the
attacker, speaking the raw protocol, tests/provisioned.py) have least-privilege grants:
they may publish to worker exchanges and read their own reply queues, nothing else.

Every attack below is refused, by RabbitMQ (403/405/406), by Redis (NOPERM), or by the
worker (PermissionDeniedError, a dead-lettered message), and after each one the victim's
objects and results are exact. Fleet-only: the identities are RabbitMQ's and Redis's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import pytest
import redis
import redis.exceptions
import torch
from attacker import refusal
from fleet_fixture import RunningFleet, fleet, new_namespace
from provisioned import PartyClient, Provisioned, provisioned_fleet

import client as sy
from broker import codec, protocol, topology
from broker.amqp import message_properties, pika_url
from broker.protocol import PointerRecord, Ref
from broker.settings import get_settings
from client.fleet import get_fleet_transport, reset_fleet_transport
from worker import keys

pytestmark = pytest.mark.timeout(300)

SECRET = torch.tensor([2.0, 7.0, 1.0, 8.0, 2.0, 8.0])
OWNERS = ("alice", "bob")


@dataclass
class Fleet:
    """The provisioned fleet, the attacker's raw client, and the victim's env files."""

    files: Provisioned
    running: RunningFleet
    victim: str
    dave: PartyClient


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    namespace = new_namespace()
    tag = namespace.rsplit("-", 1)[-1][:6]
    carol, dave = f"carol-{tag}", f"dave-{tag}"
    with provisioned_fleet(
        tmp_path_factory.mktemp("provisioned"), namespace, OWNERS, (carol, dave)
    ) as files:
        worker_env = {w: files.env(w) for w in OWNERS}
        with fleet(OWNERS, namespace, env=files.env("operator"), worker_env=worker_env) as running:
            attacker = PartyClient(files.env(dave))
            try:
                yield Fleet(files, running, carol, attacker)
            finally:
                attacker.close()
            for owner in OWNERS:  # the owners' grants were enough for all they did
                log = running.log_tail(owner, 10_000)
                assert "ACCESS_REFUSED" not in log and "NOPERM" not in log, log


@pytest.fixture
def victim(provisioned: Fleet) -> Iterator[tuple[Any, Any]]:
    """Carol's FleetWorker handles for bob and alice, connected with carol's env file."""
    saved = dict(os.environ)
    os.environ.update(provisioned.files.env(provisioned.victim))
    get_settings.cache_clear()
    reset_fleet_transport()
    try:
        hook = sy.TorchHook(torch)
        yield sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
        assert get_fleet_transport().user == provisioned.victim
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        reset_fleet_transport()


@pytest.fixture
def secret(victim: tuple[Any, Any]) -> Iterator[Any]:
    """Carol's tensor on bob; after the test it must still be exact."""
    bob, _ = victim
    pointer = SECRET.clone().send(bob)
    bob.synchronize()
    yield pointer
    assert torch.equal(pointer.get(), SECRET), "the victim's object changed"


def new_id() -> int:
    return int.from_bytes(os.urandom(8), "big") >> 1


# ------------------------------------------------------------------ through the workers


def test_reading_listing_and_counting_carols_objects_is_refused(
    provisioned: Fleet, secret: Any
) -> None:
    dave = provisioned.dave
    error = refusal(dave, "bob", [protocol.GET, Ref(secret.id_at_location), 1])
    assert error["type"] == "PermissionDeniedError"
    assert str(secret.id_at_location) in error["message"] and "bob" in error["message"]
    dave.send("bob", [[protocol.OBJECTS, 2], [protocol.COUNT, 3]])
    answers = {request: payload for request, _, payload in dave.replies(2)}
    assert answers == {2: {}, 3: 0}  # dave sees only his own objects: none


def test_overwriting_deleting_and_clearing_carols_objects_is_refused(
    provisioned: Fleet, secret: Any
) -> None:
    dave, victim_id = provisioned.dave, secret.id_at_location
    error = refusal(dave, "bob", [protocol.STORE, victim_id, torch.zeros(6), 1])
    assert error["type"] == "PermissionDeniedError"
    own = new_id()
    dave.call("bob", [[protocol.STORE, own, torch.zeros(6), 2]])
    add_into_victim = [protocol.OP, "torch.add", [Ref(own), 1], {}, [victim_id], True, 3]
    error = refusal(dave, "bob", add_into_victim)
    assert error["type"] == "PermissionDeniedError"
    dave.send("bob", [[protocol.SETATTR, Ref(victim_id), "data", Ref(own)]])
    dave.send("bob", [[protocol.DELETE, victim_id], [protocol.CLEAR, 5], [protocol.PING, 6]])
    answers = dave.replies(4)  # setattr's and delete's errors come back under request None
    refusals = [payload["type"] for request, ok, payload in answers if request is None]
    assert refusals == ["PermissionDeniedError"] * 2, answers
    assert [6, True, True] in answers
    error = refusal(dave, "bob", [protocol.GET, Ref(own), 7])  # clear took dave's own object
    assert error["type"] == "ObjectNotFoundError"


def test_exfiltrating_carols_objects_by_send_move_or_remote_get_is_refused(
    provisioned: Fleet, secret: Any
) -> None:
    dave, victim_id = provisioned.dave, secret.id_at_location
    error = refusal(dave, "bob", [protocol.SEND_TO, victim_id, "alice", new_id(), 1])
    assert error["type"] == "PermissionDeniedError"
    # into a queue dave reads: his reply queue is no worker, and nothing is declared for it
    error = refusal(dave, "bob", [protocol.SEND_TO, victim_id, dave.reply_queue, new_id(), 2])
    assert error["type"] == "PermissionDeniedError"
    own = new_id()  # even dave's own tensor goes only to workers of the fleet
    dave.call("bob", [[protocol.STORE, own, torch.ones(6), 5]])
    error = refusal(dave, "bob", [protocol.SEND_TO, own, dave.reply_queue, new_id(), 6])
    assert error["type"] == "UnknownWorkerError"
    # a pointer record of dave's own on alice naming carol's object on bob
    record = new_id()
    dave.call(
        "alice",
        [
            [
                protocol.STORE,
                record,
                PointerRecord("bob", victim_id, True, (6,), "float32", False),
                3,
            ]
        ],
    )
    error = refusal(dave, "alice", [protocol.REMOTE_GET, record, 4])
    assert error["type"] == "PermissionDeniedError"


def test_a_workers_replies_cannot_be_aimed_at_carols_queue(
    provisioned: Fleet, victim: tuple[Any, Any], secret: Any
) -> None:
    """Gets of dave's own tensor under carol's next request ids, replies to carol's queue:
    bob refuses the message before running it, and carol's results stay hers."""
    bob, _ = victim
    dave = provisioned.dave
    decoy = new_id()
    dave.call("bob", [[protocol.STORE, decoy, torch.full((6,), 666.0), 1]])
    upcoming = next(bob.session._requests)
    gets = [[protocol.GET, Ref(decoy), request] for request in range(upcoming, upcoming + 8)]
    body = codec.encode(protocol.envelope(9, dave.user, get_fleet_transport().reply_address, gets))
    dave.publish_raw("bob", bytes(body))
    dave.call("bob", [[protocol.PING, 2]])  # bob runs messages in order: the attack is done
    assert torch.equal((secret * 1).get(), SECRET)


def test_a_forged_reply_never_reaches_carol(
    provisioned: Fleet, victim: tuple[Any, Any], secret: Any
) -> None:
    """Dave may not publish to carol's reply queue at all (only to worker exchanges)."""
    reply_address = get_fleet_transport().reply_address
    connection = pika.BlockingConnection(provisioned.dave.parameters())
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        forged = protocol.reply_envelope([[1, True, torch.full((6,), 666.0)]])
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            channel.basic_publish(
                "",
                reply_address,
                bytes(codec.encode(forged)),
                pika.BasicProperties(user_id=provisioned.dave.user, **message_properties()),
            )
        assert error.value.reply_code == 403
    finally:
        connection.close()
    assert get_fleet_transport().forged_replies == 0


def test_an_owner_cannot_answer_for_another_owner(
    provisioned: Fleet, victim: tuple[Any, Any], secret: Any
) -> None:
    """Owner alice, whom carol talks to, makes up bob's answers to carol's next requests:
    RabbitMQ vouches they come from alice, so carol drops them (misdirected)."""
    bob, alice = victim
    alice.synchronize()  # carol talks to alice too
    session, transport = bob.session, get_fleet_transport()
    upcoming = next(session._requests)
    as_alice = pika.BlockingConnection(
        pika.URLParameters(pika_url(provisioned.files.env("alice")["TENSORFLEET_BROKER_URL"]))
    )
    alice_user = topology.worker_user("alice", provisioned.files.namespace)
    try:
        channel = as_alice.channel()
        channel.confirm_delivery()
        for request_id in range(upcoming + 1, upcoming + 5):  # the next four of carol's
            forged = protocol.reply_envelope([[request_id, True, torch.full((6,), 666.0)]])
            channel.basic_publish(
                "",
                transport.reply_address,
                bytes(codec.encode(forged)),
                pika.BasicProperties(user_id=alice_user, **message_properties()),
            )
    finally:
        as_alice.close()
    dropped = session.misdirected_replies
    # a ping to bob, request upcoming + 1: alice's answer to it (confirmed, so queued ahead
    # of bob's) is dropped for its sender, the three others as answers to nothing asked
    bob.synchronize()
    assert session.misdirected_replies == dropped + 4
    assert torch.equal((secret * 1).get(), SECRET)


# ------------------------------------------------------------------ on the broker and in Redis


def _broker_refusals(provisioned: Fleet, reply_address: str) -> dict[str, Callable[[Any], Any]]:
    namespace = provisioned.files.namespace
    bob_queue = topology.worker_queue("bob", namespace)
    return {
        "consume bob's queue (carol's commands)": lambda ch: ch.basic_consume(bob_queue, print),
        "get from bob's queue": lambda ch: ch.basic_get(bob_queue),
        "purge bob's queue": lambda ch: ch.queue_purge(bob_queue),
        "consume carol's reply queue": lambda ch: ch.basic_consume(reply_address, print),
        "delete carol's reply queue": lambda ch: ch.queue_delete(reply_address),
        "declare a queue named like carol's": lambda ch: ch.queue_declare(
            topology.reply_queue(f"{provisioned.victim}.dave", namespace)
        ),
        "declare a queue nobody should create": lambda ch: ch.queue_declare(f"{namespace}.evil"),
        "bind bob's exchange to a queue of his": lambda ch: ch.queue_bind(
            provisioned.dave.reply_queue, topology.worker_exchange("bob", namespace), "bob"
        ),
    }


def test_dave_cannot_consume_or_steal_other_parties_queues(
    provisioned: Fleet, victim: tuple[Any, Any], secret: Any
) -> None:
    reply_address = get_fleet_transport().reply_address
    connection = pika.BlockingConnection(provisioned.dave.parameters())
    try:
        for what, attempt in _broker_refusals(provisioned, reply_address).items():
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
                attempt(channel)
            assert error.value.reply_code in (403, 405), f"{what}: {error.value}"
    finally:
        connection.close()
    bob, _ = victim
    bob.synchronize()  # carol's queue and bob's queue are still there and serve her


def test_an_owner_cannot_read_the_other_owners_store(provisioned: Fleet, secret: Any) -> None:
    """Owner alice's Redis user reads only alice's keys: carol's tensor on bob is out of reach."""
    namespace = provisioned.files.namespace
    as_alice = redis.Redis.from_url(provisioned.files.env("alice")["TENSORFLEET_REDIS_URL"])
    try:
        as_alice.ping()
        for read in (
            lambda: as_alice.hgetall(keys.objects(namespace, "bob")),
            lambda: as_alice.keys("*"),
            lambda: as_alice.hset(keys.objects(namespace, "bob"), "1", b"x"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                read()
    finally:
        as_alice.close()


def test_carols_lesson_flow_still_works_beside_the_attacker(
    provisioned: Fleet, victim: tuple[Any, Any]
) -> None:
    """The victim's pointer chain, move and remote_get work under her own identity."""
    bob, alice = victim
    x = torch.tensor([1.0, 2.0, 3.0]).send(bob)
    y = (x * 2).move(alice)
    z = y.send(bob)  # a chain: carol -> bob -> alice
    z.remote_get()
    assert torch.equal(z.get(), torch.tensor([2.0, 4.0, 6.0]))
    assert get_fleet_transport().forged_replies == 0
