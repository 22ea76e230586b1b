"""PySyft 0.2 API pieces the lessons and PySyft's tests use (issue 12.4).

The worker registry, ``send_``/``get_`` in place, ``Tensor.copy()``,
``ptr.remote_send``, ``sy.combine_pointers``, ``Optims`` on PySyft's import path
and the helpers of ``syft.federated.utils``. Tests touching workers run on both kinds.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch
from torch import nn

import client as sy
from broker.errors import OperationTooLargeError
from client.federated import utils

# ---------------------------------------------------------------- worker registry


def test_workers_know_each_other_and_add_workers_returns_the_worker(
    hook: Any, bob: Any, alice: Any, secure_worker: Any
) -> None:
    me = hook.local_worker

    assert bob.add_workers([alice, secure_worker]) is bob
    assert bob.add_worker(alice) is bob
    assert bob.get_worker("alice") is alice
    assert alice.get_worker(bob) is bob
    assert me.get_worker("secure_worker") is secure_worker


def test_an_unknown_worker_raises_worker_not_found(bob: Any) -> None:
    for fail_hard in (True, False):
        with pytest.raises(sy.WorkerNotFoundException, match='"nobody"') as raised:
            bob.get_worker("nobody", fail_hard=fail_hard)
        assert "sy.VirtualWorker" in str(raised.value)
        assert isinstance(raised.value, KeyError)


def test_add_workers_takes_only_workers(bob: Any) -> None:
    with pytest.raises(TypeError, match="add_workers"):
        bob.add_workers(["alice"])


# ---------------------------------------------------------------- send_ / get_ in place


def test_send_and_get_in_place_keep_the_python_object(bob: Any) -> None:
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    identity = id(x)

    assert x.send_(bob) is x
    assert id(x) == identity
    assert type(x) is sy.PointerTensor
    assert x.location is bob
    assert len(bob._objects) == 1
    (x * 2).sum().backward()

    assert x.get_() is x
    assert type(x) is torch.Tensor
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(x.grad, torch.tensor([2.0, 2.0, 2.0]))
    assert bob._objects == {}


def test_send_in_place_of_a_parameter_and_of_a_pointer(bob: Any, alice: Any) -> None:
    weight = nn.Parameter(torch.ones(2))
    weight.send_(bob)
    assert weight.location is bob

    weight.send_(alice)  # a pointer sent onward in place: me -> alice -> bob
    assert weight.location is alice
    assert len(alice._objects) == 1
    inner = weight.get_()
    assert inner is weight
    assert weight.location is bob
    assert torch.equal(weight.get_().detach(), torch.ones(2))
    assert type(weight) is nn.Parameter
    assert bob._objects == {}
    assert alice._objects == {}


def test_send_in_place_to_several_workers_is_refused(bob: Any, alice: Any) -> None:
    with pytest.raises(NotImplementedError, match="several workers"):
        torch.ones(2).send_(bob, alice)


# ---------------------------------------------------------------- Tensor.copy()


def test_copy_of_a_local_tensor_is_a_new_tensor() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)

    y = x.copy()

    assert y is not x
    assert torch.equal(y.detach(), x.detach())
    y.detach().add_(1)
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------- remote_send


def test_remote_send_moves_the_data_and_leaves_a_chain(bob: Any, alice: Any) -> None:
    x = torch.tensor([1, 2, 3]).send(bob)
    obj_id = x.id_at_location

    assert x.remote_send(alice) is x

    assert x.location is bob
    assert list(alice._objects) == [obj_id]
    assert isinstance(bob._objects[obj_id], object)
    assert repr(bob._objects[obj_id]).endswith(f"-> alice:{obj_id}]")
    y = x + 1  # forwarded along the chain
    inner = y.get()
    assert inner.location is alice
    assert torch.equal(inner.get(), torch.tensor([2, 3, 4]))
    del x
    gc.collect()
    assert bob._objects == {}
    assert alice._objects == {}


# ---------------------------------------------------------------- combine_pointers


def test_combine_pointers_makes_a_multipointer(bob: Any, alice: Any) -> None:
    a = torch.tensor([1, 2]).send(bob)
    b = torch.tensor([10, 20]).send(alice)

    both = sy.combine_pointers(a, b)

    assert type(both) is sy.MultiPointerTensor
    doubled = both + both
    assert [t.tolist() for t in doubled.get()] == [[2, 4], [20, 40]]
    assert torch.equal(both.get(sum_results=True), torch.tensor([11, 22]))


def test_combine_pointers_refuses_two_on_one_worker(bob: Any) -> None:
    with pytest.raises(ValueError, match="two pointers are on bob"):
        sy.combine_pointers(torch.ones(1).send(bob), torch.ones(1).send(bob))
    with pytest.raises(TypeError, match="pointers"):
        sy.combine_pointers(torch.ones(1))


# ---------------------------------------------------------------- Optims, FL utilities


def test_optims_on_pysyft_import_path() -> None:
    from client.federated.floptimizer import Optims

    assert Optims is sy.federated.Optims


def linear(weight: float, bias: float) -> nn.Linear:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)
    return model


def test_federated_avg_scale_and_add_model() -> None:
    first, second = linear(1.0, 2.0), linear(3.0, 4.0)

    average = utils.federated_avg({"bob": first, "alice": second})

    assert torch.equal(average.weight.detach(), torch.full((1, 2), 2.0))
    assert torch.equal(average.bias.detach(), torch.tensor([3.0]))
    assert torch.equal(first.weight.detach(), torch.full((1, 2), 1.0))  # inputs unchanged
    assert utils.scale_model(first, 0.5) is first
    assert torch.equal(first.bias.detach(), torch.tensor([1.0]))
    assert utils.add_model(first, second) is first
    assert torch.equal(first.bias.detach(), torch.tensor([5.0]))


def test_fl_utilities_refuse_remote_models(bob: Any) -> None:
    model = linear(1.0, 1.0).send(bob)

    with pytest.raises(ValueError, match=r"model\.get\(\)"):
        utils.scale_model(model, 2.0)
    model.get()


def test_accuracy() -> None:
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])

    assert utils.accuracy(scores, torch.tensor([0, 1, 1, 1])) == 0.75


def test_extract_batches_per_worker(bob: Any, alice: Any) -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(10.0).view(5, 2), torch.arange(5))
    loader = sy.FederatedDataLoader(dataset.federate((bob, alice)), batch_size=2)

    batches = utils.extract_batches_per_worker(loader)

    assert list(batches) == [bob, alice]
    assert [len(batches[bob]), len(batches[alice])] == [2, 1]
    assert all(data.location is bob for data, _ in batches[bob])
    assert torch.equal(batches[alice][0][1].get(), torch.tensor([3, 4]))


# ---------------------------------------------------------------- remote tensor factories


def test_remote_factories_make_tensors_on_the_worker(bob: Any) -> None:
    zeros = bob.remote.torch.zeros(2, 3)
    ones = bob.remote.torch.ones((2, 3), dtype=torch.float64)
    full = bob.remote.torch.full(torch.Size([2]), 7)
    steps = bob.remote.torch.arange(5)
    noise = bob.remote.torch.randn(4, requires_grad=True)

    assert zeros.location is bob
    assert zeros.shape == (2, 3)
    assert ones.dtype == torch.float64
    assert noise.requires_grad
    assert len(bob._objects) == 5
    assert torch.equal((zeros + 1).get(), torch.ones(2, 3))
    assert torch.equal(ones.get(), torch.ones(2, 3, dtype=torch.float64))
    assert torch.equal(full.get(), torch.tensor([7, 7]))
    assert torch.equal(steps.get(), torch.arange(5))
    assert noise.get().shape == (4,)


def test_remote_factories_refuse_what_they_cannot_do(bob: Any) -> None:
    with pytest.raises(AttributeError, match="only the tensor factories"):
        bob.remote.torch.tensor([1, 2])
    with pytest.raises(TypeError, match="device"):
        bob.remote.torch.zeros(2, device="cpu")
    with pytest.raises(TypeError, match="not tensors"):
        bob.remote.torch.zeros(torch.ones(2))
    with pytest.raises(TypeError, match="zeros"):
        bob.remote.torch.zeros("a")
    assert bob._objects == {}


def test_remote_factories_are_bounded_by_the_worker_limits(bob: Any) -> None:
    huge = bob.remote.torch.zeros(10**6, 10**6)  # 4 TB: refused before anything is made

    with pytest.raises(OperationTooLargeError, match=r"torch\.zeros"):
        huge.get()
    assert bob._objects == {}


def test_a_worker_refuses_factories_made_elsewhere_than_in_memory(bob: Any) -> None:
    from broker import protocol
    from client.pointer import new_id

    for key, value in (("device", "meta"), ("pin_memory", True)):
        result_id = new_id()  # what a client that is not TensorFleet's could send
        bob._enqueue((protocol.OP, "torch.zeros", (3,), {key: value}, (result_id,), False, None))
        with pytest.raises(sy.ForbiddenOperationError, match=f"{key}="):
            bob.synchronize()
    assert bob._objects == {}


def test_a_worker_refuses_tensors_moved_off_the_cpu(bob: Any) -> None:
    x = torch.ones(2).send(bob)

    for call in (
        lambda: x.to("meta"),
        lambda: x.to(device="meta"),
        lambda: x.new_zeros(3, device="meta"),
    ):
        call()
        with pytest.raises(sy.ForbiddenOperationError, match="device='meta'"):
            bob.synchronize()
    assert torch.equal(x.to("cpu").get(), torch.ones(2))
    assert list(bob._objects) == [x.id_at_location]
