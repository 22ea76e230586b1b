"""Stateful plans, plan introspection and plan retrieval (§3.18), on both worker kinds.

PySyft 0.2.4: ``func2plan(args_shape=..., state=(t,))`` hands the function its state
as the last argument (``state.read()``); the state travels with the plan and a call
on the worker uses it. ``plan.readable_plan`` lists the traced ops.
``PointerPlan.get()`` / ``owner.fetch_plan(id, worker)`` return the plan, which
replays its ops, and the worker keeps its copy. Another client's plan is refused.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from attacker import refusal
from torch import nn

import client as sy
from broker import protocol
from broker.errors import PermissionDeniedError, PlanNotFoundError

BIAS = torch.tensor([1.0])


def stateful() -> sy.Plan:
    @sy.func2plan(args_shape=[(1,)], state=(BIAS.clone(),))
    def foo(x, state):
        (bias,) = state.read()
        x = x * 2
        return x + bias

    return foo


# ------------------------------------------------------------------ stateful plans


def test_a_stateful_plan_is_built_and_runs_locally() -> None:
    foo = stateful()

    assert foo.is_built
    assert len(foo.readable_plan) == 2 and len(foo.actions) == 2
    assert torch.equal(foo(torch.tensor([1.0, 2.0])), torch.tensor([3.0, 5.0]))
    (bias,) = foo.state.read()
    assert torch.equal(bias, BIAS)
    assert len(foo.state) == 1


def test_the_state_travels_with_the_plan_and_is_used_remotely(bob: Any) -> None:
    foo = stateful()
    pointer_plan = foo.send(bob)
    x = torch.tensor([1.0, 2.0]).send(bob)

    result = pointer_plan(x)

    assert result.location is bob
    assert torch.equal(result.get(), torch.tensor([3.0, 5.0]))


def test_the_state_is_read_where_the_plan_was_built() -> None:
    weight, offset = torch.tensor([2.0, 3.0]), torch.tensor([10.0])

    @sy.func2plan(state=(weight, offset))
    def affine(x, state):
        w, b = state.read()
        return x * w + b

    assert not affine.is_built
    assert [t is s for t, s in zip(affine.state.read(), (weight, offset), strict=True)] == [
        True,
        True,
    ]
    affine.build(torch.ones(2))
    assert torch.equal(affine(torch.tensor([1.0, 1.0])), torch.tensor([12.0, 13.0]))
    assert affine.state.read()[0] is weight


def test_a_model_plans_state_is_its_parameters() -> None:
    class Net(sy.Plan):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, x):
            return self.fc(x)

    net = Net()
    assert {id(t) for t in net.state.read()} == {id(p) for p in net.parameters()}
    net.build(torch.ones(1, 2))
    assert len(net.state.read()) == 2
    assert any("linear" in line for line in net.readable_plan)


def test_state_must_be_local_tensors(bob: Any) -> None:
    with pytest.raises(TypeError, match="state must be a tuple of local tensors"):
        sy.func2plan(state=[1.0])
    with pytest.raises(TypeError, match="state must be a tuple of local tensors"):
        sy.func2plan(state=(torch.ones(1).send(bob),))


# ------------------------------------------------------------------ introspection


def test_readable_plan_lists_the_traced_ops_in_order() -> None:
    @sy.func2plan(args_shape=[(2,)])
    def calc(x):
        y = x + x
        return torch.abs(y)

    assert calc.readable_plan == ["_1 = Tensor.add(_0, _0)", "_2 = torch.abs(_1)"]
    assert "return _2" in calc.code


def test_readable_plan_of_an_unbuilt_plan_says_to_build_it() -> None:
    @sy.func2plan()
    def later(x):
        return x + 1

    with pytest.raises(sy.PlanNotBuiltError):
        later.readable_plan  # noqa: B018


# ------------------------------------------------------------------ retrieval


def test_pointer_plan_get_returns_the_plan_and_the_worker_keeps_it(bob: Any) -> None:
    foo = stateful()
    pointer_plan = foo.send(bob)

    fetched = pointer_plan.get()

    assert isinstance(fetched, sy.Plan) and fetched.is_built
    assert fetched.readable_plan == foo.readable_plan
    assert torch.equal(fetched.state.read()[0], BIAS)
    assert torch.equal(fetched(torch.tensor([1.0, 2.0])), torch.tensor([3.0, 5.0]))
    # the worker still has the plan: it still runs there
    x = torch.tensor([4.0]).send(bob)
    assert torch.equal(pointer_plan(x).get(), torch.tensor([9.0]))


def test_fetch_plan_by_id_on_the_worker_or_from_the_local_worker(bob: Any, me: Any) -> None:
    pointer_plan = stateful().send(bob)
    plan_id = pointer_plan.id_at_location

    from_bob = bob.fetch_plan(plan_id)
    from_me = me.fetch_plan(plan_id, bob, copy=False)

    for fetched in (from_bob, from_me):
        assert torch.equal(fetched(torch.tensor([2.0])), torch.tensor([5.0]))


def test_a_fetched_plan_can_be_sent_elsewhere(bob: Any, alice: Any) -> None:
    fetched = stateful().send(bob).get()

    on_alice = fetched.send(alice)

    x = torch.tensor([0.5]).send(alice)
    assert torch.equal(on_alice(x).get(), torch.tensor([2.0]))


def test_fetching_what_is_not_a_plan_says_so(bob: Any) -> None:
    x = torch.tensor([1.0]).send(bob)
    with pytest.raises(TypeError, match="is not a plan"):
        bob.fetch_plan(x.id_at_location)
    with pytest.raises(sy.ObjectNotFoundError):
        bob.fetch_plan(12345)
    with pytest.raises(TypeError, match=r"by its id .* or a tag"):
        bob.fetch_plan(1.5)
    assert torch.equal(x.get(), torch.tensor([1.0]))  # bob keeps serving


def test_fetch_plan_by_tag(bob: Any) -> None:
    foo = stateful().tag("#affine", "#v1").describe("doubles and adds one")
    pointer_plan = foo.send(bob)

    fetched = bob.fetch_plan("#affine")

    assert fetched.tags == {"#affine", "#v1"}
    assert fetched.description == "doubles and adds one"
    assert torch.equal(fetched(torch.tensor([1.0])), torch.tensor([3.0]))
    with pytest.raises(PlanNotFoundError, match=r'"bob" has 0 of your plans tagged #nothing'):
        bob.fetch_plan("#nothing")
    other = stateful().tag("#v1").send(bob)
    with pytest.raises(PlanNotFoundError, match="has 2 of your plans tagged #v1"):
        bob.fetch_plan("#v1")
    assert pointer_plan.id_at_location != other.id_at_location


def test_search_finds_my_tagged_plans_and_a_found_plan_runs_there(bob: Any) -> None:
    """PySyft 0.2: ``bob.search("#tag")`` found plans as well as tensors."""
    sent = stateful().tag("#affine", "#search").describe("doubles and adds one").send(bob)
    data = torch.tensor([2.0]).tag("#search").send(bob)

    found = bob.search("#search")

    plans = [item for item in found if isinstance(item, sy.plan.PointerPlan)]
    tensors = [item for item in found if not isinstance(item, sy.plan.PointerPlan)]
    assert len(plans) == 1 and len(tensors) == 1
    (plan,) = plans
    assert plan.id_at_location == sent.id_at_location and plan.location is bob
    assert plan.tags == {"#affine", "#search"} and plan.description == "doubles and adds one"
    assert torch.equal(plan(data).get(), torch.tensor([5.0]))
    del plan, plans, found  # a found plan's pointer never deletes the plan
    assert torch.equal(sent(torch.tensor([1.0]).send(bob)).get(), torch.tensor([3.0]))
    assert bob.search("#affine", "#nothing") == []


def test_search_never_finds_another_clients_plan(bob: Any, attacker: Any) -> None:
    stateful().tag("#private-plan").send(bob)
    bob.synchronize()
    attacker.send("bob", [[protocol.SEARCH, ["#private-plan"], 1]])
    assert attacker.replies(1) == [[1, True, []]]


def test_plan_tags_must_be_tags() -> None:
    with pytest.raises(TypeError, match="a tag is a non-empty string without spaces"):
        stateful().tag("two words")
    with pytest.raises(TypeError, match="a description is a string"):
        stateful().describe(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------ attacks


def test_another_client_cannot_fetch_my_plan(bob: Any, attacker: Any) -> None:
    pointer_plan = stateful().send(bob)
    bob.synchronize()

    error = refusal(attacker, "bob", [protocol.FETCH_PLAN, pointer_plan.id_at_location, 1])

    assert error["type"] == PermissionDeniedError.__name__
    assert str(pointer_plan.id_at_location) in error["message"] and "bob" in error["message"]
    # by tag, another client's plans are never even found
    tagged = stateful().tag("#victim").send(bob)  # bob keeps it while the pointer lives
    bob.synchronize()
    error = refusal(attacker, "bob", [protocol.FETCH_PLAN, "#victim", 2])
    assert error["type"] == PlanNotFoundError.__name__ and "has 0 of your plans" in error["message"]
    # mine still fetches and runs
    assert torch.equal(pointer_plan.get()(torch.tensor([1.0])), torch.tensor([3.0]))
    assert torch.equal(bob.fetch_plan("#victim")(torch.tensor([1.0])), torch.tensor([3.0]))
    assert tagged.location is bob


def test_a_malformed_fetch_plan_is_refused_and_the_worker_keeps_serving(
    bob: Any, attacker: Any
) -> None:
    pointer_plan = stateful().send(bob)
    bob.synchronize()

    for bad in ("", "#" * 300, -1, 2**63, 1.5, None, [1]):
        error = refusal(attacker, "bob", [protocol.FETCH_PLAN, bad, 1])
        assert error["type"] == "MalformedMessageError", bad
        assert "fetch_plan field 1" in error["message"]
    # a plan whose tags are not tags is refused on arrival
    bad_plan = stateful().trace.wire()
    bad_plan["tags"] = [7]
    error = refusal(attacker, "bob", [protocol.PLAN, 5, bad_plan, 3])
    assert error["type"] == "MalformedMessageError" and "tags must be a list" in error["message"]
    # and in an honest client's session too
    session = bob.session
    session.enqueue(bob.id, [protocol.FETCH_PLAN, 2.5, None])
    with pytest.raises(sy.exceptions.MalformedMessageError, match="fetch_plan field 1"):
        session.synchronize(bob.id)
    x = torch.tensor([1.0]).send(bob)
    assert torch.equal(pointer_plan(x).get(), torch.tensor([3.0]))
