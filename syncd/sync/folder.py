"""Is the watched folder there? An unmounted disk or a removed folder pauses uploads and deletions.

Without this, an unmount would look like every file being deleted, and the delete guard would be the last
thing between a pulled USB cable and a bucket full of delete markers.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from syncd.log import get_logger
from syncd.sync.watcher import Watcher

log = get_logger()
CHECK_EVERY = 0.5  # seconds between the workers' checks that the folder is still there


class Folder:
    """The watched folder's availability: on the device it was on at start, at the same inode.

    When it comes back (or a new directory takes its path) the watches are renewed and a rescan requested,
    since an unmount removed every watch on the disk and events in between were never seen.
    """

    def __init__(self, path: Path, watcher: Watcher, rescan: asyncio.Event) -> None:
        self.path = path
        self.watcher = watcher
        self.rescan = rescan
        st = os.stat(path)
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.ok = True
        self.checked_at = -CHECK_EVERY

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
        """The folder exists and is still on the device it was on (an unmounted mountpoint is not)."""
        try:
            st = os.stat(self.path)
        except OSError:
            available = False
        else:
            available = st.st_dev == self.dev
            if available and st.st_ino != self.ino:
                # A new directory at the folder's path: the watches are on the old one.
                self.ino = st.st_ino
                log.warning("folder_replaced", folder=str(self.path))
                self.watcher.restart()
                self.rescan.set()
        if available != self.ok:
            self.ok = available
            if available:
                log.info("folder_available", folder=str(self.path))
                self.watcher.restart()  # an unmount removed every watch on the disk
                self.rescan.set()
            else:
                log.error(
                    "folder_unavailable",
                    folder=str(self.path),
                    hint="uploads and deletions are paused until the folder (or its mount) is back",
                )
        return available
