"""Plans benchmark: a plan of 50 ops called 100 times, beside the same 50 ops one by one.

Both sides run the same function on the same pointers; the plan sends one
``run_plan`` command per call, the op-by-op side one ``op`` command per op. Rows
give µs per call (pipelined, and with a ``.get()`` each call), and the commands,
messages and bytes the client sends per call, counted in an untimed pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from deploy.bench.common import Row, counting_messages, per_call_us

OPS = 50
CALLS = 100
SIZE = 16
#: the fleet worker the fleet rows need (on the bench's private fleet)
FLEET_WORKERS = ("bob",)


def fifty_ops(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """50 elementwise ops: 25 multiplications and 25 additions (stays finite for |y| < 1)."""
    z = x
    for _ in range(OPS // 2):
        z = z * y
        z = z + 1.0
    return z


Timings = dict[tuple[str, str], float]
Counts = dict[str, dict[str, float]]


def _measure(worker: Any, quick: bool) -> tuple[Timings, Counts, float]:
    """Timings and counts of plan and op-by-op calls, and the local floor (µs per call).

    Every pointer it makes is gone when it returns.
    """
    from client.plan import func2plan
    from client.remote import send_tensor

    plan = func2plan(args_shape=[(SIZE,), (SIZE,)])(fifty_ops)
    assert len(plan.trace.ops) == OPS
    pointer_plan = plan.send(worker)
    x = send_tensor(torch.linspace(-1, 1, SIZE), [worker])
    y = send_tensor(torch.full((SIZE,), 0.5), [worker])
    expected = fifty_ops(torch.linspace(-1, 1, SIZE), torch.full((SIZE,), 0.5))

    def with_plan() -> Any:
        return pointer_plan(x, y)

    def one_by_one() -> Any:
        return fifty_ops(x, y)

    def pipelined(call: Callable[[], Any]) -> Callable[[], None]:
        def loop() -> None:
            result = None
            for _ in range(CALLS):
                result = call()
            assert result is not None
            result.get()  # one synchronising call at the end: every call has run

        return loop

    def synchronous(call: Callable[[], Any]) -> Callable[[], None]:
        def loop() -> None:
            for _ in range(CALLS):
                call().get()

        return loop

    local_x, local_y = torch.linspace(-1, 1, SIZE), torch.full((SIZE,), 0.5)
    local = per_call_us(lambda: fifty_ops(local_x, local_y), CALLS, 1 if quick else 3)
    assert torch.allclose(with_plan().get(), expected)
    assert torch.allclose(one_by_one().get(), expected)
    repeats = 1 if quick else 3
    timings: Timings = {}
    for name, call in (("plan", with_plan), ("ops", one_by_one)):
        timings[name, "pipelined"] = per_call_us(pipelined(call), 1, repeats) / CALLS
        timings[name, "sync"] = per_call_us(synchronous(call), 1, repeats) / CALLS
    counts: Counts = {}
    for name, call in (("plan", with_plan), ("ops", one_by_one)):
        worker.synchronize()
        with counting_messages(worker.session.transport) as counted:
            pipelined(call)()
        counts[name] = {key: value / CALLS for key, value in counted.items()}
    return timings, counts, local


def _rows(worker: Any, quick: bool, kind: str) -> list[Row]:
    """The rows of one kind of worker, ``inprocess`` or ``fleet``."""
    from deploy.demo import release

    timings, counts, local = _measure(worker, quick)
    release([worker])
    label = "fleet" if kind == "fleet" else "in-process"
    baseline = f"same {OPS} ops one by one"
    return [
        Row(
            f"plan_pipelined_call_vs_ops_{kind}",
            f"{label} plan of {OPS} ops, pipelined call",
            timings["plan", "pipelined"],
            "µs/call",
            baseline,
            timings["ops", "pipelined"],
        ),
        Row(
            f"plan_pipelined_call_vs_local_{kind}",
            f"{label} plan of {OPS} ops, pipelined call",
            timings["plan", "pipelined"],
            "µs/call",
            "the function on local tensors",
            local,
        ),
        Row(
            f"plan_sync_call_vs_ops_{kind}",
            f"{label} plan of {OPS} ops, call + .get()",
            timings["plan", "sync"],
            "µs/call",
            baseline,
            timings["ops", "sync"],
        ),
        Row(
            f"plan_commands_per_call_{kind}",
            f"{label} plan: commands sent per call (+ deletes)",
            counts["plan"]["commands"],
            "cmd/call",
            baseline,
            counts["ops"]["commands"],
        ),
        Row(
            f"plan_messages_per_call_{kind}",
            f"{label} plan: messages sent per call",
            counts["plan"]["messages"],
            "msg/call",
            baseline,
            counts["ops"]["messages"],
        ),
        Row(
            f"plan_bytes_per_call_{kind}",
            f"{label} plan: bytes sent per call",
            counts["plan"]["bytes"],
            "B/call",
            baseline,
            counts["ops"]["bytes"],
        ),
    ]


def run(quick: bool) -> list[Row]:
    """The plan rows on an in-process worker."""
    import client as sy

    hook = sy.TorchHook(torch)
    return _rows(sy.VirtualWorker(hook, id="bench_plans"), quick, "inprocess")


def run_fleet(quick: bool, workers: Mapping[str, Any]) -> list[Row]:
    """The plan rows on a fleet worker (the bench's private fleet: RabbitMQ, Celery, Redis)."""
    return _rows(workers["bob"], quick, "fleet")
