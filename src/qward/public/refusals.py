"""Refused calls are logged, but a flood of them is logged as a count (issue 10.6).

The first refusal from a source (client address and token id) in an interval is logged at once;
later ones in the same interval are counted and logged as ONE aggregate record when the interval
closes: its count, first and last time, and a SHA-256 over the refused ``METHOD path`` lines. At
most ``max_sources`` sources are tracked; refusals from further sources share one "other"
bucket, so memory stays bounded whatever the number of addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from qward.errors import QwardError
from qward.sdk.core_client import AccessAggregate, AsyncCoreClient

__all__ = ["OTHER_SOURCE", "RefusalAggregator"]

OTHER_SOURCE = "other"


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(kw_only=True)
class _Bucket:
    token_id: str | None
    role: str | None
    method: str
    path: str
    decision: str
    opened: float
    first_at: str = ""
    last_at: str = ""
    count: int = 0
    lines: hashlib._Hash = field(default_factory=hashlib.sha256)


class RefusalAggregator:
    """Logs refused calls through ``recorder``, one record per source and interval at most."""

    def __init__(
        self,
        recorder: AsyncCoreClient,
        *,
        interval: float = 10.0,
        max_sources: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = _utc_now,
    ) -> None:
        self._recorder = recorder
        self._interval = interval
        self._max_sources = max_sources
        self._clock = clock
        self._wall_clock = wall_clock
        self._buckets: dict[str, _Bucket] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def refuse(
        self,
        *,
        address: str,
        token_id: str | None,
        role: str | None,
        method: str,
        path: str,
        decision: str,
    ) -> None:
        """Account for one refused call; logs it now if it is its source's first this interval."""
        self._start_flusher()
        await self.flush()
        source = f"{address}|{token_id or '-'}"
        bucket = self._buckets.get(source)
        if bucket is None and len(self._buckets) >= self._max_sources:
            source, address = OTHER_SOURCE, OTHER_SOURCE
            bucket = self._buckets.get(source)
        if bucket is None:
            self._buckets[source] = _Bucket(
                token_id=token_id,
                role=role,
                method=method,
                path=path,
                decision=decision,
                opened=self._clock(),
            )
            # The first refusal is evidence worth having at once, one by one.
            await self._recorder.record_access(
                token_id=token_id, role=role, method=method, path=path, decision=decision
            )
            return
        now = self._wall_clock()
        bucket.first_at = bucket.first_at or now
        bucket.last_at = now
        bucket.count += 1
        bucket.lines.update(f"{method} {path}\n".encode())

    async def flush(self, *, everything: bool = False) -> None:
        """Log the aggregate of every interval that has closed (or of all, if ``everything``)."""
        now = self._clock()
        closed = [
            key
            for key, bucket in self._buckets.items()
            if everything or now - bucket.opened >= self._interval
        ]
        for key in closed:
            # Taken out before the await, so that concurrent flushes never log a bucket twice.
            bucket = self._buckets.pop(key)
            if bucket.count == 0:
                continue
            try:
                await self._record(bucket)
            except QwardError:
                # Kept for the next flush: the evidence is not lost when the log is briefly down.
                self._buckets.setdefault(key, bucket)
                raise

    async def _record(self, bucket: _Bucket) -> None:
        await self._recorder.record_access(
            token_id=bucket.token_id,
            role=bucket.role,
            method=bucket.method,
            path=bucket.path,
            decision=bucket.decision,
            aggregate=AccessAggregate(
                count=bucket.count,
                first_at=bucket.first_at,
                last_at=bucket.last_at,
                digest=bucket.lines.hexdigest(),
            ),
        )

    def _start_flusher(self) -> None:
        # Intervals must close even when the flood stops: a task flushes them on a timer.
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while self._buckets:
            await asyncio.sleep(self._interval / 4)
            with contextlib.suppress(QwardError):
                await self.flush()
