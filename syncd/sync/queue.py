"""The upload queue: each path waits at most once, and one path is never uploaded twice at the same time.

Two concurrent uploads of one key could finish in the wrong order and leave stale bytes as the newest
version, so a path that changes while it is in flight is marked dirty and goes round again afterwards.
"""

from __future__ import annotations

import asyncio

from syncd.sync.settle import Released


class UploadQueue:
    """Paths ready to upload, each waiting at most once and in flight at most once."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.waiting: dict[str, Released] = {}  # what the settle stage saw of each
        self.inflight: set[str] = set()
        self.dirty: set[str] = set()
        self.idle_event = asyncio.Event()
        self.idle_event.set()

    def __len__(self) -> int:
        return len(self.waiting) + len(self.inflight)

    def put(self, rel: str, released: Released) -> None:
        if rel in self.inflight:
            self.dirty.add(rel)
        elif rel in self.waiting:
            self.waiting[rel] = self.waiting[rel].then(released)  # keeps its place in the line
        else:
            self.waiting[rel] = released
            self.queue.put_nowait(rel)
            self.idle_event.clear()

    async def get(self) -> tuple[str, Released]:
        while True:
            rel = await self.queue.get()
            released = self.waiting.pop(rel, None)
            if released is None:
                continue  # withdrawn while it waited
            self.inflight.add(rel)
            return rel, released

    def withdraw(self, rel: str) -> None:
        """Forget a waiting path (deleted, or the pipeline is stopping)."""
        self.waiting.pop(rel, None)
        self._check_idle()

    def done(self, rel: str) -> bool:
        """Mark an upload finished; True when the path changed meanwhile and must be looked at again."""
        self.inflight.discard(rel)
        again = rel in self.dirty
        self.dirty.discard(rel)
        self._check_idle()
        return again

    def _check_idle(self) -> None:
        if not self.waiting and not self.inflight:
            self.idle_event.set()

    async def wait_idle(self) -> None:
        await self.idle_event.wait()
