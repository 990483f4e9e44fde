"""Token-bucket rate limits per bearer token and per client address (issue 10.5).

Each key (a token id, or a client address) has a bucket of ``burst`` calls refilled at ``rate``
calls per second. At most ``max_keys`` buckets are kept: the least recently used is dropped, so
memory stays bounded whatever the number of addresses (a dropped key starts with a full bucket).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """``take(key)`` spends one call from ``key``'s bucket; returns seconds to wait, 0 if none."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float,
        max_keys: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Spend one call; the seconds until one is available if the bucket is empty."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self._rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait)))
