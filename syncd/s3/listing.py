"""What the bucket holds: paginated listings of current objects and of every version."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from syncd.s3.client import error_code
from syncd.s3.retry import Retrier


@dataclass(frozen=True)
class RemoteObject:
    size: int
    etag: str  # without quotes

    @property
    def plain_md5(self) -> str | None:
        """The ETag is the content MD5 for single-part, unencrypted uploads; None when it is not."""
        return self.etag if len(self.etag) == 32 and "-" not in self.etag else None


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    size: int
    modified: dt.datetime
    latest: bool
    delete_marker: bool
    etag: str


async def list_current(client: Any, bucket: str, prefix: str, retrier: Retrier) -> dict[str, RemoteObject]:
    """Every current object under prefix (an absent bucket holds nothing)."""
    out: dict[str, RemoteObject] = {}
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
    while True:
        try:
            page = await retrier.call(lambda: client.list_objects_v2(**kwargs))
        except Exception as exc:
            if error_code(exc) == "NoSuchBucket":
                return out
            raise
        for obj in page.get("Contents", []):
            out[obj["Key"]] = RemoteObject(int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return out
        kwargs["ContinuationToken"] = token


async def list_versions(client: Any, bucket: str, prefix: str, retrier: Retrier) -> list[Version]:
    """Every version and delete marker under prefix."""
    out: list[Version] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = await retrier.call(lambda: client.list_object_versions(**kwargs))
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
        kwargs["KeyMarker"] = page.get("NextKeyMarker")
        kwargs["VersionIdMarker"] = page.get("NextVersionIdMarker")
