"""``client.federated.Optims``: one optimizer per worker, state next to the parameters (§3.15)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import client as sy
from client.federated import Optims


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def worker_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [
        (torch.randn(4, 3, generator=generator), torch.tensor([0, 1, 1, 0])),
        (torch.randn(4, 3, generator=generator), torch.tensor([1, 1, 0, 0])),
    ]


def test_each_worker_gets_its_own_optimizer_over_the_same_parameters():
    model = small_model()
    base = torch.optim.Adam(model.parameters(), lr=0.1)

    optims = Optims(["bob", "alice"], optim=base)

    bobs, alices = optims.get_optim("bob"), optims.get_optim("alice")
    assert optims.count() == 2
    assert bobs is not base and alices is not base and bobs is not alices
    assert type(bobs) is torch.optim.Adam
    for optimizer in (bobs, alices):
        assert optimizer.param_groups is not base.param_groups
        assert optimizer.state is not base.state
        params = optimizer.param_groups[0]["params"]
        assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
        assert optimizer.param_groups[0]["lr"] == 0.1
    bobs.param_groups[0]["lr"] = 0.5
    assert alices.param_groups[0]["lr"] == 0.1


def test_get_optim_takes_a_worker_handle_too(bob):
    optims = Optims([bob, "alice"], optim=torch.optim.SGD(small_model().parameters(), lr=0.1))

    assert optims.workers == ["bob", "alice"]
    assert optims.get_optim(bob) is optims.get_optim("bob")


def test_unknown_worker_is_a_key_error_naming_the_known_ones():
    optims = Optims(["bob"], optim=torch.optim.SGD(small_model().parameters(), lr=0.1))

    with pytest.raises(KeyError, match=r"no optimizer for worker 'carol'.*\['bob'\]"):
        optims.get_optim("carol")


def test_optims_needs_an_optimizer_instance():
    with pytest.raises(TypeError, match="optimizer instance"):
        Optims(["bob"], optim=torch.optim.SGD)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.Adam(params, lr=0.1),
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    ],
    ids=["adam", "momentum"],
)
def test_state_stays_on_each_worker_and_matches_a_local_replay(bob, alice, make_optimizer):
    batches = worker_batches()
    model = small_model()
    optims = Optims(["bob", "alice"], optim=make_optimizer(model.parameters()))
    remote = [(x.send(w), y.send(w)) for (x, y), w in zip(batches, (bob, alice), strict=True)]

    for _ in range(3):
        for data, target in remote:
            model.send(data.location)
            opt = optims.get_optim(data.location.id)
            opt.zero_grad()
            F.cross_entropy(model(data), target).backward()
            opt.step()
            model.get()

    for worker in (bob, alice):
        state = optims.get_optim(worker.id).state
        tensors = [v for s in state.values() for k, v in s.items() if k != "step"]
        assert tensors
        assert all(type(value) is sy.PointerTensor for value in tensors)
        assert all(value.location is worker for value in tensors)

    # the same steps on local tensors, one optimizer per worker
    reference = small_model()
    local_optims = [make_optimizer(reference.parameters()) for _ in batches]
    for _ in range(3):
        for (data, target), opt in zip(batches, local_optims, strict=True):
            opt.zero_grad()
            F.cross_entropy(reference(data), target).backward()
            opt.step()
    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert type(param) is nn.Parameter
        assert torch.allclose(param.detach(), expected.detach(), atol=1e-5)


def test_local_state_of_the_base_optimizer_is_copied_not_shared():
    model = small_model()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(torch.ones(1, 3)), torch.tensor([1])).backward()
    base.step()

    optims = Optims(["bob", "alice"], optim=base)

    for worker in ("bob", "alice"):
        state = optims.get_optim(worker).state
        for param in model.parameters():
            copied, original = state[param]["momentum_buffer"], base.state[param]["momentum_buffer"]
            assert copied is not original
            assert torch.equal(copied, original)
