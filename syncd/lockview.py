"""What `check`, `versions` and `status` print about object_lock (the locks themselves are s3/lock.py's)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

from syncd.config import Config
from syncd.s3.client import describe
from syncd.s3.listing import Version
from syncd.s3.lock import (
    KeyRights,
    check_bucket_lock,
    probe_enforcement,
    probe_key_rights,
    read_retention,
    rfc3339,
)
from syncd.s3.retry import Retrier
from syncd.sync.state import LockSummary

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


def duration(seconds: float) -> str:
    """30d, 12h, 45s: the largest unit that divides the duration."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


async def check_lines(client: S3Client, config: Config, *, exists: bool) -> list[str]:
    """`check`'s lines about object_lock; BucketError (exit 3) for a bucket without Object Lock."""
    lock = config.object_lock
    if lock is None:
        return []
    retain = duration(lock.retain)
    lines = [f"object lock: {lock.mode}, every version locked for {retain} and renewed while it is current"]
    if not exists:
        lines[0] += "; syncd run creates the bucket with Object Lock enabled"
    else:
        bucket_lock = await check_bucket_lock(client, config.bucket)
        lines.append(
            f"  bucket default retention: {bucket_lock.default_text()} (syncd sets its own per version; "
            "the longer one wins)"
        )
    if lock.mode == "compliance":
        lines.append(
            "  compliance: no one, the root account included, can shorten or remove a version's lock or "
            "delete the version until the lock expires"
        )
    if config.keep_versions_days is not None and config.keep_versions_days * 86400 < lock.retain:
        lines.append(
            f"  warning: keep_versions_days ({config.keep_versions_days}) is shorter than object_lock.retain "
            f"({retain}): lifecycle cannot expire locked versions; they stay until their lock ends"
        )
    if exists:
        rights = await probe_key_rights(client, config.bucket, config.prefix)
        lines += rights_lines(rights, lock.mode)
        lines.append(await enforcement_line(client, config, rights))
    return lines


async def enforcement_line(client: S3Client, config: Config, rights: KeyRights) -> str:
    """Whether the server enforces locks, where a probe can tell it and leave nothing behind."""
    if rights.delete_versions is not True:
        return (
            "  server: whether it enforces Object Lock cannot be told with a key that may not delete "
            "versions (as it should be); the README lists the servers that do"
        )
    try:
        enforced = await probe_enforcement(client, config.bucket, config.prefix)
    except Exception as exc:
        return f"  server: whether it enforces Object Lock could not be told ({describe(exc)})"
    if enforced:
        return "  server: enforces Object Lock (it refused to delete a locked probe version, since removed)"
    return (
        "  warning: the server does NOT enforce Object Lock: it deleted a locked probe version; locks do "
        "not protect the history on this server"
    )


def rights_lines(rights: KeyRights, mode: str) -> list[str]:
    """The key's rights to erase history, as far as a probe that deletes nothing can tell."""
    lines = []
    if rights.delete_versions is True:
        lines.append(
            "  warning: this key can delete versions (s3:DeleteObjectVersion): a stolen key erases every "
            "version whose lock has run out; give syncd a key without it (README: least-privilege keys)"
        )
    elif rights.delete_versions is False:
        lines.append("  key: cannot delete versions (refused for a version that does not exist)")
    else:
        lines.append("  key: whether it can delete versions could not be told; check its policy")
    if rights.bypass_governance is False:
        lines.append("  key: cannot bypass governance retention")
    elif mode == "governance":
        lines.append(
            "  key: whether it can bypass governance retention (s3:BypassGovernanceRetention) cannot be told "
            "without a locked version to try; make sure its policy does not grant it"
        )
    return lines


async def version_notes(
    client: S3Client, bucket: str, found: list[Version], retrier: Retrier
) -> dict[str, str]:
    """Version ID -> its lock for `versions` ("locked: governance until 2026-12-03T10:00:00Z")."""

    gate = asyncio.Semaphore(8)  # a file with thousands of versions: a few requests at a time

    async def note(v: Version) -> tuple[str, str]:
        try:
            async with gate:
                held = await retrier.call(
                    lambda: read_retention(client, bucket, v.key, v.version_id), key=v.key
                )
        except Exception as exc:
            return v.version_id, f"lock unknown ({describe(exc)})"
        if held.mode is None or held.until is None:
            return v.version_id, "not locked"
        now = dt.datetime.now(dt.UTC).timestamp()
        state = "locked" if held.until > now else "lock expired"
        return v.version_id, f"{state}: {held.mode.lower()} until {rfc3339(held.until)}"

    return dict(await asyncio.gather(*(note(v) for v in found if not v.delete_marker)))


def status_line(config: Config, locks: LockSummary) -> str | None:
    """`status`: how many current versions are locked, and when the earliest lock ends."""
    if config.object_lock is None:
        return None
    line = f"locked: {locks.locked:,} current versions ({config.object_lock.mode})"
    if locks.earliest is not None:
        moment = dt.datetime.fromtimestamp(locks.earliest, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        ahead = max(0, int(locks.earliest - dt.datetime.now(dt.UTC).timestamp()))
        line += f", earliest lock ends {moment} (in {ahead} s)"
    return line
