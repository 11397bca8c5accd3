"""Files that vanished from the folder become delete markers in the bucket, in batches, behind a guard.

Batches exist for the guard: a `rm -rf` or an unmount arrives as thousands of single deletions, and only
seen together can they be told from ordinary tidying.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd.config import Config
from syncd.log import get_logger
from syncd.s3.client import describe
from syncd.s3.retry import Retrier
from syncd.sync.files import present
from syncd.sync.folder import Folder
from syncd.sync.state import StateStore

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = get_logger()
BATCH_QUIET = 2.0  # seconds without a new deletion before a batch is judged by the delete guard


RECENT_KEY = "deletions_recent"  # state meta: [[unix time, files deleted], ...] within the window


class DeleteGuard:
    """Refuses deletions beyond delete_guard_percent (or delete_guard_files) within a sliding window.

    Judged per batch alone, deletions spaced a few seconds apart (4, 3, 1, 1 files out of 10) each
    passed. Here a batch counts together with what was deleted in the last `window` seconds, against
    the files there were when the window began (tracked now plus those deleted since; files added in
    the window count too). The deletions done are kept in the state, so a restart does not reset them.
    """

    def __init__(self, percent: float, files: int, window: float, state: StateStore) -> None:
        self.percent = percent
        self.files = files
        self.window = window
        self.state = state
        self.recent: list[tuple[float, int]] = _load_recent(state.get_meta(RECENT_KEY))

    def limit(self, tracked: int) -> float:
        return min(self.percent / 100 * max(tracked, 1), self.files)

    def deleted_recently(self, now: float | None = None) -> int:
        """Files deleted within the window up to now."""
        since = (time.time() if now is None else now) - self.window
        self.recent = [(at, count) for at, count in self.recent if at > since]
        return sum(count for _, count in self.recent)

    def allows(self, count: int, tracked: int) -> bool:
        """May `count` more files be deleted, with `tracked` files in the state now?"""
        recent = self.deleted_recently()
        return recent + count <= self.limit(tracked + recent)

    def note_deleted(self, count: int) -> None:
        if count:
            self.recent.append((time.time(), count))
            self.state.set_meta(RECENT_KEY, json.dumps(self.recent))


def _load_recent(raw: str | None) -> list[tuple[float, int]]:
    try:
        return [(float(at), int(count)) for at, count in json.loads(raw or "[]")]
    except (ValueError, TypeError):
        return []  # unreadable: start a fresh window


class Deletions:
    """Collects vanished files (`note_gone`) and, in `run()`, deletes each judged batch in the bucket."""

    def __init__(
        self,
        config: Config,
        client: S3Client,
        state: StateStore,
        retrier: Retrier,
        folder: Folder,
        *,
        on_back: Callable[[str], None],
        dry_run: bool = False,
    ) -> None:
        self.config = config
        self.on_back = on_back  # a path deleted in the bucket that is on disk again: owe its upload
        self.client = client
        self.state = state
        self.retrier = retrier
        self.folder = folder
        self.dry_run = dry_run
        self.guard = DeleteGuard(
            config.delete_guard_percent, config.delete_guard_files, config.delete_guard_window, state
        )
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
            folder, follow = self.config.folder, self.config.follow_symlinks
            batch = {rel for rel in taken if not present(folder, rel, follow)}
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
            recent = self.guard.deleted_recently()
            log.critical(
                "delete_guard_tripped",
                count=len(batch),
                tracked=tracked + recent,  # at the window's start
                limit=int(self.guard.limit(tracked + recent)),
                deleted_recently=recent,
                window=self.guard.window,
                hint="nothing was deleted in the bucket; if this is intended, raise delete_guard",
            )
            for rel in batch:
                self.state.forget_owed(rel)
            return
        before = self.deleted
        try:
            for rel in sorted(batch):
                await self._delete(rel)
        finally:
            self.guard.note_deleted(self.deleted - before)

    async def _delete(self, rel: str) -> None:
        """One delete marker; not for a file that is back on disk (a batch takes seconds to send)."""
        rec = self.state.get(rel)
        if rec is None or self._back(rel):  # back: the watcher owes it, and its version stays current
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
        if self._back(rel):  # recreated while the DELETE was on its way: the marker may hide its upload
            log.info("deleted_file_back", path=rel, key=rec.key)
            self.on_back(rel)

    def _back(self, rel: str) -> bool:
        return present(self.config.folder, rel, self.config.follow_symlinks)
