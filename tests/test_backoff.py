"""broker/backoff.py: the one bounded backoff (no server needed)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from broker.backoff import MAX_DELAY, Backoff, RetryPolicy, compute_backoff


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


# -- the worker's retries, which redis-py and kombu run: their waits come from compute_backoff
def kombu_waits(policy: dict[str, float | int]) -> list[float]:
    """The waits kombu's own retry loop takes under ``policy`` (recorded, not slept)."""
    from kombu.utils.functional import retry_over_time

    waits: list[float] = []

    def fail() -> None:
        raise ConnectionError("down")

    def record(exc: Exception, intervals: Iterator[float], retries: int) -> float:
        waits.append(next(intervals))
        return 0.0  # kombu sleeps what the errback returns: nothing, in a test

    with pytest.raises(ConnectionError):
        retry_over_time(fail, ConnectionError, errback=record, **policy)  # type: ignore[arg-type]
    return waits


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(first=0.4, maximum=2.0, retries=5),
        RetryPolicy(first=1.0, maximum=5.0, retries=8),
        RetryPolicy(first=0.05, maximum=0.1, retries=4),
    ],
)
def test_kombus_ramp_is_pinned_to_the_function(policy: RetryPolicy) -> None:
    waits = kombu_waits(policy.kombu_policy())
    ours = policy.delays()
    assert len(waits) == policy.retries  # the same budget
    assert waits[:2] == pytest.approx(ours[:2])  # the same first two waits
    assert all(kombu <= mine + 1e-9 for kombu, mine in zip(waits, ours, strict=True))
    assert max(waits) <= policy.maximum


def test_the_worker_start_up_check_waits_as_before() -> None:
    from worker.cli import connect_retry

    policy = connect_retry(6)
    assert policy.kombu_intervals() == {
        "interval_start": 1.0,
        "interval_step": 1.0,
        "interval_max": 5.0,
    }
    assert kombu_waits(policy.kombu_policy()) == [1.0, 2.0, 3.0, 4.0, 5.0, 5.0]


def test_the_publishers_retry_policy_is_the_functions() -> None:
    from worker.publisher import PUBLISH_RETRY, RETRY_POLICY

    assert PUBLISH_RETRY.kombu_policy() == RETRY_POLICY
    assert kombu_waits(RETRY_POLICY) == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0])


def test_the_redis_clients_retries_wait_by_the_function() -> None:
    from redis.backoff import ExponentialBackoff

    from worker.redis_store import REDIS_RETRY, PolicyBackoff, connect

    retry = connect("redis://127.0.0.1:6379/0").get_retry()  # no connection is made
    assert retry is not None
    backoff = retry._backoff
    assert isinstance(backoff, PolicyBackoff) and backoff.policy == REDIS_RETRY
    assert retry._retries == REDIS_RETRY.retries == 5
    waits = [backoff.compute(failures) for failures in range(1, 6)]
    assert waits == list(REDIS_RETRY.delays()) == [0.1, 0.2, 0.4, 0.8, 1.0]
    # the schedule redis-py's own ExponentialBackoff(cap=1.0, base=0.05) gave before
    previous = ExponentialBackoff(cap=1.0, base=0.05)
    assert waits == [previous.compute(failures) for failures in range(1, 6)]
