"""What a load test leaves behind, and how much memory the fleet holds after it.

After the clients have dropped their pointers, :func:`objects_left` asks the workers
which of the run's objects they still hold, :func:`redis_left` looks for the run's
records and keys in Redis, and :func:`queues_left` asks RabbitMQ (passively: it
creates nothing) which of the run's queues still exist. On a private fleet the whole
namespace belongs to the run, so every object, key and queue of it counts; on a
running fleet only what the run made does (the ids its clients created, their reply
queues). The workers' batch-replay markers (``<ns>:<worker>:batch:<sender>:<n>``)
of the run's clients are counted apart: the workers keep them on purpose, and they
expire after ``TENSORFLEET_BATCH_TTL`` seconds.

:func:`rss_mib` finds the worker processes of a namespace and the RabbitMQ node (the
one listening on the broker's port) on this machine and reads their resident memory (psutil).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker import topology
from broker.settings import Settings

MIB = 2**20


@dataclass
class Leftovers:
    """What of the run still exists; :attr:`clean` when nothing does."""

    #: worker id -> objects of the run it still holds
    objects: dict[str, int] = field(default_factory=dict)
    queues: list[str] = field(default_factory=list)
    #: Redis keys of the run (private fleet), or ``<hash>/<id>`` records of its objects
    redis: list[str] = field(default_factory=list)
    #: batch-replay markers of the run's clients, which expire by themselves
    expiring_markers: int = 0

    @property
    def clean(self) -> bool:
        return not (any(self.objects.values()) or self.queues or self.redis)

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "objects": dict(self.objects),
            "queues": list(self.queues),
            "redis": list(self.redis),
            "expiring_markers": self.expiring_markers,
        }

    def describe(self) -> str:
        """One line for the report."""
        if self.clean:
            text = "nothing left behind: no object, queue or Redis key of the run"
        else:
            parts = []
            objects = sum(self.objects.values())
            if objects:
                where = ", ".join(f"{w} {n}" for w, n in self.objects.items() if n)
                parts.append(f"{objects} object(s) ({where})")
            if self.queues:
                parts.append(f"queue(s) {', '.join(self.queues)}")
            if self.redis:
                shown = ", ".join(self.redis[:5]) + (" ..." if len(self.redis) > 5 else "")
                parts.append(f"{len(self.redis)} Redis key(s)/record(s): {shown}")
            text = "LEFT BEHIND: " + "; ".join(parts)
        if self.expiring_markers:
            text += (
                f" ({self.expiring_markers} batch-replay marker(s) of the run's clients remain "
                "on the workers until TENSORFLEET_BATCH_TTL expires them)"
            )
        return text


def objects_left(
    workers: Sequence[Any], created: Mapping[str, Iterable[int]] | None
) -> dict[str, int]:
    """Per worker: objects of the run still there (``created`` None: every object counts)."""
    left = {}
    for worker in workers:
        if created is None:
            left[worker.id] = worker.object_count()
        else:
            mine = set(created.get(worker.id, ()))
            left[worker.id] = len(mine & set(worker._objects))
    return left


def queues_left(names: Iterable[str], settings: Settings) -> list[str]:
    """Which of the queues ``names`` exist (a passive declaration each)."""
    import pika
    import pika.exceptions

    from broker.tls import pika_parameters

    existing = []
    connection = pika.BlockingConnection(pika_parameters(settings))
    try:
        for name in dict.fromkeys(names):
            channel = connection.channel()
            try:
                channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:  # 404: gone
                continue
            existing.append(name)
            channel.close()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()
    return existing


def namespace_queues(
    namespace: str, worker_ids: Sequence[str], reply_queues: Iterable[str]
) -> list[str]:
    """Every queue a private run made: worker queues, dead letters, the clients' reply queues."""
    return [*topology.namespace_queues(tuple(worker_ids), namespace), *reply_queues]


def _redis(settings: Settings) -> Any:
    import redis

    from broker.tls import redis_ssl_kwargs

    return redis.Redis.from_url(
        settings.redis_url, **redis_ssl_kwargs(settings, settings.redis_url)
    )


def redis_left(
    settings: Settings,
    namespace: str,
    worker_ids: Sequence[str],
    created: Mapping[str, Iterable[int]] | None,
    senders: Iterable[str] = (),
) -> tuple[list[str], int]:
    """The run's Redis keys or records still there, and the count of its replay markers.

    ``created`` None (a private fleet, after it was deleted): every key of the namespace.
    Otherwise the object, owner and failure records of the ids the run created.
    """
    from worker import keys

    client = _redis(settings)
    try:
        if created is None:
            found = client.scan_iter(match=keys.pattern(namespace), count=1000)
            return sorted(key.decode() for key in found), 0
        left = []
        for worker_id in worker_ids:
            ids = sorted(set(created.get(worker_id, ())))
            if not ids:
                continue
            for hash_key in (
                keys.objects(namespace, worker_id),
                keys.owners(namespace, worker_id),
                keys.failures(namespace, worker_id),
            ):
                present = client.hmget(hash_key, [str(i) for i in ids])
                left += [f"{hash_key}/{i}" for i, v in zip(ids, present, strict=True) if v]
        markers = 0
        for sender in senders:
            for worker_id in worker_ids:
                pattern = keys.batch(namespace, worker_id, f"{sender}:*")
                markers += sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        return left, markers
    finally:
        client.close()


def _worker_id_of(argv: list[str]) -> str | None:
    """The worker id of a ``tensorfleet worker <id>`` command line, else None."""
    for position, word in enumerate(argv[:-1]):
        if word == "worker" and any(part.endswith(("client.cli", "tensorfleet")) for part in argv):
            return argv[position + 1]
    return None


def _listens_on(process: Any, port: int) -> bool:
    import psutil

    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
        for c in process.net_connections(kind="tcp")
    )


def rss_mib(namespace: str, worker_ids: Sequence[str], broker_port: int) -> dict[str, Any]:
    """Resident memory (MiB) of the namespace's worker processes and of RabbitMQ here.

    A worker process is one running ``tensorfleet worker <id>`` (or ``python -m
    client.cli worker <id>``) whose ``TENSORFLEET_NAMESPACE`` is ``namespace``; RabbitMQ
    is the ``beam.smp`` process listening on ``broker_port``. None: not found here.
    """
    import psutil

    workers: dict[str, float | None] = {worker_id: None for worker_id in worker_ids}
    rabbitmq: float | None = None
    for process in psutil.process_iter(["cmdline", "name"]):
        with contextlib.suppress(psutil.Error):
            argv = process.info["cmdline"] or []
            if process.info["name"] == "beam.smp":
                if _listens_on(process, broker_port):
                    rabbitmq = process.memory_info().rss / MIB
                continue
            worker_id = _worker_id_of(argv)
            if worker_id not in workers:
                continue
            if process.environ().get("TENSORFLEET_NAMESPACE", "tensorfleet") != namespace:
                continue
            workers[worker_id] = (workers[worker_id] or 0.0) + process.memory_info().rss / MIB
    return {"workers": workers, "rabbitmq": rabbitmq}
