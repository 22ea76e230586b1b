"""Queue topology: every RabbitMQ name and queue argument, as pure functions.

Clients, workers, the CLI and the tests all derive names here, so the two sides
of the wire cannot drift apart. Nothing in this module talks to a server.

=====================================  ===============================================
name                                   what it is
=====================================  ===============================================
``<ns>.worker.<id>``                   durable queue of worker ``<id>``: task messages
                                       (batches) from clients and other workers
``<ns>.reply.<user>.<suffix>``        a fleet client's reply queue: exclusive to its
                                       connection, named after its RabbitMQ user
``<ns>.reply.<client>``                a raw or test client's reply queue; it outlives a
                                       dropped connection and expires when unused
``<ns>.store-down.<id>``               exclusive marker queue worker ``<id>`` holds while
                                       its store (Redis) is down and it is not consuming
``<ns>.dlx``                           durable fanout exchange for rejected messages
``<ns>.dead-letter``                   durable queue bound to it; each message carries
                                       :data:`REASON_HEADER` and :data:`ORIGIN_HEADER`
``<ns>.control.pidbox``                Celery's broadcast exchange for the namespace's
                                       workers (``celery inspect``, Flower)
``<ns>.events``                        Celery's event exchange (task and worker events)
=====================================  ===============================================

Worker queues take no ``x-`` arguments on purpose: a plain Celery caller's
``send_task(..., queue="tensorfleet.worker.bob")`` declares the queue with none,
and RabbitMQ refuses a re-declaration whose arguments differ (PRECONDITION_FAILED).
Dead-lettering is therefore done by the worker itself, which also lets it attach
the reason; see :mod:`worker.celery_app`. The one exception is the queue type:
with ``TENSORFLEET_QUEUE_TYPE=quorum`` worker queues carry ``x-queue-type: quorum``,
and every party must declare them so (a plain Celery caller sets
``task_create_missing_queue_type = "quorum"``).
"""

from __future__ import annotations

import re
from typing import Any

DEFAULT_NAMESPACE = "tensorfleet"

#: Header set on every dead-lettered message: why the worker refused it.
REASON_HEADER = "x-tensorfleet-reason"
#: Header set on every dead-lettered message: the kind of refusal (worker.gate.REFUSAL_KINDS).
KIND_HEADER = "x-tensorfleet-refusal"
#: Header set on every dead-lettered message: the queue it was taken from.
ORIGIN_HEADER = "x-tensorfleet-origin"

#: A reply queue nobody consumes from for this long is deleted by RabbitMQ (ms).
REPLY_QUEUE_EXPIRES_MS = 10 * 60 * 1000

_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} cannot be part of a queue name: use letters, digits, '_', '.' "
            "and '-' only (for example 'bob' or 'secure_worker')."
        )
    return value


