"""Lesson 001 "Toy Federated Learning" and lesson 004 §1.2 "Toy model" (with Optims), cell by cell.

Every federated run is checked against a local replay of the same steps (same
initial weights, same data, same order) to 1e-5.
"""

from __future__ import annotations

import itertools
import re

import torch
from torch import nn, optim

import client as sy
from client.federated import Optims

WORKER_REPR = re.compile(r"^<(VirtualWorker|FleetWorker) id:(\w+) #objects:(\d+)>$")


# ------------------------------------------------------------------ lesson 001


def lesson_001_data() -> tuple[torch.Tensor, torch.Tensor]:
    # In [5]: A Toy Dataset
    data = torch.tensor([[1.0, 1], [0, 1], [1, 0], [0, 0]], requires_grad=True)
    target = torch.tensor([[1.0], [1], [0], [0]], requires_grad=True)
    return data, target


def new_model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(2, 1)  # In [6]: A Toy Model


def test_001_centralized_toy_training_converges():
    data, target = lesson_001_data()
    model = new_model()
    opt = optim.SGD(params=model.parameters(), lr=0.1)  # In [7]

    losses = []
    for _ in range(20):  # In [9]: train()
        opt.zero_grad()
        pred = model(data)
        loss = ((pred - target) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.data)

    assert all(b < a for a, b in itertools.pairwise(losses[2:]))
    assert losses[-1] < 0.05


def test_001_workers_start_empty(bob, alice):
    # In [13]/[14]: bob, alice -> <VirtualWorker id:bob #objects:0>
    for worker, name in ((bob, "bob"), (alice, "alice")):
        match = WORKER_REPR.match(repr(worker))
        assert match is not None, repr(worker)
        assert match.group(2) == name
        assert match.group(3) == "0"


def send_lesson_001_data(bob, alice):
    data, target = lesson_001_data()
    data_bob = data[0:2].send(bob)  # In [15]
    target_bob = target[0:2].send(bob)
    data_alice = data[2:4].send(alice)  # In [16]
    target_alice = target[2:4].send(alice)
    return [(data_bob, target_bob), (data_alice, target_alice)]  # In [17]


def test_001_sending_the_toy_data_to_bob_and_alice(bob, alice):
    datasets = send_lesson_001_data(bob, alice)

    (data_bob, target_bob), (data_alice, target_alice) = datasets
    assert data_bob.location is bob and target_bob.location is bob
    assert data_alice.location is alice and target_alice.location is alice
    assert data_bob.shape == torch.Size([2, 2]) and target_alice.shape == torch.Size([2, 1])
    assert data_bob.requires_grad
    assert len(bob._objects) == 2
    assert len(alice._objects) == 2
    assert torch.equal(bob._objects[data_bob.id_at_location], torch.tensor([[1.0, 1], [0, 1]]))


def test_001_federated_training_matches_a_local_replay(bob, alice):
    datasets = send_lesson_001_data(bob, alice)

    # In [24]: train(), the model visiting each worker in turn
    model = new_model()
    opt = optim.SGD(params=model.parameters(), lr=0.1)
    losses, locations = [], []
    for _ in range(20):
        for _data, _target in datasets:
            model = model.send(_data.location)  # send model to the data
            locations.append(_data.location.id)
            opt.zero_grad()
            pred = model(_data)
            loss = ((pred - _target) ** 2).sum()
            loss.backward()
            opt.step()
            model = model.get()  # get smarter model back
            losses.append(loss.get())

    assert locations[:4] == ["bob", "alice", "bob", "alice"]
    assert all(type(param) is nn.Parameter for param in model.parameters())
    assert losses[0].requires_grad  # tensor(2.0736, requires_grad=True) in the lesson
    assert losses[-1] < 0.01

    data, target = lesson_001_data()
    reference = new_model()
    reference_opt = optim.SGD(params=reference.parameters(), lr=0.1)
    expected = []
    for _ in range(20):
        for rows in (slice(0, 2), slice(2, 4)):
            reference_opt.zero_grad()
            loss = ((reference(data[rows]) - target[rows]) ** 2).sum()
            loss.backward()
            reference_opt.step()
            expected.append(loss)
    for remote, local in zip(losses, expected, strict=True):
        assert torch.allclose(remote, local, atol=1e-5)
    for param, ref in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(param, ref, atol=1e-5)
    # the model came back: only the data (and the lesson's last losses' graph) stay behind
    assert all(type(obj) is torch.Tensor for obj in bob._objects.values())


# ------------------------------------------------------------------ lesson 004 §1.2


def lesson_004_data() -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]], requires_grad=True)
    target = torch.tensor([[0], [0], [1], [1.0]], requires_grad=True)
    return data, target


def test_004_train_on_local_machine():
    data, target = lesson_004_data()
    model = new_model()
    opt = optim.SGD(params=model.parameters(), lr=0.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((model(data) - target) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.data)

    assert losses[-1] < losses[0]
    assert losses[-1] < 0.05


def test_004_train_on_remote_machines_with_optims(bob, alice):
    data, target = lesson_004_data()
    data_bob, target_bob = data[0:2].send(bob), target[0:2].send(bob)
    data_alice, target_alice = data[2:].send(alice), target[2:].send(alice)
    datasets = [(data_bob, target_bob), (data_alice, target_alice)]
    model = new_model()

    workers = ["bob", "alice"]
    optims = Optims(workers, optim=optim.Adam(params=model.parameters(), lr=0.1))
    losses = []
    for _ in range(10):  # train_federated()
        for data_ptr, target_ptr in datasets:
            model.send(data_ptr.location)
            opt = optims.get_optim(data_ptr.location.id)
            opt.zero_grad()
            pred = model(data_ptr)
            loss = ((pred - target_ptr) ** 2).sum()
            loss.backward()
            opt.step()
            model.get()
            losses.append(loss.get())

    # each worker's Adam moments live on that worker
    for worker in (bob, alice):
        moments = [v for s in optims.get_optim(worker.id).state.values() for k, v in s.items()
                   if k != "step"]  # fmt: skip
        assert moments and all(m.location is worker for m in moments)
        assert all(type(m) is sy.PointerTensor for m in moments)

    reference = new_model()
    local_optims = [optim.Adam(params=reference.parameters(), lr=0.1) for _ in workers]
    expected = []
    for _ in range(10):
        for rows, opt in zip((slice(0, 2), slice(2, 4)), local_optims, strict=True):
            opt.zero_grad()
            loss = ((reference(data[rows]) - target[rows]) ** 2).sum()
            loss.backward()
            opt.step()
            expected.append(loss)
    for remote, local in zip(losses, expected, strict=True):
        assert torch.allclose(remote, local, atol=1e-5)
    for param, ref in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(param, ref, atol=1e-5)
    assert losses[-1] < losses[0]
