"""The one bounded backoff of TensorFleet: how long to wait before retry number ``attempt``.

dramatiq's ``compute_backoff`` shape: exponential from ``first`` seconds, capped at
``maximum``, with optional full jitter so that many clients reconnecting to a
restarted broker do not all knock at the same instant. :class:`Backoff` walks the
delays of one retry loop and says when its budget of attempts is spent.

Every retry in TensorFleet waits by this function, including the ones a library
runs for us: :class:`RetryPolicy` names one retry budget (first delay, cap,
number of retries) and hands it to redis-py as a backoff object
(:mod:`worker.redis_store`) and to kombu as ``max_retries`` / ``interval_*``
(:mod:`worker.publisher`, the worker's start-up check in :mod:`worker.cli`).
kombu only knows linear ramps, so its ramp is pinned to this function: the same
first delay, the same second delay, the same cap (``tests/test_backoff.py`` runs
kombu's own schedule against it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: first delay (seconds) of a client's reconnect or probe loop
FIRST_DELAY = 0.05
#: no single wait is longer than this (seconds)
MAX_DELAY = 2.0


def compute_backoff(
    attempt: int,
    *,
    first: float = FIRST_DELAY,
    maximum: float = MAX_DELAY,
    jitter: bool = False,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry ``attempt`` (1 for the first retry): ``first * 2**(n-1)``.

    Never more than ``maximum``; with ``jitter``, uniformly between half of that and all of it.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    delay = min(first * 2 ** min(attempt - 1, 62), maximum)
    if jitter:
        delay = (rng or random).uniform(delay / 2, delay)
    return delay


@dataclass
class Backoff:
    """The delays of one retry loop: ``next_delay()`` after each failure, ``reset()`` on success."""

    first: float = FIRST_DELAY
    maximum: float = MAX_DELAY
    jitter: bool = False
    attempts: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before trying again."""
        self.attempts += 1
        return compute_backoff(
            self.attempts, first=self.first, maximum=self.maximum, jitter=self.jitter
        )

    def reset(self) -> None:
        self.attempts = 0


@dataclass(frozen=True)
class RetryPolicy:
    """One retry budget: at most ``retries`` retries, retry ``n`` after :func:`compute_backoff`.

    Libraries that retry for us get it in their own terms (:meth:`kombu_policy`;
    redis-py's backoff object in :mod:`worker.redis_store`), so no retry schedule
    is written down anywhere else.
    """

    first: float = FIRST_DELAY
    maximum: float = MAX_DELAY
    retries: int = 5

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (1 for the first), never jittered."""
        return compute_backoff(attempt, first=self.first, maximum=self.maximum)

    def delays(self) -> tuple[float, ...]:
        """The wait before each retry of the budget, in order."""
        return tuple(self.delay(attempt) for attempt in range(1, self.retries + 1))

    def kombu_intervals(self) -> dict[str, float]:
        """kombu's ``interval_start/step/max``: its linear ramp through our first two delays.

        kombu waits ``start``, ``start + step``, ... up to ``max``: with these values its
        first two waits and its cap are this policy's, and no wait is longer than ours.
        """
        first, second = self.delay(1), self.delay(2)
        return {
            "interval_start": first,
            "interval_step": second - first,
            "interval_max": self.maximum,
        }

    def kombu_policy(self) -> dict[str, float | int]:
        """kombu's publish ``retry_policy`` (``max_retries`` and the intervals)."""
        return {"max_retries": self.retries, **self.kombu_intervals()}
