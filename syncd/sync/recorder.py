"""The last stage: an Outcome becomes a state row, an `uploaded` (or `copied`) record, stats and metrics.

State rows are written in a group commit (one transaction for many uploads), committed within FLUSH_AFTER
seconds: a crash loses at most that window's rows, and those files are still owed, so they are uploaded
again (the server then holds one extra, identical version).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from syncd.log import get_logger
from syncd.metrics import MetricsSink
from syncd.s3.lock import rfc3339
from syncd.s3.retry import backoff
from syncd.sync.state import StateStore
from syncd.sync.uploader import Outcome

log = get_logger()
FLUSH_AFTER = 0.2  # seconds an upload may wait in the state's group commit
FAILED_RETRY_BASE = 5.0  # seconds before a file the server failed is tried again; doubles each time
FAILED_RETRY_CAP = 3600.0  # at most this long between two tries of such a file


@dataclass
class Stats:
    """This run's counts (`syncd once` prints them, the daemon logs them when it stops)."""

    uploaded: int = 0
    copied: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run's
    skipped: int = 0
    bytes: int = 0
    last_upload: float | None = None
    to_upload: list[str] = field(default_factory=list)  # dry-run: what would be uploaded

    @property
    def done(self) -> int:
        return self.uploaded + self.copied + self.unchanged + self.failed + self.skipped


class Recorder:
    """Records what happened to each file; the only writer of upload rows and `uploaded` records."""

    def __init__(
        self, state: StateStore, metrics: MetricsSink, *, locking: bool = False, dry_run: bool = False
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.locking = locking  # object_lock: each version's lock is recorded for the extension pass
        self.dry_run = dry_run
        self.stats = Stats()
        self.unlisted_dirs: set[str] = set()
        self.flush_handle: asyncio.TimerHandle | None = None

    def record(self, outcome: Outcome, owed_since: float | None) -> None:
        """An upload's outcome (a `changed` one included: what was sent is a real version)."""
        rel = outcome.path
        if outcome.action == "would_upload":
            self.stats.to_upload.append(rel)
            return
        if outcome.action == "unchanged":
            self.stats.unchanged += 1
            self._store(outcome, owed_since)
            if self.locking:  # adopted from the bucket: the extension pass locks it
                self.state.adopt_lock(rel, outcome.key, outcome.version_id)
            log.debug("unchanged", path=rel, key=outcome.key)
            return
        if outcome.version_id is not None or outcome.etag is not None:
            # A new version exists in the bucket: log it (every version has its record) and store it.
            self.stats.last_upload = time.time()
            self._store(outcome, owed_since)
            if self.locking:
                self.state.record_lock(rel, outcome.key, outcome.version_id, outcome.retain_until or 0.0)
            if outcome.source_key:
                self.stats.copied += 1
                self.metrics.copied()
            else:
                self.stats.uploaded += 1
                self.stats.bytes += outcome.sig.size
                self.metrics.uploaded(outcome.sig.size)
            self.metrics.set_last_success(self.stats.last_upload)
            log.info("copied" if outcome.source_key else "uploaded", **_fields(outcome))
        if outcome.action == "changed":
            log.info("changed_during_upload", path=rel)

    def unlisted(self, rel_dir: str, reason: str) -> None:
        """A directory the walk could not look into (scan_skipped, logged by the walk): a failure of this
        run, once per directory however often rescans meet it."""
        if rel_dir in self.unlisted_dirs:
            return
        self.unlisted_dirs.add(rel_dir)
        self.stats.skipped += 1
        self.stats.failures.append((f"{rel_dir}/", f"directory not backed up: {reason}"))

    def skipped(self, rel: str, reason: str) -> None:
        """A file syncd cannot upload as it is (unreadable, a key too long): owed until it changes."""
        self.stats.skipped += 1
        self.stats.failures.append((rel, reason))
        self.metrics.failed()
        log.warning("upload_skipped", path=rel, reason=reason)
        if not self.dry_run:
            self.state.record_failure(rel, reason)

    def failed(self, rel: str, reason: str, *, retry: bool) -> float | None:
        """The server refused or failed the upload: owed, with the reason `syncd status` shows.

        retry: the file is to be tried again later; returns in how many seconds (growing with its
        failed attempts, jittered so a batch of failures does not come back at once).
        """
        self.stats.failed += 1
        self.stats.failures.append((rel, reason))
        self.metrics.failed()
        if self.dry_run:
            log.error("upload_failed", path=rel, reason=reason)
            return None
        attempts = self.state.record_failure(rel, reason)
        if not retry:
            log.error("upload_failed", path=rel, reason=reason, attempts=attempts)
            return None
        delay = backoff(attempts - 1, FAILED_RETRY_BASE, FAILED_RETRY_CAP) * random.uniform(0.8, 1.2)
        log.error("upload_failed", path=rel, reason=reason, attempts=attempts, retry_in_s=round(delay, 1))
        return delay

    def _store(self, outcome: Outcome, owed_since: float | None) -> None:
        """Store the upload in the state's group commit; commit it within FLUSH_AFTER seconds."""
        self.state.record_upload(outcome.record(), owed_since=owed_since)
        if self.state.pending and self.flush_handle is None:
            self.flush_handle = asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()  # a no-op when the timer itself is calling
            self.flush_handle = None
        self.state.flush()


def _fields(outcome: Outcome) -> dict[str, Any]:
    """The `uploaded` / `copied` record's fields (users' log pipelines read these names)."""
    fields: dict[str, Any] = {
        "path": outcome.path,
        "key": outcome.key,
        "size": outcome.sig.size,
        "etag": outcome.etag,
        "version_id": outcome.version_id,
        "duration_ms": outcome.duration_ms,
        "md5": outcome.md5,
    }
    if outcome.source_key:
        fields["source_key"] = outcome.source_key
    if outcome.multipart_parts:
        fields["parts"] = outcome.multipart_parts
    if outcome.retain_until is not None:
        fields["retain_until"] = rfc3339(outcome.retain_until)
    if outcome.action == "changed":
        fields["changed_during_upload"] = True
    return fields
