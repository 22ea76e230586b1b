"""TensorFleet's one error tree, shared by the client and the workers.

Every error a user can meet derives from :class:`TensorFleetError`. Each class
renders its message from structured fields (worker ids, object ids, the op) and
says what to do next. Errors cross the wire as data (``{type, message,
command}``); the client maps ``type`` back through :data:`ERROR_TYPES`, an
explicit registry, and never imports a name that arrived on the wire.
"""

from __future__ import annotations

import builtins
from typing import Any


class TensorFleetError(Exception):
    """Root of every TensorFleet error."""

    @classmethod
    def from_message(cls, message: str) -> TensorFleetError:
        """Rebuild an error that crossed the wire, keeping its rendered message."""
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        return error


class ObjectNotFoundError(TensorFleetError, KeyError):
    """A command named an object id that the worker does not hold."""

    def __init__(self, obj_id: int, worker: str) -> None:
        super().__init__(
            f'Object "{obj_id}" not found on worker "{worker}". The pointer refers to id '
            f"{obj_id} on {worker}, which does not exist there (any more). The usual cause is "
            "a .get() already called on this pointer or on another pointer to the same object "
            "(.get() removes the remote object), or worker.clear_objects(). Check "
            f"{worker}._objects, and send the tensor again with .send({worker})."
        )

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written.
        return str(self.args[0]) if self.args else ""


class TensorsNotCollocatedException(TensorFleetError):
    """An operation mixed tensors that live on different workers."""

    def __init__(
        self, op: str, first: str, first_location: str, second: str, second_location: str
    ) -> None:
        if first_location == "me" or second_location == "me":
            remote = second_location if first_location == "me" else first_location
            advice = (
                f"Call .get() on the pointer to bring its data here, or .send({remote}) "
                f"the local tensor so that both are on {remote}."
            )
        else:
            advice = (
                f"Use .move({first_location}) or .move({second_location}) to bring them to one "
                "worker, or .get() and .send() them."
            )
        super().__init__(
            f"You tried to call {op} on two tensors which are not on the same machine: "
            f"{first} is on {first_location} while {second} is on {second_location}. {advice}"
        )


class InvalidTensorForRemoteGet(TensorFleetError):
    """remote_get() was called on a pointer whose target holds data, not another pointer."""

    def __init__(self, pointer: str, worker: str) -> None:
        super().__init__(
            f"remote_get() needs a chain of pointers (me -> {worker} -> another worker), but "
            f"{pointer} points at data that already lives on {worker}. Use .get() to bring it "
            "here, or .move(worker) to send it to another worker."
        )


class GetRequiredError(TensorFleetError, RuntimeError):
    """Code asked a pointer for a value that only the remote data can give."""

    def __init__(self, what: str, pointer: str) -> None:
        super().__init__(
            f"{what} needs the tensor's data, but {pointer} only points at it. Call .get() "
            f"first, then {what} on the local tensor (for example x.get().item())."
        )


class ForbiddenOperationError(TensorFleetError):
    """The worker refused a callable that is not on its allowlist."""

    def __init__(self, op: str, worker: str) -> None:
        super().__init__(
            f'The operation "{op}" is not on the allowlist of worker "{worker}", so it was '
            "refused and nothing ran. Workers run only listed torch functions and tensor "
            "methods (worker/allowlist.py); use a listed equivalent or ask the fleet's "
            "operator to add it."
        )


class UnknownCommandError(TensorFleetError):
    """A message carried a command the worker does not know."""

    def __init__(self, command: str, worker: str) -> None:
        super().__init__(
            f'Worker "{worker}" received the unknown command "{command}". The client and the '
            "worker speak different protocol versions: upgrade both to the same TensorFleet."
        )


