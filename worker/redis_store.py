"""The fleet's object store: live objects in memory, written through to Redis once per message.

Tensors keep their autograd graphs and aliases in the process (the inherited
:class:`~worker.store.ObjectStore`); what changed during a message is tracked
by id and written at :meth:`RedisObjectStore.commit` in one MULTI/EXEC
pipeline, together with the batch-done marker that holds the message's
outgoing messages. So either all of a message's effects and its marker are in
Redis, or none are: a redelivered message (``acks_late``) is either replayed
from the marker or run again from the state before it, and both give the same
result. Objects created and dropped within one message never reach Redis.

After a restart, :meth:`RedisObjectStore.load` brings every object back: data,
``requires_grad`` and ``.grad`` (not autograd graphs, which cannot be stored).
The key schema is in :mod:`worker.keys`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import redis
import redis.exceptions
import torch
from redis.backoff import AbstractBackoff
from redis.connection import Encoder, PythonRespSerializer  # type: ignore[attr-defined]
from redis.retry import Retry

from broker import codec, schema
from broker.backoff import RetryPolicy
from broker.errors import MalformedMessageError, StoreUnavailableError
from broker.protocol import PointerRecord
from worker import keys
from worker.store import ObjectStore

#: the owner of an object persisted before objects had owners
UNOWNED = "@unowned"

log = logging.getLogger(__name__)

_TENSOR = b"T"
_POINTER = b"P"
_VALUE = b"V"
_PLAN = b"N"
_LARGE = b"L"

#: Outgoing messages bigger than this in total are not kept for replay (Redis values
#: stop at 512 MiB); a crash between commit and publish then loses that reply.
REPLAY_LIMIT = 32 * 1024 * 1024

Outgoing = tuple[str, str, codec.Body]

#: a dropped Redis connection is retried 5 times, after 0.1, 0.2, 0.4, 0.8 and 1 s
REDIS_RETRY = RetryPolicy(first=0.1, maximum=1.0, retries=5)


class PolicyBackoff(AbstractBackoff):
    """redis-py's backoff interface over :func:`broker.backoff.compute_backoff`.

    redis-py counts ``failures`` from 1, as :meth:`RetryPolicy.delay` counts attempts.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def compute(self, failures: int) -> float:
        return self.policy.delay(failures)


def redis_retry(policy: RetryPolicy = REDIS_RETRY) -> Retry:
    """redis-py's ``Retry`` for ``policy``: its budget and its waits."""
    return Retry(PolicyBackoff(policy), policy.retries)


def connect_probe(url: str, tls: Mapping[str, Any] | None = None) -> redis.Redis:
    """A Redis client that fails at once (no retries, half-second timeouts): for probes.

    ``tls``: redis-py's ``ssl_*`` options for a ``rediss://`` URL (broker.tls.redis_ssl_kwargs).
    """
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5, **(tls or {}))


def connect(url: str, tls: Mapping[str, Any] | None = None) -> redis.Redis:
    """A Redis client that retries a dropped connection a few times before failing.

    ``tls``: redis-py's ``ssl_*`` options for a ``rediss://`` URL (broker.tls.redis_ssl_kwargs).

    Replies are parsed by hiredis, but commands are packed by redis-py's Python
    serializer: it sends a large value as its own buffer, where hiredis copies
    it into the command (160 MB/s measured, against 430 MB/s).
    """
    encoder = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)
    options: dict[str, Any] = {  # command_packer is newer than the type stubs
        "retry": redis_retry(),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        "health_check_interval": 30,
        "socket_keepalive": True,
        "command_packer": PythonRespSerializer(6000, encoder.encode),
        **(tls or {}),
    }
    return redis.Redis.from_url(url, **options)


