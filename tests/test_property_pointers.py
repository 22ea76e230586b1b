"""Random pointer programs never leave a dangling pointer or a leaked object.

Hypothesis drives random sequences of send, get, op, move, remote_get, send
onward and del across three workers. A model records, for every live pointer,
the chain of workers it goes through and the value at its end. After every step
the test reads each worker's ``_objects`` and checks that

* every live pointer resolves: each hop's object exists at the hop's worker,
  intermediate hops hold pointers to the next hop, and the last hop holds the
  tensor with the expected value (no pointer dangles);
* the workers hold exactly the objects that live pointers reach (nothing leaks).

At the end every pointer is dropped and every store must be empty.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import client as sy

WORKER_IDS = ("bob", "alice", "jon")
MAX_CHAIN = 4

ACTIONS = ("send", "send", "get", "op", "move", "remote_get", "send_onward", "del")
steps = st.lists(
    st.tuples(
        st.sampled_from(ACTIONS),
        st.integers(0, 31),
        st.integers(0, 31),
        st.integers(0, len(WORKER_IDS) - 1),
    ),
    min_size=1,
    max_size=14,
)


@dataclass(eq=False)  # pointers compare by identity: == on a pointer is a remote op
class Live:
    """A live client pointer, the workers its chain goes through, and the value at its end."""

    pointer: object
    path: list[str]
    value: torch.Tensor


def worker_id(location) -> str:
    return location if isinstance(location, str) else location.id


class PointerProgram:
    def __init__(self, workers: dict[str, object]) -> None:
        self.workers = workers
        self.live: list[Live] = []
        self.counter = 0

    # ---------------------------------------------------------------- actions
    def run(self, action: str, i: int, j: int, w: int) -> None:
        dest = WORKER_IDS[w]
        if action == "send" or not self.live:
            self.send(dest)
            return
        entry = self.live[i % len(self.live)]
        other = self.live[j % len(self.live)]
        getattr(self, action)(entry, other, dest)

    def send(self, dest: str) -> None:
        self.counter += 1
        value = torch.tensor([self.counter, 10 * self.counter, -self.counter])
        pointer = value.clone().send(self.workers[dest])
        assert pointer.location is self.workers[dest]
        self.live.append(Live(pointer, [dest], value))

    def get(self, entry: Live, other: Live, dest: str) -> None:
        result = entry.pointer.get()
        self.live.remove(entry)
        if len(entry.path) == 1:
            assert isinstance(result, torch.Tensor)
            assert not isinstance(result, type(entry.pointer))
            assert torch.equal(result, entry.value)
        else:
            assert result.location is self.workers[entry.path[1]]
            self.live.append(Live(result, entry.path[1:], entry.value))

    def op(self, entry: Live, other: Live, dest: str) -> None:
        if other.path == entry.path:
            result = entry.pointer + other.pointer
            value = entry.value + other.value
        else:
            result = entry.pointer * 2
            value = entry.value * 2
        assert result.location is self.workers[entry.path[0]]
        assert result.shape == value.shape
        self.live.append(Live(result, list(entry.path), value))

    def move(self, entry: Live, other: Live, dest: str) -> None:
        if len(entry.path) > 1 and entry.path[1] == dest:
            return  # would make a worker point at itself
        pointer_id, data_id = entry.pointer.id, entry.pointer.id_at_location
        assert entry.pointer.move(self.workers[dest]) is entry.pointer
        assert entry.pointer.location is self.workers[dest]
        assert entry.pointer.id_at_location == data_id
        assert entry.pointer.id == pointer_id
        entry.path[0] = dest

    def remote_get(self, entry: Live, other: Live, dest: str) -> None:
        if len(entry.path) == 1:
            with pytest.raises(sy.InvalidTensorForRemoteGet):
                entry.pointer.remote_get()
            return
        if len(entry.path) > 2 and entry.path[2] == entry.path[0]:
            return  # would make a worker point at itself
        assert entry.pointer.remote_get() is entry.pointer
        del entry.path[1]

    def send_onward(self, entry: Live, other: Live, dest: str) -> None:
        if dest == entry.path[0] or len(entry.path) >= MAX_CHAIN:
            return
        onward = entry.pointer.send(self.workers[dest])
        assert onward.location is self.workers[dest]
        assert onward.id_at_location == entry.pointer.id
        self.live.remove(entry)  # `x = x.send(alice)`: the old pointer is dropped
        self.live.append(Live(onward, [dest, *entry.path], entry.value))

    def del_(self, entry: Live, other: Live, dest: str) -> None:
        self.live.remove(entry)

    # ---------------------------------------------------------------- invariants
    def check(self) -> None:
        stores = {name: dict(worker._objects) for name, worker in self.workers.items()}
        reachable: set[tuple[str, int]] = set()
        for entry in self.live:
            pointer = entry.pointer
            assert pointer.location is self.workers[entry.path[0]]
            location, key = entry.path[0], pointer.id_at_location
            for depth, hop in enumerate(entry.path):
                assert location == hop, f"{pointer!r}: hop {depth} is {location}, expected {hop}"
                assert key in stores[hop], f"{pointer!r} dangles: {hop} has no {key}"
                reachable.add((hop, key))
                stored = stores[hop][key]
                if depth == len(entry.path) - 1:
                    assert isinstance(stored, torch.Tensor), f"{hop}[{key}] = {stored!r}"
                    assert torch.equal(stored, entry.value), f"{hop}[{key}]"
                else:
                    assert not isinstance(stored, torch.Tensor), f"{hop}[{key}] is data"
                    location, key = worker_id(stored.location), stored.id_at_location
        held = {(name, key) for name, store in stores.items() for key in store}
        assert held == reachable, f"leaked: {sorted(held - reachable)}"


#: ``del`` is a keyword, so its method is ``del_``
ACTION_METHODS = {"del": "del_"}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=steps)
def test_random_pointer_programs_never_dangle_or_leak(make_worker, program):
    workers = {name: make_worker(name) for name in WORKER_IDS}
    for worker in workers.values():
        worker.clear_objects()
    machine = PointerProgram(workers)

    for action, i, j, w in program:
        machine.run(ACTION_METHODS.get(action, action), i, j, w)
        machine.check()

    machine.live.clear()
    gc.collect()
    for name, worker in workers.items():
        assert worker._objects == {}, f"{name} still holds objects after every pointer is gone"
