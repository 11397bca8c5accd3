"""The two limits on uploads: bytes held in memory (max_inflight) and bytes sent per second."""

from __future__ import annotations

import asyncio
import time


class ByteBudget:
    """One bound on bytes held in memory for uploads, whatever the number of workers and parts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waiting = 0  # holds queued on cond: a new one queues behind them rather than overtaking
        self.cond = asyncio.Condition()

    def hold(self, n: int) -> _Hold:
        """`async with budget.hold(n)`: n bytes (at least 1, at most the limit) held for the block."""
        return _Hold(self, min(max(n, 1), self.limit))

    async def _acquire(self, n: int) -> None:
        if not self.waiting and self.used + n <= self.limit:
            self.used += n  # the usual case: no lock, no wait (this runs once per small file)
            return
        self.waiting += 1
        try:
            async with self.cond:
                await self.cond.wait_for(lambda: self.used + n <= self.limit)
                self.used += n
        finally:
            self.waiting -= 1

    async def _release(self, n: int) -> None:
        self.used -= n
        if self.waiting:
            async with self.cond:
                self.cond.notify_all()


class _Hold:
    """ByteBudget.hold's context manager: a plain class, cheaper per file than an asynccontextmanager."""

    __slots__ = ("budget", "n")

    def __init__(self, budget: ByteBudget, n: int) -> None:
        self.budget = budget
        self.n = n

    async def __aenter__(self) -> None:
        await self.budget._acquire(self.n)

    async def __aexit__(self, *_exc: object) -> None:
        await self.budget._release(self.n)


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
