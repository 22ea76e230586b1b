"""Plans (issue 5): traced once, sent once as data, run with one command per call.

Every behaviour test runs on both worker kinds through the shared fixtures; the
tests of plan data alone (building, checking) need no worker.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import client as sy
from broker import codec, protocol
from broker.errors import ForbiddenOperationError, MalformedMessageError
from broker.protocol import Slot
from client.pointer import new_id
from worker.allowlist import DEFAULT_ALLOWLIST
from worker.plans import decode_plan, run_plan


class Net(sy.Plan):
    """The lesson's network (seed 004, Plans usage 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=0)


def _calcu() -> Any:
    @sy.func2plan(args_shape=[(-1,), (-1,)])
    def calcu(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = x + y
        return z / 2

    return calcu


def _commands_of(worker: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """Record every command queued for ``worker`` from now on."""
    sent: list[list[Any]] = []
    session = worker.session
    enqueue = session.enqueue

    def recording(worker_id: str, command: list[Any]) -> None:
        if worker_id == worker.id:
            sent.append(command)
        enqueue(worker_id, command)

    monkeypatch.setattr(session, "enqueue", recording)
    return sent


def _by_hand(ops: list[list[Any]], inputs: int = 1, outputs: list[int] | None = None) -> Any:
    return {
        "version": 1,
        "name": "by_hand",
        "inputs": inputs,
        "state": [],
        "ops": ops,
        "outputs": outputs if outputs is not None else [inputs],
    }


# ---------------------------------------------------------------- func2plan


def test_func2plan_plan_runs_on_the_worker_with_one_command(
    bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calcu = _calcu()
    assert calcu.is_built
    x, y = torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 4, 5])
    x_ptr, y_ptr = x.send(bob), y.send(bob)
    pointer_plan = calcu.send(bob)
    sent = _commands_of(bob, monkeypatch)
    result = pointer_plan(x_ptr, y_ptr)
    assert [command[0] for command in sent] == [protocol.RUN_PLAN]
    assert result.location is bob and result.shape == (3,)
    assert torch.equal(result.get(), calcu(x, y))
    assert torch.equal(calcu(x, y), torch.tensor([2.0, 3, 4]))


def test_minus_one_dims_take_any_size(bob: Any) -> None:
    calcu = _calcu().send(bob)
    for size in (1, 4, 7):
        x, y = torch.arange(float(size)), torch.ones(size)
        result = calcu(x.send(bob), y.send(bob))
        assert result.shape == (size,)  # known before any answer from the worker
        assert torch.equal(result.get(), (x + y) / 2)


def test_build_with_examples_then_local_and_remote_calls_agree(bob: Any) -> None:
    @sy.func2plan()
    def scale_and_sum(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (x * w).sum(dim=1).relu() - w.mean()

    assert not scale_and_sum.is_built
    x, w = torch.randn(4, 3), torch.randn(3)
    scale_and_sum.build(torch.zeros(4, 3), torch.zeros(3))
    assert scale_and_sum.is_built
    local = scale_and_sum(x, w)
    assert torch.equal(local, (x * w).sum(dim=1).relu() - w.mean())
    remote = scale_and_sum.send(bob)(x.send(bob), w.send(bob))
    assert remote.shape == local.shape
    assert torch.allclose(remote.get(), local)


@pytest.mark.parametrize("args_shape", [[(-2,)], [(2, "a")], "(-1,)", [3], [(1.5,)], 7, [(True,)]])
def test_invalid_args_shape_raises_value_error_when_decorating(args_shape: Any) -> None:
    with pytest.raises(ValueError, match="Invalid"):

        @sy.func2plan(args_shape=args_shape)
        def plan(x: torch.Tensor) -> torch.Tensor:
            return x + 1


def test_a_failing_automatic_build_says_so() -> None:
    with pytest.raises(ValueError, match="Automatic build using @func2plan failed"):

        @sy.func2plan(args_shape=[(2, 3), (4, 5)])
        def product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x @ y


def test_sending_an_unbuilt_plan_says_to_build_it_first(bob: Any) -> None:
    @sy.func2plan()
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    with pytest.raises(sy.PlanNotBuiltError, match="Build it first") as raised:
        double.send(bob)
    assert isinstance(raised.value, RuntimeError)
    assert torch.equal(double(torch.tensor([1.0])), torch.tensor([2.0]))  # still runs locally
    assert bob.object_count() == 0


# ---------------------------------------------------------------- sy.Plan subclasses


def test_net_plan_carries_its_parameters_and_matches_the_local_call(
    bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    net = Net()
    net.build(torch.tensor([1.0, 2.0]))
    data = torch.tensor([0.5, -1.5])
    local = net(data)
    pointer_net = net.send(bob)
    data_ptr = data.send(bob)
    sent = _commands_of(bob, monkeypatch)
    result_ptr = pointer_net(data_ptr)
    assert [command[0] for command in sent] == [protocol.RUN_PLAN]
    assert result_ptr.shape == (2,) and result_ptr.dtype == torch.float32
    # the parameters travelled with the plan: changing them here changes nothing there
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(1.0)
    assert torch.allclose(result_ptr.get(), local)
    assert torch.allclose(pointer_net(data_ptr).get(), local)
    assert bob.object_count() == 2  # the plan (with its state inside) and the data


def test_a_net_plan_runs_on_many_inputs_and_on_several_workers(bob: Any, alice: Any) -> None:
    torch.manual_seed(1)
    net = Net()
    net.build(torch.zeros(2))
    pointer_net = net.send(bob, alice)
    assert {worker.id for worker in pointer_net.locations} == {"bob", "alice"}
    assert net.send(bob) is net.send(bob)
    for step in range(5):
        data = torch.tensor([float(step), 1.0 - step])
        expected = net(data)
        for worker in (bob, alice):
            assert torch.allclose(pointer_net(data.send(worker)).get(), expected)


# ---------------------------------------------------------------- pointers and GC


def test_repeated_calls_leave_only_their_results(bob: Any) -> None:
    torch.manual_seed(2)
    net = Net()
    net.build(torch.zeros(2))
    pointer_net = net.send(bob)
    data = torch.tensor([1.0, 2.0]).send(bob)
    kept = [pointer_net(data) for _ in range(3)]
    for _ in range(20):
        pointer_net(data)  # the result pointer dies at once
    gc.collect()
    assert bob.object_count() == 2 + len(kept)
    del kept
    gc.collect()
    assert bob.object_count() == 2


def test_deleting_the_pointer_plan_deletes_the_plan_on_the_worker(bob: Any) -> None:
    calcu = _calcu()
    pointer_plan = calcu.send(bob)
    assert calcu.send(bob) is pointer_plan
    assert bob.object_count() == 1
    assert any("Plan calcu" in str(obj) for obj in bob._objects.values())
    del pointer_plan
    gc.collect()
    assert bob.object_count() == 0
    again = calcu.send(bob)  # a new copy, since the old pointer is gone
    x = torch.tensor([2.0]).send(bob)
    assert torch.equal(again(x, x).get(), torch.tensor([2.0]))


def test_calling_the_plan_on_pointers_runs_it_where_they_are(bob: Any) -> None:
    calcu = _calcu()
    x, y = torch.tensor([4.0, 6.0]), torch.tensor([2.0, 2.0])
    result = calcu(x.send(bob), y.send(bob))
    assert result.location is bob
    assert torch.equal(result.get(), torch.tensor([3.0, 4.0]))


def test_inputs_on_different_workers_are_refused(bob: Any, alice: Any) -> None:
    pointer_plan = _calcu().send(bob)
    x_bob, x_alice = torch.tensor([1.0]).send(bob), torch.tensor([1.0]).send(alice)
    with pytest.raises(sy.TensorsNotCollocatedException, match="alice"):
        pointer_plan(x_bob, x_alice)
    with pytest.raises(RuntimeError, match=r"plan\.send\(alice\)"):
        pointer_plan(x_alice, x_alice)


def test_a_plan_with_several_outputs_returns_several_pointers(bob: Any) -> None:
    @sy.func2plan(args_shape=[(-1, 3)])
    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, _ = torch.max(x, dim=1)
        centred = x - x.mean(dim=0)
        centred.mul_(2)  # in place on an intermediate
        return values, centred

    x = torch.randn(5, 3)
    values, centred = stats.send(bob)(x.send(bob))
    assert values.shape == (5,) and centred.shape == (5, 3)
    assert torch.allclose(values.get(), x.max(dim=1).values)
    assert torch.allclose(centred.get(), (x - x.mean(dim=0)) * 2)


def test_a_plan_that_fails_on_the_worker_raises_its_error(bob: Any) -> None:
    @sy.func2plan(args_shape=[(-1, 2), (2, 2)])
    def product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w

    pointer_plan = product.send(bob)
    bad = torch.ones(3, 4).send(bob)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        pointer_plan(bad, torch.ones(2, 2).send(bob)).get()
    good = pointer_plan(torch.ones(3, 2).send(bob), torch.ones(2, 2).send(bob))
    assert torch.equal(good.get(), torch.full((3, 2), 2.0))


# ---------------------------------------------------------------- plans travel as checked data


def test_a_plan_naming_a_forbidden_op_is_refused_on_arrival(bob: Any) -> None:
    plan_id = new_id()
    forbidden = _by_hand([["os.system", [Slot(0)], {}, [1]]])
    with pytest.raises(ForbiddenOperationError, match=r"os\.system"):
        bob._request([protocol.PLAN, plan_id, forbidden, None], "plan")
    assert bob.object_count() == 0  # nothing was stored
    x = torch.tensor([1.0, 2.0]).send(bob)  # and the worker keeps serving
    assert torch.equal((x + x).get(), torch.tensor([2.0, 4.0]))
    with pytest.raises(sy.ObjectNotFoundError):
        bob._request([protocol.RUN_PLAN, plan_id, [x.child.ref], [new_id()], False, None], "run")


def test_a_traced_op_outside_the_allowlist_is_refused_when_sent(bob: Any) -> None:
    @sy.func2plan(args_shape=[(2,)])
    def error_function(x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x) + 1  # torch.erf is not on the default allowlist

    with pytest.raises(ForbiddenOperationError, match=r"torch\.erf"):
        error_function.send(bob)
    assert torch.equal((torch.tensor([1.0]).send(bob) * 3).get(), torch.tensor([3.0]))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([1, 2], "not a map"),
        (_by_hand([["Tensor.add", [Slot(0), Slot(5)], {}, [1]]]), "not defined yet"),
        (_by_hand([["Tensor.add", [Slot(0), 1], {}, [7]]]), "next free slot"),
        (_by_hand([["Tensor.neg", [Slot(0)], {}, [1]]], outputs=[9]), "output slot"),
        (_by_hand([["Tensor.neg", [protocol.Ref(1)], {}, [1]]]), "stored object"),
        ({**_by_hand([]), "pickle": b"\x80\x04"}, "exactly the keys"),
        ({**_by_hand([]), "version": 2}, "version"),
        ({**_by_hand([]), "state": [1.0]}, "state"),
    ],
)
def test_malformed_plan_data_is_refused_on_arrival(bob: Any, data: Any, reason: str) -> None:
    with pytest.raises(MalformedMessageError, match=reason):
        bob._request([protocol.PLAN, new_id(), data, None], "plan")
    assert torch.equal((torch.tensor([1.0]).send(bob) + 1).get(), torch.tensor([2.0]))


def test_plan_data_is_plain_msgpack_and_replays_the_function() -> None:
    torch.manual_seed(3)
    net = Net()
    net.build(torch.zeros(2))
    wire = codec.decode(codec.encode(net.trace.wire()))
    assert set(wire) == {"version", "name", "inputs", "state", "ops", "outputs"}
    assert [op[0] for op in wire["ops"]] == [
        "torch.nn.functional.linear",
        "torch.nn.functional.relu",
        "torch.nn.functional.linear",
        "torch.nn.functional.log_softmax",
    ]
    assert len(wire["state"]) == 4  # fc1 and fc2, weight and bias
    stored = decode_plan(wire, DEFAULT_ALLOWLIST, "bob")
    assert stored.wire is wire
    assert "Plan Net" in repr(stored) and "4 state tensors" in repr(stored)
    data = torch.tensor([3.0, -1.0])
    (output,) = run_plan(stored, [data])
    assert torch.allclose(output, net(data))


def test_building_refuses_data_dependent_control_flow() -> None:
    def branchy(x: torch.Tensor) -> torch.Tensor:
        return x + 1 if x.sum() > 0 else x - 1

    with pytest.raises(ValueError, match="read a tensor's value"):
        sy.func2plan()(branchy).build(torch.ones(2))


def test_a_plan_that_read_shapes_refuses_other_shapes(bob: Any) -> None:
    @sy.func2plan(args_shape=[(-1, 2)])
    def flatten_rows(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1) * 2

    pointer_plan = flatten_rows.send(bob)
    x = torch.ones(1, 2).send(bob)
    assert torch.equal(pointer_plan(x).get(), torch.full((1, 2), 2.0))
    with pytest.raises(ValueError, match="specific to the shapes it was built with"):
        pointer_plan(torch.ones(3, 2).send(bob))


def test_a_copied_plan_has_its_own_parameters_and_build() -> None:
    torch.manual_seed(4)
    net = Net()
    net.build(torch.zeros(2))
    twin = net.copy()
    assert twin.is_built and twin.trace.state[0] is twin.fc1.weight
    with torch.no_grad():
        twin.fc1.weight.add_(1.0)
    data = torch.tensor([1.0, 1.0])
    assert not torch.allclose(twin(data), net(data))
    (output,) = run_plan(
        decode_plan(codec.decode(codec.encode(twin.trace.wire())), DEFAULT_ALLOWLIST, "bob"), [data]
    )
    assert torch.allclose(output, twin(data))


def test_constants_made_or_captured_by_the_function_travel_as_state(bob: Any) -> None:
    offset = torch.tensor([10.0, 20.0])

    @sy.func2plan(args_shape=[(2,)])
    def shifted(x: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor([2.0, 3.0])  # made while building: a constant of the plan
        return x * scale + offset

    assert len(shifted.trace.state) == 2
    x = torch.tensor([1.0, -1.0])
    assert torch.equal(shifted.send(bob)(x.send(bob)).get(), torch.tensor([12.0, 17.0]))
    assert torch.equal(shifted(x), torch.tensor([12.0, 17.0]))
