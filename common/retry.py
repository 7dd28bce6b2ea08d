"""The retry policy as a value: capped exponential backoff with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetryPolicy:
    """Retry n waits uniform in [base/2, min(cap, base * 2**(n-1))], at least Retry-After.

    Full jitter spreads retries of many subscriptions that failed together (one endpoint down);
    the floor of base/2 keeps a failing subscription from being retried in a hot loop.
    """

    base: float = 5.0
    cap: float = 3600.0

    def delay(
        self, failures: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1 = first failure)."""
        n = max(failures, 1)
        ceiling = min(self.cap, self.base * 2 ** min(n - 1, 62))
        floor = min(self.base / 2, ceiling)
        pick = (rng or _rng).uniform(floor, ceiling)
        if retry_after is not None and retry_after > 0:
            pick = max(pick, min(retry_after, self.cap))
        return pick


def next_attempt(
    policy: RetryPolicy, failures: int, now: datetime, retry_after: float | None = None
) -> datetime:
    """When a subscription that has now failed ``failures`` times in a row is due again."""
    return now + timedelta(seconds=policy.delay(failures, retry_after))


_rng = random.Random()  # noqa: S311 - jitter, not security
