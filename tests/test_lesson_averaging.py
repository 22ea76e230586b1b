"""Lesson 004 §1.3 "Average gradients": models trained on bob and alice, averaged on secure_worker.

Only the average is fetched: the tests count the ``get`` commands the client
sends and check where they go. Federated results equal a local replay of the
same steps to 1e-5.
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from recording import recording_commands
from torch import nn, optim
from torch.utils.data import TensorDataset

from client.federated import FedAvg, LocalTraining, local_batches, secure_average


def gets(sent: list[tuple[str, list[Any]]]) -> list[str]:
    return [worker_id for worker_id, command in sent if command[0] == "get"]


# ------------------------------------------------------------------ send pointer / move


def test_owner_of_a_pointer_and_of_a_pointer_to_it_is_me(bob, alice, me):
    x = torch.tensor([1, 2, 3, 4])
    x_ptr = x.send(bob)
    assert x_ptr.owner is me

    pointer_to_x_ptr = x_ptr.send(alice)
    assert pointer_to_x_ptr.owner is me

    bobs = bob._objects
    assert list(bobs) == [x_ptr.id_at_location]
    assert torch.equal(bobs[x_ptr.id_at_location], x)
    (stored,) = alice._objects.values()
    assert repr(stored).endswith(f"-> bob:{x_ptr.id_at_location}]")


def test_send_data_directly_to_a_remote_machine(bob, alice):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    obj_id = x.id_at_location
    assert list(bob._objects) == [obj_id]
    assert alice._objects == {}

    x = x.move(alice)

    assert bob._objects == {}
    assert list(alice._objects) == [obj_id]
    assert torch.equal(alice._objects[obj_id], torch.tensor([1, 2, 3, 4, 5]))
    assert x.location is alice and x.id_at_location == obj_id


# ------------------------------------------------------------------ train two models, average


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]], requires_grad=True)
    target = torch.tensor([[0], [0], [1], [1.0]], requires_grad=True)
    return data, target


def new_model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(2, 1)


def test_train_two_models_and_average_on_the_secure_worker(bob, alice, secure_worker):
    data, target = toy_data()
    bobs_data, bobs_target = data[0:2].send(bob), target[0:2].send(bob)
    alices_data, alices_target = data[2:].send(alice), target[2:].send(alice)
    model = new_model()
    iterations, worker_iters = 10, 5
    remote_losses = []

    for a_iter in range(iterations):
        bobs_model = model.copy().send(bob)
        alices_model = model.copy().send(alice)
        bobs_opt = optim.SGD(params=bobs_model.parameters(), lr=0.1)
        alices_opt = optim.SGD(params=alices_model.parameters(), lr=0.1)

        for _ in range(worker_iters):
            bobs_opt.zero_grad()
            bobs_loss = ((bobs_model(bobs_data) - bobs_target) ** 2).sum()
            bobs_loss.backward()
            bobs_opt.step()
            bobs_loss = bobs_loss.get().data

            alices_opt.zero_grad()
            alices_loss = ((alices_model(alices_data) - alices_target) ** 2).sum()
            alices_loss.backward()
            alices_opt.step()
            alices_loss = alices_loss.get().data

        alices_model.move(secure_worker)
        bobs_model.move(secure_worker)
        if a_iter == 0:
            # the secure worker holds both models' 4 parameters; bob and alice only their data
            assert len(secure_worker._objects) == 4
            assert len(bob._objects) == 2 and len(alice._objects) == 2
        with recording_commands(secure_worker) as sent, torch.no_grad():
            model.weight.set_(((alices_model.weight.data + bobs_model.weight.data) / 2).get())
            model.bias.set_(((alices_model.bias.data + bobs_model.bias.data) / 2).get())
        assert gets(sent) == ["secure_worker", "secure_worker"]  # only the two averages
        remote_losses.append((bobs_loss, alices_loss))

    # local replay of the same steps
    reference = new_model()
    expected = []
    for _ in range(iterations):
        copies = [new_copy(reference) for _ in range(2)]
        opts = [optim.SGD(params=c.parameters(), lr=0.1) for c in copies]
        losses = [torch.tensor(0.0), torch.tensor(0.0)]
        for _ in range(worker_iters):
            for k, rows in enumerate((slice(0, 2), slice(2, 4))):
                opts[k].zero_grad()
                loss = ((copies[k](data[rows]) - target[rows]) ** 2).sum()
                loss.backward()
                opts[k].step()
                losses[k] = loss.data
        with torch.no_grad():
            reference.weight.set_((copies[1].weight.data + copies[0].weight.data) / 2)
            reference.bias.set_((copies[1].bias.data + copies[0].bias.data) / 2)
        expected.append(tuple(losses))

    assert torch.allclose(model.weight, reference.weight, atol=1e-5)
    assert torch.allclose(model.bias, reference.bias, atol=1e-5)
    for (bl, al), (ebl, eal) in zip(remote_losses, expected, strict=True):
        assert torch.allclose(bl, ebl, atol=1e-5) and torch.allclose(al, eal, atol=1e-5)
    assert remote_losses[-1][0] < remote_losses[0][0]


def new_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_secure_average_fetches_only_the_average(bob, alice, secure_worker):
    models = [nn.Linear(3, 2), nn.Linear(3, 2)]
    expected = [(a + b) / 2 for a, b in zip(*(m.parameters() for m in models), strict=True)]
    remote = [m.copy().send(w) for m, w in zip(models, (bob, alice), strict=True)]

    with recording_commands(bob) as sent:
        averages = secure_average(remote, secure_worker)

    assert gets(sent) == ["secure_worker"]  # one flat tensor, from the aggregator
    for average, want in zip(averages, expected, strict=True):
        assert average.shape == want.shape
        assert torch.allclose(average, want.detach(), atol=1e-6)
    assert bob._objects == {} and alice._objects == {}
    assert all(param.location is secure_worker for m in remote for param in m.parameters())
    del remote
    assert secure_worker._objects == {}


def test_secure_average_weights_by_share(bob, alice, secure_worker):
    first, second = nn.Linear(2, 1), nn.Linear(2, 1)
    remote = [first.copy().send(bob), second.copy().send(alice)]

    averages = secure_average(remote, secure_worker, weights=[0.25, 0.75])

    want = first.weight.detach() * 0.25 + second.weight.detach() * 0.75
    assert torch.allclose(averages[0], want, atol=1e-6)


# ------------------------------------------------------------------ FedAvg rounds


def replay_fedavg(model: nn.Module, shares, training: LocalTraining, rounds: int, seed: int):
    """FedAvg on local tensors: the same steps, batches and averaging, in the same order."""
    generator = torch.Generator().manual_seed(seed)
    total = sum(len(x) for x, _ in shares)
    for _ in range(rounds):
        trained = []
        for x, y in shares:
            local = new_copy(model)
            opt = training.make_optimizer(local.parameters())
            for _ in range(training.epochs):
                for data, target in local_batches(
                    x, y, training.batch_size, training.shuffle, training.drop_last, generator
                ):
                    opt.zero_grad()
                    training.loss(local(data), target).backward()
                    opt.step()
            trained.append(local)
        weights = [len(x) / total for x, _ in shares]
        with torch.no_grad():
            for params in zip(model.parameters(), *(m.parameters() for m in trained), strict=True):
                average = params[1] * weights[0]
                for param, weight in zip(params[2:], weights[1:], strict=True):
                    average = average + param * weight
                params[0].copy_(average)
    return model


def test_fedavg_rounds_equal_a_local_replay(bob, alice, jon, secure_worker):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(70, 4, generator=generator)
    y = (x.sum(dim=1) > 0).long()
    training = LocalTraining(epochs=2, batch_size=8, lr=0.2)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    reference = new_copy(model)
    dataset = TensorDataset(x, y).federate((bob, alice, jon))
    strategy = FedAvg(secure_worker, training, generator=torch.Generator().manual_seed(9))

    with recording_commands(bob) as sent:
        results = [strategy.fit_round(model, dataset) for _ in range(2)]

    shares = [(x[0:24], y[0:24]), (x[24:48], y[24:48]), (x[48:70], y[48:70])]
    replay_fedavg(reference, shares, training, rounds=2, seed=9)
    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert type(param) is nn.Parameter
        assert torch.allclose(param, expected, atol=1e-5)
    # per round: the average (from secure_worker) and one loss from each owner
    assert sorted(gets(sent)) == sorted(["secure_worker", "bob", "alice", "jon"] * 2)
    assert results[0].samples == {"bob": 24, "alice": 24, "jon": 22}
    assert set(results[0].losses) == {"bob", "alice", "jon"}
    assert results[1].loss < results[0].loss
    # nothing is left behind but the data shares (the strategy's training-step plans go with it)
    del results, strategy
    gc.collect()
    assert secure_worker._objects == {}
    assert all(len(w._objects) == 2 for w in (bob, alice, jon))