class _HashChanges:
    """The fields to set and to delete in one Redis hash, applied to a pipeline at once."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.sets: dict[str, bytes] = {}
        self.drops: list[str] = []

    def set(self, field: str, value: bytes) -> None:
        self.sets[field] = value

    def drop(self, field: str) -> None:
        self.drops.append(field)

    def apply(self, pipe: Any) -> None:
        if self.sets:
            pipe.hset(self.key, mapping=self.sets)
        if self.drops:
            pipe.hdel(self.key, *self.drops)


class RedisObjectStore(ObjectStore):
    """An :class:`ObjectStore` that persists every object of ``worker_id`` under ``namespace``."""

    def __init__(
        self,
        worker_id: str,
        client: redis.Redis,
        namespace: str,
        *,
        part_bytes: int = 64 * 1024 * 1024,
        batch_ttl: int = 3600,
    ) -> None:
        super().__init__(worker_id)
        self.redis = client
        self.namespace = namespace
        self.part_bytes = part_bytes
        self.batch_ttl = batch_ttl
        kwargs = client.connection_pool.connection_kwargs
        self._url = f"{kwargs.get('host', 'redis')}:{kwargs.get('port', 6379)}"
        self._objects_key = keys.objects(namespace, worker_id)
        self._failures_key = keys.failures(namespace, worker_id)
        self._owners_key = keys.owners(namespace, worker_id)
        self._quarantine_key = keys.quarantine(namespace, worker_id)
        #: ids changed since the last commit
        self._dirty: set[int] = set()
        self._cleared = False
        #: what Redis holds per id: b"o" (objects hash), b"L" (objects hash + parts), b"f"
        self._persisted: dict[int, bytes] = {}
        self._tensor_bytes = 0
        self._pending: tuple[str, list[Outgoing]] | None = None

    # -- mutations: note the id, then do what the in-memory store does --------------------
    def put(self, obj_id: int, obj: Any, owner: str) -> None:
        super().put(obj_id, obj, owner)
        self._dirty.add(obj_id)

    def pop(self, obj_id: int) -> Any:
        obj = super().pop(obj_id)
        self._dirty.add(obj_id)
        return obj

    def discard(self, obj_id: int) -> Any | None:
        self._dirty.add(obj_id)
        return super().discard(obj_id)

    def touch(self, obj_id: int) -> None:
        super().touch(obj_id)
        self._dirty.add(obj_id)

    def mark_failed(self, obj_id: int, error: dict[str, str], owner: str) -> None:
        super().mark_failed(obj_id, error, owner)
        self._dirty.add(obj_id)

    def clear(self, owner: str | None = None) -> None:
        if owner is not None:
            super().clear(owner)  # discards one by one: each id is written through
            return
        super().clear()
        self._dirty.clear()
        self._cleared = True

    # -- one message at a time -------------------------------------------------------------
    def replay(self, batch_key: str) -> list[Outgoing] | None:
        """The outgoing messages of ``batch_key`` if it was applied already, else None."""
        data = self._call(self.redis.get, keys.batch(self.namespace, self.worker_id, batch_key))
        if data is None:
            return None
        return [
            (str(kind), str(address), bytes(body))
            for kind, address, body in msgpack.unpackb(data, raw=False)
        ]

    def commit(self, batch_key: str, outgoing: list[Outgoing]) -> None:
        """Remember what this message changed, to be written by :meth:`write_pending`.

        Nothing is written here: the worker's runtime (:mod:`worker.runtime`) publishes the
        message's outgoing messages first and then writes the commit, now or from a
        background thread (:meth:`take_pending`). A message that changed nothing has no
        commit: running it again (after a redelivery) gives the same outgoing messages, so
        it needs no marker.
        """
        if self._dirty or self._cleared:
            self._pending = (batch_key, outgoing)

    def write_pending(self) -> None:
        """Write the pending commit, if any, in one MULTI/EXEC transaction."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._write(*pending)

    def take_pending(self) -> tuple[Callable[[], None], int] | None:
        """The deferred commit as a job another thread may run, and its tensor bytes.

        Everything but the Redis round trip happens now: the in-memory bookkeeping
        moves on as if the write had succeeded (a failed write makes the caller reload
        from Redis). The job sends views of tensors' memory, so nothing may change
        those tensors until it has finished.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pipe, size = self._prepare(*pending)
        return (lambda: self._call(pipe.execute)), size

    def discard_pending(self) -> bool:
        """Forget a deferred commit (memory is then ahead of Redis); whether there was one."""
        pending, self._pending = self._pending, None
        return pending is not None

    def _write(self, batch_key: str, outgoing: list[Outgoing]) -> None:
        pipe, _ = self._prepare(batch_key, outgoing)
        self._call(pipe.execute)

    def _prepare(self, batch_key: str, outgoing: list[Outgoing]) -> tuple[Any, int]:
        """The MULTI/EXEC pipeline of a commit, and the tensor bytes it carries."""
        self._tensor_bytes = 0
        pipe = self.redis.pipeline(transaction=True)
        persisted = dict(self._persisted)
        if self._cleared:
            pipe.delete(
                self._objects_key,
                self._failures_key,
                self._owners_key,
                *(
                    keys.tensor_parts(self.namespace, self.worker_id, obj_id)
                    for obj_id, kind in persisted.items()
                    if kind == _LARGE
                ),
            )
            persisted.clear()
        records, failures, owners = (
            _HashChanges(self._objects_key),
            _HashChanges(self._failures_key),
            _HashChanges(self._owners_key),
        )
        for obj_id in self._dirty:
            if obj_id in self.hosted:
                continue  # hosted datasets live in their files, not in Redis
            field = str(obj_id)
            owner = self.owners.get(obj_id)
            if owner is None:
                owners.drop(field)
            else:
                owners.set(field, owner.encode())
            before = persisted.get(obj_id)
            if before == _LARGE:
                pipe.delete(keys.tensor_parts(self.namespace, self.worker_id, obj_id))
            if obj_id in self.objects:
                record = self._record(obj_id, self.objects[obj_id], pipe)
                if record is None:
                    persisted.pop(obj_id, None)
                    if before in (b"o", _LARGE):
                        records.drop(field)
                else:
                    records.set(field, record)
                    persisted[obj_id] = _LARGE if record[:1] == _LARGE else b"o"
                if before == b"f":
                    failures.drop(field)
            elif obj_id in self.failures:
                expires = self.failure_expiry.get(obj_id, time.time() + self.failure_ttl)
                failure_record = {**self.failures[obj_id], _EXPIRES: repr(expires)}
                failures.set(field, msgpack.packb(failure_record, use_bin_type=True))
                persisted[obj_id] = b"f"
                if before in (b"o", _LARGE):
                    records.drop(field)
            elif before is not None:
                persisted.pop(obj_id)
                (failures if before == b"f" else records).drop(field)
        for changes in (records, failures, owners):
            changes.apply(pipe)
        marker = outgoing if sum(len(body) for _, _, body in outgoing) <= REPLAY_LIMIT else []
        pipe.set(
            keys.batch(self.namespace, self.worker_id, batch_key),
            msgpack.packb(
                [
                    [kind, address, bytes(body) if isinstance(body, codec.Frames) else body]
                    for kind, address, body in marker
                ],
                use_bin_type=True,
            ),
            ex=self.batch_ttl,
        )
        self._persisted = persisted
        self._dirty.clear()
        self._cleared = False
        return pipe, self._tensor_bytes

    def _record(self, obj_id: int, obj: Any, pipe: Any) -> bytes | None:
        """The hash record of ``obj``; a large tensor's parts are queued onto ``pipe``."""
        if isinstance(obj, torch.Tensor):
            # views of the tensor's memory: the pipeline sends them before anything changes it
            pieces = codec.encode_tensor_parts(obj, copy=False)
            self._tensor_bytes += sum(len(piece) for piece in pieces)
            if sum(len(piece) for piece in pieces) <= self.part_bytes:
                return b"".join([_TENSOR, *pieces])
            parts = [
                piece[i : i + self.part_bytes]
                for piece in pieces
                for i in range(0, len(piece), self.part_bytes)
            ]
            pipe.rpush(keys.tensor_parts(self.namespace, self.worker_id, obj_id), *parts)
            return _LARGE + str(len(parts)).encode()
        if isinstance(obj, PointerRecord):
            return _POINTER + codec.encode_inline(obj)
        wire = getattr(obj, "wire", None)
        try:
            if wire is not None:
                return _PLAN + codec.encode_inline(wire)
            return _VALUE + codec.encode_inline(obj)
        except TypeError:
            log.warning(
                "object %s on %s (%s) cannot be persisted; it lives in memory only",
                obj_id,
                self.worker_id,
                type(obj).__name__,
            )
            return None

    # -- health ----------------------------------------------------------------------------
    def ping(self, client: redis.Redis | None = None) -> None:
        """Raise StoreUnavailableError unless Redis answers (through ``client`` if given)."""
        self._call((client or self.redis).ping)

    # -- start-up --------------------------------------------------------------------------
    def load(self) -> int:
        """Replace the in-memory objects with what Redis holds; returns how many were loaded."""
        hosted = dict(self.hosted)
        ObjectStore.clear(self)
        for obj_id, tensor in hosted.items():  # the operator's datasets stay, as loaded
            self.host(obj_id, tensor)
        self._persisted.clear()
        self._dirty.clear()
        self._cleared = False
        owners: dict[int, str] = {}
        for field, owner in self._call(self.redis.hgetall, self._owners_key).items():
            owned_id = _record_id(field)
            if owned_id is None or not owner:
                self._quarantine(self._owners_key, field, owner, "not an object id and owner")
            else:
                owners[owned_id] = owner.decode(errors="replace")
        for field, record in self._call(self.redis.hgetall, self._objects_key).items():
            record_id = _record_id(field)
            try:
                if record_id is None:
                    raise MalformedMessageError("the field is not an object id")
                obj_id = record_id
                obj = self._decode_record(obj_id, record)
            except StoreUnavailableError:
                raise
            except Exception as error:  # whatever a record holds, the other objects load
                self._quarantine(self._objects_key, field, record, str(error))
                continue
            ObjectStore.put(self, obj_id, obj, owners.get(obj_id, UNOWNED))
            self._persisted[obj_id] = _LARGE if record[:1] == _LARGE else b"o"
        for field, data in self._call(self.redis.hgetall, self._failures_key).items():
            failed_id = _record_id(field)
            failure = _failure_record(data)
            if failed_id is None or failure is None:
                self._quarantine(self._failures_key, field, data, "not a failure marker")
                continue
            expires = failure.pop(_EXPIRES, None)
            self.failures[failed_id] = failure
            self.failure_expiry[failed_id] = _float(expires, time.time() + self.failure_ttl)
            self.owners[failed_id] = owners.get(failed_id, UNOWNED)
            self._persisted[failed_id] = b"f"
        self.failure_expiry = dict(sorted(self.failure_expiry.items(), key=lambda item: item[1]))
        return len(self.objects)

    def _quarantine(self, key: str, field: bytes, record: bytes, reason: str) -> None:
        """Move a record the worker cannot load aside, so every good one is still served."""
        log.error(
            "%s field %r of %s cannot be loaded (%s); moved to %s",
            key,
            field[:64],
            self.worker_id,
            reason,
            self._quarantine_key,
        )
        moved = msgpack.packb([reason, record], use_bin_type=True)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._quarantine_key, f"{key}:".encode() + field, moved)
        pipe.hdel(key, field)
        self._call(pipe.execute)

    def _decode_record(self, obj_id: int, record: bytes) -> Any:
        kind, payload = record[:1], memoryview(record)[1:]
        if kind == _TENSOR:
            return codec.decode_tensor(payload)
        if kind == _LARGE:
            parts_key = keys.tensor_parts(self.namespace, self.worker_id, obj_id)
            parts = self._call(self.redis.lrange, parts_key, 0, -1)
            data = codec.Frames([memoryview(part) for part in parts]).join()
            del parts
            return codec.decode_tensor(data)  # shares the joined buffer: one copy in all
        if kind in (_POINTER, _VALUE):
            return codec.decode(bytes(payload))
        if kind == _PLAN:
            from worker.allowlist import DEFAULT_ALLOWLIST
            from worker.plans import decode_plan

            return decode_plan(codec.decode(bytes(payload)), DEFAULT_ALLOWLIST, self.worker_id)
        raise MalformedMessageError(f"unknown record kind {kind!r}")

    def _call(self, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except redis.exceptions.RedisError as error:
            raise StoreUnavailableError(
                self.worker_id, self._url, f"{type(error).__name__}: {error}"
            ) from None


#: key of a stored failure marker holding its expiry time (wall clock, seconds)
_EXPIRES = "expires"


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def _record_id(field: bytes) -> int | None:
    """The object id a hash field names, or None if it names none (see broker.schema)."""
    if not field.isdigit() or len(field) > 19:
        return None
    obj_id = int(field)
    return obj_id if schema.is_id(obj_id) else None


def _failure_record(data: bytes) -> dict[str, str] | None:
    """A stored failure marker (``{type, message, command}``), or None if it is not one."""
    try:
        error = msgpack.unpackb(data, raw=False, max_map_len=16)
    except Exception:
        return None
    if not isinstance(error, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in error.items()
    ):
        return None
    return error
