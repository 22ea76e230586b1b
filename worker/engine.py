"""The worker engine: runs one message of commands against an object store.

The engine is transport-free: it takes envelope bytes and returns the messages
to send (replies for the client, follow-up commands for other workers). The
Celery task and the in-process hub are thin shells around :meth:`Engine.handle`.

Worker-to-worker work never waits: an op on a stored pointer is *forwarded* as
a new command to the pointer's location and the result is recorded here as a
pointer; ``send_to`` hands an object to another worker in a message; the worker
at the end of a transfer answers the client directly. So a chain that revisits
a worker (me -> bob -> alice -> bob) cannot deadlock.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from broker import codec, protocol, schema
from broker.errors import (
    ForbiddenOperationError,
    InvalidTensorForRemoteGet,
    MalformedMessageError,
    ObjectNotFoundError,
    PlanNotFoundError,
    QuotaExceededError,
    TensorsNotCollocatedException,
    UnknownCommandError,
    UnknownWorkerError,
    error_to_wire,
)
from broker.ops import is_inplace
from broker.protocol import PointerRecord, Ref
from broker.settings import get_settings
from broker.tree import leaves, map_leaves
from worker.access import ANONYMOUS, OPERATOR, Access, allowed_to_get, check
from worker.allowlist import DEFAULT_ALLOWLIST, Allowlist
from worker.datasets import HostedTensor
from worker.limits import OpLimits
from worker.store import ObjectStore, object_bytes

log = logging.getLogger(__name__)

#: (kind, address, body): kind "worker" -> address is a worker id; "reply" -> a reply_to
Outgoing = tuple[str, str, codec.Body]


@dataclass
class HandleResult:
    """What one message produced."""

    outgoing: list[Outgoing]
    #: why the message should be dead-lettered (it named an unknown or forbidden op), or None
    rejected: str | None = None
    #: the replies, also inside ``outgoing`` when the message had a reply_to
    replies: list[list[Any]] = field(default_factory=list)


class _StoredFailure(Exception):
    """An argument names the result of a command that failed earlier."""

    def __init__(self, error: dict[str, str]) -> None:
        super().__init__(error.get("message", ""))
        self.error = error


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a message reached the engine: options of the delivery, not of any command.

    ``principal``: who published it, as the transport authenticated them (the RabbitMQ
    user in ``user_id``; the client's id in-process); a forwarded envelope's
    ``on_behalf_of`` is believed only if the engine's ``trusts_forwarder`` says this
    principal is the sending worker. ``first_delivery``: the transport knows this is the
    message's first delivery straight from a client, so it cannot have been applied before
    and the replay lookup is skipped.
    """

    principal: str = ANONYMOUS
    first_delivery: bool = False


#: command name -> length of the command list, name included
_COMMAND_LENGTH = {name: arity + 1 for name, arity in protocol.COMMAND_ARITY.items()}


