"""The two limits on uploads: bytes held in memory (max_inflight) and bytes sent per second."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any


class ByteBudget:
    """One bound on bytes held in memory for uploads, whatever the number of workers and parts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> Any:
        n = min(max(n, 1), self.limit)
        async with self.cond:
            await self.cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            async with self.cond:
                self.used -= n
                self.cond.notify_all()


class RateLimit:
    """A token bucket over bytes sent (bandwidth_limit); None means unlimited."""

    def __init__(self, bytes_per_s: int | None) -> None:
        self.rate = bytes_per_s
        self.allowance = float(bytes_per_s or 0)
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def consume(self, n: int) -> None:
        if not self.rate:
            return
        async with self.lock:
            now = time.monotonic()
            self.allowance = min(float(self.rate), self.allowance + (now - self.stamp) * self.rate)
            self.stamp = now
            self.allowance -= n
            if self.allowance < 0:
                await asyncio.sleep(-self.allowance / self.rate)
