"""Least-privilege grants of every party of a fleet: RabbitMQ permissions and Redis ACL rules.

Pure functions, no server: ``tensorfleet provision`` writes what they return into
RabbitMQ definitions and a Redis ACL file, and the tests apply the same rules
with ``rabbitmqctl`` and ``ACL SETUSER``. What each party may touch
(``<ns>`` is the namespace; RabbitMQ checks *configure* on declare and delete,
*write* on publish and on the queue of a bind, *read* on consume and on the
exchange of a bind):

========  ===========================================  =======================================
party     RabbitMQ (configure / write / read)          Redis
========  ===========================================  =======================================
worker    configure: its own queue and exchange          keys ``<ns>:<worker>:*`` only, no
 ``w``    (``<ns>.worker.<w>``), its store-down marker   channels, and only the commands a
          ``<ns>.store-down.<w>``, the dead-letter       worker sends (listed in
          exchange and queue, Celery's pidbox and        :data:`WORKER_REDIS_COMMANDS`)
          event exchanges and its own pidbox queue;
          write: the worker exchanges of the fleet
          (forwards), ``amq.default`` (replies go to
          reply queues through it), dead letters,
          Celery events and pidbox replies;
          read: its own queue, its own pidbox queue
client    configure and read: its own reply queues       nothing
 ``c``    ``<ns>.reply.<c>.*`` only; write: the worker
          exchanges of the fleet
========  ===========================================  =======================================

A client publishes a batch to the worker's exchange (``<ns>.worker.<w>``, declared
by the worker, or by the definitions before any worker starts), never to
``amq.default``: with write on ``amq.default`` it could put messages into any
queue, another client's reply queue included. Nobody but the worker may declare
or delete a worker queue. Workers, not clients, keep write on ``amq.default``:
RabbitMQ cannot limit it by routing key, so a worker could reach any queue by
name; messages carry the validated ``user_id``, so a receiver knows who sent them.

Party names may not contain ``.``: a client ``c`` owns ``<ns>.reply.c.*``, which
must not also cover the reply queues of a client named ``c.x``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from broker import topology

#: Every Redis command a fleet worker sends (worker/redis_store.py, worker/cli.py), by ACL name.
#: ``select`` is for a URL naming a database other than 0. redis-py's ``CLIENT SETINFO``
#: on connect is refused (NOPERM) and redis-py ignores that.
WORKER_REDIS_COMMANDS = (
    "ping",
    "select",
    "get",
    "set",
    "del",
    "hset",
    "hdel",
    "hgetall",
    "rpush",
    "lrange",
    "multi",
    "exec",
    "discard",
)

#: What a party's name may be: it is part of queue names, user names and file names.
PARTY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Permissions:
    """One RabbitMQ ``set_permissions`` line: regular expressions over resource names."""

    configure: str
    write: str
    read: str


def _one_of(names: Sequence[str], patterns: Sequence[str] = ()) -> str:
    """A regular expression matching exactly the given names, or one of ``patterns``."""
    return "^(" + "|".join([*(re.escape(name) for name in names), *patterns]) + ")$"


def worker_user(namespace: str, worker_id: str) -> str:
    """The RabbitMQ (and Redis ACL) user of worker ``worker_id``: ``<ns>.worker.<id>``."""
    return topology.worker_user(worker_id, namespace)


def pidbox_queue_pattern(namespace: str, worker_id: str) -> str:
    """A regex of the name of Celery's pidbox queue of a worker (it holds the host name).

    ``tensorfleet worker bob`` runs as Celery node ``bob.<ns>@<host>``, whose pidbox queue
    is ``bob.<ns>@<host>.<ns>.control.pidbox`` (worker/runner.py, broker/topology.py).
    """
    control = re.escape(topology.control_exchange_prefix(namespace))
    return rf"{re.escape(worker_id)}\.{re.escape(namespace)}@[^@]+\.{control}\.pidbox"


def worker_permissions(namespace: str, worker_id: str, fleet: Sequence[str]) -> Permissions:
    """RabbitMQ permissions of worker ``worker_id`` in a fleet of workers ``fleet``."""
    own = topology.worker_queue(worker_id, namespace)
    dead = [topology.dead_letter_exchange(namespace), topology.dead_letter_queue(namespace)]
    control = topology.control_exchange_prefix(namespace)
    celery = [f"{control}.pidbox", f"reply.{control}.pidbox", topology.event_exchange(namespace)]
    pidbox = pidbox_queue_pattern(namespace, worker_id)
    exchanges = sorted({topology.worker_queue(w, namespace) for w in fleet} | {own})
    # the exclusive queue it holds while its Redis is down (worker/runtime.py)
    marker = topology.store_down_marker(worker_id, namespace)
    return Permissions(
        configure=_one_of([own, marker, *dead, *celery], [pidbox]),
        write=_one_of(["amq.default", *exchanges, *dead, *celery], [pidbox]),
        read=_one_of([own, dead[0], f"{control}.pidbox"], [pidbox]),
    )


def reply_queue_pattern(namespace: str, client: str) -> str:
    """A regex of every reply queue client ``client`` may own: ``<ns>.reply.<client>.*``."""
    prefix = topology.reply_queue(client, namespace)
    return rf"^{re.escape(prefix)}\..+$"


def client_permissions(namespace: str, client: str, fleet: Sequence[str]) -> Permissions:
    """RabbitMQ permissions of client ``client``: its reply queues, the fleet's workers."""
    replies = reply_queue_pattern(namespace, client)
    exchanges = sorted(topology.worker_queue(w, namespace) for w in fleet)
    return Permissions(configure=replies, write=_one_of(exchanges), read=replies)


def redis_key_pattern(namespace: str, worker_id: str) -> str:
    """The Redis key pattern of a worker's keys (worker/keys.py): ``<ns>:<worker>:*``."""
    return f"{namespace}:{worker_id}:*"


def worker_redis_rules(namespace: str, worker_id: str) -> list[str]:
    """The ``ACL SETUSER`` rules of a worker's Redis user, without its password.

    Add ``>password`` (``ACL SETUSER``) or ``#<sha256 hex>`` (an ACL file) and ``on``.
    """
    return [
        "resetkeys",
        f"~{redis_key_pattern(namespace, worker_id)}",
        "resetchannels",
        "-@all",
        *(f"+{command}" for command in WORKER_REDIS_COMMANDS),
    ]
