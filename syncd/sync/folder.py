"""Is the watched folder there? An unmounted disk or a removed folder pauses uploads and deletions.

Without this, an unmount would look like every file being deleted, and the delete guard would be the last
thing between a pulled USB cable and a bucket full of delete markers.

The folder's mount point (the deepest mount at or above it) is remembered in the state, so a daemon that
starts before its disk is mounted (boot order) knows the bare directory underneath is not the folder, and
waits for the mount instead of syncing an empty mountpoint.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

from syncd.log import get_logger
from syncd.sync.state import StateStore
from syncd.sync.watcher import Watcher

log = get_logger()
CHECK_EVERY = 0.5  # seconds between the workers' checks that the folder is still there
ALERT_EVERY = 3600.0  # seconds between folder_still_unavailable records once folder_grace has passed
MOUNT_KEY = "folder_mount"  # state meta: the folder's mount point when it was last seen available
MOUNTINFO = "/proc/self/mountinfo"


class Folder:
    """The watched folder's availability: there, under its mount point, at the same inode.

    When it comes back (its disk mounted again, maybe as another device, or a new directory at its path)
    the watches are renewed and a rescan requested, since an unmount removed every watch on the disk and
    events in between were never seen.
    """

    def __init__(
        self, path: Path, watcher: Watcher, rescan: asyncio.Event, state: StateStore, grace: float
    ) -> None:
        self.path = path
        self.watcher = watcher
        self.rescan = rescan
        self.state = state
        self.grace = grace
        remembered = state.get_meta(MOUNT_KEY)
        self.mount: str | None = remembered if remembered and _at_or_above(remembered, str(path)) else None
        self.dev: int | None = None
        self.ino: int | None = None
        self.ok = True
        self.problem = ""  # why it is unavailable: "folder not mounted", "folder missing"
        self.unavailable_since = 0.0
        self.alerted_at: float | None = None
        self.checked_at = -CHECK_EVERY
        self.available()

    def recently_available(self) -> bool:
        """available(), looked at most every CHECK_EVERY seconds: the workers ask per file.

        A file read from a folder that went away in between vanishes or fails to open; deletions are
        judged with a fresh look, so a stale answer costs one retry, never a delete.
        """
        now = time.monotonic()
        if now - self.checked_at >= CHECK_EVERY or not self.ok:
            self.checked_at = now
            return self.available()
        return True

    def available(self) -> bool:
        """The folder exists, under the mount point it had (or a deeper one), on the same inode there."""
        try:
            st = os.stat(self.path)
        except OSError:  # a folder below its mount point is missing when the disk is not mounted
            return self._settle(False, "folder not mounted" if self._unmounted() else "folder missing")
        if self.ok and st.st_dev == self.dev:
            if st.st_ino != self.ino:
                # A new directory at the folder's path: the watches are on the old one.
                self.ino = st.st_ino
                log.warning("folder_replaced", folder=str(self.path))
                self.watcher.restart()
                self.rescan.set()
            return True
        mount = mount_point(str(self.path))
        if self._unmounted(mount):
            return self._settle(False, "folder not mounted")  # its disk is gone: the mountpoint is bare
        if self.mount != mount:
            self.mount = mount  # first look, or a file system mounted at or above the folder since
            self.state.set_meta(MOUNT_KEY, mount)
        if self.dev is not None and (st.st_dev, st.st_ino) != (self.dev, self.ino):
            if st.st_dev != self.dev:  # a disk plugged in again, or another file system over the folder
                log.warning("folder_device_changed", folder=str(self.path), mount=mount)
            else:  # a new directory at the folder's path: the watches are on the old one
                log.warning("folder_replaced", folder=str(self.path))
            if self.ok:  # coming back from unavailable, _settle renews them
                self.watcher.restart()
                self.rescan.set()
        self.dev, self.ino = st.st_dev, st.st_ino
        return self._settle(True, "")

    def _unmounted(self, mount: str | None = None) -> bool:
        """The folder's mount point is not mounted: the deepest mount above it is a shallower one."""
        if self.mount is None:
            return False
        return len(mount_point(str(self.path)) if mount is None else mount) < len(self.mount)

    def forget_mount(self) -> None:
        """Take the folder as it is now, mounted or not (a disk that is gone for good); on reload."""
        if self.mount is not None and not self.ok and self.problem == "folder not mounted":
            log.warning("folder_mount_forgotten", folder=str(self.path), mount=self.mount)
            self.mount = None
            self.available()

    def _settle(self, available: bool, problem: str) -> bool:
        """Log the change, if any; while unavailable past folder_grace, an error record every hour."""
        now = time.monotonic()
        if available != self.ok:
            self.ok = available
            if available:
                log.info("folder_available", folder=str(self.path))
                self.watcher.restart()  # an unmount removed every watch on the disk
                self.rescan.set()
            else:
                self.unavailable_since, self.alerted_at = now, None
                log.error(
                    "folder_unavailable",
                    folder=str(self.path),
                    reason=problem,
                    mount=self.mount,
                    hint="uploads and deletions are paused until the folder (or its mount) is back",
                )
        self.problem = problem
        overdue = not available and now - self.unavailable_since >= self.grace
        if overdue and (self.alerted_at is None or now - self.alerted_at >= ALERT_EVERY):
            self.alerted_at = now
            log.error(
                "folder_still_unavailable",
                folder=str(self.path),
                reason=problem,
                mount=self.mount,
                seconds=int(now - self.unavailable_since),
                hint=self._hint(problem),
            )
        return available

    def _hint(self, problem: str) -> str:
        if problem == "folder not mounted":
            return (
                f"mount {self.mount} again; if the folder is not meant to be on its own file system "
                "any more, reload syncd (SIGHUP, systemctl reload) to take it as it is now"
            )
        return f"create {self.path} again, or point folder: at where the files are now"


def mount_point(path: str) -> str:
    """The deepest mount point at or above path, as this process sees the mounts ("/" if none can be read)."""
    best = "/"
    try:
        with open(MOUNTINFO, "rb") as mountinfo:
            lines = mountinfo.read().splitlines()
    except OSError:
        return best
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        where = os.fsdecode(_unescape(fields[4]))
        if len(where) > len(best) and _at_or_above(where, path):
            best = where
    return best


def _unescape(field: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def _at_or_above(mount: str, path: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")
