"""``nn.Module.send/get/copy/move``: models go to the data, in place (semantics §3.14).

While a module is remote its parameters are pointers; ``get()`` brings back the
same Parameter objects, so an optimizer built before ``send`` keeps working and
its state (momentum, Adam's moments) lives where the parameters are.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import client as sy

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),
    "momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.05),
}


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, generator=generator), torch.tensor([0, 1, 1, 0, 1, 0])


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, data, target, steps: int):
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
        losses.append(loss)
    return losses


def assert_same_parameters(model: nn.Module, expected: nn.Module, atol: float = 1e-5) -> None:
    for (name, param), reference in zip(
        model.named_parameters(), expected.parameters(), strict=True
    ):
        assert type(param) is nn.Parameter, name
        assert torch.allclose(param.detach(), reference.detach(), atol=atol), name


def test_send_is_in_place_and_turns_parameters_into_pointers(bob):
    model = small_model()
    params_before = list(model.parameters())

    returned = model.send(bob)

    assert returned is model
    params = list(model.parameters())
    assert all(a is b for a, b in zip(params, params_before, strict=True))
    assert all(type(param) is sy.PointerTensor for param in params)
    assert all(param.location is bob for param in params)
    assert [param.shape for param in params] == [
        torch.Size([4, 3]),
        torch.Size([4]),
        torch.Size([2, 4]),
        torch.Size([2]),
    ]
    assert len(bob._objects) == 4  # one object per parameter


def test_get_brings_back_the_same_parameter_objects(bob):
    model = small_model()
    expected = copy.deepcopy(model)
    params_before = list(model.parameters())

    assert model.send(bob).get() is model

    params = list(model.parameters())
    assert all(a is b for a, b in zip(params, params_before, strict=True))
    assert_same_parameters(model, expected, atol=0.0)
    assert all(param.requires_grad for param in params)
    assert bob._objects == {}


def test_forward_pass_runs_on_the_worker(bob):
    model = small_model()
    data, _ = toy_batch()
    with torch.no_grad():
        expected = model(data)

    model.send(bob)
    data_ptr = data.send(bob)
    pred = model(data_ptr)

    assert type(pred) is sy.PointerTensor
    assert pred.location is bob
    assert pred.shape == torch.Size([6, 2])
    assert torch.allclose(pred.get(), expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_an_optimizer_built_before_send_keeps_working(bob, name):
    data, target = toy_batch()
    model, reference = small_model(), small_model()
    optimizer = OPTIMIZERS[name](model.parameters())
    reference_optimizer = OPTIMIZERS[name](reference.parameters())

    model.send(bob)
    remote_losses = train_steps(model, optimizer, data.send(bob), target.send(bob), 5)
    model.get()
    local_losses = train_steps(reference, reference_optimizer, data, target, 5)

    assert_same_parameters(model, reference)
    for remote, local in zip(remote_losses, local_losses, strict=True):
        assert torch.allclose(remote.get(), local, atol=1e-5)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_optimizer_state_lives_where_the_parameters_are(bob, name):
    data, target = toy_batch()
    model = small_model()
    optimizer = OPTIMIZERS[name](model.parameters())

    model.send(bob)
    train_steps(model, optimizer, data.send(bob), target.send(bob), 2)

    state_tensors = [
        value
        for param_state in optimizer.state.values()
        for key, value in param_state.items()
        if key != "step"
    ]
    assert state_tensors
    assert all(type(value) is sy.PointerTensor for value in state_tensors)
    assert all(value.location is bob for value in state_tensors)
    model.get()
    # the state stays on bob, ready for the model's next visit
    assert all(value.location is bob for value in state_tensors)
    model.send(bob)
    train_steps(model, optimizer, data.send(bob), target.send(bob), 1)
    model.get()


def test_training_continues_after_a_round_trip(bob):
    data, target = toy_batch()
    model, reference = small_model(), small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.5)
    data_ptr, target_ptr = data.send(bob), target.send(bob)

    for _ in range(3):
        model.send(bob)
        train_steps(model, optimizer, data_ptr, target_ptr, 2)
        model.get()
        train_steps(reference, reference_optimizer, data, target, 2)

    assert_same_parameters(model, reference)


def test_frozen_parameters_travel_and_stay_frozen(bob):
    data, target = toy_batch()
    model = small_model()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    trainable_before = model[2].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    model.send(bob)
    assert [param.requires_grad for param in model.parameters()] == [False, True, True, True]
    train_steps(model, optimizer, data.send(bob), target.send(bob), 3)
    assert model[0].weight.grad is None
    model.get()

    assert [param.requires_grad for param in model.parameters()] == [False, True, True, True]
    assert torch.equal(model[0].weight, frozen)
    assert model[0].weight.grad is None
    assert not torch.equal(model[2].weight.detach(), trainable_before)


def test_copy_is_a_deep_copy_with_new_parameters(bob):
    model = small_model()
    duplicate = model.copy()

    assert duplicate is not model
    for original, copied in zip(model.parameters(), duplicate.parameters(), strict=True):
        assert copied is not original
        assert torch.equal(copied, original)
    duplicate.send(bob)
    assert all(type(param) is nn.Parameter for param in model.parameters())
    duplicate.get()


def test_copy_of_a_remote_model_says_to_get_it_first(bob):
    model = small_model().send(bob)

    with pytest.raises(ValueError, match=r"get\(\)"):
        model.copy()
    model.get()


def test_move_sends_the_parameters_worker_to_worker(bob, alice):
    model = small_model()
    expected = copy.deepcopy(model)
    model.send(bob)
    ids = [param.id_at_location for param in model.parameters()]

    assert model.move(alice) is model

    assert bob._objects == {}
    assert sorted(alice._objects) == sorted(ids)
    assert all(param.location is alice for param in model.parameters())
    model.get()
    assert_same_parameters(model, expected, atol=0.0)
    assert alice._objects == {}


def test_model_on_bob_with_data_on_alice_is_not_collocated(bob, alice):
    model = small_model().send(bob)
    data = torch.ones(2, 3).send(alice)

    with pytest.raises(sy.TensorsNotCollocatedException):
        model(data)
    model.get()


def test_send_to_two_workers_at_once_is_refused(bob, alice):
    with pytest.raises(NotImplementedError, match="several workers"):
        small_model().send(bob, alice)


def test_send_while_a_local_graph_holds_a_parameter_changes_nothing(bob):
    model = small_model()
    kept_output = model(torch.ones(2, 3))  # the graph saves layer 2's weight

    with pytest.raises(RuntimeError, match=r"'2\.weight' is still used by a local autograd graph"):
        model.send(bob)

    assert all(type(param) is nn.Parameter for param in model.parameters())
    assert bob._objects == {}
    kept_output.sum().backward()  # frees the graph: now it can go
    model.send(bob)
    assert all(param.location is bob for param in model.parameters())
    model.get()


def test_dropping_a_remote_model_deletes_its_parameters(bob):
    model = small_model().send(bob)
    assert len(bob._objects) == 4

    del model

    assert bob._objects == {}
