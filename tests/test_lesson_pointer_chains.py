"""Pointers to pointers: lessons 000, 001 "Advanced Remote Execution Tools",
002 §3.1, 003 "Pointers referencing other pointers" and 004 §1.3 "Send pointer".

Where TensorFleet differs from PySyft on purpose (DESIGN.md): the pointer
returned by ``.get()`` on a pointer-to-pointer keeps garbage collection on.
"""

from __future__ import annotations

import gc

import pytest
import torch

import client as sy


def worker_id(location) -> str:
    """A stored pointer's location may be the worker id or the worker object."""
    return location if isinstance(location, str) else location.id


def assert_tensor_store(worker, expected: dict[int, torch.Tensor]) -> None:
    store = worker._objects
    assert set(store) == set(expected), f"{worker.id}: {sorted(store)} != {sorted(expected)}"
    for key, value in expected.items():
        assert isinstance(store[key], torch.Tensor), f"{worker.id}[{key}] = {store[key]!r}"
        assert torch.equal(store[key], value), f"{worker.id}[{key}]"


def assert_pointer_store(worker, expected: dict[int, tuple[str, int]]) -> None:
    """``expected`` maps each key to the (location, id_at_location) its stored pointer names."""
    store = worker._objects
    assert set(store) == set(expected), f"{worker.id}: {sorted(store)} != {sorted(expected)}"
    for key, (location, id_at_location) in expected.items():
        stored = store[key]
        assert worker_id(stored.location) == location
        assert stored.id_at_location == id_at_location
        assert repr(stored) == (
            f"(Wrapper)>[PointerTensor | {worker.id}:{key} -> {location}:{id_at_location}]"
        )


# ------------------------------------------------------------------ send a pointer onward


@pytest.mark.parametrize("names", [("bob", "alice"), ("julie", "toby")])
def test_sending_a_pointer_stores_a_pointer_on_the_second_worker(make_worker, me, names):
    holder, middle = (make_worker(name) for name in names)
    x_ptr = torch.tensor([2, 3, 4, 5]).send(holder)
    data_id = x_ptr.id_at_location
    assert repr(x_ptr) == f"(Wrapper)>[PointerTensor | me:{x_ptr.id} -> {holder.id}:{data_id}]"

    ptr_to_x_ptr = x_ptr.send(middle)

    # the data did not move: the holder still has it, the middle worker has a pointer to it
    assert_tensor_store(holder, {data_id: torch.tensor([2, 3, 4, 5])})
    assert_pointer_store(middle, {x_ptr.id: (holder.id, data_id)})
    assert ptr_to_x_ptr.location is middle
    assert ptr_to_x_ptr.id_at_location == x_ptr.id
    assert ptr_to_x_ptr.id != x_ptr.id
    assert repr(ptr_to_x_ptr) == (
        f"(Wrapper)>[PointerTensor | me:{ptr_to_x_ptr.id} -> {middle.id}:{x_ptr.id}]"
    )
    # ownership passed to the newest hop
    assert x_ptr.child.garbage_collect_data is False
    assert ptr_to_x_ptr.child.garbage_collect_data is True
    assert x_ptr.owner is me
    assert ptr_to_x_ptr.owner is me
    assert ptr_to_x_ptr.shape == torch.Size([4])
    assert ptr_to_x_ptr.dtype == torch.int64


def test_x_equals_x_send_alice_keeps_the_data(bob, alice):
    # lesson 000 cells 6-12: rebinding x drops the old pointer, which no longer owns bob's data
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    data_id, first_pointer_id = x.id_at_location, x.id

    x = x.send(alice)
    gc.collect()

    assert_tensor_store(bob, {data_id: torch.tensor([1, 2, 3, 4, 5])})
    assert_pointer_store(alice, {first_pointer_id: ("bob", data_id)})
    assert repr(x) == f"(Wrapper)>[PointerTensor | me:{x.id} -> alice:{first_pointer_id}]"


