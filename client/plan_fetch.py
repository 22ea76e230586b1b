"""Plan retrieval (PySyft 0.2.4): ``PointerPlan.get()``, ``worker.fetch_plan(id or "#tag")``.

The worker answers a ``fetch_plan`` command with the plan data it keeps (the format
of :mod:`broker.plan_format`, state tensors included) and keeps its copy, as PySyft
did. Only the plan's owner may fetch it: another client's plan is refused with
PermissionDeniedError. The client checks the data with the same parser the worker
uses and resolves every op name through the allowlist (``broker.ops.ALLOWED``), so a
fetched plan is a :class:`~client.plan.Plan` that runs locally (replaying its ops)
and can be sent on like any built plan.
"""

from __future__ import annotations

from typing import Any

from broker import protocol
from broker.errors import ForbiddenOperationError
from broker.ops import ALLOWED
from broker.plan_format import parse_plan
from client.plan import Plan, Trace


def trace_from_wire(data: Any, source: str) -> Trace:
    """A :class:`Trace` from plan data a worker sent (``source``: that worker's id)."""
    parsed = parse_plan(data)
    funcs = []
    for op in parsed.ops:
        func = ALLOWED.get(op.name)
        if func is None:
            raise ForbiddenOperationError(op.name, source)
        funcs.append(func)
    return Trace(
        name=parsed.name,
        inputs=parsed.inputs,
        input_metas=(),
        state=parsed.state,
        ops=[[op.name, op.args, op.kwargs, op.outs] for op in parsed.ops],
        funcs=funcs,
        outputs=parsed.outputs,
        container=None if len(parsed.outputs) == 1 else tuple,
        reads_shapes=False,
    )


def fetch_plan(location: Any, plan_id: int | str) -> Plan:
    """The plan ``location`` keeps under ``plan_id`` (or the one of yours with that tag)."""
    if type(plan_id) is not int and type(plan_id) is not str:
        raise TypeError(
            f"a plan is named by its id (PointerPlan.id_at_location) or a tag, not {plan_id!r:.40}"
        )
    data = location._request(
        [protocol.FETCH_PLAN, plan_id, None], f"fetch plan {plan_id} from {location.id}"
    )
    plan = Plan.from_trace(trace_from_wire(data, str(location.id)))
    parsed_tags, description = data.get("tags", []), data.get("description")
    plan.tags = set(parsed_tags)
    plan.description = description
    return plan
