"""The user metadata syncd stores with every object, and reading it back however a server spells the names.

rclone's names (`md5chksum`, `src_last_modified_millis`), so other tools agree on an object's MD5 and
mtime. Servers return the names differently: AWS and SeaweedFS as sent, Ceph RGW with every `_` turned
into `-` (`src-last-modified-millis`), some in another case. Every read of our metadata goes through here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

MD5 = "md5chksum"  # base64 of the file's MD5: the check for multipart objects, whose ETag is no MD5
MTIME_MILLIS = "src_last_modified_millis"  # the file's mtime, milliseconds since the epoch


def for_upload(md5_hex: str, mtime_ns: int) -> dict[str, str]:
    """The Metadata= of an upload or a server-side copy of a file with these bytes and mtime."""
    return {MTIME_MILLIS: str(mtime_ns // 1_000_000), MD5: base64.b64encode(bytes.fromhex(md5_hex)).decode()}


def value(meta: Mapping[str, str] | None, name: str) -> str | None:
    """The value of metadata `name` under any spelling a server returns it in: any case, `_` as `-`."""
    if not meta:
        return None
    if name in meta:
        return meta[name]
    wanted = _canonical(name)
    for key, found in meta.items():
        if _canonical(key) == wanted:
            return found
    return None


def md5_hex(meta: Mapping[str, str] | None) -> str | None:
    """The MD5 recorded in md5chksum, as hex; None when absent or not base64 of 16 bytes."""
    encoded = value(meta, MD5)
    if not encoded:
        return None
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest.hex() if len(digest) == 16 else None


def mtime_ns(meta: Mapping[str, str] | None) -> int | None:
    """The file mtime recorded in src_last_modified_millis, in nanoseconds; None when absent or garbled."""
    millis = value(meta, MTIME_MILLIS)
    if not millis or not millis.isdigit():
        return None
    return int(millis) * 1_000_000


def _canonical(name: str) -> str:
    return name.lower().replace("-", "_")
