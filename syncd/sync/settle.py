"""Holds each changed path until the file has been unchanged for `settle` seconds, then releases it.

A file counts as settled when neither its mtime nor its ctime moved within `settle` (so a file written long
ago is released at once, with one stat) or when we saw its signature hold still for `settle`. A file that
never settles (a live log) is released after `max_delay` anyway, so it is never starved (and read with a
warning, unless it has settled by the time a worker takes it).
A path the watcher has just seen change is first looked at `settle` after it was last seen changing (a look
sooner only finds it still changing): one stat for a file written and left alone. Further events while it
waits move its last change on without another look.

A released path may wait in the queue behind busy workers and be written again there: `Released` carries
what the settling look saw, and tells the worker whether the file may be read now or must come back here
(so a file is never read mid-burst; max_delay then counts from the first time a worker found it changed).

The stage's own times (when a path was seen, its next look, max_delay) are on time.monotonic(): a step of the
wall clock (NTP at boot, a resumed VM) neither stalls pending paths until it catches up nor makes them all
overdue. Only a file's mtime and ctime are compared with the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from syncd.beneath import is_symlink_error
from syncd.log import get_logger
from syncd.sync.files import stat_path
from syncd.sync.scan import inside
from syncd.sync.state import Signature

log = get_logger()
LOOK_BATCH = 256  # paths stat-ed per look: a big drop starts uploading while the rest are looked at


@dataclass(frozen=True)
class Released:
    """A path let through: the signature the look that released it saw (None when that stat failed),
    whether that look found it settled (else max_delay let it through), when its unsettled spell began
    (time.monotonic(); None: never unsettled): the first sighting of a file let through by max_delay, or when
    a worker first found it changed in the queue; and the settle stage's `settle` and `max_delay`, for the
    worker's say."""

    sig: Signature | None
    settled: bool
    unsettled_since: float | None
    settle: float
    max_delay: float

    def quiet(self, st: os.stat_result) -> bool:
        """May the file be read as settled (st: its stat as a worker opened it)? Yes when it settled and is
        untouched since, or has been quiet for `settle` since it last changed (it may have waited in the
        queue far longer than that; after a look that failed, only this says)."""
        settled = self.settled and self.sig is not None and self.sig.describes(st)
        return settled or time.time() - _changed_at(st) >= self.settle

    def overdue(self, rel: str, st: os.stat_result) -> bool:
        """Not quiet: may it be read anyway? Once its unsettled spell is `max_delay` old, with the warning:
        a live log, or a file written again each time it waits, is not starved."""
        now = time.monotonic()
        since = self.spell(_changed_at(st))
        if since is not None and now - since >= self.max_delay:
            log.warning("unsettled_upload", path=rel, waited_s=round(now - since, 1))
            return True
        return False

    def spell(self, changed: float) -> float | None:
        """When the unsettled spell of a file that last changed at `changed` began: None when that change
        came `max_delay` or more after the version the release saw. Quiet that long, it is a new change,
        which must settle (a backlog longer than max_delay must not let a rewrite be read mid-write)."""
        if self.sig is not None and changed - self.sig.changed_at() >= self.max_delay:
            return None
        return self.unsettled_since

    def then(self, newer: Released) -> Released:
        """Released again while it waits: the newer look's say, and the earlier spell."""
        return dataclasses.replace(
            newer, unsettled_since=_earlier(self.unsettled_since, newer.unsettled_since)
        )


@dataclass(frozen=True)
class _Instant:
    """One moment on both clocks: monotonic for the stage's own times, wall to compare with file times."""

    mono: float
    wall: float

    @staticmethod
    def now() -> _Instant:
        return _Instant(time.monotonic(), time.time())


@dataclass
class _Pending:
    first_seen: float  # max_delay counts from it (time.monotonic(), as every time the stage keeps)
    last_change: float
    sig: Signature | None = None
    handed_back: bool = False  # first_seen is a spell's beginning, carried by its releases


