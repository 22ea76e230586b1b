"""Lesson 001 remote autograd and "Project: Learn a Simple Linear Model", on bob."""

from __future__ import annotations

import itertools
import re

import torch

GRAD_REPR = re.compile(r"^\(Wrapper\)>\[PointerTensor \| me:(\d+) -> bob:(\d+)\]::grad$")
DATA_REPR = re.compile(r"^\(Wrapper\)>\[PointerTensor \| me:(\d+) -> bob:(\d+)\]::data$")


def test_backward_on_bob_fills_the_gradients(bob):
    x = torch.tensor([15.0, 12, 4, 6, 78], requires_grad=True).send(bob)
    y = torch.tensor([1.0, 1, 1, 1, 1], requires_grad=True).send(bob)
    assert x.requires_grad

    z = (x + y).sum()
    assert z.shape == torch.Size([])
    assert z.requires_grad
    z.backward()

    x = x.get()
    assert x.requires_grad
    assert torch.equal(x.detach(), torch.tensor([15.0, 12, 4, 6, 78]))
    assert torch.equal(x.grad, torch.tensor([1.0, 1, 1, 1, 1]))
    y = y.get()
    assert torch.equal(y.grad, torch.ones(5))


def test_grad_of_a_pointer_is_a_pointer_to_the_remote_grad(bob):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True).send(bob)
    (x * x).sum().backward()

    grad = x.grad

    match = GRAD_REPR.match(repr(grad))
    assert match is not None, repr(grad)
    assert int(match.group(2)) == x.id_at_location
    assert grad.location is bob
    assert grad.shape == torch.Size([3])
    doubled = grad * 1
    assert torch.equal(doubled.get(), torch.tensor([2.0, 4.0, 6.0]))


def test_attribute_pointers_never_delete_the_tensor(bob):
    x = torch.tensor([1.0, 2.0], requires_grad=True).send(bob)
    x.sum().backward()
    grad, data = x.grad, x.data
    del grad, data
    assert list(bob._objects) == [x.id_at_location]
    back = x.get()
    assert torch.equal(back.grad, torch.ones(2))


def test_gradients_accumulate_over_two_backward_passes(bob):
    x = torch.tensor([1.0, 2.0], requires_grad=True).send(bob)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    assert torch.equal(x.get().grad, torch.tensor([6.0, 6.0]))


def test_data_sub_in_place_updates_the_weights(bob):
    weights = torch.tensor([[1.0], [2.0]], requires_grad=True).send(bob)
    (weights * 2).sum().backward()

    result = weights.data.sub_(weights.grad * 0.1)

    match = DATA_REPR.match(repr(result))
    assert match is not None, repr(result)
    assert int(match.group(2)) == weights.id_at_location
    assert len(bob._objects) == 1
    back = weights.get()
    assert back.requires_grad
    assert torch.allclose(back.detach(), torch.tensor([[0.8], [1.8]]))
    assert torch.allclose(back.grad, torch.tensor([[2.0], [2.0]]))


def test_in_place_ops_on_the_grad(bob):
    weights = torch.tensor([[1.0], [2.0]], requires_grad=True).send(bob)
    (weights * 2).sum().backward()

    weights.grad += 0
    assert torch.equal(bob._objects[weights.id_at_location].grad, torch.tensor([[2.0], [2.0]]))
    weights.grad *= 0

    assert len(bob._objects) == 1
    assert torch.equal(weights.get().grad, torch.zeros(2, 1))


def test_no_grad_holds_remotely(bob):
    x = torch.tensor([1.0, 2.0], requires_grad=True).send(bob)

    with torch.no_grad():
        z = x * 2
    assert z.requires_grad is False
    assert z.get().requires_grad is False

    w = x * 2
    assert w.requires_grad is True
    assert w.get().requires_grad is True


def _project_data():
    inputs = torch.tensor([[1.0, 1.0], [0, 1.0], [1.0, 0.0], [0, 0]], requires_grad=True)
    target = torch.tensor([[1.0], [1], [0], [0]], requires_grad=True)
    weights = torch.tensor([[0.0], [0]], requires_grad=True)
    return inputs, target, weights


def _local_losses(iterations: int, reset) -> list[torch.Tensor]:
    inputs, target, weights = _project_data()
    losses = []
    for _ in range(iterations):
        pred = inputs.mm(weights)
        loss = ((pred - target) ** 2).sum()
        loss.backward()
        weights.data.sub_(weights.grad * 0.1)
        reset(weights)
        losses.append(loss.detach())
    return losses


def _add_zero(weights) -> None:
    weights.grad += 0


def _times_zero(weights) -> None:
    weights.grad *= 0


def _remote_losses(bob, iterations: int, reset) -> tuple[list[torch.Tensor], list[int]]:
    inputs, target, weights = (t.send(bob) for t in _project_data())
    assert weights.shape == torch.Size([2, 1])
    counts = [len(bob._objects)]
    losses = []
    for _ in range(iterations):
        pred = inputs.mm(weights)
        assert pred.shape == torch.Size([4, 1])
        loss = ((pred - target) ** 2).sum()
        loss.backward()
        weights.data.sub_(weights.grad * 0.1)
        reset(weights)
        losses.append(loss.get().data)
        counts.append(len(bob._objects))
    return losses, counts


def test_linear_model_project_as_in_the_lesson(bob):
    # the lesson's loop resets with `weights.grad += 0`, so gradients accumulate
    losses, counts = _remote_losses(bob, 11, _add_zero)

    assert torch.equal(losses[0], torch.tensor(2.0))
    expected = _local_losses(11, _add_zero)
    for remote, local in zip(losses, expected, strict=True):
        assert torch.allclose(remote, local, atol=1e-6)
    # input, target, weights, then also the last pred: nothing else is left over
    assert counts == [3] + [4] * 11


def test_linear_model_loss_decreases_when_grads_are_zeroed(bob):
    losses, counts = _remote_losses(bob, 10, _times_zero)

    expected = _local_losses(10, _times_zero)
    for remote, local in zip(losses, expected, strict=True):
        assert torch.allclose(remote, local, atol=1e-6)
    assert all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < 0.01
    assert counts == [3] + [4] * 10
