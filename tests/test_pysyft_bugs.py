"""The seven bugs PySyft 0.2.4's own test suite found in TensorFleet (issue 12.1).

Each test is named after the PySyft behaviour it checks; those that touch
workers run on both worker kinds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import client as sy
from broker.errors import ForbiddenOperationError, OperationTooLargeError
from worker.limits import OpLimits

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a. sy.exceptions


def test_sy_exceptions_is_there_without_importing_client_exceptions() -> None:
    code = (
        "import client as sy\n"
        "assert sy.exceptions.ObjectNotFoundError is sy.ObjectNotFoundError\n"
        "assert sy.exceptions.TensorsNotCollocatedException is sy.TensorsNotCollocatedException\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- b. activations


ACTIVATIONS = {
    "celu": lambda x: F.celu(x, alpha=0.5),
    "hardtanh": F.hardtanh,
    "hardsigmoid": F.hardsigmoid,
    "hardswish": F.hardswish,
    "mish": F.mish,
    "softsign": F.softsign,
    "logsigmoid": F.logsigmoid,
    "tanhshrink": F.tanhshrink,
    "softmin": lambda x: F.softmin(x, dim=1),
    "glu": F.glu,
    "nn.CELU": nn.CELU(),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_run_remotely(bob: Any, name: str) -> None:
    x = torch.randn(3, 4)
    activation = ACTIVATIONS[name]

    assert torch.allclose(activation(x.send(bob)).get(), activation(x))


# ---------------------------------------------------------------- c. clip_grad_norm_


def test_clip_grad_norm_on_a_remote_model(bob: Any) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    reference = nn.Linear(4, 2)
    reference.load_state_dict(model.state_dict())
    data, target = torch.randn(8, 4), torch.randn(8, 2)
    F.mse_loss(reference(data), target).backward()
    expected_norm = nn.utils.clip_grad_norm_(reference.parameters(), 0.1)

    model.send(bob)
    F.mse_loss(model(data.send(bob)), target.send(bob)).backward()
    norm = nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    model.get()

    assert torch.allclose(norm.get(), expected_norm)
    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(param.grad, expected.grad)


def test_linalg_functions_are_listed_by_their_public_name(bob: Any) -> None:
    x = torch.randn(3, 4)
    y = torch.randn(4, 2)

    assert torch.allclose(
        torch.linalg.vector_norm(x.send(bob), 3).get(), torch.linalg.vector_norm(x, 3)
    )
    assert torch.allclose(torch.linalg.matmul(x.send(bob), y.send(bob)).get(), x @ y)


def test_unlisted_linalg_functions_are_still_refused(bob: Any) -> None:
    square = torch.randn(3, 3)

    with pytest.raises(ForbiddenOperationError, match=r"torch\.linalg\.det"):
        torch.linalg.det(square.send(bob)).get()


def test_limits_apply_to_linalg_functions() -> None:
    limits = OpLimits("bob", max_result_bytes=1 << 30, max_work=1000)
    big = torch.zeros(40, 40)

    with pytest.raises(OperationTooLargeError, match=r"torch\.linalg\.matmul"):
        limits.check("torch.linalg.matmul", torch.linalg.matmul, [big, big], {}, False)


# ---------------------------------------------------------------- d. recurrent modules


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_modules_send_run_and_come_back(bob: Any, kind: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = kind(4, 3, num_layers=2)
    weights = {name: param.detach().clone() for name, param in model.named_parameters()}
    sequence = torch.randn(5, 2, 4)
    with torch.no_grad():
        expected, _ = model(sequence)

    model.send(bob)
    assert all(param.location is bob for param in model.parameters())
    output, _ = model(sequence.send(bob))
    assert output.shape == expected.shape
    assert torch.allclose(output.get(), expected, atol=1e-6)
    model.get()

    for name, param in model.named_parameters():
        assert type(param) is nn.Parameter
        assert torch.equal(param.detach(), weights[name])
    with torch.no_grad():
        again, _ = model(sequence)  # still a working module here
    assert torch.allclose(again, expected)


def test_lstm_trains_remotely_with_a_given_state(bob: Any) -> None:
    torch.manual_seed(0)
    model = nn.LSTM(3, 2, batch_first=True)
    head = nn.Linear(2, 1)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.5)
    data, target = torch.randn(4, 6, 3), torch.randn(4, 1)
    state = (torch.zeros(1, 4, 2), torch.zeros(1, 4, 2))

    model.send(bob)
    head.send(bob)
    data_ptr, target_ptr = data.send(bob), target.send(bob)
    state_ptr = (state[0].send(bob), state[1].send(bob))
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        output, _ = model(data_ptr, state_ptr)
        loss = F.mse_loss(head(output[:, -1]), target_ptr)
        loss.backward()
        optimizer.step()
        losses.append(loss.get().item())
    model.get()
    head.get()

    assert losses[-1] < losses[0]


# ---------------------------------------------------------------- e. zero grads after send


def test_parameters_outside_the_graph_come_back_with_zero_grads(bob: Any) -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(3, 2))  # the second layer is never used
    frozen = nn.Linear(3, 2)
    frozen.requires_grad_(False)

    model.send(bob)
    frozen.send(bob)
    model[0](torch.ones(1, 3).send(bob)).sum().backward()
    model.get()
    frozen.get()

    assert torch.equal(model[1].weight.grad, torch.zeros(2, 3))
    assert torch.equal(model[1].bias.grad, torch.zeros(2))
    assert torch.equal(model[0].bias.grad, torch.ones(2))
    assert frozen.weight.grad is None


def test_existing_grads_are_kept_when_sending(bob: Any) -> None:
    model = nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    grads = [param.grad.clone() for param in model.parameters()]

    model.send(bob)
    model.get()

    for param, grad in zip(model.parameters(), grads, strict=True):
        assert torch.equal(param.grad, grad)


# ---------------------------------------------------------------- f. func2plan(args_shape=())


@pytest.mark.parametrize("args_shape", [(), []])
def test_func2plan_with_empty_args_shape_builds_later(bob: Any, args_shape: Any) -> None:
    @sy.func2plan(args_shape=args_shape)
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    assert not double.is_built
    double.build(torch.zeros(3))
    result = double.send(bob)(torch.tensor([1.0, 2.0, 3.0]).send(bob))
    assert torch.equal(result.get(), torch.tensor([2.0, 4.0, 6.0]))


# ---------------------------------------------------------------- g. a refused op in a batch


def test_a_refused_op_does_not_drop_the_ops_queued_with_it(bob: Any) -> None:
    x = torch.tensor([1.0, 2.0, 3.0]).send(bob)
    before = x + 1
    refused = torch.erf(x)  # not on the allowlist
    after = x * 2
    in_place = x.add_(10)

    with pytest.raises(ForbiddenOperationError, match=r"torch\.erf"):
        refused.get()
    assert torch.equal(before.get(), torch.tensor([2.0, 3.0, 4.0]))
    assert torch.equal(after.get(), torch.tensor([2.0, 4.0, 6.0]))
    assert in_place is x
    assert torch.equal(x.get(), torch.tensor([11.0, 12.0, 13.0]))


def test_a_refused_op_is_reported_once_and_the_worker_goes_on(bob: Any) -> None:
    x = torch.tensor([1.0, 2.0]).send(bob)
    _refused = torch.erf(x)
    y = x + 1

    with pytest.raises(ForbiddenOperationError):
        bob.synchronize()
    bob.synchronize()
    assert torch.equal(y.get(), torch.tensor([2.0, 3.0]))


def test_limits_apply_to_recurrent_kernels() -> None:
    limits = OpLimits("bob", max_result_bytes=1 << 30, max_work=200_000)
    model = nn.LSTM(16, 32)
    weights = list(model._flat_weights)
    state = (torch.zeros(1, 8, 32), torch.zeros(1, 8, 32))
    short = torch.zeros(2, 8, 16)
    long = torch.zeros(200, 8, 16)
    args = [state, weights, True, 1, 0.0, False, False, False]

    limits.check("torch.lstm", torch.lstm, [short, *args], {}, False)
    with pytest.raises(OperationTooLargeError, match=r"torch\.lstm"):
        limits.check("torch.lstm", torch.lstm, [long, *args], {}, False)
