"""In-process pointer ops (a ``VirtualWorker``) beside the same ops in local torch."""

from __future__ import annotations

import torch

from deploy.bench.common import Row, per_call_us


def run(quick: bool) -> list[Row]:
    """Pipelined and synchronous pointer ops on a VirtualWorker, beside local torch."""
    import client as sy

    hook = sy.TorchHook(torch)
    bench_worker = sy.VirtualWorker(hook, id="bench")
    local_a, local_b = torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([1.0, 1, 1, 1, 1])
    a = local_a.send(bench_worker)  # type: ignore[attr-defined]
    b = local_b.send(bench_worker)  # type: ignore[attr-defined]
    calls = 5_000 if quick else 50_000

    def pipelined_loop() -> None:
        for _ in range(calls):
            result = a + b
        del result
        bench_worker.synchronize()

    def local_loop() -> None:
        for _ in range(calls):
            torch.add(local_a, local_b)

    pipelined_loop()  # warm the shape cache and the allocator
    pipelined = per_call_us(pipelined_loop, 1) / calls
    local = per_call_us(local_loop, 1) / calls
    sync_calls = 500 if quick else 5_000
    sync = per_call_us(lambda: (a + b).get(), sync_calls)
    local_sync = per_call_us(lambda: torch.add(local_a, local_b).clone(), sync_calls)
    return [
        Row(
            "inprocess_pipelined_op_vs_torch",
            "in-process pipelined pointer op (a + b)",
            pipelined,
            "µs/op",
            "local torch.add",
            local,
        ),
        Row(
            "inprocess_sync_op_vs_torch",
            "in-process synchronous op ((a + b).get())",
            sync,
            "µs/op",
            "local torch.add + clone",
            local_sync,
        ),
    ]
