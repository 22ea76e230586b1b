"""``worker.wait_ready`` and ``repr(worker)`` on every worker kind (issue 16.4).

Fleet workers that are not served are in tests/test_worker_availability.py.
"""

from __future__ import annotations

import time
from typing import Any

#: ``repr`` must come back well inside this (it used to wait TENSORFLEET_TIMEOUT)
FAST = 5.0


def test_wait_ready_returns_the_worker_once_it_answers(bob: Any) -> None:
    assert bob.wait_ready(30) is bob


def test_repr_shows_the_object_count_without_waiting(bob: Any) -> None:
    import torch

    pointer = torch.ones(2).send(bob)
    started = time.monotonic()
    assert repr(bob) == f"<{type(bob).__name__} id:bob #objects:1>"
    assert time.monotonic() - started < FAST
    del pointer
