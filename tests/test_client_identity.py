"""Client identity (issue 9.1, client side): user_id on every publish, exclusive reply
queues named after the client's RabbitMQ user, and replies believed only from workers.

Fleet-only: users, user_id validation and exclusive queues are RabbitMQ's. The
attacker is a RabbitMQ user of its own (tests/attacker.py) with every permission
on the vhost, the strongest client a misconfigured broker could have.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import torch
from attacker import FleetAttacker
from fleet_fixture import fleet, new_namespace
from provisioned import provisioned_fleet

import client as sy
from broker import codec, protocol, topology
from broker.amqp import message_properties, pika_url
from broker.errors import WorkerNeverStartedError, WorkerNotRunningError
from broker.settings import get_settings
from client.fleet import FleetTransport, get_fleet_transport, reset_fleet_transport


@pytest.fixture(scope="module")
def one() -> Iterator[Any]:
    with fleet(("bob",)) as running:
        yield running


@pytest.fixture
def attacker(one: Any) -> Iterator[FleetAttacker]:
    mallory = FleetAttacker(one.settings)
    yield mallory
    mallory.close()


def forged_reply(request_id: int, value: torch.Tensor) -> bytes:
    return bytes(codec.encode(protocol.reply_envelope([[request_id, True, value]])))


def test_a_forged_reply_is_dropped_and_the_victim_gets_its_exact_result(
    one: Any, attacker: FleetAttacker
) -> None:
    hook = sy.TorchHook(torch)
    bob = sy.FleetWorker(hook, id="bob")
    data = torch.arange(5.0)
    x = data.send(bob)
    bob.synchronize()
    transport = get_fleet_transport()
    session = bob.session
    dropped = transport.forged_replies
    # the attacker knows the victim's reply queue and guesses its next request ids
    upcoming = next(session._requests)
    for request_id in range(upcoming, upcoming + 5):
        attacker.channel.basic_publish(
            "",
            transport.reply_address,
            forged_reply(request_id, torch.full((5,), 666.0)),
            pika.BasicProperties(user_id=attacker.name, **message_properties()),
        )
        # without user_id, and with a worker's user_id (RabbitMQ refuses that one)
        attacker.channel.basic_publish(
            "",
            transport.reply_address,
            forged_reply(request_id, torch.full((5,), 667.0)),
            pika.BasicProperties(**message_properties()),
        )
    assert torch.equal(x.get(), data)
    assert transport.forged_replies >= dropped + 2  # both kinds seen and dropped
    assert transport.forged_replies <= dropped + 10


def test_rabbitmq_refuses_a_reply_posing_as_a_worker(one: Any, attacker: FleetAttacker) -> None:
    transport = get_fleet_transport()
    worker_user = topology.worker_user("bob", one.namespace)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        attacker.channel.basic_publish(
            "",
            transport.reply_address,
            forged_reply(1, torch.zeros(1)),
            pika.BasicProperties(user_id=worker_user, **message_properties()),
        )
        attacker.channel.queue_declare(attacker.reply_queue, passive=True)  # sees the close
    assert refused.value.reply_code == 406  # PRECONDITION_FAILED: user_id is not yours


def test_the_attacker_cannot_read_the_victims_reply_queue(
    one: Any, attacker: FleetAttacker
) -> None:
    hook = sy.TorchHook(torch)
    bob = sy.FleetWorker(hook, id="bob")
    bob.synchronize()
    name = get_fleet_transport().reply_address
    assert name.startswith(f"{one.namespace}.reply.guest.")
    for grab in (
        lambda channel: channel.basic_consume(name, lambda *a: None, auto_ack=True),
        lambda channel: channel.basic_get(name, auto_ack=True),
        lambda channel: channel.queue_delete(name),
    ):
        channel = attacker.connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            grab(channel)
        assert refused.value.reply_code == 405  # RESOURCE_LOCKED: exclusive to the victim
    bob.synchronize()  # the victim still has its queue


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def test_a_client_with_its_own_user_publishes_as_that_user(one: Any) -> None:
    """Objects belong to the RabbitMQ user in the client's URL; replies from the guest
    workers are believed because TENSORFLEET_WORKER_USER names their shared account."""
    user, password = f"carol-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    _rabbitmqctl("add_user", user, password)
    _rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    url = pika.URLParameters(pika_url(one.settings.broker_url))
    broker_url = f"amqp://{user}:{password}@{url.host}:{url.port}//"
    settings = one.settings.__class__.from_env(
        {
            **os.environ,
            "TENSORFLEET_NAMESPACE": one.namespace,
            "TENSORFLEET_BROKER_URL": broker_url,
            "TENSORFLEET_WORKER_USER": "guest",
        }
    )
    carol = FleetTransport(settings)
    try:
        assert carol.user == user
        assert carol.reply_address.startswith(f"{one.namespace}.reply.{user}.")
        body = codec.encode(
            protocol.envelope(
                1,
                "carol",
                carol.reply_address,
                [[protocol.STORE, 77, torch.ones(2), None], [protocol.OBJECTS, 2]],
            )
        )
        carol.publish("bob", body)
        reply = carol.receive(30)
        assert reply is not None
        ((request, ok, objects),) = codec.decode(reply)["replies"]
        assert request == 2 and ok and torch.equal(objects[77], torch.ones(2))
        # the guest client (another principal) does not see carol's object at all
        hook = sy.TorchHook(torch)
        assert 77 not in sy.FleetWorker(hook, id="bob")._objects
    finally:
        carol.close()
        _rabbitmqctl("delete_user", user)


def test_a_reply_from_a_worker_the_client_never_talked_to_is_dropped(one: Any) -> None:
    """A RabbitMQ user named like a worker of the namespace (eve) is still not a worker
    this client sent anything to: its replies are dropped too."""
    hook = sy.TorchHook(torch)
    bob = sy.FleetWorker(hook, id="bob")
    data = torch.arange(3.0)
    x = data.send(bob)
    bob.synchronize()
    eve, password = topology.worker_user("eve", one.namespace), uuid.uuid4().hex
    _rabbitmqctl("add_user", eve, password)
    _rabbitmqctl("set_permissions", "-p", "/", eve, ".*", ".*", ".*")
    url = pika.URLParameters(pika_url(one.settings.broker_url))
    url.credentials = pika.PlainCredentials(eve, password)
    connection = pika.BlockingConnection(url)
    try:
        transport = get_fleet_transport()
        dropped = transport.forged_replies
        upcoming = next(bob.session._requests)
        channel = connection.channel()
        for request_id in range(upcoming, upcoming + 3):
            channel.basic_publish(
                "",
                transport.reply_address,
                forged_reply(request_id, torch.full((3,), 666.0)),
                pika.BasicProperties(user_id=eve, **message_properties()),
            )
        assert torch.equal(x.get(), data)
        bob.synchronize()
        assert transport.forged_replies >= dropped + 1
    finally:
        connection.close()
        _rabbitmqctl("delete_user", eve)


def test_a_provisioned_client_uses_the_api_with_least_privilege(tmp_path: Path) -> None:
    """The real client (FleetWorker) as a provisioned party: its own user, grants that
    allow only its own reply queues and publishing to the fleet's worker exchanges, and
    workers with users of their own whose replies it believes, nobody else's."""
    namespace = new_namespace()
    carol = f"carol-{uuid.uuid4().hex[:6]}"
    workers = ("alice", "bob")
    with provisioned_fleet(tmp_path, namespace, workers, (carol,)) as files:
        worker_env = {w: files.env(w) for w in workers}
        with fleet(workers, namespace, env=files.env("operator"), worker_env=worker_env) as running:
            saved = dict(os.environ)
            os.environ.update(files.env(carol))
            get_settings.cache_clear()
            reset_fleet_transport()
            try:
                hook = sy.TorchHook(torch)
                bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
                x = torch.tensor([1.0, 2.0]).send(bob)
                y = x * 3
                y.move(alice)
                assert torch.equal(y.get(), torch.tensor([3.0, 6.0]))
                assert torch.equal((x + 1).get(), torch.tensor([2.0, 3.0]))
                transport = get_fleet_transport()
                assert transport.user == carol
                assert transport.reply_address.startswith(f"{namespace}.reply.{carol}.")
                assert transport.forged_replies == 0
                # the fast answers need no permission: passive declares
                with pytest.raises(WorkerNeverStartedError):
                    sy.FleetWorker(hook, id="ghost").synchronize()
                running.kill("alice")
                with pytest.raises(WorkerNotRunningError):
                    alice.synchronize()
                assert torch.equal(x.get(), torch.tensor([1.0, 2.0]))
            finally:
                os.environ.clear()
                os.environ.update(saved)
                get_settings.cache_clear()
                reset_fleet_transport()
            log = running.log_tail("bob", 10_000)
            assert "ACCESS_REFUSED" not in log, log
