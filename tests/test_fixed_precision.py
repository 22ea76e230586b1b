"""Fixed precision (PySyft 0.2's ``fix_prec``/``float_prec``), on local tensors and pointers.

PySyft 0.2.4 encodes a float as ``round(x * base ** precision_fractional)`` in a long
tensor, 10**3 by default: ``torch.tensor([0.1, 0.2, 0.3]).fix_prec()`` holds
``[100, 200, 300]`` (its ``test_precision.py::test_encode_decode``), and
``.float_prec()`` gives ``[0.1, 0.2, 0.3]`` back. ``x + x`` adds the integers;
``x * y`` rescales once (``[1, -2, -3] * [-2, 3, -1]`` is ``[-2, -6, 3]``). On a pointer
every one of these is a remote op on the pointer's worker (semantics reference §3.4:
"the transformation happens at the data holder").
"""

from __future__ import annotations

import pytest
import torch
from recording import recording_commands
from torch import nn

import client as sy
from broker.errors import GetRequiredError, PrecisionMismatchError, SecureTypeError


def test_encode_decode_as_pysyft(hook):
    x = torch.tensor([0.1, 0.2, 0.3]).fix_prec()
    assert isinstance(x, sy.FixedPrecisionTensor)
    assert x.child.dtype == torch.int64
    assert torch.equal(x.child, torch.tensor([100, 200, 300]))
    assert torch.equal(x.float_prec(), torch.tensor([0.1, 0.2, 0.3]))
    # the long names are the same calls
    y = torch.tensor([0.1, -0.25]).fix_precision(base=10, precision_fractional=3)
    assert torch.equal(y.child, torch.tensor([100, -250]))
    assert torch.equal(y.float_precision(), torch.tensor([0.1, -0.25]))


def test_base_and_precision_options(hook):
    x = torch.tensor([1.5, -0.25]).fix_prec(base=2, precision_fractional=4)
    assert x.scale == 16
    assert torch.equal(x.child, torch.tensor([24, -4]))
    assert torch.equal(x.float_prec(), torch.tensor([1.5, -0.25]))
    z = torch.tensor([3.14159]).fix_prec(precision_fractional=5)
    assert torch.equal(z.child, torch.tensor([314159]))


def test_arithmetic_as_pysyft(hook):
    x = torch.tensor([0.1, 0.2, 0.3]).fix_prec()
    y = x + x
    assert torch.equal(y.child, torch.tensor([200, 400, 600]))
    assert torch.equal(y.float_prec(), torch.tensor([0.2, 0.4, 0.6]))
    a = torch.tensor([1.0, -2.0, -3.0]).fix_prec()
    b = torch.tensor([-2.0, 3.0, -1.0]).fix_prec()
    assert torch.equal((a * b).float_prec(), torch.tensor([-2.0, -6.0, 3.0]))
    assert torch.equal((a - b).float_prec(), torch.tensor([3.0, -5.0, -2.0]))
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal((m.fix_prec() @ m.fix_prec()).float_prec(), m @ m)
    # public values: an int is exact, a float is encoded in the same scale
    assert torch.equal((a * 2).float_prec(), torch.tensor([2.0, -4.0, -6.0]))
    assert torch.allclose((a + 0.5).float_prec(), torch.tensor([1.5, -1.5, -2.5]))
    assert torch.allclose((1 - a).float_prec(), torch.tensor([0.0, 3.0, 4.0]))
    assert torch.allclose((a / 2).float_prec(), torch.tensor([0.5, -1.0, -1.5]))
    assert torch.allclose(a.sum().float_prec(), torch.tensor(-4.0))
    assert torch.allclose(a.mean().float_prec(), torch.tensor(-4.0 / 3), atol=1e-3)


def test_errors_say_what_to_do(hook):
    x = torch.tensor([1.0]).fix_prec()
    with pytest.raises(PrecisionMismatchError, match="same fix_prec"):
        _ = x + torch.tensor([1.0]).fix_prec(precision_fractional=4)
    with pytest.raises(SecureTypeError, match="public positive int"):
        _ = x / 2.5
    with pytest.raises(SecureTypeError, match=r"plain torch\.float32"):
        torch.tensor([1.0]).float_prec()
    with pytest.raises(SecureTypeError, match="already fixed precision"):
        x.fix_prec()


def test_fix_prec_on_a_pointer_is_a_remote_op(bob):
    ptr = torch.tensor([0.1, 0.2, 0.3]).send(bob)
    assert bob.object_count() == 1  # the send is done: what follows sends no data
    with recording_commands(bob) as sent:
        encoded = ptr.fix_prec()
        assert isinstance(encoded.child, sy.PointerTensor)
        assert encoded.location is bob
        stored = bob._objects[encoded.child.id_at_location]
    assert torch.equal(stored, torch.tensor([100, 200, 300]))
    assert {command[0] for _, command in sent} <= {"op", "delete", "objects"}  # no data
    decoded = encoded.float_prec()  # a pointer to the decoded floats, on bob
    assert isinstance(decoded, sy.PointerTensor) and decoded.location is bob
    assert torch.equal(decoded.get(), torch.tensor([0.1, 0.2, 0.3]))
    fetched = encoded.get()  # the integers come here, still fixed precision
    assert torch.equal(fetched.child, torch.tensor([100, 200, 300]))
    assert torch.equal(fetched.float_prec(), torch.tensor([0.1, 0.2, 0.3]))


def test_pointer_arithmetic_runs_on_the_worker(bob):
    a = torch.tensor([1.5, -2.0]).send(bob).fix_prec()
    b = torch.tensor([2.0, 0.25]).send(bob).fix_prec()
    assert torch.equal((a * b).float_prec().get(), torch.tensor([3.0, -0.5]))
    assert torch.equal((a + b).get().float_prec(), torch.tensor([3.5, -1.75]))
    assert torch.equal((a / 2).get().float_prec(), torch.tensor([0.75, -1.0]))


def test_fix_prec_on_a_pointer_to_a_pointer_happens_at_the_data_holder(bob, alice):
    chain = torch.tensor([0.5, 1.25]).send(bob).send(alice)
    encoded = chain.fix_prec()
    assert torch.equal(encoded.float_prec().get().get(), torch.tensor([0.5, 1.25]))


def test_module_fix_precision_by_parameter(bob):
    model = nn.Linear(3, 2)
    params = model.fix_precision()
    assert list(params.keys()) == ["weight", "bias"]
    decoded = params.float_precision()
    assert torch.allclose(decoded["weight"], model.weight.detach(), atol=5e-4)
    model.send(bob)  # a sent model: each parameter is encoded on bob
    remote = model.fix_prec()
    assert remote["bias"].location is bob
    assert torch.allclose(remote.get().float_prec()["bias"], decoded["bias"])


def test_a_shared_value_must_be_fetched_before_decoding(bob, alice):
    shared = torch.tensor([1.0]).fix_prec().share(bob, alice)
    with pytest.raises(GetRequiredError, match=r"Call \.get\(\) first"):
        shared.float_prec()
