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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from broker import codec, protocol
from broker.errors import (
    ForbiddenOperationError,
    InvalidTensorForRemoteGet,
    MalformedMessageError,
    ObjectNotFoundError,
    TensorsNotCollocatedException,
    UnknownCommandError,
    UnknownWorkerError,
    error_to_wire,
)
from broker.protocol import PointerRecord, Ref
from broker.settings import get_settings
from worker.allowlist import DEFAULT_ALLOWLIST, Allowlist
from worker.limits import OpLimits
from worker.store import ObjectStore

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

    ``first_delivery``: the transport knows this is the message's first delivery straight
    from a client, so it cannot have been applied before and the replay lookup is skipped.
    """

    first_delivery: bool = False


FIRST_DELIVERY = Delivery(first_delivery=True)
_REDELIVERY = Delivery()


#: command name -> length of the command list, name included
_COMMAND_LENGTH = {name: arity + 1 for name, arity in protocol.COMMAND_ARITY.items()}


def derive_id(obj_id: int, worker_id: str) -> int:
    """The id a forwarded result gets at the next hop: deterministic, so redelivery repeats it."""
    digest = hashlib.blake2b(f"{obj_id}:{worker_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100_000_000_000


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
            protocol.FORWARD_FAILED: self._forward_failed,
            protocol.PLAN: self._plan,
            protocol.RUN_PLAN: self._run_plan,
        }
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

    # ------------------------------------------------------------------ message level
    def handle(self, body: codec.Body, delivery: Delivery = _REDELIVERY) -> HandleResult:
        """Run one envelope; MalformedMessageError if it is not one.

        The cyclic garbage collector is paused while a message runs: its thousands of
        short-lived command lists are freed by reference counting anyway, and a collection
        triggered by them would scan the whole heap (torch's included) for nothing.
        """
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._handle(body, delivery)
        finally:
            if collecting:
                gc.enable()

    def _handle(self, body: codec.Body, delivery: Delivery) -> HandleResult:
        message = codec.decode(body)
        batch, sender, reply_to, commands = _validate_envelope(message)
        self._upstream_worker = sender if message.get("forwarded") is True else None
        batch_key = f"{sender}:{batch}"
        if not delivery.first_delivery:
            replayed = self.store.replay(batch_key)
            if replayed is not None:
                return HandleResult(replayed)
        self._replies, self._forwards, self._rejected = [], {}, None
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
        for destination, forwarded in self._forwards.items():
            forward_batch = derive_id(batch, f"{self.worker_id}>{destination}:{sender}")
            outgoing.append(
                (
                    "worker",
                    destination,
                    codec.encode(
                        protocol.envelope(
                            forward_batch, self.worker_id, reply_to, forwarded, forwarded=True
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
            request = command[-1] if len(command) > 1 and isinstance(command[-1], int) else None
            error = UnknownCommandError(name, self.worker_id)
            self._fail(request, (), error, name)
            self._rejected = str(error)
            return
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
            self.store.mark_failed(result_id, wire)
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
    def _lookup(self, obj_id: Any) -> Any:
        try:
            return self.store.objects[obj_id]
        except (KeyError, TypeError):
            failure = self.store.failures.get(obj_id) if isinstance(obj_id, int) else None
            if failure is not None:
                raise _StoredFailure(failure) from None
            raise ObjectNotFoundError(obj_id, self.worker_id) from None

    def _resolve_ref(self, ref: Ref) -> Any:
        obj = self.store.objects.get(ref.id)
        if obj is None:
            obj = self._lookup(ref.id)  # raises the stored failure or ObjectNotFoundError
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
        if type(value) is Ref:
            return self._resolve_ref(value)
        if type(value) is list or type(value) is tuple:
            return type(value)(self._resolve(item) for item in value)
        if type(value) is dict:
            return {key: self._resolve(item) for key, item in value.items()}
        return value

    def _refs(self, value: Any) -> Iterable[Ref]:
        if type(value) is Ref:
            yield value
        elif type(value) is list or type(value) is tuple:
            for item in value:
                yield from self._refs(item)
        elif type(value) is dict:
            for item in value.values():
                yield from self._refs(item)

    def _rewrite_for_forward(self, value: Any, location: str) -> Any:
        """Replace refs to stored pointers with refs to their targets at ``location``."""
        if type(value) is Ref:
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
        if type(value) is list or type(value) is tuple:
            return type(value)(self._rewrite_for_forward(item, location) for item in value)
        if type(value) is dict:
            return {key: self._rewrite_for_forward(item, location) for key, item in value.items()}
        return value

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
        self.store.put(obj_id, obj)
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
            self.limits.check(name, func, call_args, call_kwargs, grad)
            if grad == torch.is_grad_enabled():
                result = func(*call_args, **call_kwargs)
            else:
                with torch.set_grad_enabled(grad):
                    result = func(*call_args, **call_kwargs)
            if len(result_ids) == 1 and isinstance(result, torch.Tensor):
                self.store.put(result_ids[0], result)  # the common case, kept short
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
            self.store.put(result_id, output)

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
            self.store.put(result_id, PointerRecord(location, next_id, True, (), "", False))
            self._upstream[next_id] = (result_id, self._upstream_worker)
        self._forward(
            location,
            [protocol.OP, name, forwarded_args, forwarded_kwargs, next_ids, grad_enabled, request],
        )

    def _get(self, ref: Any, request: int | None) -> None:
        try:
            if type(ref) is not Ref:
                raise MalformedMessageError("get takes a reference")
            obj = self._lookup(ref.id)
            if isinstance(obj, PointerRecord) and ref.attr is not None:
                self._check_destination(obj.location)
                self._forward(
                    obj.location, [protocol.GET, Ref(obj.id_at_location, ref.attr), request]
                )
                return
            value = self._resolve_ref(ref) if ref.attr else obj
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
            if isinstance(record, PointerRecord) and record.id_at_location == next_id:
                self.store.mark_failed(result_id, error)
                if upstream_worker is not None:
                    self._forward(upstream_worker, [protocol.FORWARD_FAILED, [result_id], error])

    def _setattr(self, ref: Any, attr: str, value: Any) -> None:
        command = f"setattr {attr}"
        try:
            if type(ref) is not Ref or attr not in ("grad", "data", "requires_grad"):
                raise MalformedMessageError(f"cannot set attribute {attr!r}")
            target = self._lookup(ref.id)
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
            obj = self._lookup(obj_id)
            self._check_destination(destination)
        except Exception as error:
            self._fail(request, (), error, protocol.SEND_TO)
            return
        self.store.pop(obj_id)
        self._forward(destination, [protocol.STORE, destination_id, obj, request])

    def _remote_get(self, obj_id: int, request: int | None) -> None:
        try:
            obj = self._lookup(obj_id)
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
            plan = decode_plan(data, self.allowlist, self.worker_id)
        except Exception as error:
            self._fail(request, (), error, protocol.PLAN)
            self._rejected = f"plan refused: {error}"
            return
        self.store.put(plan_id, plan)
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
            self._pointer_location = None
            inputs = self._resolve(args)
            if self._pointer_location is not None:
                raise RuntimeError(
                    "a plan runs where its inputs are: send the plan to the worker that holds "
                    "the data (pointers to pointers cannot be plan inputs)"
                )
            grad = bool(grad_enabled)
            limits = self.limits

            def check(name: str, func: Callable[..., Any], a: list[Any], k: dict[str, Any]) -> None:
                limits.check(name, func, a, k, grad)

            with torch.set_grad_enabled(grad):
                outputs = run_plan(plan, inputs, check)
            if plan.mutates_inputs:  # in-place changes must reach the durable copy too
                for ref in self._refs(args):
                    self.store.touch(ref.id)
                self.store.touch(plan_id)
            self._keep_results(
                "run_plan", tuple(outputs) if len(outputs) != 1 else outputs[0], result_ids, args
            )
        except Exception as error:
            self._fail(request, result_ids, error, command)
            return
        if request is not None:
            self._reply(request, [_describe(self.store.objects.get(i)) for i in result_ids])

    def _objects(self, request: int | None) -> None:
        self._reply(
            request,
            {
                key: obj if isinstance(obj, torch.Tensor | PointerRecord) else repr(obj)
                for key, obj in self.store.objects.items()
            },
        )

    def _count(self, request: int | None) -> None:
        self._reply(request, len(self.store.objects))

    def _clear(self, request: int | None) -> None:
        self.store.clear()
        self._reply(request, True)

    def _ping(self, request: int | None) -> None:
        self._reply(request, True)


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
        raise MalformedMessageError(f"unsupported protocol version {message.get('v')!r}")
    batch, sender = message.get("batch"), message.get("sender")
    reply_to, commands = message.get("reply_to"), message.get("commands")
    if not isinstance(batch, int) or not isinstance(sender, str):
        raise MalformedMessageError("the envelope needs an int batch and a str sender")
    if reply_to is not None and not isinstance(reply_to, str):
        raise MalformedMessageError("reply_to must be a string or None")
    if not isinstance(commands, list):
        raise MalformedMessageError("commands must be a list")
    return batch, sender, reply_to, commands
