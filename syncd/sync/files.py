"""Reading files for upload without blocking the event loop on a disk, and hashing them.

Small files are read on the loop only when the page cache holds them (RWF_NOWAIT); everything else is read
in threads. Large files are hashed part by part ahead of their upload and then read again as they are sent,
so no part is ever held whole; a file that changed in between shows as PartChanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from syncd import beneath, fds
from syncd.config import MiB
from syncd.log import get_logger
from syncd.sync.limits import ByteBudget

log = get_logger()
HASH_CHUNK = MiB  # read size when hashing
STREAM_CHUNK = MiB  # a streamed body is re-read from disk and sent in pieces of this size
HASH_LANES = 1  # threads hashing parts ahead of their uploads (the other core hashes the whole file)


class FileSkipped(Exception):
    """This file cannot be uploaded as it is (special file, unreadable, key too long); `reason` says why."""

    def __init__(self, reason: str, *, gone: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.gone = gone


def open_file(root: Path, rel: str, follow_symlinks: bool) -> tuple[int, os.stat_result]:
    """Open root/rel without ever blocking or leaving the folder; refuse anything but a regular file.

    Without follow_symlinks no component of rel may be a symlink, whenever it was swapped in (beneath.py);
    with it, links are followed but what was opened must lie inside the folder.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        if follow_symlinks:
            fd = os.open(os.path.join(root, rel), flags)
        else:
            fd = beneath.open_beneath(root, rel, flags | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise FileSkipped("vanished before it could be read", gone=True) from None
    except PermissionError:
        raise FileSkipped("permission denied") from None
    except OSError as exc:
        if beneath.is_symlink_error(exc):
            raise FileSkipped("a symlink, or under a symlinked directory (follow_symlinks is off)") from None
        if exc.errno in fds.OUT_OF_FDS:
            raise  # the process's limit, not the file's fault: a failure retried later (client.classify)
        raise FileSkipped(exc.strerror or str(exc)) from None
    if follow_symlinks and not opened_inside(fd, root):
        os.close(fd)
        raise FileSkipped("a symlink that points outside the folder")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileSkipped("not a regular file (FIFO, socket, device or directory)")
    return fd, st


def stat_path(root: Path, rel: str, follow_symlinks: bool) -> os.stat_result:
    """stat of root/rel as open_file() would reach it (OSError as os.stat raises it)."""
    if follow_symlinks:
        return os.stat(os.path.join(root, rel))
    return beneath.lstat_beneath(root, rel)


def present(root: Path, rel: str, follow_symlinks: bool) -> bool:
    """Whether root/rel is still in the folder as syncd sees it (a deletion is judged on this).

    Without follow_symlinks, a path through a symlinked directory is not: the walk and the reads never
    see it either, and what lies behind the link is never looked at.
    """
    if follow_symlinks:
        return os.path.lexists(os.path.join(root, rel))
    try:
        beneath.lstat_beneath(root, rel)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        return not beneath.is_symlink_error(exc)  # unreadable for another reason: not judged gone
    return True


def read_all(fd: int, size: int, offset: int = 0) -> bytes:
    """`size` bytes at offset (fewer if the file shrank: the caller compares the length with the size)."""
    chunks = []
    end = offset + size
    try:
        while offset < end:
            chunk = os.pread(fd, min(end - offset, 8 * MiB), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
    except OSError as exc:  # EIO from a failing disk: one record, the file stays owed
        raise FileSkipped(exc.strerror or str(exc)) from None
    return b"".join(chunks)


async def read_soon(fd: int, size: int, offset: int = 0) -> bytes:
    """read_all(), on the loop when the page cache holds the bytes (read_cached), else in a thread."""
    cached = read_cached(fd, size, offset)
    if cached is not None:
        return cached
    log.debug("read_in_thread", size=size)  # tests check cold files take this way
    return await asyncio.to_thread(read_all, fd, size, offset)


def read_hashed(fd: int, size: int, offset: int = 0) -> tuple[bytes, bytes]:
    """read_all() and the MD5 digest of what it read, in one thread trip (hashlib releases the GIL)."""
    data = read_all(fd, size, offset)
    return data, hashlib.md5(data).digest()


def hash_range(fd: int, offset: int, length: int, sha256: bool) -> tuple[bytes, str | None] | None:
    """MD5 digest (and SHA-256 hex) of a range read from disk; None if the file ended early."""
    md5 = hashlib.md5()
    sha = hashlib.sha256() if sha256 else None
    end = offset + length
    try:
        while offset < end:
            chunk = os.pread(fd, min(HASH_CHUNK, end - offset), offset)
            if not chunk:
                return None
            md5.update(chunk)
            if sha is not None:
                sha.update(chunk)
            offset += len(chunk)
    except OSError as exc:  # as in read_all
        raise FileSkipped(exc.strerror or str(exc)) from None
    return md5.digest(), sha.hexdigest() if sha is not None else None


class PartHashes:
    """MD5 (and SHA-256) of every part of one file, worked out in threads ahead of the parts' uploads.

    Started together with the whole-file MD5 that CreateMultipartUpload's metadata needs: one core hashes
    the file while the other hashes parts, and a part's upload later only re-reads and sends it. Each
    hashing thread holds HASH_CHUNK of the byte budget while it reads.
    """

    def __init__(self, fd: int, size: int, part_size: int, sha256: bool, budget: ByteBudget) -> None:
        self.part_size = part_size
        self.count = -(-size // part_size)
        loop = asyncio.get_running_loop()
        self._results: dict[int, asyncio.Future[tuple[bytes, str | None] | None]] = {
            n: loop.create_future() for n in range(1, self.count + 1)
        }
        self._numbers = iter(range(1, self.count + 1))
        self._stopped = False
        self._args = (fd, size, sha256, budget)
        self._lanes = [loop.create_task(self._lane()) for _ in range(min(HASH_LANES, self.count))]

    async def _lane(self) -> None:
        fd, size, sha256, budget = self._args
        for n in self._numbers:
            if self._stopped:
                return
            offset = (n - 1) * self.part_size
            length = min(self.part_size, size - offset)
            result = self._results[n]
            try:
                async with budget.hold(HASH_CHUNK):
                    result.set_result(await asyncio.to_thread(hash_range, fd, offset, length, sha256))
            except FileSkipped as exc:
                result.set_exception(exc)

    async def get(self, number: int) -> tuple[bytes, str | None]:
        """Part `number`'s MD5 digest and SHA-256 hex; PartChanged if the file ended early."""
        hashed = await self._results[number]
        if hashed is None:
            raise PartChanged("the file ended early")
        return hashed

    async def close(self) -> None:
        """Stop hashing and wait for the threads still reading (the caller closes the fd afterwards)."""
        self._stopped = True
        await asyncio.gather(*self._lanes, return_exceptions=True)
        for result in self._results.values():
            if not result.done():
                result.cancel()
            elif not result.cancelled():
                result.exception()  # retrieved: an unread failure is not logged as "never retrieved"


class PartChanged(Exception):
    """The file changed between hashing a part and sending it (or while sending it)."""


class PartBody:
    """A part's bytes read again as they are sent: from the page cache on the loop, else in a thread.

    Reading problems end the request and are kept here, so the caller tells a file that moved on or a
    failing disk from a network error (which it would retry).
    """

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd, self.offset, self.length = fd, offset, length
        self.problem: Exception | None = None

    async def chunks(self) -> Any:
        offset, end = self.offset, self.offset + self.length
        while offset < end:
            n = min(STREAM_CHUNK, end - offset)
            try:
                chunk = await read_soon(self.fd, n, offset)
            except FileSkipped as exc:
                self.problem = exc
                raise
            if len(chunk) != n:
                self.problem = PartChanged("the file ended early")
                raise self.problem
            yield chunk
            offset += n


def read_cached(fd: int, size: int, offset: int = 0) -> bytes | None:
    """All `size` bytes at offset if the page cache holds them, else None: RWF_NOWAIT never waits for a disk.

    Small files are read on the event loop this way (a trip to a worker thread cost more CPU than the
    PUT's signing and sending, mostly in GIL hand-offs); cold files, and filesystems that cannot answer
    without waiting (EOPNOTSUPP), are read in a thread instead.
    """
    if size == 0:
        return b""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return None
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], offset, nowait)
    except OSError:
        return None
    return bytes(buf) if n == size else None


def opened_inside(fd: int, root: Path) -> bool:
    """What fd really is (also a link swapped in after the walk's check) lies inside root."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True  # no /proc: the walk's and the settler's checks stand
    return real.startswith(str(root) + os.sep)
