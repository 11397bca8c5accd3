"""Object Lock (`object_lock`): the per-version retention syncd asks for, and what the server really holds.

Every version syncd writes is sent with its lock (mode and retain-until) in the request that makes it.
Some servers drop the lock from CreateMultipartUpload (Ceph RGW 16.2) or copy the source's lock instead of
the one asked for (SeaweedFS): where that can happen the retention is read back and set with
PutObjectRetention when the server holds less than asked. The server's answer is what gets recorded.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import botocore.exceptions

from syncd.config import ObjectLockSettings
from syncd.errors import BucketError
from syncd.s3.client import ErrorKind, classify, describe, error_code
from syncd.s3.retry import Retrier

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.literals import ObjectLockRetentionModeType
    from types_aiobotocore_s3.type_defs import ObjectLockRetentionTypeDef

NO_LOCK_CONFIG = frozenset({"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"})
UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "501", "405"})
# The server dates a version when it has the request, a little after the lock date is computed here: the
# date is rounded up to the next whole second and one more, so a version PUT within a second of being sent
# is locked until at least its own date + retain. Slower PUTs are extended after they finish.
LATENCY_MARGIN = 1.0
NO_RETENTION = frozenset({"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError"})


def rfc3339(ts: float) -> str:
    """A Unix time as RFC 3339 in UTC, whole seconds ("2026-12-03T09:36:48Z")."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_timestamp(value: Any) -> float:
    """A retain-until date as the server returned it (datetime or string) -> Unix time."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class LockPolicy:
    """The lock every new version gets: `mode` until at least now + `retain` seconds."""

    mode: str  # "GOVERNANCE" | "COMPLIANCE", as S3 spells it
    retain: float

    @classmethod
    def of(cls, settings: ObjectLockSettings | None) -> LockPolicy | None:
        return None if settings is None else cls(settings.mode.upper(), settings.retain)

    def until(self, now: float | None = None) -> float:
        """now + retain (+ LATENCY_MARGIN), rounded up to the whole second the server stores."""
        return float(math.ceil((time.time() if now is None else now) + self.retain + LATENCY_MARGIN))

    def request_args(self, until: float) -> dict[str, Any]:
        """The arguments of PutObject, CreateMultipartUpload and CopyObject that lock the new version."""
        return {
            "ObjectLockMode": self.mode,
            "ObjectLockRetainUntilDate": dt.datetime.fromtimestamp(until, dt.UTC),
        }

    @property
    def renew_within(self) -> float:
        """A current version is extended once less than this is left of its lock: half of retain.

        So each current version costs one PutObjectRetention per retain/2 (every 15 days at 30d), and a
        syncd that is down for less than retain/2 never lets a current version's lock run out.
        """
        return self.retain / 2

    def due(self, retain_until: float, now: float | None = None) -> bool:
        return retain_until - (time.time() if now is None else now) < self.renew_within


@dataclass(frozen=True)
class Retention:
    """What the server holds for one version."""

    mode: str | None  # None: no lock
    until: float | None

    def covers(self, policy: LockPolicy, until: float) -> bool:
        """At least as strong as asked: the same mode (or compliance) and no earlier date."""
        if self.mode is None or self.until is None or self.until < until:
            return False
        return self.mode == policy.mode or self.mode == "COMPLIANCE"


async def read_retention(client: S3Client, bucket: str, key: str, version_id: str) -> Retention:
    """GetObjectRetention of one version; a version without a lock is Retention(None, None)."""
    try:
        response = await client.get_object_retention(Bucket=bucket, Key=key, VersionId=version_id)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in NO_RETENTION:
            return Retention(None, None)
        raise
    held = response.get("Retention") or {}
    until = held.get("RetainUntilDate")
    return Retention(held.get("Mode"), None if until is None else as_timestamp(until))


async def set_retention(
    client: S3Client, bucket: str, key: str, version_id: str, policy: LockPolicy, until: float
) -> Retention:
    """PutObjectRetention to `until`. When the server refuses, what it holds decides: a lock that covers
    what was asked (longer, which it may not shorten) is returned; a lock in the other mode is extended in
    that mode; anything else raises the refusal."""
    try:
        await client.put_object_retention(
            Bucket=bucket, Key=key, VersionId=version_id, Retention=_retention(policy.mode, until)
        )
    except botocore.exceptions.ClientError as exc:
        if classify(exc) is not ErrorKind.PERMANENT:
            raise
        held = await read_retention(client, bucket, key, version_id)
        if held.covers(policy, until):
            return held
        if held.mode is None or held.mode == policy.mode:
            raise
        # object_lock.mode changed: changing a version's mode needs rights syncd's key should not have
        # (bypassing governance); extending it in the mode it has keeps it locked all the same.
        await client.put_object_retention(
            Bucket=bucket,
            Key=key,
            VersionId=version_id,
            Retention=_retention(held.mode, until),
        )
        return Retention(held.mode, until)
    return Retention(policy.mode, until)


def _retention(mode: str, until: float) -> ObjectLockRetentionTypeDef:
    """A PutObjectRetention body; `mode` is GOVERNANCE or COMPLIANCE (config.py and the server say so)."""
    return {
        "Mode": cast("ObjectLockRetentionModeType", mode),
        "RetainUntilDate": dt.datetime.fromtimestamp(until, dt.UTC),
    }


async def ensure_retention(
    client: S3Client,
    retrier: Retrier,
    bucket: str,
    key: str,
    version_id: str,
    policy: LockPolicy,
    until: float,
) -> float:
    """Read the version's lock back and set it when the server holds less; the retain-until it holds."""
    held = await retrier.call(lambda: read_retention(client, bucket, key, version_id), key=key)
    if not held.covers(policy, until):
        held = await retrier.call(
            lambda: set_retention(client, bucket, key, version_id, policy, until), key=key
        )
    assert held.until is not None
    return held.until


