"""Lesson 001 "Basic Remote Execution", "Introducing Remote Arithmetic" and lesson 004 §1.2.

Every cell of those sections, as a test: what the store holds before and after,
the values, the ids and how they relate, the reprs.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import client as sy

POINTER_REPR = re.compile(r"^\(Wrapper\)>\[PointerTensor \| me:(\d+) -> (\w+):(\d+)\]$")


def tensors_of(worker) -> dict[int, torch.Tensor]:
    """``worker._objects``, checking that every stored object is a tensor."""
    objects = worker._objects
    assert isinstance(objects, dict)
    for key, obj in objects.items():
        assert isinstance(key, int)
        assert isinstance(obj, torch.Tensor), f"{key}: {obj!r} is not a tensor"
    return objects


# ------------------------------------------------------------------ hook and local worker


def test_hook_is_idempotent_and_torch_still_works(hook):
    x = torch.tensor([1, 2, 3, 4, 5])
    y = x + x
    again = sy.TorchHook(torch)
    assert again.local_worker is hook.local_worker
    assert hook.local_worker is sy.local_worker
    assert sy.local_worker.id == "me"
    assert torch.equal(y, torch.tensor([2, 4, 6, 8, 10]))
    assert torch.equal(torch.tensor([1, 2, 3, 4, 5]) + 1, torch.tensor([2, 3, 4, 5, 6]))


# ------------------------------------------------------------------ send / get


def test_new_worker_has_an_empty_store(bob):
    assert bob._objects == {}
    assert "id:bob #objects:0" in repr(bob)


def test_send_stores_the_tensor_on_bob_under_a_new_id(bob):
    x = torch.tensor([1, 2, 3, 4, 5])
    x_ptr = x.send(bob)

    store = tensors_of(bob)
    assert list(store) == [x_ptr.id_at_location]
    assert torch.equal(store[x_ptr.id_at_location], torch.tensor([1, 2, 3, 4, 5]))
    assert isinstance(x_ptr.id, int)
    assert isinstance(x_ptr.id_at_location, int)
    assert x_ptr.id != x_ptr.id_at_location
    assert "id:bob #objects:1" in repr(bob)
    # the local tensor is untouched
    assert torch.equal(x, torch.tensor([1, 2, 3, 4, 5]))


def test_pointer_location_owner_and_ids(bob, me):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    assert x.location is bob
    assert x.owner is me
    assert x.owner is sy.local_worker
    assert x.owner.id == "me"
    assert repr(x) == f"(Wrapper)>[PointerTensor | me:{x.id} -> bob:{x.id_at_location}]"


def test_pointer_knows_shape_and_dtype_locally(bob):
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).send(bob)
    assert x.shape == torch.Size([2, 3])
    assert x.dtype == torch.float32
    y = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    assert y.shape == torch.Size([5])
    assert y.dtype == torch.int64


def test_each_send_gets_its_own_ids(bob):
    x = torch.tensor([1, 2, 3])
    a = x.send(bob)
    b = x.send(bob)
    assert len({a.id, b.id, a.id_at_location, b.id_at_location}) == 4
    assert set(tensors_of(bob)) == {a.id_at_location, b.id_at_location}
    # the re-send race of PySyft (#4684): dropping the first pointer leaves the second's data
    kept = b.id_at_location
    del a
    assert list(tensors_of(bob)) == [kept]
    assert torch.equal(b.get(), x)


def test_get_returns_the_tensor_and_bob_deletes_it(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    assert len(bob._objects) == 1

    x = x.get()

    assert isinstance(x, torch.Tensor)
    assert torch.equal(x, torch.tensor([1, 2, 3, 4, 5]))
    assert x.dtype == torch.int64
    assert bob._objects == {}
    assert "id:bob #objects:0" in repr(bob)


def test_second_get_through_the_same_pointer_is_a_clear_error(bob):
    x_ptr = torch.tensor([1, 2, 3]).send(bob)
    assert torch.equal(x_ptr.get(), torch.tensor([1, 2, 3]))
    with pytest.raises(sy.TensorFleetError) as error:
        x_ptr.get()
    assert "bob" in str(error.value)
    assert bob._objects == {}


def test_get_keeps_the_other_objects(bob, me):
    # lesson 004 §1.2: two tensors on bob, get one back
    x_ptr = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    y_ptr = torch.tensor([1, 1, 1, 1, 1]).send(bob)

    store = tensors_of(bob)
    assert set(store) == {x_ptr.id_at_location, y_ptr.id_at_location}
    assert torch.equal(store[x_ptr.id_at_location], torch.tensor([1, 2, 3, 4, 5]))
    assert torch.equal(store[y_ptr.id_at_location], torch.tensor([1, 1, 1, 1, 1]))
    assert x_ptr.location == bob
    assert x_ptr.owner is me
    assert sy.local_worker == x_ptr.owner

    assert torch.equal(x_ptr.get(), torch.tensor([1, 2, 3, 4, 5]))
    store = tensors_of(bob)
    assert list(store) == [y_ptr.id_at_location]
    assert torch.equal(store[y_ptr.id_at_location], torch.tensor([1, 1, 1, 1, 1]))


def test_clear_objects_returns_the_worker_and_empties_it(bob):
    keep = [torch.tensor([i]).send(bob) for i in range(3)]
    assert len(bob._objects) == 3
    assert bob.clear_objects() is bob
    assert bob._objects == {}
    assert "id:bob #objects:0" in repr(bob)
    assert len(keep) == 3


def test_send_and_get_preserve_dtype_shape_and_values(bob):
    samples = [
        torch.tensor(3.5),
        torch.arange(12, dtype=torch.float64).reshape(3, 4),
        torch.tensor([True, False, True]),
        torch.tensor([[1, 2], [3, 4]], dtype=torch.int32),
        torch.zeros(0, 3),
        torch.arange(6.0).reshape(2, 3).t(),  # not contiguous
    ]
    pointers = [t.send(bob) for t in samples]
    for t, p in zip(samples, pointers, strict=True):
        assert p.shape == t.shape
        assert p.dtype == t.dtype
    for t, p in zip(samples, pointers, strict=True):
        back = p.get()
        assert back.dtype == t.dtype
        assert back.shape == t.shape
        assert torch.equal(back, t)
    assert bob._objects == {}


# ------------------------------------------------------------------ remote arithmetic


def test_remote_addition_with_operator(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1]).send(bob)
    for p in (x, y):
        assert POINTER_REPR.match(repr(p))

    z = x + y

    match = POINTER_REPR.match(repr(z))
    assert match is not None
    assert match.group(2) == "bob"
    assert z.location is bob
    assert z.id_at_location not in (x.id_at_location, y.id_at_location)
    assert z.shape == torch.Size([5])
    assert z.dtype == torch.int64
    store = tensors_of(bob)
    assert set(store) == {x.id_at_location, y.id_at_location, z.id_at_location}
    assert torch.equal(store[z.id_at_location], torch.tensor([2, 3, 4, 5, 6]))

    z = z.get()

    assert torch.equal(z, torch.tensor([2, 3, 4, 5, 6]))
    assert set(bob._objects) == {x.id_at_location, y.id_at_location}


def test_remote_addition_with_torch_add(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1]).send(bob)

    z = torch.add(x, y)

    assert POINTER_REPR.match(repr(z))
    assert z.location is bob
    assert len(bob._objects) == 3
    assert torch.equal(z.get(), torch.tensor([2, 3, 4, 5, 6]))
    assert set(bob._objects) == {x.id_at_location, y.id_at_location}


def test_compute_remotely_get_the_result(bob):
    # lesson 004 §1.2
    x_ptr = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    y_ptr = torch.tensor([5, 4, 3, 2, 1]).send(bob)
    z_ptr = x_ptr + y_ptr
    assert torch.equal(z_ptr.get(), torch.tensor([6, 6, 6, 6, 6]))


def test_operators_functions_and_methods_run_remotely(bob):
    a = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    b = torch.tensor([[0.5, 1.0], [2.0, -1.0]])
    pa, pb = a.send(bob), b.send(bob)

    cases = {
        "sub": (pa - pb, a - b),
        "mul": (pa * pb, a * b),
        "div": (pa / pb, a / b),
        "pow": (pa**2, a**2),
        "neg": (-pa, -a),
        "scalar": (pa * 0.5 + 1, a * 0.5 + 1),
        "rscalar": (2 - pa, 2 - a),
        "relu": (F.relu(pa), F.relu(a)),
        "sum": (pa.sum(), a.sum()),
        "mean_dim": (pa.mean(dim=0), a.mean(dim=0)),
        "mm": (pa.mm(pb), a.mm(b)),
        "matmul": (pa @ pb, a @ b),
        "t": (pa.t(), a.t()),
        "view": (pa.view(-1), a.view(-1)),
        "index": (pa[0], a[0]),
        "slice": (pa[:, 1:], a[:, 1:]),
        "linear": (F.linear(pa, pb), F.linear(a, b)),
        "torch_abs": (torch.abs(pa), torch.abs(a)),
    }
    for name, (pointer, expected) in cases.items():
        assert pointer.location is bob, name
        assert pointer.shape == expected.shape, name
        assert pointer.dtype == expected.dtype, name
    for name, (pointer, expected) in cases.items():
        assert torch.allclose(pointer.get(), expected), name
    assert set(bob._objects) == {pa.id_at_location, pb.id_at_location}


def test_result_dtype_follows_torch_type_promotion(bob):
    i = torch.tensor([1, 2, 3]).send(bob)
    f = torch.tensor([0.5, 0.5, 0.5]).send(bob)
    z = i + f
    assert z.dtype == torch.float32
    c = i > 1
    assert c.dtype == torch.bool
    assert torch.equal(z.get(), torch.tensor([1.5, 2.5, 3.5]))
    assert torch.equal(c.get(), torch.tensor([False, True, True]))


def test_in_place_op_returns_the_same_pointer_and_creates_nothing(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1]).send(bob)
    before = set(bob._objects)

    same = x.add_(y)

    assert same is x
    assert set(bob._objects) == before
    assert torch.equal(bob._objects[x.id_at_location], torch.tensor([2, 3, 4, 5, 6]))
    x.mul_(2)
    x += y
    assert set(bob._objects) == before
    assert torch.equal(x.get(), torch.tensor([5, 7, 9, 11, 13]))


def test_creating_a_worker_again_by_id_gives_the_same_worker(hook, bob):
    # lesson 004 §1.2 runs `bob = sy.VirtualWorker(hook, id="bob")` again after clear_objects()
    x = torch.tensor([1, 2, 3]).send(bob)
    again = type(bob)(hook, id="bob")
    assert again is bob
    assert list(again._objects) == [x.id_at_location]
    assert x.location is again