@pytest.mark.parametrize("names", [("bob", "alice"), ("julie", "toby")])
def test_get_on_pointer_to_pointer_returns_the_inner_pointer(make_worker, names):
    bob, alice = (make_worker(name) for name in names)
    x_ptr = torch.tensor([1, 2, 3, 4]).send(bob)
    data_id = x_ptr.id_at_location
    pointer_to_x_ptr = x_ptr.send(alice)

    inner = pointer_to_x_ptr.get()

    assert inner.location is bob
    assert inner.id_at_location == data_id
    assert repr(inner) == f"(Wrapper)>[PointerTensor | me:{inner.id} -> {bob.id}:{data_id}]"
    assert alice._objects == {}
    assert_tensor_store(bob, {data_id: torch.tensor([1, 2, 3, 4])})
    # TensorFleet: the returned pointer owns bob's data (PySyft leaked it)
    assert inner.child.garbage_collect_data is True

    x = inner.get()

    assert torch.equal(x, torch.tensor([1, 2, 3, 4]))
    assert bob._objects == {}
    assert alice._objects == {}


def test_pointer_returned_by_get_on_a_chain_collects_the_data(bob, alice):
    p2p = torch.tensor([1, 2, 3]).send(bob).send(alice)
    inner = p2p.get()
    assert len(bob._objects) == 1
    del inner
    assert bob._objects == {}
    assert alice._objects == {}


def test_send_send_then_get_get(bob, alice):
    # lesson 000 "How to get back the data from these pointers to pointer"
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    (data_id,) = bob._objects
    assert_tensor_store(bob, {data_id: torch.tensor([1, 2, 3, 4, 5])})
    assert_pointer_store(alice, {x.id_at_location: ("bob", data_id)})

    x = x.get()

    assert repr(x) == f"(Wrapper)>[PointerTensor | me:{x.id} -> bob:{data_id}]"
    assert_tensor_store(bob, {data_id: torch.tensor([1, 2, 3, 4, 5])})
    assert alice._objects == {}

    x = x.get()

    assert torch.equal(x, torch.tensor([1, 2, 3, 4, 5]))
    assert bob._objects == {}


@pytest.mark.parametrize(
    ("names", "values"),
    [
        (("bob", "alice"), [1, 2, 3, 4, 5]),  # lesson 000 cells 13-16, 001 cells 29-36, 002 §3.1
        (("julie", "toby"), [123, 13]),  # lesson 003 cells 47-55
    ],
)
def test_arithmetic_on_pointer_to_pointer(make_worker, names, values):
    bob, alice = (make_worker(name) for name in names)
    holder, middle = names
    original = torch.tensor(values)
    doubled = original * 2
    p2p = original.clone().send(bob).send(alice)
    (data_id,) = bob._objects

    y = p2p + p2p

    assert y.location is alice
    assert y.shape == original.shape
    assert y.dtype == torch.int64
    assert repr(y) == f"(Wrapper)>[PointerTensor | me:{y.id} -> {middle}:{y.id_at_location}]"
    alice_store = alice._objects
    assert set(alice_store) == {p2p.id_at_location, y.id_at_location}
    assert all(worker_id(stored.location) == holder for stored in alice_store.values())
    result_id = alice_store[y.id_at_location].id_at_location
    assert result_id != data_id
    assert_pointer_store(
        alice, {p2p.id_at_location: (holder, data_id), y.id_at_location: (holder, result_id)}
    )
    assert_tensor_store(bob, {data_id: original, result_id: doubled})

    assert torch.equal(y.get().get(), doubled)

    assert_tensor_store(bob, {data_id: original})
    assert_pointer_store(alice, {p2p.id_at_location: (holder, data_id)})

    assert torch.equal(p2p.get().get(), original)

    assert bob._objects == {}
    assert alice._objects == {}


def test_ops_on_chains_compose(bob, alice):
    a = torch.tensor([1.0, 2.0, 3.0])
    b = torch.tensor([0.5, 0.5, 0.5])
    pa = a.send(bob).send(alice)
    pb = b.send(bob).send(alice)

    z = ((pa * pb) + 1).sum()

    assert z.location is alice
    assert z.shape == torch.Size([])
    assert torch.allclose(z.get().get(), ((a * b) + 1).sum())
    assert len(bob._objects) == 2
    assert len(alice._objects) == 2