class MalformedMessageError(TensorFleetError):
    """A message could not be decoded or did not have the envelope's shape."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"Malformed TensorFleet message: {reason}. It was rejected and dead-lettered; "
            "send msgpack envelopes built by broker.protocol."
        )


class ContentDisallowedError(TensorFleetError):
    """A message used a content type the fleet refuses (pickle, for instance)."""

    def __init__(self, content_type: str) -> None:
        super().__init__(
            f'Content type "{content_type}" is not accepted: TensorFleet takes only '
            "application/x-msgpack (never pickle). The message was dead-lettered."
        )


class MessageTooLargeError(TensorFleetError):
    """A message or tensor is larger than the configured limit."""

    def __init__(self, size: int, limit: int, what: str = "message") -> None:
        super().__init__(
            f"The {what} is {size} bytes, above the limit of {limit} bytes. Raise "
            "TENSORFLEET_MAX_OBJECT_BYTES on the workers, or split the tensor."
        )


class WorkerUnavailableError(TensorFleetError):
    """A worker did not answer a synchronising call in time."""

    def __init__(self, worker: str, command: str, timeout: float) -> None:
        super().__init__(
            f'Worker "{worker}" did not answer "{command}" within {timeout:g} s. Start it '
            f"with `tensorfleet worker {worker}` (or `tensorfleet up {worker}`), check that "
            "it reaches the broker at TENSORFLEET_BROKER_URL, or raise TENSORFLEET_TIMEOUT."
        )


class WorkerNotRunningError(WorkerUnavailableError):
    """A worker's queue exists but nothing consumes it: the worker process is not running."""

    def __init__(self, worker: str, command: str) -> None:
        self.worker = worker
        TensorFleetError.__init__(
            self,
            f'Worker "{worker}" is not running, so "{command}" cannot be answered: its queue '
            f"has no consumer. Start it with `tensorfleet worker {worker}` (or `tensorfleet up "
            f"{worker}`); what was already sent waits in its queue and runs when it starts.",
        )


class WorkerNeverStartedError(WorkerUnavailableError):
    """No queue exists for a worker id: no worker of that id ever started in this namespace."""

    def __init__(self, worker: str, command: str) -> None:
        self.worker = worker
        TensorFleetError.__init__(
            self,
            f'Worker "{worker}" has never started in this fleet (no queue exists for it in '
            f'TENSORFLEET_NAMESPACE), so "{command}" and the commands before it were not sent. '
            f"Check the id, or start it with `tensorfleet worker {worker}` and try again.",
        )


class WorkerStoreUnavailableError(WorkerUnavailableError):
    """A worker is running but its store (Redis) is down, so it stopped taking messages."""

    def __init__(self, worker: str, command: str) -> None:
        self.worker = worker
        TensorFleetError.__init__(
            self,
            f'Worker "{worker}" cannot answer "{command}": the worker\'s store (Redis) is down, '
            "so it stopped taking messages. Start that worker's Redis (or fix its "
            "TENSORFLEET_REDIS_URL); what was sent waits in its queue and runs once Redis is "
            "back, nothing is lost. Try the call again then.",
        )


class TransferIncompleteError(TensorFleetError):
    """A move did not report done in time; the message says where the data is now."""

    def __init__(self, obj_id: int, worker: str, destination: str, location: str) -> None:
        super().__init__(
            f'Moving object "{obj_id}" from worker "{worker}" to "{destination}" did not finish '
            f"in time. Where it is now: {location}. The pointer was left pointing there; "
            f"check {worker}._objects and {destination}._objects, start any worker that is "
            "not running, and retry only what is missing."
        )


class BrokerConnectionError(TensorFleetError):
    """The client could not reach, or lost, the message broker."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"Cannot talk to the broker at {url}: {reason}. Start RabbitMQ (or point "
            "TENSORFLEET_BROKER_URL at a running one) and try again."
        )


class PlanNotBuiltError(TensorFleetError, RuntimeError):
    """A plan was sent or run before it was built."""

    def __init__(self, plan: str) -> None:
        super().__init__(
            f"The plan {plan} has not been built yet. Build it first: plan.build(*example_args) "
            "or @sy.func2plan(args_shape=[...]), then send it."
        )


class ConfigurationError(TensorFleetError, ValueError):
    """A TENSORFLEET_* environment variable holds a value that cannot be used."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        super().__init__(
            f"{variable}={value!r} is not valid: expected {expected}. Fix or unset it "
            "(the README lists every setting and its default)."
        )


class StoreUnavailableError(TensorFleetError):
    """A worker cannot reach its store (Redis): it stops serving until the store is back."""

    def __init__(self, worker: str, url: str, reason: str) -> None:
        super().__init__(
            f'Worker "{worker}" cannot reach its store (Redis at {url}): {reason}. Start Redis '
            "(or fix TENSORFLEET_REDIS_URL for that worker). A running worker stops taking "
            "messages until Redis is back: commands wait in its queue and nothing is lost."
        )