def worker_queue(worker_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The durable queue worker ``worker_id`` consumes: ``tensorfleet.worker.bob``."""
    return f"{_check('namespace', namespace)}.worker.{_check('worker id', worker_id)}"


def worker_id_from_queue(queue: str, namespace: str = DEFAULT_NAMESPACE) -> str | None:
    """The worker id a queue name belongs to, or None if it is not a worker queue."""
    prefix = f"{namespace}.worker."
    if not queue.startswith(prefix):
        return None
    worker_id = queue[len(prefix) :]
    return worker_id if _ID_PATTERN.fullmatch(worker_id) else None


def namespace_from_queue(queue: str) -> str | None:
    """The namespace of a worker queue name (``a.b.worker.bob`` -> ``a.b``), or None."""
    head, sep, worker_id = queue.rpartition(".worker.")
    return head if sep and head and _ID_PATTERN.fullmatch(worker_id) else None


def reply_queue(client_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The queue a client reads its replies from: ``tensorfleet.reply.<client_id>``."""
    return f"{_check('namespace', namespace)}.reply.{_check('client id', client_id)}"


def client_reply_queue(user: str, suffix: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """A fleet client's exclusive reply queue: ``tensorfleet.reply.<user>.<suffix>``.

    ``user`` is the client's RabbitMQ user, so least-privilege grants can give each
    client ``<ns>.reply.<user>.*`` and nothing else to read (deploy/grants.py).
    """
    return f"{reply_queue(user, namespace)}.{_check('reply suffix', suffix)}"


def is_reply_queue_of(user: str, queue: str, namespace: str = DEFAULT_NAMESPACE) -> bool:
    """Whether ``queue`` is one of RabbitMQ user ``user``'s reply queues.

    Those are ``<ns>.reply.<user>`` and ``<ns>.reply.<user>.<suffix>``, the names the
    least-privilege grants let only that user read (deploy/grants.py). A worker replies
    only to such a queue of the message's sender, so no party can aim a worker's replies
    (its own results or errors) at another party's queue.
    """
    own = f"{namespace}.reply.{user}"
    return queue == own or (queue.startswith(own + ".") and len(queue) > len(own) + 1)


def worker_exchange(worker_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The direct exchange clients and workers publish to worker ``worker_id`` through.

    Named like the worker's queue and declared by the worker (Celery declares it with
    the queue); the routing key is the queue's name too.
    """
    return worker_queue(worker_id, namespace)


def store_down_marker(worker_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The marker queue a worker holds (exclusively) while its store is down.

    A client that finds no consumer on a worker's queue asks for this queue with a
    passive declare: if it exists the worker runs but waits for Redis; if not, the
    worker is not running. Being exclusive, it disappears with the worker's connection.
    """
    return f"{_check('namespace', namespace)}.store-down.{_check('worker id', worker_id)}"


def control_exchange_prefix(namespace: str = DEFAULT_NAMESPACE) -> str:
    """Celery's ``control_exchange`` for a namespace: broadcasts go to ``<ns>.control.pidbox``.

    Celery's default, ``celery``, is shared by every Celery app on a broker; a fleet's
    workers would receive (and refuse) other apps' ``inspect`` and Flower polls.
    """
    return f"{_check('namespace', namespace)}.control"


def event_exchange(namespace: str = DEFAULT_NAMESPACE) -> str:
    """Celery's ``event_exchange`` for a namespace (task and worker events, for Flower)."""
    return f"{_check('namespace', namespace)}.events"


def worker_user(worker_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The RabbitMQ user worker ``worker_id`` connects as: ``tensorfleet.worker.bob``.

    Workers believe a forwarded message's ``on_behalf_of`` only when RabbitMQ says the
    forwarding worker's own user published it (or, in fleets where every party shares
    one account, that shared user).
    """
    return worker_queue(worker_id, namespace)


def dead_letter_exchange(namespace: str = DEFAULT_NAMESPACE) -> str:
    """The fanout exchange refused messages are published to."""
    return f"{_check('namespace', namespace)}.dlx"


def dead_letter_queue(namespace: str = DEFAULT_NAMESPACE) -> str:
    """The durable queue that keeps refused messages for inspection."""
    return f"{_check('namespace', namespace)}.dead-letter"


def worker_queue_arguments(queue_type: str | None = None) -> dict[str, Any]:
    """Declaration arguments of a worker queue of ``queue_type`` (``classic`` or ``quorum``).

    Classic: none, so plain Celery callers can declare it. Quorum: ``x-queue-type``.
    ``None`` takes this process's ``TENSORFLEET_QUEUE_TYPE`` (for callers that do not pass it).
    """
    if queue_type is None:
        from broker.settings import get_settings

        queue_type = get_settings().queue_type
    if queue_type == "classic":
        return {}
    if queue_type == "quorum":
        return {"x-queue-type": "quorum"}
    raise ValueError(f"queue type {queue_type!r}: use 'classic' or 'quorum'")


def reply_queue_arguments() -> dict[str, Any]:
    """Declaration arguments of a reply queue: it expires once its client is gone."""
    return {"x-expires": REPLY_QUEUE_EXPIRES_MS}


def namespace_queues(
    worker_ids: list[str] | tuple[str, ...], namespace: str = DEFAULT_NAMESPACE
) -> list[str]:
    """Every durable queue a fleet of ``worker_ids`` uses (for purging in tests and tools)."""
    return [worker_queue(w, namespace) for w in worker_ids] + [dead_letter_queue(namespace)]
