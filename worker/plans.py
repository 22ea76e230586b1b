"""Plans on the worker: a traced op list kept as data and replayed on inputs.

(Placeholder until the Plans work lands: refuses every plan with a clear error.)
"""

from __future__ import annotations

from typing import Any

import torch

from worker.allowlist import Allowlist


class StoredPlan:
    """A plan a worker keeps: ``wire`` is the data it arrived as (what Redis persists)."""

    def __init__(self, wire: Any) -> None:
        self.wire = wire


def decode_plan(data: Any, allowlist: Allowlist, worker_id: str) -> StoredPlan:
    raise NotImplementedError("plans are not supported by this worker yet")


def run_plan(plan: StoredPlan, inputs: list[Any]) -> list[torch.Tensor]:
    raise NotImplementedError("plans are not supported by this worker yet")
