"""``move`` and ``remote_get``: lesson 000 "Pointer Chain Operations" and "Move",
001 "Pointer Chain Operations", 002 §3.2, 003 §3.2 and 004 §1.3 "Send data directly".

Adopted semantics (DESIGN.md): ``move`` keeps the id, deletes the source copy,
mutates the pointer in place and keeps its garbage collection; moving to the
current location does nothing; ``remote_get`` on me -> alice -> bob leaves the
data on alice under the key the client points to.
"""

from __future__ import annotations

import gc

import pytest
import torch

import client as sy


def assert_tensor_store(worker, expected: dict[int, torch.Tensor]) -> None:
    store = worker._objects
    assert set(store) == set(expected), f"{worker.id}: {sorted(store)} != {sorted(expected)}"
    for key, value in expected.items():
        assert isinstance(store[key], torch.Tensor), f"{worker.id}[{key}] = {store[key]!r}"
        assert torch.equal(store[key], value), f"{worker.id}[{key}]"


# ------------------------------------------------------------------ move


def test_move_sends_the_data_directly_and_keeps_the_id(bob, alice):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    pointer_id, data_id = x.id, x.id_at_location
    assert_tensor_store(bob, {data_id: torch.tensor([1, 2, 3, 4, 5])})
    assert alice._objects == {}

    moved = x.move(alice)

    assert moved is x
    assert x.location is alice
    assert x.id_at_location == data_id
    assert x.id == pointer_id
    assert repr(x) == f"(Wrapper)>[PointerTensor | me:{pointer_id} -> alice:{data_id}]"
    assert x.child.garbage_collect_data is True
    assert bob._objects == {}
    assert_tensor_store(alice, {data_id: torch.tensor([1, 2, 3, 4, 5])})


def test_x_equals_x_move_alice(bob, alice):
    # lessons 002 §3.2 and 004 §1.3 rebind the name to the result
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    data_id = x.id_at_location
    x = x.move(alice)
    gc.collect()
    assert bob._objects == {}
    assert_tensor_store(alice, {data_id: torch.tensor([1, 2, 3, 4, 5])})
    assert torch.equal(x.get(), torch.tensor([1, 2, 3, 4, 5]))
    assert alice._objects == {}


def test_moved_pointer_still_collects_its_data(bob, alice):
    x = torch.tensor([1, 2]).send(bob).move(alice)
    assert len(alice._objects) == 1
    del x
    assert alice._objects == {}
    assert bob._objects == {}


def test_move_to_the_current_location_does_nothing(bob):
    x = torch.tensor([1, 2, 3]).send(bob)
    data_id = x.id_at_location

    assert x.move(bob) is x

    assert x.location is bob
    assert x.id_at_location == data_id
    assert_tensor_store(bob, {data_id: torch.tensor([1, 2, 3])})
    assert torch.equal(x.get(), torch.tensor([1, 2, 3]))


def test_move_an_op_result_and_keep_computing(bob, alice):
    x = torch.tensor([1.0, 2.0]).send(bob)
    y = torch.tensor([3.0, 4.0]).send(alice)
    z = (x * 2).move(alice)
    assert z.location is alice

    w = z + y

    assert w.location is alice
    assert torch.equal(w.get(), torch.tensor([5.0, 8.0]))
    assert list(bob._objects) == [x.id_at_location]
    assert set(alice._objects) == {y.id_at_location, z.id_at_location}


