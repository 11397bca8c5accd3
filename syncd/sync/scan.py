"""Walk the folder: regular files with their stat, excludes applied, never leaving the folder.

The walk is a plain generator (run it in a thread); `batches()` streams it to async code in slices so a
100k-file tree never sits in memory at once.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from syncd import beneath
from syncd.beneath import is_symlink_error
from syncd.excludes import Excludes
from syncd.log import get_logger

log = get_logger()


@dataclass(frozen=True)
class WalkOptions:
    root: Path
    excludes: Excludes
    follow_symlinks: bool = False
    # Told (from the walk's thread) of each directory the walk cannot look into, and why: what is in it is
    # not backed up, which `once` counts as a failure.
    on_unlisted: Callable[[str, str], None] | None = None


def relative(root: Path, path: str) -> str | None:
    """The POSIX path of `path` relative to root, or None when it is not strictly inside root."""
    root_s = str(root)
    if not path.startswith(root_s + os.sep):
        return None
    rel = path[len(root_s) + 1 :]
    if not rel or any(part in ("", ".", "..") for part in rel.split(os.sep)):
        return None
    return rel


def inside(root: Path, real: str) -> bool:
    root_s = str(root)
    return real == root_s or real.startswith(root_s + os.sep)


def walk(opts: WalkOptions, start: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, stat) for every regular file below root/start that is not excluded."""
    ancestors = _ancestors(opts, start)
    if ancestors is None:
        return
    stack = [(start, ancestors)]
    while stack:
        rel_dir, above = stack.pop()
        try:
            dir_st, children = _list(opts, rel_dir)
        except OSError as exc:
            if is_symlink_error(exc) or exc.errno in GONE:
                continue  # gone, or replaced by a file or a symlink, since it was listed: not entered
            _unlisted(opts, rel_dir, exc.strerror or str(exc))
            continue
        if not stat.S_ISDIR(dir_st.st_mode):
            continue  # replaced (by a file or a symlink) since it was listed
        here = (dir_st.st_dev, dir_st.st_ino)
        if here in above:
            # Only a directory above this one is a loop: a second link to a sibling is walked again,
            # so the real directory is never skipped in favour of a link to it.
            log.warning("symlink_loop", path=rel_dir, reason="leads back to a directory above it")
            continue
        chain = (*above, here)
        for rel, item in children:
            if item == "dir":
                stack.append((rel, chain))
            elif isinstance(item, os.stat_result):
                yield rel, item


Listed = list[tuple[str, os.stat_result | str | None]]


def _list(opts: WalkOptions, rel_dir: str) -> tuple[os.stat_result, Listed]:
    """The directory's stat and its entries classified (_classify).

    Without follow_symlinks the directory is opened beneath the folder with no symlink on the way
    (beneath.py) and listed through that fd, so a directory swapped for a link mid-walk is never listed.
    """

    def classified(entries: Iterator[os.DirEntry[str]]) -> Listed:
        out: Listed = []
        refused: list[tuple[str, OSError]] = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                out.append((rel, _classify(opts, entry, rel)))
            except OSError as exc:
                # Gone since the listing (the watcher or the next rescan sees what replaced it), or a link
                # that leads nowhere (dangling, through a file, in a loop): no file either way. An excluded
                # entry is not backed up anyway.
                if exc.errno not in (*GONE, errno.ELOOP) and not _excluded(opts, entry, rel):
                    refused.append((rel, exc))
        if refused:
            # Listed but not searchable (mode r without x), or an I/O error: what is in it is not backed up.
            # One record per directory, not per entry, however many there are.
            first, error = refused[0]
            reason = error.strerror or str(error)
            _unlisted(opts, rel_dir, f"{reason} for {len(refused)} of its entries (first: {first})")
        return out

    if opts.follow_symlinks:
        abs_dir = os.path.join(opts.root, rel_dir) if rel_dir else str(opts.root)
        dir_st = os.stat(abs_dir)
        if not stat.S_ISDIR(dir_st.st_mode):
            return dir_st, []
        with os.scandir(abs_dir) as entries:
            return dir_st, classified(entries)
    fd = beneath.open_beneath(opts.root, rel_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
    try:
        dir_st = os.fstat(fd)
        with os.scandir(fd) as entries:
            return dir_st, classified(entries)
    finally:
        os.close(fd)


GONE = (errno.ENOENT, errno.ENOTDIR)  # what a path removed or replaced by a file since the listing gives


def _excluded(opts: WalkOptions, entry: os.DirEntry[str], rel: str) -> bool:
    """Whether an entry whose stat failed is excluded, as the type the listing gave it (d_type)."""
    try:
        is_dir = entry.is_dir(follow_symlinks=False)
    except OSError:
        return False  # no type known: reported, as it may hold files to back up
    return opts.excludes.excluded(rel, is_dir=is_dir)


def _unlisted(opts: WalkOptions, rel_dir: str, reason: str) -> None:
    log.warning("scan_skipped", path=rel_dir or ".", reason=reason)
    if opts.on_unlisted is not None:
        opts.on_unlisted(rel_dir or ".", reason)


def _ancestors(opts: WalkOptions, start: str) -> tuple[tuple[int, int], ...] | None:
    """(dev, ino) of the directories above start, root included; None if start is not safely inside.

    A walk of a new directory (start) must not leave the folder through a symlink on its way (followed
    or not), and needs what lies above it to recognise a loop back to it.
    """
    if not start:
        return ()
    path = os.path.join(opts.root, start)
    real = os.path.realpath(path)
    if opts.follow_symlinks and not inside(opts.root, real):
        log.info("symlink_skipped", path=start, reason="points outside the folder")
        return None
    if not opts.follow_symlinks and real != path:
        log.debug("symlink_skipped", path=start, reason="a symlink; follow_symlinks is off")
        return None
    out = []
    parts = start.split("/")
    for depth in range(len(parts)):
        above = os.path.join(opts.root, *parts[:depth]) if depth else str(opts.root)
        try:
            st = os.stat(above, follow_symlinks=opts.follow_symlinks)
        except OSError:
            return None  # gone meanwhile: the watcher reports what happens next
        out.append((st.st_dev, st.st_ino))
    return tuple(out)


def _classify(opts: WalkOptions, entry: os.DirEntry[str], rel: str) -> os.stat_result | str | None:
    """'dir' to descend, a stat_result for a regular file to sync, None to skip; raises the OSError of an
    entry that cannot be looked at (the caller sorts them: vanished since the listing, or refused)."""
    is_link = entry.is_symlink()
    if is_link and not opts.follow_symlinks:
        return None
    if is_link:
        real = os.path.realpath(entry.path)
        if not inside(opts.root, real):
            log.info("symlink_skipped", path=rel, reason="points outside the folder")
            return None
    st = entry.stat(follow_symlinks=opts.follow_symlinks)
    if stat.S_ISDIR(st.st_mode):
        return None if opts.excludes.excluded_dir(rel) else "dir"
    if not stat.S_ISREG(st.st_mode):
        return None  # FIFOs, sockets, devices: never read
    if opts.excludes.excluded(rel):
        return None
    return st


FIRST_SLICE = 100  # files in the first slice: uploads start after ~100 stats, not a whole slice's
SLICE = 2000


async def batches(opts: WalkOptions, start: str = "") -> AsyncIterator[list[tuple[str, os.stat_result]]]:
    """Stream the walk from a worker thread in slices, so the event loop stays responsive."""
    iterator = walk(opts, start)
    size = FIRST_SLICE
    while True:
        chunk = await asyncio.to_thread(list, islice(iterator, size))
        if not chunk:
            return
        yield chunk
        size = SLICE
