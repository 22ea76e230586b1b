"""The object store seam: a worker's objects by id, and the failures of pipelined commands.

``ObjectStore`` keeps live objects in memory (tensors keep their autograd graphs
and aliases such as ``.grad``). Every mutation goes through ``put``/``pop``/
``touch`` so a persisting subclass (``worker.redis_store.RedisObjectStore``) can
write through what changed, once per message, between ``begin`` and ``commit``.
The engine reads ``objects`` directly: it is the hot path.
"""

from __future__ import annotations

from typing import Any

from broker.codec import Body


class ObjectStore:
    """In-memory store; the base of every store and the whole of the in-process one."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.objects: dict[int, Any] = {}
        self.failures: dict[int, dict[str, str]] = {}

    # -- one message at a time ---------------------------------------------------------
    def replay(self, batch_key: str) -> list[tuple[str, str, Body]] | None:
        """Outgoing messages of a batch already applied (a redelivery), or None to run it."""
        return None

    def commit(self, batch_key: str, outgoing: list[tuple[str, str, Body]]) -> None:
        """Make the batch's changes durable together with what it sent (nothing in memory)."""

    # -- mutations ---------------------------------------------------------------------
    def put(self, obj_id: int, obj: Any) -> None:
        self.objects[obj_id] = obj
        if self.failures:
            self.failures.pop(obj_id, None)

    def pop(self, obj_id: int) -> Any:
        """Remove and return the object; KeyError if absent."""
        return self.objects.pop(obj_id)

    def discard(self, obj_id: int) -> Any | None:
        """Remove the object or failure marker if present; return the object (or None)."""
        if self.failures:
            self.failures.pop(obj_id, None)
        return self.objects.pop(obj_id, None)

    def touch(self, obj_id: int) -> None:
        """Note that the object changed in place (an in-place op, a new grad)."""

    def mark_failed(self, obj_id: int, error: dict[str, str]) -> None:
        """Record that the command meant to create ``obj_id`` failed, with its error."""
        self.objects.pop(obj_id, None)
        self.failures[obj_id] = error

    def clear(self) -> None:
        self.objects.clear()
        self.failures.clear()
