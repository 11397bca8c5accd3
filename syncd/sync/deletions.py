"""Files that vanished from the folder become delete markers in the bucket, in batches, behind a guard.

Batches exist for the guard: a `rm -rf` or an unmount arrives as thousands of single deletions, and only
seen together can they be told from ordinary tidying.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from syncd.config import Config
from syncd.log import get_logger
from syncd.s3.client import describe
from syncd.s3.retry import Retrier
from syncd.sync.folder import Folder
from syncd.sync.state import StateStore

log = get_logger()
BATCH_QUIET = 2.0  # seconds without a new deletion before a batch is judged by the delete guard


class DeleteGuard:
    """Refuses a batch larger than delete_guard_percent of the tracked files or delete_guard_files."""

    def __init__(self, percent: float, files: int) -> None:
        self.percent = percent
        self.files = files

    def limit(self, tracked: int) -> float:
        return min(self.percent / 100 * max(tracked, 1), self.files)

    def allows(self, count: int, tracked: int) -> bool:
        return count <= self.limit(tracked)


class Deletions:
    """Collects vanished files (`note_gone`) and, in `run()`, deletes each judged batch in the bucket."""

    def __init__(
        self,
        config: Config,
        client: Any,
        state: StateStore,
        retrier: Retrier,
        folder: Folder,
        *,
        dry_run: bool = False,
    ) -> None:
        self.config = config
        self.client = client
        self.state = state
        self.retrier = retrier
        self.folder = folder
        self.dry_run = dry_run
        self.guard = DeleteGuard(config.delete_guard_percent, config.delete_guard_files)
        self.waiting: set[str] = set()  # gone, not judged yet
        self.arrived = asyncio.Event()
        self.judging = False
        self.deleted = 0

    @property
    def busy(self) -> bool:
        """Deletions are waiting for their batch or being sent (`syncd once` waits for them)."""
        return bool(self.waiting) or self.judging

    def note_gone(self, rel: str) -> None:
        """rel vanished: forget what is owed for it, or batch it for deletion in the bucket."""
        if self.dry_run:
            return
        if self.config.on_delete == "keep" or self.state.get(rel) is None:
            self.state.forget_owed(rel)
            log.debug("gone", path=rel, action="kept")  # tests wait on it: the deletion was seen
            return
        self.waiting.add(rel)
        self.arrived.set()
        log.debug("gone", path=rel, action="batched")

    async def run(self) -> None:
        """Propagate deletions in batches, refusing a batch the delete guard calls a disaster."""
        while True:
            await self.arrived.wait()
            while True:  # a batch ends after BATCH_QUIET seconds without a new deletion
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), BATCH_QUIET)
                except TimeoutError:
                    break
            taken = set(self.waiting)
            batch = {rel for rel in taken if not os.path.lexists(os.path.join(self.config.folder, rel))}
            self.judging = True
            try:
                await self._judge(batch)
            finally:
                self.waiting -= taken  # judged, or back on disk; later arrivals wait for the next round
                self.judging = False
            if self.waiting:
                self.arrived.set()

    async def _judge(self, batch: set[str]) -> None:
        """Delete markers for a batch of vanished files, unless the guard calls it a disaster."""
        if not batch:
            return
        if not self.folder.available():
            log.debug("deletions_held", count=len(batch), reason="folder unavailable")  # tests wait on it
            return
        tracked = max(self.state.counts().files, 1)
        if not self.guard.allows(len(batch), tracked):
            log.critical(
                "delete_guard_tripped",
                count=len(batch),
                tracked=tracked,
                limit=int(self.guard.limit(tracked)),
                hint="nothing was deleted in the bucket; if this is intended, raise delete_guard",
            )
            for rel in batch:
                self.state.forget_owed(rel)
            return
        for rel in sorted(batch):
            await self._delete(rel)

    async def _delete(self, rel: str) -> None:
        rec = self.state.get(rel)
        if rec is None:
            return
        try:
            response = await self.retrier.call(
                lambda: self.client.delete_object(Bucket=self.config.bucket, Key=rec.key), key=rec.key
            )
        except Exception as exc:
            log.error("delete_failed", path=rel, key=rec.key, reason=describe(exc))
            return
        self.state.forget([rel])
        self.deleted += 1
        log.info("deleted", path=rel, key=rec.key, version_id=response.get("VersionId"))
