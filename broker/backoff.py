"""The one bounded backoff of TensorFleet: how long to wait before retry number ``attempt``.

dramatiq's ``compute_backoff`` shape: exponential from ``first`` seconds, capped at
``maximum``, with optional full jitter so that many clients reconnecting to a
restarted broker do not all knock at the same instant. :class:`Backoff` walks the
delays of one retry loop and says when its budget of attempts is spent.
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
