"""Every error message renders, names what it is about, and survives the wire.

The first half renders each class of the error tree with sample values (STYLE.md
rule 10: PySyft shipped a message printing the literal ``{tensor_a.location}``).
The second half checks the errors users meet through the API, on every worker kind.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch

import client as sy
from broker import errors
from broker.errors import ERROR_TYPES, error_from_wire, error_to_wire

PLACEHOLDER = re.compile(r"\{[A-Za-z_][\w.]*(![rs])?(:[^}]*)?\}")

#: Sample values by constructor parameter name; a new parameter name must be added here.
SAMPLES = {
    "obj_id": 73321530673,
    "worker": "bob",
    "op": "__add__",
    "first": "(Wrapper)>[PointerTensor | me:11111 -> bob:22222]",
    "first_location": "bob",
    "second": "(Wrapper)>[PointerTensor | me:33333 -> alice:44444]",
    "second_location": "alice",
    "pointer": "(Wrapper)>[PointerTensor | me:55555 -> bob:66666]",
    "what": "item()",
    "command": "get",
    "reason": "the body is not a msgpack map",
    "content_type": "application/x-python-serialize",
    "size": 7340032,
    "limit": 1048576,
    "timeout": 30.0,
    "url": "amqp://guest:guest@rabbit.example:5672//",
    "plan": "calcu",
    "variable": "TENSORFLEET_TIMEOUT",
    "value": "soon",
    "expected": "a positive number of seconds",
    "type_name": "LinAlgError",
    "message": "linalg.cholesky: The factorization could not be completed",
    "destination": "carol",
    "amount": 17179869184,
    "principal": "carol",
    "quota": 1073741824,
    "action": "delete",
    "location": "no longer on bob: it was sent to alice, which is not running",
    "query": "#digits #data",
    "found": 0,
    "path": "fleets/prod.toml",
    "problem": "workers.bob.redis: expected a URL starting with redis:// or rediss://",
    "feature": "sy.VirtualWorker(..., log_msgs=True)",
    "alternative": "Watch a fleet's traffic with Flower or the engine's metrics hooks.",
    "first_precision": "base 10, 3 fractional digits",
    "second_precision": "base 10, 4 fractional digits",
}


#: The errors the public contract names on ``client`` itself (DESIGN.md, the lessons).
USER_FACING = (
    "TensorFleetError",
    "TensorsNotCollocatedException",
    "ObjectNotFoundError",
    "InvalidTensorForRemoteGet",
    "GetRequiredError",
    "WorkerUnavailableError",
)


def rendered(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def sample_arguments(cls) -> dict[str, object]:
    if "__init__" not in vars(cls):
        return {}
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    arguments = {}
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        assert parameter.name in SAMPLES, f"{cls.__name__}: no sample for {parameter.name!r}"
        arguments[parameter.name] = SAMPLES[parameter.name]
    return arguments


def sample_errors():
    for name, cls in ERROR_TYPES.items():
        arguments = sample_arguments(cls)
        if arguments:
            yield pytest.param(cls, arguments, id=name)
        else:
            yield pytest.param(cls, None, id=name)


# ------------------------------------------------------------------ the error tree


def test_every_error_class_is_registered_documented_and_exported():
    import client.exceptions

    defined = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, errors.TensorFleetError)
    }
    assert defined == set(ERROR_TYPES)
    for name, cls in ERROR_TYPES.items():
        assert issubclass(cls, errors.TensorFleetError)
        assert cls.__doc__ and cls.__doc__.strip(), name
        assert getattr(client.exceptions, name) is cls, f"client.exceptions.{name}"
    # the errors a user of the API catches are also on the facade
    for name in USER_FACING:
        assert getattr(sy, name) is ERROR_TYPES[name], f"client.{name}"


@pytest.mark.parametrize(("cls", "arguments"), list(sample_errors()))
def test_message_renders_with_sample_values(cls, arguments):
    error = cls(**arguments) if arguments is not None else cls("something went wrong")
    message = str(error)

    assert message
    assert not PLACEHOLDER.search(message), message
    for name, value in (arguments or {}).items():
        assert rendered(value) in message, f"{cls.__name__}: {name}={value!r} not in {message!r}"
    assert isinstance(error, sy.TensorFleetError)


@pytest.mark.parametrize(("cls", "arguments"), list(sample_errors()))
def test_error_survives_the_wire(cls, arguments):
    error = cls(**arguments) if arguments is not None else cls("something went wrong")

    wire = error_to_wire(error, "cmd")
    back = error_from_wire(wire)

    assert wire["type"] == cls.__name__
    assert wire["command"] == "cmd"
    assert type(back) is cls
    assert str(back) == str(error)
    assert isinstance(back, sy.TensorFleetError)


def test_object_not_found_is_also_a_key_error_with_a_readable_message():
    error = sy.ObjectNotFoundError(73321530673, "bob")
    assert isinstance(error, KeyError)
    assert str(error).startswith('Object "73321530673" not found on worker "bob"')
    assert str(error_from_wire(error_to_wire(error, "get"))) == str(error)


def test_builtin_errors_keep_their_type_across_the_wire():
    for error in (RuntimeError("ZeroDivisionError"), IndexError("index out of range in self")):
        back = error_from_wire(error_to_wire(error, "op"))
        assert type(back) is type(error)
        assert str(back) == str(error)


@pytest.mark.parametrize("type_name", ["LinAlgError", "SystemExit", "os.system", "Exception", ""])
def test_unknown_types_from_the_wire_are_never_imported(type_name):
    back = error_from_wire({"type": type_name, "message": "boom", "command": "op"})
    assert type(back) is errors.RemoteExecutionError
    assert "boom" in str(back)
    assert type_name in str(back)


def test_wire_data_missing_fields_is_still_an_error():
    back = error_from_wire({})
    assert isinstance(back, sy.TensorFleetError)


def test_not_collocated_messages_for_local_and_remote_pairs():
    remote = sy.TensorsNotCollocatedException("__add__", "a", "bob", "b", "alice")
    assert ".move(bob)" in str(remote) or ".move(alice)" in str(remote)
    local = sy.TensorsNotCollocatedException("__add__", "a", "bob", "tensor([1])", "me")
    assert ".get()" in str(local)
    assert ".send(bob)" in str(local)
    flipped = sy.TensorsNotCollocatedException("__add__", "tensor([1])", "me", "a", "bob")
    assert ".send(bob)" in str(flipped)


# ------------------------------------------------------------------ errors raised by the API


def names_pointer(message: str, pointer) -> bool:
    return str(pointer.id_at_location) in message or str(pointer.id) in message


def test_pointers_on_two_workers(bob, alice):
    x = torch.tensor([1, 2, 3]).send(bob)
    y = torch.tensor([1, 1, 1]).send(alice)
    calls = {
        "operator": lambda: x + y,
        "torch.add": lambda: torch.add(x, y),
        "method": lambda: x.add(y),
        "in-place": lambda: x.add_(y),
        "matmul": lambda: torch.matmul(x, y),
    }
    for name, call in calls.items():
        with pytest.raises(sy.TensorsNotCollocatedException) as error:
            call()
        message = str(error.value)
        assert "bob" in message, name
        assert "alice" in message, name
        assert names_pointer(message, x), name
        assert names_pointer(message, y), name
        assert ".move(" in message, name
        assert not PLACEHOLDER.search(message), name
    assert list(bob._objects) == [x.id_at_location]
    assert list(alice._objects) == [y.id_at_location]
    assert torch.equal(x.get(), torch.tensor([1, 2, 3]))


def test_pointer_with_a_local_tensor(bob):
    x = torch.tensor([1, 2, 3]).send(bob)
    local = torch.tensor([1, 1, 1])
    calls = {
        "ptr + local": lambda: x + local,
        "local + ptr": lambda: local + x,
        "torch.add(ptr, local)": lambda: torch.add(x, local),
        "torch.add(local, ptr)": lambda: torch.add(local, x),
        "ptr.add(local)": lambda: x.add(local),
        "local.add(ptr)": lambda: local.add(x),
    }
    for name, call in calls.items():
        with pytest.raises(sy.TensorsNotCollocatedException) as error:
            call()
        message = str(error.value)
        assert "bob" in message, name
        assert names_pointer(message, x), name
        assert ".get()" in message, name
        assert ".send(bob)" in message, name
        assert not PLACEHOLDER.search(message), name
    assert list(bob._objects) == [x.id_at_location]
    assert torch.equal(local, torch.tensor([1, 1, 1]))


def test_python_numbers_mix_with_pointers(bob):
    x = torch.tensor([1.0, 2.0]).send(bob)
    assert torch.equal((x * 2 + 1).get(), torch.tensor([3.0, 5.0]))


def test_values_need_a_get_first(bob):
    x = torch.tensor([3.0]).send(bob)
    calls = {
        "item": lambda: x.item(),
        "bool": lambda: bool(x),
        "float": lambda: float(x),
        "int": lambda: int(x),
        "tolist": lambda: x.tolist(),
    }
    for name, call in calls.items():
        with pytest.raises(sy.GetRequiredError) as error:
            call()
        assert isinstance(error.value, RuntimeError), name
        assert ".get()" in str(error.value), name
        assert not PLACEHOLDER.search(str(error.value)), name
    # nothing happened to the data
    assert list(bob._objects) == [x.id_at_location]
    assert x.get().item() == 3.0


def test_missing_id_names_the_worker_and_the_id(bob):
    x = torch.tensor([1, 2, 3]).send(bob)
    bob.clear_objects()

    with pytest.raises(sy.ObjectNotFoundError) as error:
        (x + x).get()

    message = str(error.value)
    assert "bob" in message
    assert str(x.id_at_location) in message
    assert isinstance(error.value, KeyError)
    assert bob._objects == {}


def test_get_of_a_cleared_object(bob):
    x = torch.tensor([1, 2, 3]).send(bob)
    bob.clear_objects()
    with pytest.raises(sy.ObjectNotFoundError) as error:
        x.get()
    assert f'"{x.id_at_location}"' in str(error.value)
    assert '"bob"' in str(error.value)


# ------------------------------------------------------------------ forbidden ops (raw protocol)

FORBIDDEN_NAMES = (
    "builtins.eval",
    "os.system",
    "subprocess.run",
    "torch.load",
    "torch.save",
    "torch.from_file",
    "Tensor.__reduce_ex__",
    "Tensor.__setattr__",
    "Tensor.__class__",
    "torch.Tensor.add",  # not the wire spelling of an allowed op: refused, not guessed
    "",
)


def test_a_forbidden_op_is_refused_and_the_worker_keeps_serving(bob):
    # The API has no way to name an arbitrary callable, so this speaks the protocol itself.
    from broker import protocol
    from broker.protocol import Ref

    x = torch.tensor([1, 2]).send(bob)
    for offset, name in enumerate(FORBIDDEN_NAMES):
        result_id = 99_000_000_000 + offset
        command = [protocol.OP, name, [Ref(x.id_at_location)], {}, [result_id], True, None]
        with pytest.raises(sy.ForbiddenOperationError) as error:
            bob._request(command, "op")
        message = str(error.value)
        assert f'"{name}"' in message
        assert '"bob"' in message
        assert "allowlist" in message

    assert list(bob._objects) == [x.id_at_location]
    assert torch.equal((x + 1).get(), torch.tensor([2, 3]))
