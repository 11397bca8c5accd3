"""The user metadata syncd stores with every object, and reading it back however a server spells the names.

rclone's names (`md5chksum`, `src_last_modified_millis`, `mode`, `uid`, `gid`), so other tools agree on
an object's MD5, mtime, mode and owner. Servers return the names differently: AWS and SeaweedFS as
sent, Ceph RGW with every `_` turned into `-` (`src-last-modified-millis`), some in another case.
Every read of our metadata goes through here.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

MD5 = "md5chksum"  # base64 of the file's MD5: the check for multipart objects, whose ETag is no MD5
MTIME_MILLIS = "src_last_modified_millis"  # the file's mtime, milliseconds since the epoch
MODE = "mode"  # octal with the file type, as rclone writes it: 0100600
UID, GID = "uid", "gid"  # decimal
NO_MODE = 0o600  # what restore gives a file whose object recorded no mode (uploaded before modes were)


def for_upload(md5_hex: str, mtime_ns: int) -> dict[str, str]:
    """The Metadata= of an upload or a server-side copy of a file with these bytes and mtime."""
    return {MTIME_MILLIS: str(mtime_ns // 1_000_000), MD5: base64.b64encode(bytes.fromhex(md5_hex)).decode()}


def owner(st: os.stat_result) -> dict[str, str]:
    """The Metadata= entries recording a file's mode and owner (every upload and copy carries them)."""
    return {MODE: f"0{st.st_mode:o}", UID: str(st.st_uid), GID: str(st.st_gid)}


@dataclass(frozen=True)
class Ownership:
    """Mode (permission bits) and owner an object recorded; None where it recorded none or garbage."""

    mode: int | None
    uid: int | None
    gid: int | None


def ownership(meta: Mapping[str, str] | None) -> Ownership:
    """The mode and owner recorded in an object's metadata."""
    mode = _number(value(meta, MODE), 8)
    return Ownership(
        stat.S_IMODE(mode) if mode is not None else None,
        _number(value(meta, UID), 10),
        _number(value(meta, GID), 10),
    )


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


def _number(raw: str | None, base: int) -> int | None:
    try:
        number = int((raw or "").strip(), base)
    except ValueError:
        return None
    return number if number >= 0 else None


def _canonical(name: str) -> str:
    return name.lower().replace("-", "_")
