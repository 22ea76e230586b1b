"""broker/backoff.py: the one bounded backoff (no server needed)."""

from __future__ import annotations

import random

import pytest

from broker.backoff import MAX_DELAY, Backoff, compute_backoff


def test_delays_double_from_the_first_and_stop_at_the_maximum() -> None:
    delays = [compute_backoff(n, first=0.1, maximum=1.0) for n in range(1, 8)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert compute_backoff(10_000) == MAX_DELAY  # no overflow, however long it retries


def test_jitter_stays_between_half_and_all_of_the_delay() -> None:
    rng = random.Random(7)
    for attempt in range(1, 20):
        plain = compute_backoff(attempt)
        jittered = compute_backoff(attempt, jitter=True, rng=rng)
        assert plain / 2 <= jittered <= plain


def test_a_backoff_counts_failures_and_resets() -> None:
    backoff = Backoff(first=0.01, maximum=0.04)
    assert [backoff.next_delay() for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    assert backoff.attempts == 4
    backoff.reset()
    assert backoff.attempts == 0 and backoff.next_delay() == 0.01


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        compute_backoff(0)
