from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from apievents.common.retry import RetryPolicy, next_attempt

POLICY = RetryPolicy(base=5, cap=3600)


@pytest.mark.parametrize(
    "failures, ceiling", [(1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (500, 3600)]
)
def test_backoff_doubles_up_to_the_cap(failures: int, ceiling: float) -> None:
    rng = random.Random(1)
    delays = [POLICY.delay(failures, rng=rng) for _ in range(2000)]
    assert min(delays) >= 2.5
    assert max(delays) <= ceiling
    assert max(delays) > ceiling * 0.9  # full jitter reaches the top of its range


def test_jitter_spreads_retries() -> None:
    rng = random.Random(2)
    assert len({round(POLICY.delay(6, rng=rng), 3) for _ in range(100)}) > 90


def test_retry_after_is_a_floor_but_capped() -> None:
    assert POLICY.delay(1, retry_after=120) >= 120
    assert POLICY.delay(1, retry_after=10**9) == 3600


def test_next_attempt_is_now_plus_delay() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    at = next_attempt(POLICY, 1, now)
    assert now + timedelta(seconds=2.5) <= at <= now + timedelta(seconds=5)