class FleetFileError(TensorFleetError, ValueError):
    """A fleet file (``tensorfleet provision FLEET_FILE``) cannot be read or is not valid."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(
            f"Fleet file {path} is not valid: {problem}. Fix it and run `tensorfleet provision` "
            "again (the README's section on provisioning shows a complete fleet file)."
        )


class UnknownWorkerError(TensorFleetError):
    """A command would send data or work to a worker that is not part of the fleet."""

    def __init__(self, destination: str, worker: str) -> None:
        super().__init__(
            f'Worker "{worker}" cannot send to "{destination}": no worker of that id is part of '
            f"this fleet (its queue does not exist). Nothing moved: the data stays on {worker}. "
            f"Check the id, or start it with `tensorfleet worker {destination}` first."
        )


class OperationTooLargeError(TensorFleetError):
    """An op would make a result, or do work, above the worker's per-op limits."""

    def __init__(self, op: str, worker: str, amount: int, limit: int, variable: str) -> None:
        what = "bytes of results" if variable.endswith("OBJECT_BYTES") else "elements of work"
        super().__init__(
            f'The operation "{op}" on worker "{worker}" would need {amount} {what}, above '
            f"the limit of {limit} ({variable}); it was refused before it ran. Work on "
            f"smaller pieces, or ask the fleet's operator to raise {variable}."
        )


class UnboundedOperationError(TensorFleetError):
    """An op's result size depends on the data, so the worker cannot bound it before it runs."""

    def __init__(self, op: str, worker: str) -> None:
        super().__init__(
            f'The operation "{op}" was refused by worker "{worker}": the size of its result '
            "depends on the data (or its arguments are invalid), so it cannot be checked "
            "against the worker's limits before it runs. Give the size explicitly (for "
            "example F.one_hot(x, num_classes=10)), or .get() the inputs and run it locally."
        )


class QuotaExceededError(TensorFleetError):
    """A client would keep more bytes on a worker than its quota allows."""

    def __init__(self, principal: str, worker: str, size: int, quota: int) -> None:
        super().__init__(
            f'Client "{principal}" would keep {size} bytes on worker "{worker}", above its '
            f"quota of {quota} bytes (TENSORFLEET_CLIENT_QUOTA_BYTES); the command was "
            "refused. Free space by deleting or .get()-ing objects you no longer need there."
        )


class PermissionDeniedError(TensorFleetError):
    """A command named an object that belongs to another client."""

    def __init__(self, obj_id: int, worker: str, action: str) -> None:
        super().__init__(
            f'Object "{obj_id}" on worker "{worker}" belongs to another client, so you cannot '
            f"{action} it; nothing was changed. Use your own pointers: objects belong to the "
            "client (RabbitMQ user) whose command created them."
        )


class GetNotPermittedError(TensorFleetError):
    """A client tried to fetch, move or send a dataset its owner hosts as private."""

    def __init__(self, obj_id: int, worker: str) -> None:
        super().__init__(
            f'Object "{obj_id}" on worker "{worker}" is private data that {worker}\'s owner '
            "hosts: you can compute on it there (ops, training, plans) and fetch the results, "
            "but never .get(), .move() or .send() the data itself."
        )


class PlanNotFoundError(TensorFleetError):
    """``worker.fetch_plan("#tag")`` found none, or more than one, of the caller's plans."""

    def __init__(self, worker: str, query: str, found: int) -> None:
        super().__init__(
            f'Worker "{worker}" has {found} of your plans tagged {query}, and fetch_plan by '
            "tag needs exactly one: tag the plan before sending it (plan.tag(...)), tag your "
            "plans apart, or fetch by id (PointerPlan.id_at_location). Other clients' plans "
            "are never found."
        )


class DatasetNotFoundError(TensorFleetError):
    """A search for one tensor of a hosted dataset found none, or more than one."""

    def __init__(self, worker: str, query: str, found: int) -> None:
        super().__init__(
            f'Worker "{worker}" has {found} tensors tagged {query}, and a dataset share needs '
            f"exactly one: check the tags with {worker}.search(...), and that {worker} hosts the "
            "dataset (tensorfleet worker --dataset NAME=PATH, or VirtualWorker(..., data=[...]))."
        )


class WorkerNotFoundException(TensorFleetError, KeyError):
    """``worker.get_worker(id)`` named a worker this client has not made or added."""

    def __init__(self, worker: str, destination: str) -> None:
        super().__init__(
            f'Worker "{worker}" does not know a worker "{destination}". Make it first with '
            f'sy.VirtualWorker(hook, id="{destination}") (or sy.FleetWorker for a worker of '
            f"a running fleet), or {worker}.add_workers([...]) it, then look it up again."
        )

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written.
        return str(self.args[0]) if self.args else ""


class NotSupportedError(TensorFleetError, AttributeError, NotImplementedError):
    """A PySyft 0.2 name, method or option that TensorFleet does not provide.

    Also an AttributeError, so ``hasattr(sy, name)`` stays False for such a name, and a
    NotImplementedError, what PySyft raised for features it lacked.
    """

    def __init__(self, feature: str, alternative: str) -> None:
        super().__init__(
            f"{feature} is part of PySyft 0.2, but TensorFleet does not support it; nothing "
            f"was done. {alternative}"
        )


