"""Queue topology is pure: names and arguments, checked without a server."""

from __future__ import annotations

import pytest

from broker import topology


def test_worker_queue_names() -> None:
    assert topology.worker_queue("bob") == "tensorfleet.worker.bob"
    assert topology.worker_queue("secure_worker", "t1") == "t1.worker.secure_worker"


def test_worker_id_round_trips_through_the_queue_name() -> None:
    for namespace in ("tensorfleet", "tftest-1-ab.c"):
        for worker_id in ("bob", "secure_worker", "w.1"):
            queue = topology.worker_queue(worker_id, namespace)
            assert topology.worker_id_from_queue(queue, namespace) == worker_id
            assert topology.namespace_from_queue(queue) == namespace


def test_foreign_queues_are_not_worker_queues() -> None:
    assert topology.worker_id_from_queue("celery") is None
    assert topology.worker_id_from_queue("other.worker.bob") is None
    assert topology.worker_id_from_queue("tensorfleet.reply.x") is None
    assert topology.namespace_from_queue("celery") is None


def test_reply_and_dead_letter_names_are_namespaced() -> None:
    assert topology.reply_queue("c-1", "ns") == "ns.reply.c-1"
    assert topology.dead_letter_exchange("ns") == "ns.dlx"
    assert topology.dead_letter_queue("ns") == "ns.dead-letter"
    assert topology.namespace_queues(["bob"], "ns") == ["ns.worker.bob", "ns.dead-letter"]


def test_queue_arguments() -> None:
    # no x- arguments: a plain Celery send_task(queue=...) declares the queue with none,
    # and RabbitMQ refuses a re-declaration with different arguments
    assert topology.worker_queue_arguments("classic") == {}
    # quorum (TENSORFLEET_QUEUE_TYPE=quorum): the type is the one argument
    assert topology.worker_queue_arguments("quorum") == {"x-queue-type": "quorum"}
    with pytest.raises(ValueError, match="classic"):
        topology.worker_queue_arguments("stream")
    assert topology.reply_queue_arguments()["x-expires"] > 0


@pytest.mark.parametrize("bad", ["", "bob smith", "a/b", "a:b", "*", ".hidden"])
def test_bad_ids_are_refused_with_advice(bad: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        topology.worker_queue(bad)


def test_client_reply_queues_carry_the_broker_user() -> None:
    name = topology.client_reply_queue("carol", "4242-ab12", "ns")
    assert name == "ns.reply.carol.4242-ab12"
    # deploy/grants.py gives client carol <ns>.reply.carol.* and nothing else to read
    assert name.startswith(topology.reply_queue("carol", "ns") + ".")
    with pytest.raises(ValueError, match="letters, digits"):
        topology.client_reply_queue("carol", "a b", "ns")


def test_worker_exchange_and_store_down_marker() -> None:
    assert topology.worker_exchange("bob", "ns") == "ns.worker.bob"
    marker = topology.store_down_marker("bob", "ns")
    assert marker == "ns.store-down.bob"
    # the marker is no worker queue, whatever the worker ids of the fleet
    assert topology.worker_id_from_queue(marker, "ns") is None
