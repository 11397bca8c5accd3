"""What the bucket holds: paginated listings, the remote index, and what an object's MD5 is.

An object's MD5 is in one of two places: the ETag of a single-part unencrypted upload, or the
`md5chksum` metadata syncd sets on every object (multipart and encrypted ETags are not MD5s): object_md5
asks both (metadata.py reads the metadata, under any spelling a server returns).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from syncd.errors import UnavailableError
from syncd.log import get_logger
from syncd.s3 import metadata
from syncd.s3.client import error_code
from syncd.s3.retry import Retrier

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = get_logger()


def plain_md5(etag: str) -> str | None:
    """The ETag (without quotes) when it is the content MD5: single-part, unencrypted uploads."""
    return etag if len(etag) == 32 and "-" not in etag else None


def object_md5(meta: Mapping[str, str] | None, etag: str) -> str | None:
    """An object's MD5 as its headers tell it: our metadata first, else a plain ETag; None if unknown."""
    return metadata.md5_hex(meta) or plain_md5(etag.strip('"'))


def _advanced(operation: str, bucket: str, before: Any, after: Any) -> None:
    """A truncated page must name where the next one starts, somewhere new: a server (or a front) that
    answers IsTruncated with no marker, or with the one it was asked for, would be asked forever."""
    if not after or not any(after) or after == before:
        raise UnavailableError(
            f"{operation} on bucket {bucket} does not advance: the server answered IsTruncated=true with "
            f"{'no next marker' if not after or not any(after) else f'the same marker {after!r} again'}; "
            "a broken server or proxy in front of it (stopped instead of asking forever)"
        )


@dataclass(frozen=True)
class RemoteObject:
    size: int
    etag: str  # without quotes

    @property
    def plain_md5(self) -> str | None:
        return plain_md5(self.etag)


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    size: int
    modified: dt.datetime
    latest: bool
    delete_marker: bool
    etag: str


async def list_current(
    client: S3Client, bucket: str, prefix: str, retrier: Retrier
) -> dict[str, RemoteObject]:
    """Every current object under prefix (an absent bucket holds nothing)."""
    out: dict[str, RemoteObject] = {}
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
    while True:
        try:
            page = await retrier.call(lambda: client.list_objects_v2(**kwargs), what="ListObjectsV2")
        except Exception as exc:
            if error_code(exc) == "NoSuchBucket":
                return out
            raise
        for obj in page.get("Contents", []):
            out[obj["Key"]] = RemoteObject(int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
        if not page.get("IsTruncated"):
            return out
        token = page.get("NextContinuationToken")
        _advanced("ListObjectsV2", bucket, kwargs.get("ContinuationToken"), token)
        kwargs["ContinuationToken"] = token


async def list_versions(client: S3Client, bucket: str, prefix: str, retrier: Retrier) -> list[Version]:
    """Every version and delete marker under prefix."""
    out: list[Version] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = await retrier.call(lambda: client.list_object_versions(**kwargs), what="ListObjectVersions")
        for v in page.get("Versions", []):
            out.append(
                Version(
                    v["Key"],
                    v.get("VersionId") or "null",
                    int(v.get("Size", 0)),
                    v["LastModified"],
                    bool(v.get("IsLatest")),
                    False,
                    str(v.get("ETag", "")).strip('"'),
                )
            )
        for m in page.get("DeleteMarkers", []):
            out.append(
                Version(
                    m["Key"],
                    m.get("VersionId") or "null",
                    0,
                    m["LastModified"],
                    bool(m.get("IsLatest")),
                    True,
                    "",
                )
            )
        if not page.get("IsTruncated"):
            return out
        before = (kwargs.get("KeyMarker"), kwargs.get("VersionIdMarker"))
        after = (page.get("NextKeyMarker"), page.get("NextVersionIdMarker"))
        _advanced("ListObjectVersions", bucket, before, after)
        kwargs["KeyMarker"], kwargs["VersionIdMarker"] = after


class RemoteIndex:
    """The bucket's current objects under the prefix, so a fresh state re-uploads nothing it has.

    Loaded by the first scan that meets a file the state does not know, dropped once the queue is idle
    (a steady daemon does not keep a copy of the bucket's listing in memory).
    """

    def __init__(self, client: S3Client, bucket: str, prefix: str, retrier: Retrier) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.retrier = retrier
        self.objects: dict[str, RemoteObject] | None = None  # None: not listed yet

    @property
    def loaded(self) -> bool:
        return self.objects is not None

    async def load(self) -> None:
        started = time.monotonic()
        self.objects = await list_current(self.client, self.bucket, self.prefix, self.retrier)
        log.info(
            "bucket_listed", objects=len(self.objects), duration_ms=int((time.monotonic() - started) * 1000)
        )

    def drop(self) -> None:
        """Forget the listing for good: from now on the state alone says what is uploaded."""
        self.objects = {}

    async def holds(self, key: str, size: int, md5: str) -> dict[str, Any] | None:
        """The current object for key already has these bytes: its ETag and VersionId, else None."""
        if not self.objects:
            return None
        obj = self.objects.pop(key, None)
        if obj is None or obj.size != size:
            return None
        if obj.plain_md5 == md5:
            return {"ETag": obj.etag, "VersionId": None}  # the listing proves it: no HEAD per file
        try:  # multipart or encrypted: the ETag is no MD5, our metadata is
            head = await self.retrier.call(
                lambda: self.client.head_object(Bucket=self.bucket, Key=key), key=key
            )
        except Exception:
            return None
        if metadata.md5_hex(head.get("Metadata")) != md5:
            return None
        return {"ETag": head.get("ETag", obj.etag), "VersionId": head.get("VersionId")}