def test_move_keeps_requires_grad_and_grad(bob, alice):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True).send(bob)
    x.sum().backward()
    x.move(alice)
    assert bob._objects == {}
    back = x.get()
    assert back.requires_grad
    assert torch.equal(back.detach(), torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(back.grad, torch.ones(3))


def test_move_there_and_back(bob, alice, jon):
    x = torch.tensor([9, 8, 7]).send(bob)
    data_id = x.id_at_location
    x.move(alice).move(jon).move(bob)
    assert x.location is bob
    assert_tensor_store(bob, {data_id: torch.tensor([9, 8, 7])})
    assert alice._objects == {}
    assert jon._objects == {}


# ------------------------------------------------------------------ remote_get


def test_remote_get_pulls_the_data_to_the_middle_worker(bob, alice):
    # lesson 000 "Move data from bob to alice"
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    (data_id,) = bob._objects
    (pointer_key,) = alice._objects
    assert pointer_key == x.id_at_location
    assert alice._objects[pointer_key].id_at_location == data_id
    pointer_id = x.id

    same = x.remote_get()

    assert same is x
    assert x.location is alice
    assert x.id_at_location == pointer_key
    assert x.id == pointer_id
    assert repr(x) == f"(Wrapper)>[PointerTensor | me:{pointer_id} -> alice:{pointer_key}]"
    assert bob._objects == {}
    assert_tensor_store(alice, {pointer_key: torch.tensor([1, 2, 3, 4, 5])})

    assert torch.equal(x.get(), torch.tensor([1, 2, 3, 4, 5]))
    assert alice._objects == {}


def test_pointer_after_remote_get_still_collects_its_data(bob, alice):
    x = torch.tensor([1, 2]).send(bob).send(alice)
    x.remote_get()
    del x
    assert bob._objects == {}
    assert alice._objects == {}


def test_remote_get_on_a_one_hop_pointer_is_invalid(bob):
    x = torch.tensor([1]).send(bob)

    with pytest.raises(sy.InvalidTensorForRemoteGet) as error:
        x.remote_get()

    assert "bob" in str(error.value)
    assert isinstance(error.value, sy.TensorFleetError)
    assert_tensor_store(bob, {x.id_at_location: torch.tensor([1])})
    assert torch.equal(x.get(), torch.tensor([1]))


def test_remote_get_on_a_three_hop_chain_shortens_it_by_one(bob, alice, jon):
    x = torch.tensor([4, 5]).send(bob).send(alice).send(jon)
    (data_id,) = bob._objects
    x.remote_get()
    assert alice._objects == {}
    assert_tensor_store(bob, {data_id: torch.tensor([4, 5])})
    (stored,) = jon._objects.values()
    assert stored.id_at_location == data_id
    assert torch.equal(x.get().get(), torch.tensor([4, 5]))
    assert [w._objects for w in (bob, alice, jon)] == [{}, {}, {}]


def test_lesson_001_pointer_chain_operations(bob, alice):
    # lesson 001 cells 52-68, keeping the first moved pointer alive as the notebook's Out[] did
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    first_id = x.id_at_location
    assert_tensor_store(bob, {first_id: torch.tensor([1, 2, 3, 4, 5])})
    assert alice._objects == {}

    moved = x.move(alice)

    assert repr(moved) == f"(Wrapper)>[PointerTensor | me:{moved.id} -> alice:{first_id}]"
    assert bob._objects == {}
    assert_tensor_store(alice, {first_id: torch.tensor([1, 2, 3, 4, 5])})

    x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    (data_id,) = bob._objects
    alice_store = alice._objects
    assert set(alice_store) == {first_id, x.id_at_location}
    assert torch.equal(alice_store[first_id], torch.tensor([1, 2, 3, 4, 5]))
    assert alice_store[x.id_at_location].id_at_location == data_id

    assert x.remote_get() is x

    assert bob._objects == {}
    assert_tensor_store(
        alice,
        {first_id: torch.tensor([1, 2, 3, 4, 5]), x.id_at_location: torch.tensor([1, 2, 3, 4, 5])},
    )

    key = x.id_at_location
    assert x.move(bob) is x

    assert repr(x) == f"(Wrapper)>[PointerTensor | me:{x.id} -> bob:{key}]"
    assert_tensor_store(bob, {key: torch.tensor([1, 2, 3, 4, 5])})
    # the lesson's "garbage collection issue" is gone: alice keeps only the first moved tensor
    assert_tensor_store(alice, {first_id: torch.tensor([1, 2, 3, 4, 5])})


def test_lesson_003_move_from_toby_to_julie(make_worker):
    toby, julie = make_worker("toby"), make_worker("julie")
    tensor1 = torch.tensor([1, 2]).send(toby)
    data_id = tensor1.id_at_location
    assert_tensor_store(toby, {data_id: torch.tensor([1, 2])})
    assert julie._objects == {}

    tensor1 = tensor1.move(julie)

    assert repr(tensor1) == f"(Wrapper)>[PointerTensor | me:{tensor1.id} -> julie:{data_id}]"
    assert toby._objects == {}
    assert_tensor_store(julie, {data_id: torch.tensor([1, 2])})
