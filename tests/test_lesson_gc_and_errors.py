"""Lesson 001 "Garbage Collection and Common Errors", cell by cell.

Garbage collection is pipelined, but ``worker._objects`` is a synchronising
call that sends pending deletes first, so the store is checked right after
``del`` exactly as the lesson does.
"""

from __future__ import annotations

import gc

import pytest
import torch

import client as sy


def test_garbage_collect_data_is_on_by_default(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    assert x.child.garbage_collect_data is True


def test_del_deletes_the_remote_object(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    assert list(bob._objects) == [x.id_at_location]

    del x

    assert bob._objects == {}


def test_rebinding_the_name_deletes_the_remote_object(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    assert len(bob._objects) == 1

    x = "asdf"

    assert bob._objects == {}
    assert x == "asdf"


def test_deletes_only_the_object_of_the_dropped_pointer(bob):
    keep = torch.tensor([1, 1, 1]).send(bob)
    drop = torch.tensor([2, 2, 2]).send(bob)
    assert set(bob._objects) == {keep.id_at_location, drop.id_at_location}

    del drop

    assert list(bob._objects) == [keep.id_at_location]
    assert torch.equal(bob._objects[keep.id_at_location], torch.tensor([1, 1, 1]))


def test_garbage_collect_data_false_keeps_the_object(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    kept_id = x.id_at_location
    x.child.garbage_collect_data = False

    del x
    gc.collect()

    assert list(bob._objects) == [kept_id]
    assert torch.equal(bob._objects[kept_id], torch.tensor([1, 2, 3, 4, 5]))


def test_op_results_are_collected_when_dropped(bob):
    x = torch.tensor([1, 2, 3]).send(bob)
    z = x + x
    assert len(bob._objects) == 2
    del z
    assert list(bob._objects) == [x.id_at_location]


def test_get_then_drop_sends_no_second_delete(bob):
    x = torch.tensor([1, 2, 3]).send(bob)
    value = x.get()
    y = torch.tensor([4, 5, 6]).send(bob)
    del x
    gc.collect()
    assert list(bob._objects) == [y.id_at_location]
    assert torch.equal(value, torch.tensor([1, 2, 3]))


def test_a_loop_of_1000_sends_leaves_one_object(bob):
    x = None
    for i in range(1000):
        x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
        if i % 50 == 0:
            store = bob._objects
            assert list(store) == [x.id_at_location]
            assert torch.equal(store[x.id_at_location], torch.tensor([1, 2, 3, 4, 5]))
        if i % 200 == 0:
            x = "x updated myself!"
            assert bob._objects == {}

    store = bob._objects
    assert list(store) == [x.id_at_location]
    assert torch.equal(store[x.id_at_location], torch.tensor([1, 2, 3, 4, 5]))
    assert "id:bob #objects:1" in repr(bob)


def test_clear_objects_idiom(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    bob = bob.clear_objects()
    assert bob._objects == {}
    assert "id:bob #objects:0" in repr(bob)
    del x  # a delete for an id bob no longer holds is harmless
    assert bob._objects == {}


# ------------------------------------------------------------------ common errors


def test_pointer_plus_local_tensor_is_not_collocated(bob):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1])
    assert torch.equal(y, torch.tensor([1, 1, 1, 1, 1]))

    with pytest.raises(sy.TensorsNotCollocatedException) as error:
        x + y

    message = str(error.value)
    assert "bob" in message
    assert "me" in message
    assert ".get()" in message
    assert ".send(bob)" in message
    assert list(bob._objects) == [x.id_at_location]


def test_pointers_on_different_workers_are_not_collocated(bob, alice):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1]).send(alice)

    with pytest.raises(sy.TensorsNotCollocatedException) as error:
        x + y

    message = str(error.value)
    assert "bob" in message
    assert "alice" in message
    assert ".move(" in message
    assert "{" not in message
    assert list(bob._objects) == [x.id_at_location]
    assert list(alice._objects) == [y.id_at_location]


def test_not_collocated_is_a_tensorfleet_error_importable_from_both_modules():
    import client.exceptions

    assert sy.TensorsNotCollocatedException is client.exceptions.TensorsNotCollocatedException
    assert issubclass(sy.TensorsNotCollocatedException, sy.TensorFleetError)