def test_in_place_op_on_pointer_to_pointer(bob, alice):
    p2p = torch.tensor([1, 2, 3]).send(bob).send(alice)
    (data_id,) = bob._objects
    same = p2p.add_(10)
    assert same is p2p
    assert_tensor_store(bob, {data_id: torch.tensor([11, 12, 13])})
    assert_pointer_store(alice, {p2p.id_at_location: ("bob", data_id)})


def test_three_hop_chain_that_revisits_a_worker(bob, alice):
    x = torch.tensor([1, 2, 3]).send(bob).send(alice).send(bob)
    assert x.location is bob
    assert len(bob._objects) == 2  # the data and a pointer to alice's pointer
    assert len(alice._objects) == 1

    y = x + x

    assert len(bob._objects) == 4
    assert len(alice._objects) == 2
    assert torch.equal(y.get().get().get(), torch.tensor([2, 4, 6]))
    assert len(bob._objects) == 2
    assert len(alice._objects) == 1

    del x
    assert bob._objects == {}
    assert alice._objects == {}


# ------------------------------------------------------------------ garbage collection of chains


def test_del_of_a_chain_empties_every_hop(bob, alice):
    # lesson 000 "Garbage collection", 001 cells 46-51
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    (data_id,) = bob._objects
    assert_tensor_store(bob, {data_id: torch.tensor([1, 2, 3, 4, 5])})
    assert_pointer_store(alice, {x.id_at_location: ("bob", data_id)})

    del x

    assert bob._objects == {}
    assert alice._objects == {}


def test_del_of_a_chain_right_after_making_it(bob, alice):
    # no synchronising call between building the chain and dropping it
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    del x
    assert bob._objects == {}
    assert alice._objects == {}


def test_del_of_a_chain_while_the_last_hop_has_other_work(bob, alice):
    x = torch.tensor([1, 2, 3]).send(bob).send(alice)
    y = torch.tensor([4, 5, 6]).send(bob)
    del x
    store = bob._objects
    assert list(store) == [y.id_at_location]
    assert alice._objects == {}


def test_dropping_the_old_pointer_of_a_chain_deletes_nothing(bob, alice):
    x_ptr = torch.tensor([1, 2, 3]).send(bob)
    data_id = x_ptr.id_at_location
    pointer_to_x_ptr = x_ptr.send(alice)

    del x_ptr
    gc.collect()

    assert_tensor_store(bob, {data_id: torch.tensor([1, 2, 3])})
    assert_pointer_store(alice, {pointer_to_x_ptr.id_at_location: ("bob", data_id)})

    del pointer_to_x_ptr

    assert bob._objects == {}
    assert alice._objects == {}


def test_del_of_a_three_worker_chain(bob, alice, jon):
    x = torch.tensor([7, 8]).send(bob).send(alice).send(jon)
    assert [len(w._objects) for w in (bob, alice, jon)] == [1, 1, 1]
    del x
    assert [w._objects for w in (bob, alice, jon)] == [{}, {}, {}]


# ------------------------------------------------------------------ owners (004 §1.3)


def test_owner_of_pointer_and_pointer_to_pointer_is_me(bob, alice, me):
    x_ptr = torch.tensor([1, 2, 3, 4]).send(bob)
    pointer_to_x_ptr = x_ptr.send(alice)
    assert x_ptr.owner is me
    assert pointer_to_x_ptr.owner is me
    assert_tensor_store(bob, {x_ptr.id_at_location: torch.tensor([1, 2, 3, 4])})
    assert_pointer_store(alice, {x_ptr.id: ("bob", x_ptr.id_at_location)})


# ------------------------------------------------------------------ errors on chains


def test_chains_that_end_on_the_same_worker_are_still_not_collocated(bob, alice, jon):
    # lesson 000 cells 28-29: the data is on bob, but alice and jon disagree
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    y = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(jon)

    with pytest.raises(sy.TensorsNotCollocatedException) as error:
        x + y

    message = str(error.value)
    assert "alice" in message
    assert "jon" in message
    assert len(bob._objects) == 2
    assert len(alice._objects) == 1
    assert len(jon._objects) == 1