def derive_id(obj_id: int, worker_id: str) -> int:
    """The id a forwarded result gets at the next hop: deterministic, so redelivery repeats it."""
    digest = hashlib.blake2b(f"{obj_id}:{worker_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: ids are signed 64-bit on the wire


class Middleware:
    """Hooks around every message, as before/after pairs (dramatiq's middleware shape).

    They belong to the engine, not to Celery signals, so an in-process worker has
    them too. Subclass and override what you need. ``after_message`` hooks run in the
    reverse order of ``before_message`` hooks; a hook that raises is logged and skipped,
    never allowed to break the message.
    """

    def before_message(self, worker_id: str, commands: int) -> None:
        """Called when a message's commands are about to run."""

    def after_message(self, worker_id: str, commands: int, seconds: float, errors: int) -> None:
        """Called when they have run: how long it took and how many failed."""


class MessageStats(Middleware):
    """Counts messages, commands, errors and busy time: the engine's built-in metrics."""

    def __init__(self) -> None:
        self.messages = 0
        self.commands = 0
        self.errors = 0
        self.seconds = 0.0
        #: command name -> how many ran (the engine counts them as it dispatches)
        self.by_command: dict[str, int] = {}

    def after_message(self, worker_id: str, commands: int, seconds: float, errors: int) -> None:
        self.messages += 1
        self.commands += commands
        self.errors += errors
        self.seconds += seconds


class Engine:
    """Executes TensorFleet commands for one worker id."""

    def __init__(
        self,
        worker_id: str,
        store: ObjectStore | None = None,
        allowlist: Allowlist = DEFAULT_ALLOWLIST,
        middleware: Iterable[Middleware] = (),
        limits: OpLimits | None = None,
        is_worker: Callable[[str], bool] | None = None,
        quota: int | None = None,
        trusts_forwarder: Callable[[str, str], bool] | None = None,
        owns_reply_to: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.store = store if store is not None else ObjectStore(worker_id)
        self.allowlist = allowlist
        self._allowed = allowlist.table
        if limits is None:
            settings = get_settings()
            limits = OpLimits(worker_id, settings.max_object_bytes, settings.max_op_work)
        self.limits = limits
        #: whether a worker id names a worker of the fleet (default: every id does); data and
        #: work are only ever sent to such workers
        self.is_worker: Callable[[str], bool] = is_worker or (lambda worker_id: True)
        self.stats = MessageStats()
        self.middleware: list[Middleware] = [self.stats, *middleware]
        self._handlers: dict[str, Callable[..., None]] = {
            protocol.STORE: self._store,
            protocol.OP: self._op,
            protocol.GET: self._get,
            protocol.DELETE: self._delete,
            protocol.SETATTR: self._setattr,
            protocol.SEND_TO: self._send_to,
            protocol.REMOTE_GET: self._remote_get,
            protocol.OBJECTS: self._objects,
            protocol.COUNT: self._count,
            protocol.CLEAR: self._clear,
            protocol.PING: self._ping,
            protocol.SEARCH: self._search,
            protocol.FORWARD_FAILED: self._forward_failed,
            protocol.PLAN: self._plan,
            protocol.RUN_PLAN: self._run_plan,
            protocol.FETCH_PLAN: self._fetch_plan,
            protocol.ALLOWED_TO_GET: self._allowed_to_get,
        }
        #: plan -> input signatures whose every op passed the limits, with the bytes made
        self._plan_limits: weakref.WeakKeyDictionary[Any, dict[Any, int]] = (
            weakref.WeakKeyDictionary()
        )
        # per-message state
        self._replies: list[list[Any]] = []
        self._forwards: dict[str, list[list[Any]]] = {}
        self._rejected: str | None = None
        #: the worker that forwarded the message being run (None: a client sent it)
        self._upstream_worker: str | None = None
        #: id forwarded to the next hop -> (id of our pointer to it, worker that forwarded to us)
        self._upstream: dict[int, tuple[int, str | None]] = {}
        #: set while resolving an op's arguments when one names a stored pointer: the op must
        #: then run where that pointer points (see :meth:`_op`)
        self._pointer_location: str | None = None
        #: who the message being run acts for (worker.access)
        self._principal: str = ANONYMOUS
        #: hosted datasets (worker.access.OPERATOR) among the current op's inputs
        self._hosted_inputs: list[torch.Tensor] | None = None
        #: bytes one principal may keep here (None: no quota)
        self.quota: int | None = quota
        #: (publisher principal, envelope sender) -> whether that publisher is that worker, so
        #: its forwarded messages may act on behalf of another principal (default: trust)
        self.trusts_forwarder: Callable[[str, str], bool] = trusts_forwarder or (
            lambda principal, sender: True
        )
        #: (principal, reply_to) -> whether that address is one of the principal's own reply
        #: queues: a worker never sends one party's results to another party's queue
        #: (default, in-process: a client's address is its principal)
        self.owns_reply_to: Callable[[str, str], bool] = owns_reply_to or (
            lambda principal, reply_to: reply_to == principal
        )

    # ------------------------------------------------------------------ message level
    def handle(self, body: codec.Body, delivery: Delivery | None = None) -> HandleResult:
        """Run one envelope; MalformedMessageError if it is not one.

        The cyclic garbage collector is paused while a message runs: its thousands of
        short-lived command lists are freed by reference counting anyway, and a collection
        triggered by them would scan the whole heap (torch's included) for nothing.
        """
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._handle(body, delivery or Delivery())
        finally:
            if collecting:
                gc.enable()

    def _handle(self, body: codec.Body, delivery: Delivery) -> HandleResult:
        message = codec.decode(body)
        batch, sender, reply_to, commands = _validate_envelope(message)
        forwarded = message.get("forwarded") is True
        if forwarded:
            if not self.trusts_forwarder(delivery.principal, sender):
                raise MalformedMessageError(
                    f"a forwarded message from {delivery.principal!r}, which is not worker "
                    f"{sender!r} of the fleet"
                )
            on_behalf_of = message.get("on_behalf_of", delivery.principal)
            if not isinstance(on_behalf_of, str) or not 0 < len(on_behalf_of) <= 256:
                raise MalformedMessageError("on_behalf_of must be a principal's name")
            self._principal = on_behalf_of
        else:
            self._principal = delivery.principal
        if reply_to is not None and not self.owns_reply_to(self._principal, reply_to):
            raise MalformedMessageError(
                f"reply_to {reply_to!r} is not a reply queue of {self._principal!r}, who sent "
                "this message: a worker replies only to its sender's own reply queue"
            )
        self._upstream_worker = sender if forwarded else None
        batch_key = f"{sender}:{batch}"
        if not delivery.first_delivery:
            replayed = self.store.replay(batch_key)
            if replayed is not None:
                return HandleResult(replayed)
        self._replies, self._forwards, self._rejected = [], {}, None
        if self.store.failure_expiry:
            self.store.expire_failures()
        for middleware in self.middleware:
            _guarded(middleware.before_message, self.worker_id, len(commands))
        started = time.perf_counter()
        for command in commands:
            self._run(command)
        elapsed = time.perf_counter() - started
        errors = sum(1 for reply in self._replies if not reply[1])
        for middleware in reversed(self.middleware):
            _guarded(middleware.after_message, self.worker_id, len(commands), elapsed, errors)
        outgoing: list[Outgoing] = []
        for destination, forwarded_commands in self._forwards.items():
            forward_batch = derive_id(batch, f"{self.worker_id}>{destination}:{sender}")
            outgoing.append(
                (
                    "worker",
                    destination,
                    codec.encode(
                        protocol.envelope(
                            forward_batch,
                            self.worker_id,
                            reply_to,
                            forwarded_commands,
                            forwarded=True,
                            on_behalf_of=self._principal,
                        )
                    ),
                )
            )
        if self._replies and reply_to is not None:
            outgoing.append(
                ("reply", reply_to, codec.encode(protocol.reply_envelope(self._replies)))
            )
        self.store.commit(batch_key, outgoing)
        return HandleResult(outgoing, self._rejected, self._replies)

    def _run(self, command: Any) -> None:
        if type(command) is not list or not command or type(command[0]) is not str:
            self._fail(None, (), MalformedMessageError("a command is not a [name, ...] list"), "?")
            self._rejected = "malformed command"
            return
        name = command[0]
        handler = self._handlers.get(name)
        if handler is None or len(command) != _COMMAND_LENGTH.get(name):
            error = UnknownCommandError(name, self.worker_id)
            self._fail(schema.request_of(command), (), error, name)
            self._rejected = str(error)
            return
        reason = schema.check_command(command)
        if reason is not None:
            self._fail(schema.request_of(command), (), MalformedMessageError(reason), name)
            self._rejected = reason
            return
        by_command = self.stats.by_command
        by_command[name] = by_command.get(name, 0) + 1
        handler(*command[1:])

    def _reply(self, request: int | None, payload: Any) -> None:
        if request is not None:
            self._replies.append([request, True, payload])

    def _fail(
        self, request: int | None, result_ids: Iterable[int], error: BaseException, command: str
    ) -> None:
        """Report an error, and mark the results the command would have made as failed."""
        wire = error.error if isinstance(error, _StoredFailure) else error_to_wire(error, command)
        for result_id in result_ids:
            if self.store.owners.get(result_id, self._principal) == self._principal:
                self.store.mark_failed(result_id, wire, self._principal)
        if result_ids and self._upstream_worker is not None:
            self._forward(self._upstream_worker, [protocol.FORWARD_FAILED, list(result_ids), wire])
        if request is not None or not isinstance(error, _StoredFailure):
            # an already-reported failure flowing into later results is not reported twice
            self._replies.append([request, False, wire])

    def _check_destination(self, destination: str) -> None:
        """Refuse, before anything moves, to send to an id that is not a worker of the fleet."""
        if destination != self.worker_id and not self.is_worker(destination):
            raise UnknownWorkerError(destination, self.worker_id)

    def _forward(self, destination: str, command: list[Any]) -> None:
        """Queue ``command`` for ``destination`` (checked with :meth:`_check_destination`)."""
        if destination == self.worker_id:
            self._run(command)  # a pointer to ourselves: no need for a message
        else:
            self._forwards.setdefault(destination, []).append(command)

    # ------------------------------------------------------------------ lookups
    def _lookup(self, obj_id: Any, access: Access = Access.USE) -> Any:
        """The object ``obj_id``, if the message's principal may have ``access`` to it."""
        owner = self.store.owners.get(obj_id) if type(obj_id) is int else None
        if owner is not None and owner != self._principal:
            check(owner, self._principal, access, obj_id, self.worker_id)
            if owner == OPERATOR:  # hosted data: results must not alias it (see _unaliased)
                hosted = self.store.objects.get(obj_id)
                if isinstance(hosted, torch.Tensor):
                    self._hosted_inputs = [*(self._hosted_inputs or ()), hosted]
        try:
            return self.store.objects[obj_id]
        except (KeyError, TypeError):
            failure = self.store.failures.get(obj_id) if isinstance(obj_id, int) else None
            if failure is not None:
                raise _StoredFailure(failure) from None
            raise ObjectNotFoundError(obj_id, self.worker_id) from None

    def _check_free(self, obj_id: int) -> None:
        """Refuse to store or compute under an id another principal holds."""
        owner = self.store.owners.get(obj_id)
        if owner is not None and owner != self._principal:
            check(owner, self._principal, Access.CHANGE, obj_id, self.worker_id)

    def _resolve_ref(self, ref: Ref) -> Any:
        obj = self.store.objects.get(ref.id)
        if obj is None or self.store.owners.get(ref.id) != self._principal:
            obj = self._lookup(ref.id)  # checks access; raises a failure or ObjectNotFoundError
        if type(obj) is PointerRecord:
            self._pointer_location = obj.location  # the op must travel there: see _op
            return obj
        if ref.attr is None:
            return obj
        value = getattr(obj, ref.attr)
        if value is None:
            raise RuntimeError(
                f"Object {ref.id} on {self.worker_id} has no .{ref.attr} yet (it is None): "
                "run backward() on a result that depends on it first."
            )
        return value

    def _resolve(self, value: Any) -> Any:
        return map_leaves(value, self._resolve_leaf)

    def _resolve_leaf(self, leaf: Any) -> Any:
        return self._resolve_ref(leaf) if type(leaf) is Ref else leaf

    def _refs(self, value: Any) -> Iterable[Ref]:
        return (leaf for leaf in leaves(value) if type(leaf) is Ref)

    def _rewrite_for_forward(self, value: Any, location: str) -> Any:
        """Replace refs to stored pointers with refs to their targets at ``location``."""

        def rewrite(leaf: Any) -> Any:
            return self._target_ref(leaf, location) if type(leaf) is Ref else leaf

        return map_leaves(value, rewrite)

    def _target_ref(self, value: Ref, location: str) -> Ref:
        """The ref to what the stored pointer ``value`` names, which must live at ``location``."""
        obj = self._lookup(value.id)
        if not isinstance(obj, PointerRecord):
            raise TensorsNotCollocatedException(
                "an operation",
                f"object {value.id}",
                self.worker_id,
                "a pointer's target",
                location,
            )
        if obj.location != location:
            raise TensorsNotCollocatedException(
                "an operation",
                f"object {obj.id_at_location}",
                obj.location,
                "another pointer's target",
                location,
            )
        return Ref(obj.id_at_location, value.attr)

    # ------------------------------------------------------------------ commands
    def _store(self, obj_id: int, obj: Any, request: int | None) -> None:
        if not isinstance(obj, torch.Tensor | PointerRecord):
            self._fail(
                request,
                (),
                MalformedMessageError("store takes a tensor or a pointer"),
                protocol.STORE,
            )
            return
        try:
            self._check_free(obj_id)
            self._check_quota(object_bytes(obj))
        except Exception as error:
            self._fail(request, (), error, protocol.STORE)
            return
        self.store.put(obj_id, obj, self._principal)
        self._reply(request, True)

    def _op(
        self,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        result_ids: list[int],
        grad_enabled: bool,
        request: int | None,
    ) -> None:
        func = self._allowed.get(name) if type(name) is str else None
        if func is None:
            error = ForbiddenOperationError(str(name), self.worker_id)
            self._fail(request, result_ids, error, f"op {name}")
            self._rejected = str(error)
            return
        try:
            self._pointer_location = None
            self._hosted_inputs = None
            for result_id in result_ids:
                self._check_free(result_id)
            if name in MUTATING_OPS or (kwargs and "out" in kwargs):
                self._check_mutable(args, kwargs)
            call_args = [
                self._resolve_ref(arg) if type(arg) is Ref else self._resolve(arg) for arg in args
            ]
            call_kwargs = self._resolve(kwargs) if kwargs else {}
            if self._pointer_location is not None:  # an argument is a pointer: forward the op
                self._forward_op(
                    name, args, kwargs, result_ids, grad_enabled, request, self._pointer_location
                )
                return
            grad = bool(grad_enabled)
            self._check_quota(self.limits.check(name, func, call_args, call_kwargs, grad))
            if grad == torch.is_grad_enabled():
                result = func(*call_args, **call_kwargs)
            else:
                with torch.set_grad_enabled(grad):
                    result = func(*call_args, **call_kwargs)
            if self._hosted_inputs is not None:
                result = _unaliased(result, self._hosted_inputs)
            if len(result_ids) == 1 and isinstance(result, torch.Tensor):
                self.store.put(result_ids[0], result, self._principal)  # the common case
            else:
                self._keep_results(name, result, result_ids, args)
        except Exception as error:  # any torch error is reported to the client, not raised here
            self._fail(request, result_ids, error, f"op {name}")
            return
        if request is not None:
            self._reply(request, [_describe(self.store.objects.get(i)) for i in result_ids])

    def _keep_results(self, name: str, result: Any, result_ids: list[int], args: Any) -> None:
        if not result_ids:  # in-place or void: note what changed for write-through
            for ref in self._refs(args):
                self.store.touch(ref.id)
            if name == "Tensor.backward":
                for obj_id, obj in self.store.objects.items():
                    if isinstance(obj, torch.Tensor) and obj.requires_grad and obj.is_leaf:
                        self.store.touch(obj_id)
            return
        outputs = [result] if isinstance(result, torch.Tensor) else result
        if (
            not isinstance(outputs, list | tuple)
            or len(outputs) != len(result_ids)
            or not all(isinstance(output, torch.Tensor) for output in outputs)
        ):
            raise TypeError(
                f"{name} returned {type(result).__name__}, not "
                f"{len(result_ids)} tensor(s); call .get() to read values"
            )
        for result_id, output in zip(result_ids, outputs, strict=True):
            self.store.put(result_id, output, self._principal)

    def _forward_op(
        self,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        result_ids: list[int],
        grad_enabled: bool,
        request: int | None,
        location: str,
    ) -> None:
        self._check_destination(location)
        forwarded_args = self._rewrite_for_forward(args, location)
        forwarded_kwargs = self._rewrite_for_forward(kwargs, location) if kwargs else {}
        next_ids = [derive_id(result_id, self.worker_id) for result_id in result_ids]
        for result_id, next_id in zip(result_ids, next_ids, strict=True):
            self.store.put(
                result_id, PointerRecord(location, next_id, True, (), "", False), self._principal
            )
            self._upstream[next_id] = (result_id, self._upstream_worker)
        self._forward(
            location,
            [protocol.OP, name, forwarded_args, forwarded_kwargs, next_ids, grad_enabled, request],
        )

    def _get(self, ref: Any, request: int | None) -> None:
        try:
            if type(ref) is not Ref:
                raise MalformedMessageError("get takes a reference")
            obj = self._lookup(ref.id, Access.TAKE)
            if isinstance(obj, PointerRecord) and ref.attr is not None:
                self._check_destination(obj.location)
                self._forward(
                    obj.location, [protocol.GET, Ref(obj.id_at_location, ref.attr), request]
                )
                return
            value = getattr(obj, ref.attr) if ref.attr else obj
            if ref.attr and value is None:
                raise RuntimeError(
                    f"Object {ref.id} on {self.worker_id} has no .{ref.attr} yet (it is None): "
                    "run backward() on a result that depends on it first."
                )
            if ref.attr is None:
                # ownership of the object (or of a pointer's target) passes to the caller
                self.store.pop(ref.id)
                if isinstance(obj, PointerRecord):
                    self._upstream.pop(obj.id_at_location, None)
        except Exception as error:
            self._fail(request, (), error, protocol.GET)
            return
        self._reply(request, value)

    def _delete(self, obj_id: int) -> None:
        owner = self.store.owners.get(obj_id)
        if owner is not None and owner != self._principal:
            try:
                check(owner, self._principal, Access.CHANGE, obj_id, self.worker_id)
            except Exception as error:
                self._fail(None, (), error, protocol.DELETE)
                return
        obj = self.store.discard(obj_id)
        if isinstance(obj, PointerRecord):
            self._upstream.pop(obj.id_at_location, None)
            if obj.owns and (obj.location == self.worker_id or self.is_worker(obj.location)):
                self._forward(obj.location, [protocol.DELETE, obj.id_at_location])

    def _forward_failed(self, next_ids: Any, error: Any) -> None:
        """The next hop could not make what we forwarded: our pointers to it are failed too."""
        if not isinstance(next_ids, list) or not isinstance(error, dict):
            self._rejected = "malformed forward_failed"
            return
        for next_id in next_ids:
            upstream = self._upstream.pop(next_id, None)
            if upstream is None:
                continue
            result_id, upstream_worker = upstream
            record = self.store.objects.get(result_id)
            if (
                isinstance(record, PointerRecord)
                and record.id_at_location == next_id
                and self.store.owners.get(result_id) == self._principal
            ):
                self.store.mark_failed(result_id, error, self._principal)
                if upstream_worker is not None:
                    self._forward(upstream_worker, [protocol.FORWARD_FAILED, [result_id], error])

    def _setattr(self, ref: Any, attr: str, value: Any) -> None:
        command = f"setattr {attr}"
        try:
            if type(ref) is not Ref or attr not in ("grad", "data", "requires_grad"):
                raise MalformedMessageError(f"cannot set attribute {attr!r}")
            target = self._lookup(ref.id, Access.CHANGE)
            if isinstance(target, PointerRecord):
                self._check_destination(target.location)
                self._forward(
                    target.location,
                    [
                        protocol.SETATTR,
                        Ref(target.id_at_location, ref.attr),
                        attr,
                        self._rewrite_for_forward(value, target.location),
                    ],
                )
                return
            if ref.attr is not None:
                target = self._resolve_ref(ref)
            setattr(target, attr, self._resolve(value))
            self.store.touch(ref.id)
        except Exception as error:
            self._fail(None, (), error, command)

    def _send_to(
        self, obj_id: int, destination: str, destination_id: int, request: int | None
    ) -> None:
        try:
            obj = self._lookup(obj_id, Access.TAKE)
            self._check_destination(destination)
        except Exception as error:
            self._fail(request, (), error, protocol.SEND_TO)
            return
        self.store.pop(obj_id)
        self._forward(destination, [protocol.STORE, destination_id, obj, request])

    def _remote_get(self, obj_id: int, request: int | None) -> None:
        try:
            obj = self._lookup(obj_id, Access.TAKE)
            if not isinstance(obj, PointerRecord):
                raise InvalidTensorForRemoteGet(
                    f"the pointer to {self.worker_id}:{obj_id}", self.worker_id
                )
            self._check_destination(obj.location)
        except Exception as error:
            self._fail(request, (), error, protocol.REMOTE_GET)
            return
        # the data comes back as a store under the same id, replacing the pointer
        self._forward(
            obj.location, [protocol.SEND_TO, obj.id_at_location, self.worker_id, obj_id, request]
        )

    def _plan(self, plan_id: int, data: Any, request: int | None) -> None:
        """Keep a plan: its ops are checked against the allowlist now, before it can run."""
        from worker.plans import decode_plan

        try:
            self._check_free(plan_id)
        except Exception as error:
            self._fail(request, (), error, protocol.PLAN)
            return
        try:
            plan = decode_plan(data, self.allowlist, self.worker_id)
        except Exception as error:
            self._fail(request, (), error, protocol.PLAN)
            self._rejected = f"plan refused: {error}"
            return
        self.store.put(plan_id, plan, self._principal)
        self._reply(request, True)

    def _run_plan(
        self,
        plan_id: int,
        args: list[Any],
        result_ids: list[int],
        grad_enabled: bool,
        request: int | None,
    ) -> None:
        """Run a stored plan on stored inputs: one command however many ops the plan has."""
        from worker.plans import StoredPlan, run_plan

        command = f"run_plan {plan_id}"
        try:
            plan = self._lookup(plan_id)
            if not isinstance(plan, StoredPlan):
                raise TypeError(f"object {plan_id} on {self.worker_id} is not a plan")
            for result_id in result_ids:
                self._check_free(result_id)
            # only the inputs its in-place ops reach need CHANGE access (hosted data it reads
            # does not), and only they are written through
            changed = [args[i] for i in plan.mutated_inputs if i < len(args)]
            if changed:
                self._check_mutable(changed, {}, every=True)
            self._pointer_location = None
            self._hosted_inputs = None
            inputs = self._resolve(args)
            if self._pointer_location is not None:
                raise RuntimeError(
                    "a plan runs where its inputs are: send the plan to the worker that holds "
                    "the data (pointers to pointers cannot be plan inputs)"
                )
            grad = bool(grad_enabled)
            limits = self.limits
            made = 0

            def check(name: str, func: Callable[..., Any], a: list[Any], k: dict[str, Any]) -> None:
                nonlocal made
                made += limits.check(name, func, a, k, grad)
                self._check_quota(made)

            # every op's size follows from the inputs' metadata when each was sized on meta
            # tensors: a call with inputs like an earlier one's needs only the quota check
            signature = _signature(inputs, grad)
            passed = self._plan_limits.setdefault(plan, {})
            known = passed.get(signature) if signature is not None else None
            inexact = limits.inexact
            with torch.set_grad_enabled(grad):
                if known is None:
                    outputs = run_plan(plan, inputs, check)
                else:
                    self._check_quota(known)
                    outputs = run_plan(plan, inputs)
            if known is None and signature is not None and limits.inexact == inexact:
                if len(passed) > 100:
                    passed.clear()
                passed[signature] = made
            if self._hosted_inputs is not None:
                outputs = list(_unaliased(tuple(outputs), self._hosted_inputs))
            if plan.mutates_inputs:  # in-place changes must reach the durable copy too
                for ref in self._refs(changed):
                    self.store.touch(ref.id)
                self.store.touch(plan_id)
            if result_ids:  # none: a call for its in-place effects only (a training step)
                self._keep_results(
                    "run_plan",
                    tuple(outputs) if len(outputs) != 1 else outputs[0],
                    result_ids,
                    args,
                )
        except Exception as error:
            self._fail(request, result_ids, error, command)
            return
        if request is not None:
            self._reply(request, [_describe(self.store.objects.get(i)) for i in result_ids])

    def _fetch_plan(self, plan_id: int | str, request: int | None) -> None:
        """Reply with a stored plan's data; the plan stays here (only its owner may fetch).

        A tag names the one plan of the caller's that carries it; other principals' plans
        are never looked at, so a tag cannot reveal them.
        """
        from worker.plans import StoredPlan

        try:
            if type(plan_id) is str:
                owners, principal = self.store.owners, self._principal
                found = [
                    key
                    for key, obj in self.store.objects.items()
                    if isinstance(obj, StoredPlan)
                    and plan_id in obj.tags
                    and owners.get(key) == principal
                ]
                if len(found) != 1:
                    raise PlanNotFoundError(self.worker_id, plan_id, len(found))
                plan_id = found[0]
            plan = self._lookup(plan_id, Access.TAKE)
            if not isinstance(plan, StoredPlan):
                raise TypeError(
                    f"object {plan_id} on {self.worker_id} is not a plan: fetch_plan takes "
                    "a plan's id (PointerPlan.id_at_location); .get() a tensor's pointer instead"
                )
        except Exception as error:
            self._fail(request, (), error, protocol.FETCH_PLAN)
            return
        self._reply(request, plan.wire)

    def _allowed_to_get(self, obj_id: int, request: int | None) -> None:
        """Reply whether the caller may take the object (worker.access.allowed_to_get)."""
        try:
            self._lookup(obj_id)  # the caller must at least be allowed to use it
            allowed = allowed_to_get(self.store.owners.get(obj_id), self._principal)
        except Exception as error:
            self._fail(request, (), error, protocol.ALLOWED_TO_GET)
            return
        self._reply(request, allowed)

    def _own_ids(self) -> list[int]:
        owners, principal = self.store.owners, self._principal
        return [key for key in self.store.objects if owners.get(key) == principal]

    def _objects(self, request: int | None) -> None:
        """The caller's own objects (a display: plans show as their repr)."""
        objects = self.store.objects
        self._reply(
            request,
            {
                key: obj if isinstance(obj, torch.Tensor | PointerRecord) else repr(obj)
                for key in self._own_ids()
                for obj in (objects[key],)
            },
        )

    def _count(self, request: int | None) -> None:
        self._reply(request, len(self._own_ids()))

    def _clear(self, request: int | None) -> None:
        """Forget the caller's own objects (nobody else's)."""
        self.store.clear(self._principal)
        self._reply(request, True)

    # ------------------------------------------------------------------ access helpers
    def _check_mutable(self, args: Any, kwargs: dict[str, Any], every: bool = False) -> None:
        """An op changes its first argument (or ``out=``, or every input): CHANGE access."""
        targets: list[Any] = list(self._refs(args)) if every else list(self._refs(args[:1]))
        if kwargs and "out" in kwargs:
            targets.extend(self._refs(kwargs["out"]))
        for ref in targets:
            owner = self.store.owners.get(ref.id)
            if owner is not None and owner != self._principal:
                check(owner, self._principal, Access.CHANGE, ref.id, self.worker_id)

    def _check_quota(self, new_bytes: int) -> None:
        """Refuse a command that would make its principal keep more than the quota here."""
        if self.quota is None or not new_bytes:
            return
        used = self.store.usage.get(self._principal, 0)
        if used + new_bytes > self.quota:
            raise QuotaExceededError(self._principal, self.worker_id, used + new_bytes, self.quota)

    def host(self, hosted: HostedTensor) -> None:
        """Keep a tensor of a dataset the operator hosts (worker.datasets): tagged, private."""
        tensor = hosted.tensor
        tensor.tags = set(hosted.tags)  # type: ignore[attr-defined]
        tensor.description = hosted.description  # type: ignore[attr-defined]
        self.store.host(hosted.obj_id, tensor)

    def _search(self, query: Any, request: int | None) -> None:
        """The objects the caller may use whose tags hold every query item (or named by id)."""
        if not isinstance(query, list) or not all(isinstance(q, str | int) for q in query):
            self._fail(request, (), MalformedMessageError("search takes a list of tags"), "search")
            return
        from worker.plans import StoredPlan

        wanted_tags = {q for q in query if isinstance(q, str)}
        wanted_ids = {q for q in query if isinstance(q, int)}
        principal, owners = self._principal, self.store.owners
        found = []
        for obj_id, obj in self.store.objects.items():
            if wanted_ids and obj_id not in wanted_ids:
                continue
            if isinstance(obj, StoredPlan):  # the caller's own plans (PySyft searched those too)
                if owners.get(obj_id) == principal and wanted_tags <= obj.tags:
                    description = obj.wire.get("description") if isinstance(obj.wire, dict) else ""
                    found.append([obj_id, None, "plan", False, sorted(obj.tags), description or ""])
                continue
            if not isinstance(obj, torch.Tensor) or owners.get(obj_id) not in (principal, OPERATOR):
                continue
            tags = getattr(obj, "tags", None) or set()
            if wanted_tags <= tags:
                found.append(
                    [
                        obj_id,
                        list(obj.shape),
                        codec.dtype_name(obj.dtype),
                        obj.requires_grad,
                        sorted(tags),
                        str(getattr(obj, "description", "") or ""),
                        owners.get(obj_id) == OPERATOR,
                    ]
                )
        self._reply(request, found)

    def _ping(self, request: int | None) -> None:
        self._reply(request, True)


#: ops that change a tensor they are given (in-place ops, item assignment): CHANGE access
MUTATING_OPS = frozenset(
    name for name in DEFAULT_ALLOWLIST.table if is_inplace(name) and name != "Tensor.backward"
) | {"Tensor.__setitem__"}


def _unaliased(result: Any, hosted: list[torch.Tensor]) -> Any:
    """``result`` with every tensor that shares memory with hosted data replaced by a copy.

    A view of a hosted dataset (``data[0:10]``, ``data.view(-1)``) would let its new owner
    change the operator's data in place; a copy cannot.
    """
    storages = {tensor.untyped_storage().data_ptr() for tensor in hosted}

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in storages:
            return value.clone()
        if type(value) is tuple or type(value) is list:
            return type(value)(copy(item) for item in value)
        return value

    return copy(result)


def _signature(inputs: Any, grad: bool) -> tuple[Any, ...] | None:
    """The metadata of a plan call's inputs (None if one is not a tensor)."""
    if not isinstance(inputs, list) or not all(isinstance(t, torch.Tensor) for t in inputs):
        return None
    return (grad, *((tuple(t.shape), t.dtype, t.requires_grad) for t in inputs))


def _guarded(hook: Callable[..., None], *args: Any) -> None:
    """Run a middleware hook; an error in it is logged, never raised into the engine."""
    try:
        hook(*args)
    except Exception:
        log.exception("middleware hook %s failed; the message goes on", hook)


def _describe(obj: Any) -> list[Any] | None:
    """A result's metadata for a client that could not infer it: [shape, dtype, requires_grad]."""
    if isinstance(obj, torch.Tensor):
        return [list(obj.shape), codec.dtype_name(obj.dtype), obj.requires_grad]
    return None


def _validate_envelope(message: Any) -> tuple[int, str, str | None, list[Any]]:
    if not isinstance(message, dict):
        raise MalformedMessageError("the message is not a map")
    if message.get("v") != protocol.PROTOCOL_VERSION:
        raise MalformedMessageError(f"unsupported protocol version {message.get('v')!r:.40}")
    batch, sender = message.get("batch"), message.get("sender")
    reply_to, commands = message.get("reply_to"), message.get("commands")
    if type(batch) is not int or schema.check_request(batch) or schema.check_name(sender):
        raise MalformedMessageError("the envelope needs an int batch and a str sender")
    if reply_to is not None and schema.check_name(reply_to) is not None:
        raise MalformedMessageError("reply_to must be a string or None")
    if not isinstance(commands, list):
        raise MalformedMessageError("commands must be a list")
    return batch, str(sender), reply_to, commands
