"""Pipelined commands: ordering, result metadata, and how failures surface.

A pointer-returning op is queued and the pointer comes back at once; a failure
that only the data can reveal (a division by zero, an index out of range, an id
that is gone) raises its original type and message at the next synchronising
call to that worker, and every later use of the failed result raises it again.
A failed result never appears in ``_objects``.
"""

from __future__ import annotations

import pytest
import torch

import client as sy


def local_error(call) -> Exception:
    try:
        call()
    except Exception as error:
        return error
    raise AssertionError("the local call did not fail")


def test_many_queued_ops_run_in_order(bob):
    x = torch.tensor([0, 0, 0]).send(bob)
    for i in range(200):
        x.add_(1)
        if i == 99:
            x.mul_(2)
    assert torch.equal(x.get(), torch.tensor([300, 300, 300]))


def test_a_long_dependent_chain_of_results(bob):
    x = torch.tensor([1.0, 2.0]).send(bob)
    y = x
    for _ in range(100):
        y = y + 1
    assert y.shape == torch.Size([2])
    assert torch.equal(y.get(), torch.tensor([101.0, 102.0]))
    assert list(bob._objects) == [x.id_at_location]


def test_result_metadata_is_known_before_any_get(bob):
    a = torch.ones(4, 2, requires_grad=True).send(bob)
    b = torch.ones(2, 3).send(bob)
    cases = {
        "mm": (a.mm(b), (4, 3), torch.float32, True),
        "sum": (a.sum(), (), torch.float32, True),
        "sum_dim": (b.sum(dim=1), (2,), torch.float32, False),
        "t": (b.t(), (3, 2), torch.float32, False),
        "view": (b.view(-1), (6,), torch.float32, False),
        "slice": (a[1:3], (2, 2), torch.float32, True),
        "compare": (b > 0, (2, 3), torch.bool, False),
        "to_long": (b.long(), (2, 3), torch.int64, False),
        "broadcast": (
            a.unsqueeze(0) + torch.ones(3, 1, 1).send(bob),
            (3, 4, 2),
            torch.float32,
            True,
        ),
    }
    for name, (pointer, shape, dtype, requires_grad) in cases.items():
        assert pointer.shape == torch.Size(shape), name
        assert pointer.dtype == dtype, name
        assert pointer.requires_grad is requires_grad, name
    for name, (pointer, shape, dtype, _) in cases.items():
        value = pointer.get()
        assert value.shape == torch.Size(shape), name
        assert value.dtype == dtype, name


def test_a_shape_error_raises_and_stores_nothing(bob):
    x = torch.ones(2, 3).send(bob)
    y = torch.ones(2, 3).send(bob)
    expected = local_error(lambda: torch.ones(2, 3).mm(torch.ones(2, 3)))

    with pytest.raises(RuntimeError) as error:
        z = x.mm(y)
        z.get()

    assert str(error.value) == str(expected)
    assert set(bob._objects) == {x.id_at_location, y.id_at_location}


