"""Supervised watchfiles: changed paths in, restarted (with a rescan) whenever it fails.

watchfiles is only a hint: it never reports "closed", drops events on inotify overflow and ends on a
non-UTF-8 name. So every restart asks for a rescan, and the daemon rescans periodically anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import watchfiles

from syncd.log import get_logger

log = get_logger()

INOTIFY_HINT = (
    "raise the inotify watch limit: sysctl fs.inotify.max_user_watches=1048576 "
    "(persist it in /etc/sysctl.d/); until then changes are found by periodic rescans"
)


def _is_watch_limit(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "watch limit" in text or "no space left on device" in text or "too many open files" in text


class Watcher:
    """Runs awatch on the folder (no filter: syncd applies its own excludes) and keeps it running."""

    def __init__(
        self,
        root: Path,
        on_change: Callable[[str], None],
        on_restart: Callable[[str], None],
        *,
        heartbeat_ms: int = 5000,
    ) -> None:
        self.root = root
        self.on_change = on_change
        self.on_restart = on_restart
        self.heartbeat_ms = heartbeat_ms
        self.stop_event = asyncio.Event()
        self.alive_at = time.monotonic()
        self.running = False
        self.degraded = False  # True while watching fails and rescans carry the load
        self.failures = 0

    def healthy(self) -> bool:
        """For the watchdog: watching, and heard from the watch thread recently."""
        limit = max(self.heartbeat_ms / 1000 * 3 + 5, 75.0)  # 75 s covers the longest restart backoff
        return time.monotonic() - self.alive_at < limit

    async def run(self) -> None:
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                self.running = True
                async for changes in watchfiles.awatch(
                    self.root,
                    watch_filter=None,
                    stop_event=self.stop_event,
                    step=50,
                    debounce=1600,
                    rust_timeout=self.heartbeat_ms,
                    yield_on_timeout=True,
                    recursive=True,
                    ignore_permission_denied=True,
                ):
                    self.alive_at = time.monotonic()
                    if self.degraded:
                        self.degraded = False
                        log.info("watcher_recovered")
                    backoff = 1.0
                    for _change, path in changes:
                        self.on_change(path)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.running = False
                self.failures += 1
                self.degraded = True
                if _is_watch_limit(exc):
                    log.error("watch_limit_reached", reason=str(exc), hint=INOTIFY_HINT)
                    backoff = max(backoff, 60.0)
                else:
                    log.error("watcher_failed", reason=str(exc)[:300], retry_in_s=backoff)
                self.on_restart(str(exc)[:200])
                self.alive_at = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), backoff)
                backoff = min(backoff * 2, 60.0)
            finally:
                self.running = False

    def stop(self) -> None:
        self.stop_event.set()
