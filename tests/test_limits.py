"""Per-op limits: an op too big for the worker is refused before it runs, and nothing is lost.

Runs on both worker kinds with the default limits (TENSORFLEET_MAX_OBJECT_BYTES
8 GiB, TENSORFLEET_MAX_OP_WORK 2**30): the attacks below are tiny messages
asking for tens of gigabytes or billions of elements.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import client as sy
from broker.errors import OperationTooLargeError, UnboundedOperationError
from broker.settings import Settings
from worker.limits import OpLimits


def test_an_op_whose_result_is_above_the_object_limit_is_refused(bob: Any) -> None:
    x = torch.tensor([1.0, 2.0]).send(bob)
    huge = x.repeat(2**31)  # 2**32 float32 elements: 16 GiB, from a few bytes of command
    with pytest.raises(OperationTooLargeError) as refused:
        huge.get()
    message = str(refused.value)
    assert "TENSORFLEET_MAX_OBJECT_BYTES" in message and "bob" in message
    assert "Tensor.repeat" in message
    assert torch.equal(x.get(), torch.tensor([1.0, 2.0]))  # the worker kept serving


def test_an_op_asking_for_too_much_work_is_refused(bob: Any) -> None:
    x = torch.tensor([1.0]).send(bob)
    busy = x.repeat(2**30 + 2**28)  # 5 GiB of float32 is allowed, 1.3e9 elements of work not
    with pytest.raises(OperationTooLargeError) as refused:
        bob.synchronize()
    assert "TENSORFLEET_MAX_OP_WORK" in str(refused.value)
    with pytest.raises(OperationTooLargeError):  # the result id is marked failed too
        busy.get()
    assert bob.object_count() == 1


def test_an_op_whose_size_depends_on_the_data_is_refused_with_the_fix(bob: Any) -> None:
    labels = torch.tensor([1, 3, 0]).send(bob)
    with pytest.raises(UnboundedOperationError) as refused:
        F.one_hot(labels)
    assert "num_classes" in str(refused.value)
    one_hot = F.one_hot(labels, num_classes=4).get()  # with the size given it runs
    assert torch.equal(one_hot, F.one_hot(torch.tensor([1, 3, 0]), num_classes=4))


def test_a_bad_call_still_raises_its_own_error(bob: Any) -> None:
    a = torch.ones(3).send(bob)
    b = torch.ones(4).send(bob)
    with pytest.raises(RuntimeError, match="size of tensor"):
        (a + b).get()


def test_ops_within_the_limits_and_inside_plans_run_as_before(bob: Any) -> None:
    x = torch.arange(6.0).send(bob)
    assert torch.equal((x.reshape(2, 3) @ x.reshape(3, 2)).get(), _local_product())

    @sy.func2plan()
    def blow_up(t: torch.Tensor) -> torch.Tensor:
        return t.repeat(2**20)

    blow_up.build(torch.ones(1))  # harmless on the example: a million elements
    plan = blow_up.send(bob)
    small = plan(torch.ones(1).send(bob))  # checked op by op once, then known for such inputs
    assert plan(torch.ones(1).send(bob)).shape == small.shape == (2**20,)
    wide = torch.ones(2**12).send(bob)  # on this input the same op would make 2**32
    with pytest.raises(OperationTooLargeError):
        plan(wide).get()
    assert torch.equal(x.get(), torch.arange(6.0))


def _local_product() -> torch.Tensor:
    x = torch.arange(6.0)
    return x.reshape(2, 3) @ x.reshape(3, 2)


def test_contractions_count_multiply_adds() -> None:
    limits = OpLimits("bob", Settings().max_object_bytes, max_work=10**6)
    a, b = torch.ones(100, 1000), torch.ones(1000, 100)
    with pytest.raises(OperationTooLargeError, match="TENSORFLEET_MAX_OP_WORK"):
        limits.check("torch.mm", torch.mm, [a, b], {}, True)  # 10**7 multiply-adds
    limits.check("torch.add", torch.add, [a, a], {}, True)  # 3 * 10**5 elements: fine


def test_gradients_are_sized_from_the_inputs_they_are_taken_for() -> None:
    limits = OpLimits("bob", max_result_bytes=1000, max_work=10**6)
    weight = torch.ones(10, 10, requires_grad=True)
    loss = (weight * 2).sum()
    grad = torch.autograd.grad
    assert limits.check("torch.autograd.grad", grad, [loss, [weight]], {}, True) == 400
    big = torch.ones(30, 30, requires_grad=True)
    with pytest.raises(OperationTooLargeError, match="TENSORFLEET_MAX_OBJECT_BYTES"):
        limits.check("torch.autograd.grad", grad, [(big * 2).sum(), (big,)], {}, True)
