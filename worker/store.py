"""The object store seam: a worker's objects by id, their owners, and the failures of commands.

``ObjectStore`` keeps live objects in memory (tensors keep their autograd graphs
and aliases such as ``.grad``). Every object and failure marker has an *owner*,
the principal whose command created it (see :mod:`worker.access`), and the store
keeps how many bytes each owner holds, for per-client quotas. Every mutation goes
through ``put``/``pop``/``discard``/``touch``/``mark_failed``, so a persisting
subclass (``worker.redis_store.RedisObjectStore``) can write through what changed,
once per message, at ``commit``. The engine reads ``objects`` and ``owners``
directly: they are the hot path.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from broker.codec import Body
from broker.settings import get_settings


def object_bytes(obj: Any) -> int:
    """The bytes an object holds for quota purposes: a tensor's data and grad, else nothing."""
    if not isinstance(obj, torch.Tensor):
        return 0
    size = obj.numel() * obj.element_size()
    grad = obj.grad if obj.is_leaf and obj.requires_grad else None
    if grad is not None:
        size += grad.numel() * grad.element_size()
    return size


class ObjectStore:
    """In-memory store; the base of every store and the whole of the in-process one."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.objects: dict[int, Any] = {}
        self.failures: dict[int, dict[str, str]] = {}
        #: failure id -> wall-clock time it expires, oldest first (TENSORFLEET_FAILURE_TTL);
        #: wall clock, because markers outlive the process in Redis
        self.failure_expiry: dict[int, float] = {}
        self.failure_ttl = get_settings().failure_ttl
        #: object or failure id -> the principal that owns it
        self.owners: dict[int, str] = {}
        #: principal -> bytes of the objects it owns here (see :func:`object_bytes`)
        self.usage: dict[str, int] = {}
        #: id -> bytes counted for it in ``usage``
        self._sizes: dict[int, int] = {}
        #: datasets the operator hosts (worker.datasets): id -> tensor; never persisted, and
        #: kept through a reload
        self.hosted: dict[int, torch.Tensor] = {}

    def host(self, obj_id: int, tensor: torch.Tensor) -> None:
        """Keep a dataset tensor the operator hosts, owned by :data:`worker.access.OPERATOR`."""
        from worker.access import OPERATOR

        self.hosted[obj_id] = tensor
        ObjectStore.put(self, obj_id, tensor, OPERATOR)

    # -- one message at a time ---------------------------------------------------------
    def replay(self, batch_key: str) -> list[tuple[str, str, Body]] | None:
        """Outgoing messages of a batch already applied (a redelivery), or None to run it."""
        return None

    def commit(self, batch_key: str, outgoing: list[tuple[str, str, Body]]) -> None:
        """Make the batch's changes durable together with what it sent (nothing in memory)."""

    # -- mutations ---------------------------------------------------------------------
    def put(self, obj_id: int, obj: Any, owner: str) -> None:
        """Keep ``obj`` under ``obj_id``, owned by ``owner`` (replacing what was there)."""
        self._uncount(obj_id)
        self.objects[obj_id] = obj
        self.owners[obj_id] = owner
        if self.failures:
            self.failures.pop(obj_id, None)
        size = object_bytes(obj)
        if size:
            self._sizes[obj_id] = size
            self.usage[owner] = self.usage.get(owner, 0) + size

    def pop(self, obj_id: int) -> Any:
        """Remove and return the object; KeyError if absent."""
        obj = self.objects.pop(obj_id)
        self._uncount(obj_id)
        self.owners.pop(obj_id, None)
        return obj

    def discard(self, obj_id: int) -> Any | None:
        """Remove the object or failure marker if present; return the object (or None)."""
        if self.failures:
            self.failures.pop(obj_id, None)
        self._uncount(obj_id)
        self.owners.pop(obj_id, None)
        return self.objects.pop(obj_id, None)

    def touch(self, obj_id: int) -> None:
        """Note that the object changed in place (an in-place op, a new grad)."""
        obj = self.objects.get(obj_id)
        owner = self.owners.get(obj_id)
        if obj is None or owner is None:
            return
        size = object_bytes(obj)
        before = self._sizes.get(obj_id, 0)
        if size != before:
            self._sizes[obj_id] = size
            self.usage[owner] = self.usage.get(owner, 0) + size - before

    def mark_failed(self, obj_id: int, error: dict[str, str], owner: str) -> None:
        """Record that ``owner``'s command meant to create ``obj_id`` failed, with its error."""
        self._uncount(obj_id)
        self.objects.pop(obj_id, None)
        self.failures[obj_id] = error
        self.owners[obj_id] = owner
        self.failure_expiry.pop(obj_id, None)  # re-marked: moves to the end of the order
        self.failure_expiry[obj_id] = time.time() + self.failure_ttl

    def expire_failures(self, now: float | None = None) -> int:
        """Forget failure markers past their time; returns how many were dropped.

        Markers expire in the order they were made (one TTL for all), so this stops at
        the first one still due: a message pays only for what actually expires.
        """
        now = time.time() if now is None else now
        expired = []
        for obj_id, deadline in self.failure_expiry.items():
            if deadline > now:
                break
            expired.append(obj_id)
        for obj_id in expired:
            del self.failure_expiry[obj_id]
            if obj_id in self.failures:
                self.discard(obj_id)
        return len(expired)

    def clear(self, owner: str | None = None) -> None:
        """Forget every object and failure (of ``owner`` only, when given)."""
        if owner is None:
            self.objects.clear()
            self.failures.clear()
            self.failure_expiry.clear()
            self.owners.clear()
            self.usage.clear()
            self._sizes.clear()
            return
        for obj_id in [key for key, who in self.owners.items() if who == owner]:
            self.discard(obj_id)

    def _uncount(self, obj_id: int) -> None:
        size = self._sizes.pop(obj_id, 0)
        if size:
            owner = self.owners.get(obj_id)
            if owner is not None:
                left = self.usage.get(owner, 0) - size
                if left > 0:
                    self.usage[owner] = left
                else:
                    self.usage.pop(owner, None)