class RemoteExecutionError(TensorFleetError):
    """An error of a type the client does not know happened on a worker."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name} on the worker: {message}")


class TooFewShareHoldersError(TensorFleetError, ValueError):
    """Additive sharing was asked of fewer than two distinct workers."""

    def __init__(self, found: int) -> None:
        super().__init__(
            f"share() needs at least 2 distinct workers to hold the shares, but got {found}: "
            "one holder would hold the secret itself. Pass two or more workers, for example "
            "x.fix_prec().share(bob, alice, crypto_provider=secure_worker)."
        )


class PrecisionMismatchError(TensorFleetError, ValueError):
    """An op mixed fixed-precision tensors encoded with different bases or precisions."""

    def __init__(self, op: str, first_precision: str, second_precision: str) -> None:
        super().__init__(
            f"{op} mixes fixed-precision tensors of different scales ({first_precision} and "
            f"{second_precision}), whose integers mean different numbers. Encode both with "
            "the same fix_prec(base=..., precision_fractional=...)."
        )


class CryptoProviderMissingError(TensorFleetError, ValueError):
    """A multiplication of shared tensors needs Beaver triples, and no provider was named."""

    def __init__(self, op: str) -> None:
        super().__init__(
            f"{op} between two shared tensors needs Beaver triples from a crypto provider, "
            "but the tensors were shared without one. Share them with "
            "x.share(bob, alice, crypto_provider=secure_worker)."
        )


class SharesNotAlignedError(TensorFleetError, ValueError):
    """An op mixed shared tensors whose shares are held by different workers."""

    def __init__(self, op: str, first: str, second: str) -> None:
        super().__init__(
            f"{op} needs both shared tensors held by the same workers in the same order, but "
            f"one is shared among {first} and the other among {second}. Share both with the "
            "same .share(...) workers."
        )


class SecureTypeError(TensorFleetError, TypeError):
    """A value of the wrong kind was given to fixed precision or additive sharing."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}. Secure aggregation computes on fixed-precision integers: encode with "
            "x.fix_prec(), share with .share(bob, alice, crypto_provider=secure_worker), then "
            ".get().float_prec() decodes the result."
        )


#: Every TensorFleet error type, by name, as it travels on the wire.
ERROR_TYPES: dict[str, type[TensorFleetError]] = {
    cls.__name__: cls
    for cls in (
        TensorFleetError,
        ObjectNotFoundError,
        TensorsNotCollocatedException,
        InvalidTensorForRemoteGet,
        GetRequiredError,
        ForbiddenOperationError,
        UnknownCommandError,
        MalformedMessageError,
        ContentDisallowedError,
        MessageTooLargeError,
        WorkerUnavailableError,
        WorkerNotRunningError,
        WorkerNeverStartedError,
        WorkerStoreUnavailableError,
        TransferIncompleteError,
        BrokerConnectionError,
        PlanNotBuiltError,
        ConfigurationError,
        StoreUnavailableError,
        FleetFileError,
        UnknownWorkerError,
        OperationTooLargeError,
        UnboundedOperationError,
        QuotaExceededError,
        PermissionDeniedError,
        GetNotPermittedError,
        DatasetNotFoundError,
        PlanNotFoundError,
        WorkerNotFoundException,
        NotSupportedError,
        RemoteExecutionError,
        TooFewShareHoldersError,
        PrecisionMismatchError,
        CryptoProviderMissingError,
        SharesNotAlignedError,
        SecureTypeError,
    )
}

#: Builtin exceptions that torch raises and that keep their type across the wire.
BUILTIN_ERROR_TYPES: dict[str, type[Exception]] = {
    name: getattr(builtins, name)
    for name in (
        "RuntimeError",
        "ValueError",
        "TypeError",
        "IndexError",
        "KeyError",
        "AttributeError",
        "ZeroDivisionError",
        "NotImplementedError",
        "OverflowError",
        "AssertionError",
    )
}


def error_to_wire(error: BaseException, command: str) -> dict[str, Any]:
    """Describe an exception as plain data: its type name, message and the failing command."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return {"type": type(error).__name__, "message": message, "command": command}


def error_from_wire(data: dict[str, Any]) -> Exception:
    """Rebuild an exception from :func:`error_to_wire` data through the explicit registries."""
    type_name = str(data.get("type", "RemoteExecutionError"))
    message = str(data.get("message", ""))
    if type_name in ERROR_TYPES:
        return ERROR_TYPES[type_name].from_message(message)
    if type_name in BUILTIN_ERROR_TYPES:
        return BUILTIN_ERROR_TYPES[type_name](message)
    return RemoteExecutionError(type_name, message)
