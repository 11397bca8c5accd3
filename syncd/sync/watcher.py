"""Supervised watchfiles: changed paths in, restarted (with a rescan) whenever it fails.

watchfiles is only a hint: it never reports "closed", drops events on inotify overflow, ends on a
non-UTF-8 name and silently leaves directories unwatched once the inotify watch limit is reached. So every
restart asks for a rescan, a probe notices the watch limit, and the daemon rescans periodically anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

from syncd.log import get_logger
from syncd.s3.retry import backoff

log = get_logger()

INOTIFY_HINT = (
    "raise the inotify watch limit: sysctl fs.inotify.max_user_watches=1048576 "
    "(persist it in /etc/sysctl.d/); until then changes are found by periodic rescans"
)
STABLE_AFTER = 60.0  # a watch that ran this long without failing starts the restart backoff afresh
RESTART_FIRST = 1.0  # seconds before the first restart of a failed watch; doubled per failure
RESTART_LONGEST = 60.0  # ... up to this; the watch limit waits this long at once (it clears slowly)
PROBE_EVERY = 5.0  # seconds between watch-limit probes
QUIET_STEP = 0.05  # awatch hands over a batch once no event came for this long: its paths were that quiet
BATCH_LONGEST = 0.25  # ... or once its first event is this old, so a long write burst flows as it comes
_IN_ONLYDIR = 0x01000000
_IN_DELETE_SELF = 0x00000400


def _is_watch_limit(exc: BaseException) -> bool:
    text = _reason(exc).lower()
    return "watch limit" in text or "no space left on device" in text or "too many open files" in text


def _reason(exc: BaseException) -> str:
    """The message of what went wrong; awatch wraps errors of its watch thread in an ExceptionGroup."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


@cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc; find_library forks ldconfig
        libc.inotify_init1  # noqa: B018 (missing outside Linux: raises AttributeError)
    except (OSError, AttributeError):
        return None
    return libc


def inotify_exhausted(path: Path) -> str | None:
    """Why no inotify watch can be added right now (the user's watch or instance limit), else None.

    watchfiles stops adding watches at the limit without a word, so the only way to know is to try one.
    """
    libc = _libc()
    if libc is None:
        return None
    fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        if err in (errno.EMFILE, errno.ENFILE):
            return f"inotify instance limit reached (fs.inotify.max_user_instances): {os.strerror(err)}"
        return None
    try:
        if libc.inotify_add_watch(fd, os.fsencode(path), _IN_ONLYDIR | _IN_DELETE_SELF) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                return f"inotify watch limit reached (fs.inotify.max_user_watches): {os.strerror(err)}"
        return None
    finally:
        os.close(fd)


class Watcher:
    """Runs awatch on the folder (no filter: syncd applies its own excludes) and keeps it running."""

    def __init__(
        self,
        root: Path,
        on_change: Callable[[list[str]], None],
        on_restart: Callable[[str], None],
        *,
        heartbeat_ms: int = 5000,
    ) -> None:
        self.root = root
        self.on_change = on_change
        self.on_restart = on_restart
        self.heartbeat_ms = heartbeat_ms
        self.stop_event = asyncio.Event()
        self.restart_event = asyncio.Event()
        self.alive_at = time.monotonic()
        self.running = False
        self.failing = False  # awatch failed and is being restarted
        self.limited = False  # the watch limit left directories unwatched
        self.failures = 0
        self.probed_at = 0.0

    @property
    def degraded(self) -> bool:
        """True while watching fails or is incomplete, and rescans carry the load."""
        return self.failing or self.limited

    def healthy(self) -> bool:
        """For the watchdog: watching, and heard from the watch thread recently."""
        limit = max(self.heartbeat_ms / 1000 * 3 + 5, 75.0)  # 75 s covers the longest restart backoff
        return time.monotonic() - self.alive_at < limit

    async def run(self) -> None:
        failures_in_row = 0
        rescan_reason: str | None = None
        while not self.stop_event.is_set():
            # Runs at this task's first suspension, i.e. once awatch has set up its watches: a rescan
            # started then misses nothing written while the watch was down.
            asyncio.get_running_loop().call_soon(self._started, rescan_reason)
            started = time.monotonic()
            self.restart_event.clear()
            try:
                self.running = True
                await self._watch()
                if self.stop_event.is_set():
                    return
                rescan_reason = "watcher restarted"
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.running = False
                self.failures += 1
                self.failing = True
                if time.monotonic() - started >= STABLE_AFTER:
                    failures_in_row = 0
                reason = _reason(exc)
                watch_limit = _is_watch_limit(exc)
                if watch_limit:
                    failures_in_row = max(failures_in_row, 6)  # 2**6 s is past the cap: the longest wait
                delay = backoff(failures_in_row, RESTART_FIRST, RESTART_LONGEST)
                if watch_limit:
                    log.error("watch_limit_reached", reason=reason, hint=INOTIFY_HINT)
                else:
                    log.error("watcher_failed", reason=reason[:300], retry_in_s=delay)
                rescan_reason = reason[:200]
                self.alive_at = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), delay)
                failures_in_row += 1
            finally:
                self.running = False

    async def _watch(self) -> None:
        """One awatch session; returns on stop, or for a restart (restart(), the watch limit cleared)."""
        import watchfiles  # here, not at the top: `syncd once` never watches (about 20 ms of its start)

        stream = watchfiles.awatch(
            self.root,
            watch_filter=None,
            stop_event=self.stop_event,
            step=int(QUIET_STEP * 1000),
            debounce=int(BATCH_LONGEST * 1000),
            rust_timeout=self.heartbeat_ms,
            yield_on_timeout=True,
            recursive=True,
            ignore_permission_denied=True,
        )
        async with contextlib.aclosing(stream):  # closed now, so a restart can reuse its watches
            async for changes in stream:
                self.alive_at = time.monotonic()
                if self.failing:
                    self.failing = False
                    log.info("watcher_recovered")
                if changes:
                    self.on_change([path for _change, path in changes])  # one batch: one state write
                if time.monotonic() - self.probed_at >= PROBE_EVERY:
                    self._probe()
                if self.restart_event.is_set():
                    return

    def _started(self, rescan_reason: str | None) -> None:
        self._probe()
        if rescan_reason is not None:
            self.on_restart(rescan_reason)

    def _probe(self) -> None:
        """Say so when the watch limit is reached; once it clears, restart the watch to add what it missed."""
        self.probed_at = time.monotonic()
        exhausted = inotify_exhausted(self.root)
        log.debug("watch_probed", exhausted=bool(exhausted))  # tests count probes between reports
        if exhausted and not self.limited:
            self.limited = True
            log.error("watch_limit_reached", reason=exhausted, hint=INOTIFY_HINT)
            self.on_restart("watch limit reached")
        elif not exhausted and self.limited:
            self.limited = False
            log.info("watch_limit_cleared")
            self.restart_event.set()

    def restart(self) -> None:
        """Watch afresh within one heartbeat (the folder was replaced or remounted: old watches are dead)."""
        self.restart_event.set()

    def stop(self) -> None:
        self.stop_event.set()
