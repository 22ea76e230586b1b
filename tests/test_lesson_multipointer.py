"""Lesson 001 "Project: Playing with Remote Tensors": ``x.send(bob, alice)``."""

from __future__ import annotations

import re

import torch

POINTER_LINE = r"\t?-> \(Wrapper\)>\[PointerTensor \| me:(\d+) -> {worker}:(\d+)\]"


def test_send_to_two_workers_gives_a_multi_pointer(bob, alice):
    x = torch.tensor([1, 2, 3, 4, 5])

    x_ptr = x.send(bob, alice)

    lines = repr(x_ptr).splitlines()
    assert lines[0] == "(Wrapper)>[MultiPointerTensor]"
    assert len(lines) == 3
    assert re.fullmatch(POINTER_LINE.format(worker="bob"), lines[1].strip())
    assert re.fullmatch(POINTER_LINE.format(worker="alice"), lines[2].strip())

    children = x_ptr.child.child
    assert isinstance(children, dict)
    assert list(children) == ["bob", "alice"]
    assert children["bob"].location is bob
    assert children["alice"].location is alice
    for name, child in children.items():
        assert repr(child) == (
            f"(Wrapper)>[PointerTensor | me:{child.id} -> {name}:{child.id_at_location}]"
        )
    assert children["bob"].id != children["alice"].id
    for worker in (bob, alice):
        store = worker._objects
        assert list(store) == [children[worker.id].id_at_location]
        assert torch.equal(store[children[worker.id].id_at_location], x)
    # the repr lines name the same pointers as the children
    for line, child in zip(lines[1:], children.values(), strict=True):
        assert f"me:{child.id} -> " in line
        assert line.endswith(f":{child.id_at_location}]")


def test_multi_pointer_get_returns_a_list_in_argument_order(bob, alice):
    x_ptr = torch.tensor([1, 2, 3, 4, 5]).send(bob, alice)

    result = x_ptr.get()

    assert isinstance(result, list)
    assert len(result) == 2
    for tensor in result:
        assert torch.equal(tensor, torch.tensor([1, 2, 3, 4, 5]))
    assert bob._objects == {}
    assert alice._objects == {}


def test_multi_pointer_get_sum_results(bob, alice):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob, alice)

    total = x.get(sum_results=True)

    assert torch.equal(total, torch.tensor([2, 4, 6, 8, 10]))
    assert bob._objects == {}
    assert alice._objects == {}


def test_children_follow_the_argument_order(bob, alice, jon):
    x = torch.tensor([1.0, 2.0]).send(jon, alice, bob)
    assert list(x.child.child) == ["jon", "alice", "bob"]
    lines = repr(x).splitlines()
    assert [re.search(r"-> (\w+):\d+\]$", line).group(1) for line in lines[1:]] == [
        "jon",
        "alice",
        "bob",
    ]
    assert all(len(w._objects) == 1 for w in (bob, alice, jon))
    assert torch.equal(x.get(sum_results=True), torch.tensor([3.0, 6.0]))


def test_each_worker_gets_its_own_copy(bob, alice):
    x = torch.tensor([1, 2, 3]).send(bob, alice)
    bob_child = x.child.child["bob"]
    bob_child.add_(10)
    first, second = x.get()
    assert torch.equal(first, torch.tensor([11, 12, 13]))
    assert torch.equal(second, torch.tensor([1, 2, 3]))


def test_dropping_a_multi_pointer_deletes_every_copy(bob, alice):
    x = torch.tensor([1, 2, 3]).send(bob, alice)
    assert len(bob._objects) == 1
    assert len(alice._objects) == 1
    del x
    assert bob._objects == {}
    assert alice._objects == {}