class Settler:
    """Paths in, settled paths out (via callbacks); directories and vanished paths go their own way."""

    def __init__(
        self,
        root: Path,
        settle: float,
        max_delay: float,
        *,
        release: Callable[[str, Released], None],
        on_dir: Callable[[str], None],
        on_gone: Callable[[str], None],
        on_skip: Callable[[str], None] | None = None,
        follow_symlinks: bool = False,
    ) -> None:
        self.root = root
        self.settle = settle
        self.max_delay = max_delay
        self.release = release
        self.on_dir = on_dir
        self.on_gone = on_gone
        self.on_skip = on_skip  # not a file syncd uploads (FIFO, socket, symlink): nothing is owed for it
        self.follow_symlinks = follow_symlinks
        self.pending: dict[str, _Pending] = {}
        self.heap: list[tuple[float, str]] = []
        self.wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self.pending)

    def add(
        self,
        rel: str,
        st: os.stat_result | None = None,
        *,
        quiet_since: float | None = None,
        unsettled_since: float | None = None,
    ) -> None:
        """Note a change. With a fresh stat (from a walk) an old file is released without waiting.

        quiet_since: when it was last seen changing (the watcher's batch; time.monotonic()), so its first look
        waits until `settle` after that; other paths (owed at start, retried) may have changed long ago:
        looked at soon.
        unsettled_since: of a path a worker handed back (Released.spell): max_delay counts from it.
        """
        now = time.monotonic()
        seen = now if unsettled_since is None else min(now, unsettled_since)
        entry = self.pending.get(rel)
        if entry is not None:
            entry.last_change = now  # its look is scheduled already: it finds the file quiet or not then
            entry.first_seen = min(entry.first_seen, seen)
            entry.handed_back = entry.handed_back or unsettled_since is not None
            return
        if st is not None and stat.S_ISREG(st.st_mode) and time.time() - _changed_at(st) >= self.settle:
            self.release(rel, self._released(Signature.of(st), True, unsettled_since))
            return
        self.pending[rel] = _Pending(
            first_seen=seen, last_change=now, handed_back=unsettled_since is not None
        )
        if quiet_since is not None:
            self._schedule(rel, quiet_since + self.settle)
        else:
            self._schedule(rel, now + min(self.settle, 0.05) if st is None else now + self.settle)

    def _schedule(self, rel: str, due: float) -> None:
        heapq.heappush(self.heap, (due, rel))
        self.wake.set()

    async def run(self) -> None:
        while True:
            self.wake.clear()
            looked = _Instant.now()
            now = looked.mono
            due_paths: dict[str, None] = {}  # a dict, not a list: `in` on a list of thousands is quadratic
            while self.heap and self.heap[0][0] <= now and len(due_paths) < LOOK_BATCH:
                _, rel = heapq.heappop(self.heap)
                if rel in self.pending:
                    due_paths[rel] = None
            if due_paths:
                due = list(due_paths)
                stats = await asyncio.to_thread(self._stat_all, due) if len(due) > 64 else self._stat_all(due)
                decided = _Instant.now()
                for rel, result in zip(due, stats, strict=True):
                    self._decide(rel, result, looked, decided)
                continue
            timeout = self.heap[0][0] - now if self.heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    def _stat_all(self, rels: list[str]) -> list[os.stat_result | OSError]:
        out: list[os.stat_result | OSError] = []
        for rel in rels:
            try:
                out.append(stat_path(self.root, rel, self.follow_symlinks))
            except OSError as exc:
                out.append(exc)
        return out

    def _decide(self, rel: str, result: os.stat_result | OSError, looked: _Instant, now: _Instant) -> None:
        """What a look (a stat taken after `looked`) says of rel: gone, a directory, settled, or wait on."""
        entry = self.pending.get(rel)
        if entry is None:
            return
        if isinstance(result, FileNotFoundError | NotADirectoryError):
            del self.pending[rel]
            self.on_gone(rel)
            return
        if isinstance(result, OSError) and is_symlink_error(result):
            # Under a directory that is (now) a symlink: not in the folder as syncd sees it. The walk
            # never enters one, and the watcher may report what happens beyond it: drop those events.
            self._skip(rel)
            log.debug("symlink_skipped", path=rel, reason="under a symlinked directory")
            return
        if isinstance(result, OSError):
            # The worker says why it cannot read it or, if it can by then, reads it once quiet
            # (Released.quiet: a release without a signature is never taken as settled)
            del self.pending[rel]
            log.debug("look_failed", path=rel, error=result.strerror or type(result).__name__)
            self.release(rel, self._released(None, False, entry.first_seen if entry.handed_back else None))
            return
        if stat.S_ISDIR(result.st_mode):
            del self.pending[rel]
            self.on_dir(rel)
            return
        if not stat.S_ISREG(result.st_mode):
            # FIFOs, sockets, devices; symlinks when not followed (the walk skips them too)
            self._skip(rel)
            log.debug("special_file_skipped", path=rel)
            return
        if self.follow_symlinks and not self._inside(rel):
            self._skip(rel)
            log.info("symlink_skipped", path=rel, reason="points outside the folder")
            return
        sig = Signature.of(result)
        if sig != entry.sig:
            # held still only from the look that saw it
            entry.last_change = max(entry.last_change, looked.mono)
            entry.sig = sig
        quiet = (
            looked.wall - _changed_at(result) >= self.settle or looked.mono - entry.last_change >= self.settle
        )
        if quiet and entry.last_change <= looked.mono:  # and no event came in while the stat was taken
            del self.pending[rel]
            log.debug("settled", path=rel)  # tests wait on it: the file is in the upload queue now
            self.release(rel, self._released(sig, True, entry.first_seen if entry.handed_back else None))
        elif now.mono - entry.first_seen >= self.max_delay:
            del self.pending[rel]
            # the worker reads it then (Released.overdue), with the warning, unless it has settled by then
            log.debug("overdue", path=rel, waited_s=round(now.mono - entry.first_seen, 1))
            self.release(rel, self._released(sig, False, entry.first_seen))
        else:
            wait = self.settle - max(0.0, now.wall - _changed_at(result))
            self._schedule(rel, now.mono + max(0.01, min(wait, self.settle)))

    def _released(self, sig: Signature | None, settled: bool, unsettled_since: float | None) -> Released:
        return Released(sig, settled, unsettled_since, self.settle, self.max_delay)

    def _skip(self, rel: str) -> None:
        del self.pending[rel]
        if self.on_skip is not None:
            self.on_skip(rel)

    def _inside(self, rel: str) -> bool:
        """With follow_symlinks, the walk refuses links out of the folder; events must too."""
        return inside(self.root, os.path.realpath(os.path.join(self.root, rel)))


def _earlier(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _changed_at(st: os.stat_result) -> float:
    return max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
