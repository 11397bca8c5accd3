"""Keep current versions locked (`object_lock`): extend each one's retention before it runs out.

A version is locked for `retain` when it is written. While it stays a file's current version, the
extension pass sets its retention to now + retain (PutObjectRetention on that VersionId) once less than
retain/2 is left, so each current version costs one request per retain/2 and a syncd that is down for
less than retain/2 never lets one become deletable. The state records every current version's
retain-until, so a restart extends only what is due. A version that stops being current keeps the date it
has and becomes deletable then (keep_versions_days can expire it afterwards).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from syncd.log import get_logger
from syncd.s3.client import describe, error_code
from syncd.s3.lock import LockPolicy, as_timestamp, rfc3339, set_retention
from syncd.s3.retry import Retrier
from syncd.sync.limits import RateLimit
from syncd.sync.state import LockRow, StateStore

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = get_logger()
BATCH = 200  # lock rows read from the state and extended per round
CONCURRENCY = 16  # extension requests in flight at once
RATE = 100  # extension requests per second at most: a pass never crowds out uploads or the server
MAX_WAIT = 600.0  # seconds between looks at the state at most (a cheap indexed query)
GONE = frozenset({"NoSuchVersion", "NoSuchKey", "404"})


class LockExtender:
    """The extension pass and the loop that runs it when the earliest lock comes due."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        state: StateStore,
        policy: LockPolicy,
        retrier: Retrier,
        *,
        rate: float = RATE,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.state = state
        self.policy = policy
        self.retrier = retrier
        self.rate = RateLimit(max(1, int(rate)))
        self.extended = 0  # PutObjectRetention requests that succeeded, for the log and the bench
        self.failed = 0  # versions the last pass could not extend: looked at again after a pause

    def wait(self, now: float | None = None) -> float:
        """Seconds until the earliest current lock comes due, between 1 s and MAX_WAIT (scaled to retain,
        so a file uploaded meanwhile is looked at well before its first renewal)."""
        now = time.time() if now is None else now
        longest = min(MAX_WAIT, max(1.0, self.policy.retain / 8))
        earliest = self.state.next_lock_end()
        if earliest is None or self.failed:
            return longest
        return min(longest, max(1.0, earliest - self.policy.renew_within - now))

    async def run(self) -> None:
        """Extend what is due, then sleep until the next is; forever (cancelled with the pipeline)."""
        while True:
            await self.extend_due()
            await asyncio.sleep(self.wait())

    async def extend_due(self) -> int:
        """One pass over every current version with less than retain/2 left; returns how many it extended."""
        started = time.monotonic()
        horizon = time.time() + self.policy.renew_within
        after: tuple[float, str] | None = None
        done = failed = 0
        while rows := self.state.locks_due(horizon, after, BATCH):
            after = (rows[-1].retain_until, rows[-1].path)
            results = await self._extend_batch(rows)
            updates = [result for result in results if result is not None]
            self.state.set_locks(updates)
            done += len(updates)
            failed += len(rows) - len(updates)
        self.failed = failed
        if done or failed:
            log.info(
                "locks_extended",
                versions=done,
                failed=failed,
                until=rfc3339(self.policy.until()),
                duration_ms=int((time.monotonic() - started) * 1000),
            )
        return done

    async def _extend_batch(self, rows: list[LockRow]) -> list[tuple[str, str | None, float] | None]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(row: LockRow) -> tuple[str, str | None, float] | None:
            async with gate:
                await self.rate.consume(1)
                return await self._extend(row)

        return list(await asyncio.gather(*(one(row) for row in rows)))

    async def _extend(self, row: LockRow) -> tuple[str, str | None, float] | None:
        """Extend one version to now + retain; (path, version_id, retain-until it holds), or None."""
        version_id = row.version_id
        try:
            if version_id is None:  # adopted from a listing: the current version's ID is not known yet
                head = await self.retrier.call(
                    lambda: self.client.head_object(Bucket=self.bucket, Key=row.key), key=row.key
                )
                version_id = head.get("VersionId")
                held = head.get("ObjectLockRetainUntilDate")
                if version_id and held is not None and not self.policy.due(as_timestamp(held)):
                    return row.path, str(version_id), as_timestamp(held)
                if not version_id:
                    raise LookupError(f"{row.key} has no version ID: is the bucket versioned?")
            vid = str(version_id)
            until = self.policy.until()
            retention = await self.retrier.call(
                lambda: set_retention(self.client, self.bucket, row.key, vid, self.policy, until), key=row.key
            )
        except Exception as exc:
            if error_code(exc) in GONE:
                self.state.drop_lock(row.path, row.version_id)
                log.warning("lock_version_gone", path=row.path, key=row.key, version_id=version_id)
                return None
            log.error(
                "lock_extend_failed",
                path=row.path,
                key=row.key,
                version_id=version_id,
                reason=describe(exc),
                hint=(
                    "grant s3:PutObjectRetention to this key; retried at the next pass"
                    if error_code(exc) == "AccessDenied"
                    else "retried at the next pass"
                ),
            )
            return None
        self.extended += 1
        assert retention.until is not None
        return row.path, vid, retention.until