def test_a_failing_op_raises_at_the_next_sync_call(bob):
    x = torch.tensor([1, 2]).send(bob)
    zero = torch.tensor([0, 1]).send(bob)
    expected = local_error(lambda: torch.tensor([1, 2]) // torch.tensor([0, 1]))

    z = x // zero  # queued: the pointer comes back, nothing is raised yet

    assert z.location is bob
    assert z.shape == torch.Size([2])
    with pytest.raises(type(expected)) as error:
        bob._objects  # noqa: B018  (a synchronising call)
    assert str(error.value) == str(expected)

    store = bob._objects  # reported once: the next call answers
    assert set(store) == {x.id_at_location, zero.id_at_location}
    assert z.id_at_location not in store


def test_a_failure_surfaces_at_the_get_of_another_pointer(bob):
    x = torch.tensor([5.0, 6.0]).send(bob)
    idx = torch.tensor([7]).send(bob)
    other = torch.tensor([1.0]).send(bob)
    expected = local_error(lambda: torch.tensor([5.0, 6.0]).index_select(0, torch.tensor([7])))

    z = x.index_select(0, idx)
    assert z.shape == torch.Size([1])

    with pytest.raises(type(expected)) as error:
        other.get()

    assert str(error.value) == str(expected)
    assert z.id_at_location not in bob._objects


def test_every_later_use_of_a_failed_result_raises_the_same_error(bob):
    x = torch.tensor([1, 2]).send(bob)
    zero = torch.tensor([0, 0]).send(bob)
    expected = local_error(lambda: torch.tensor([1, 2]) // torch.tensor([0, 0]))
    z = x // zero
    with pytest.raises(type(expected)):
        bob._objects  # noqa: B018

    with pytest.raises(type(expected)) as first:
        z.get()
    assert str(first.value) == str(expected)

    w = z + 1  # depends on the failed result: fails the same way
    with pytest.raises(type(expected)) as second:
        w.get()
    assert str(second.value) == str(expected)

    with pytest.raises(type(expected)) as third:
        z.get()
    assert str(third.value) == str(expected)

    store = bob._objects
    assert set(store) == {x.id_at_location, zero.id_at_location}


def test_a_dependent_queued_before_the_report_fails_too(bob):
    x = torch.tensor([1, 2]).send(bob)
    zero = torch.tensor([0, 0]).send(bob)
    expected = local_error(lambda: torch.tensor([1, 2]) // torch.tensor([0, 0]))

    z = x // zero
    w = (z * 2).sum()  # queued behind the failure, in the same batch

    with pytest.raises(type(expected)) as error:
        w.get()
    assert str(error.value) == str(expected)
    store = bob._objects
    assert z.id_at_location not in store
    assert w.id_at_location not in store


def test_commands_after_a_failure_still_run(bob):
    x = torch.tensor([1, 2]).send(bob)
    zero = torch.tensor([0, 0]).send(bob)
    expected = local_error(lambda: torch.tensor([1, 2]) // torch.tensor([0, 0]))

    z = x // zero
    ok = x + 10
    x.add_(100)

    with pytest.raises(type(expected)):
        bob._objects  # noqa: B018
    assert torch.equal(ok.get(), torch.tensor([11, 12]))
    assert torch.equal(x.get(), torch.tensor([101, 102]))
    assert z.id_at_location not in bob._objects


def test_a_queued_op_on_a_cleared_id_fails_with_object_not_found(bob):
    x = torch.tensor([1, 2, 3]).send(bob)
    missing = x.id_at_location
    bob.clear_objects()

    y = x + x

    with pytest.raises(sy.ObjectNotFoundError) as error:
        y.get()
    assert str(missing) in str(error.value)
    assert "bob" in str(error.value)
    assert y.id_at_location not in bob._objects

    with pytest.raises(sy.ObjectNotFoundError) as again:
        (y * 2).get()
    assert str(again.value) == str(error.value)


def test_failure_of_a_pipelined_op_on_a_pointer_to_pointer(bob, alice):
    x = torch.tensor([1, 2]).send(bob).send(alice)
    zero = torch.tensor([0, 0]).send(bob).send(alice)
    expected = local_error(lambda: torch.tensor([1, 2]) // torch.tensor([0, 0]))
    data = {alice._objects[p.id_at_location].id_at_location for p in (x, zero)}

    z = x // zero  # alice forwards to bob, where it fails

    with pytest.raises(type(expected)) as error:
        z.get().get()
    assert str(error.value) == str(expected)
    # the failed result is failed at every hop: no hop keeps a pointer to nothing
    assert set(alice._objects) == {x.id_at_location, zero.id_at_location}
    assert set(bob._objects) == data
    with pytest.raises(type(expected)) as again:
        z.get().get()
    assert str(again.value) == str(expected)
