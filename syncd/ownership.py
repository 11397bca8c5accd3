"""A file's mode and owner as object metadata: written with every upload, given back by restore.

The names and forms are rclone's (`mode` in octal with the file type, e.g. 0100600; `uid` and `gid` in
decimal), so either tool reads the other's objects. No `_` in the names: some servers (Ceph RGW) hand
metadata names back with `-` for `_`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from syncd.s3 import metadata

MODE, UID, GID = "mode", "uid", "gid"
NO_MODE = 0o600  # objects uploaded without a recorded mode come back private


def ownership_metadata(st: os.stat_result) -> dict[str, str]:
    """The metadata recording st's mode and owner."""
    return {MODE: f"0{st.st_mode:o}", UID: str(st.st_uid), GID: str(st.st_gid)}


@dataclass(frozen=True)
class Ownership:
    """What the object's metadata recorded; mode None when it recorded none (an older upload)."""

    mode: int | None
    uid: int | None
    gid: int | None


def recorded_ownership(meta: dict[str, str]) -> Ownership:
    """Mode and owner from an object's metadata; a missing or malformed value is None."""
    mode = _number(metadata.value(meta, MODE), 8)
    return Ownership(
        stat.S_IMODE(mode) if mode is not None else None,
        _number(metadata.value(meta, UID), 10),
        _number(metadata.value(meta, GID), 10),
    )


def _number(raw: str | None, base: int) -> int | None:
    try:
        value = int((raw or "").strip(), base)
    except ValueError:
        return None
    return value if value >= 0 else None