@dataclass(frozen=True)
class BucketLock:
    """The bucket's Object Lock configuration: on, and its default retention if it has one."""

    enabled: bool
    default_mode: str | None = None
    default_days: int | None = None
    default_years: int | None = None

    def default_text(self) -> str:
        if self.default_mode is None:
            return "none"
        amount = (
            f"{self.default_days} days" if self.default_days is not None else f"{self.default_years} years"
        )
        return f"{self.default_mode.lower()} {amount}"


async def read_bucket_lock(client: S3Client, bucket: str) -> BucketLock:
    """GetObjectLockConfiguration; a bucket without Object Lock (or a server without it) is not enabled."""
    try:
        response = await client.get_object_lock_configuration(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        if code in NO_LOCK_CONFIG or code in UNSUPPORTED:
            return BucketLock(False)
        if classify(exc) is ErrorKind.PERMANENT and code in ("AccessDenied", "Forbidden", "403"):
            raise BucketError(
                f"the credentials may not read the Object Lock configuration of bucket {bucket!r} "
                f"({describe(exc)}); grant s3:GetBucketObjectLockConfiguration on arn:aws:s3:::{bucket}"
            ) from exc
        raise
    config = response.get("ObjectLockConfiguration") or {}
    rule = (config.get("Rule") or {}).get("DefaultRetention") or {}
    return BucketLock(
        enabled=config.get("ObjectLockEnabled") == "Enabled",
        default_mode=rule.get("Mode"),
        default_days=rule.get("Days"),
        default_years=rule.get("Years"),
    )


def not_locked_error(bucket: str) -> BucketError:
    """Exit 3: object_lock is set but the bucket cannot lock versions."""
    return BucketError(
        f"bucket {bucket!r} does not have Object Lock enabled, so object_lock cannot protect its versions; "
        f"enable it (AWS, B2: `aws s3api put-object-lock-configuration --bucket {bucket} "
        "--object-lock-configuration ObjectLockEnabled=Enabled` on the versioned bucket; B2 cannot turn it "
        "off again), use a new bucket (syncd creates it with Object Lock), or remove object_lock"
    )


async def check_bucket_lock(client: S3Client, bucket: str) -> BucketLock:
    """The bucket's lock configuration; BucketError (exit 3) when Object Lock is not enabled on it."""
    lock = await read_bucket_lock(client, bucket)
    if not lock.enabled:
        raise not_locked_error(bucket)
    return lock


@dataclass(frozen=True)
class KeyRights:
    """What a probe that deletes nothing can tell about the key's rights to erase history.

    True: the server let the key ask (it has the right); False: refused (it does not); None: no answer.
    """

    delete_versions: bool | None
    bypass_governance: bool | None


async def probe_key_rights(client: S3Client, bucket: str, prefix: str) -> KeyRights:
    """DeleteObject with a VersionId, plain and with BypassGovernanceRetention, on a key that does not exist.

    Nothing exists to be deleted, so nothing is; the server still checks s3:DeleteObjectVersion first
    (AWS, RGW, SeaweedFS answer AccessDenied without it). BypassGovernanceRetention is checked by most
    servers only when a locked version is in the way, so an accepted bypass request proves nothing: only a
    refusal tells.
    """
    key = f"{prefix}.syncd-probe-{secrets.token_hex(8)}"
    version_id = secrets.token_hex(16)

    async def allowed(**extra: Any) -> bool | None:
        try:
            await client.delete_object(Bucket=bucket, Key=key, VersionId=version_id, **extra)
        except botocore.exceptions.ClientError as exc:
            code = error_code(exc)
            if code in ("AccessDenied", "Forbidden", "403"):
                return False
            if code in ("NoSuchVersion", "NoSuchKey", "404", "InvalidArgument", "400"):
                return True
            return None
        return True

    deletes = await allowed()
    bypass = await allowed(BypassGovernanceRetention=True)
    if deletes is False:
        bypass = False  # bypassing governance is a way of deleting a version
    elif bypass is True:
        bypass = None  # accepted for a missing version: says nothing about a locked one
    return KeyRights(deletes, bypass)


PROBE_LOCK = 2.0  # seconds the enforcement probe stays locked


async def probe_enforcement(client: S3Client, bucket: str, prefix: str) -> bool:
    """Whether the server refuses to delete a locked version: a 0-byte probe locked (governance) for
    PROBE_LOCK seconds, one delete of that version, then the probe's removal once its lock is over.

    Only for a key that may delete versions (probe_key_rights): for another the refusal would prove
    nothing and the probe could not be removed. Leaves nothing behind unless the last delete fails.
    """
    key = f"{prefix}.syncd-lock-probe-{secrets.token_hex(8)}"
    until = float(math.ceil(time.time() + PROBE_LOCK))
    policy = LockPolicy("GOVERNANCE", PROBE_LOCK)
    body = b""
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    put = await client.put_object(
        Bucket=bucket, Key=key, Body=body, ContentMD5=md5, **policy.request_args(until)
    )
    version_id = put["VersionId"]
    try:
        await client.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) not in ("AccessDenied", "Forbidden", "403"):
            raise
    else:
        return False  # deleted while locked
    await asyncio.sleep(max(0.0, until + 1 - time.time()))
    await client.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
    return True
