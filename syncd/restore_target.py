"""Where restore writes: every directory and file below the target reached through fds that refuse symlinks.

The target (the synced folder, or --to) is the admin's path; below it anyone may have swapped a directory
for a symlink, so restore never hands the kernel a path string there: each directory is opened (or made)
from the one above with O_NOFOLLOW (beneath.py), and the file is written as a temp file beside its place
(created 0600, never through a link), given its recorded mode and owner only once its bytes are checked,
then linked (no clobbering) or renamed (--force) into place relative to that directory's fd.

Temp files are named `.syncd-restore-PID-RANDOM` (excluded from uploads by default) and locked while they
live; one left by a killed restore (lock free, its PID gone) is removed the next time restore writes to
that directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from syncd import beneath
from syncd.s3.metadata import NO_MODE, Ownership

TEMP_PREFIX = ".syncd-restore-"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"(?:(\d+)-)?[0-9a-z_]+")
OLD_TEMP_AGE = 3600.0  # a leftover without a PID (from before temp files carried one) this old is stale


class Refused(Exception):
    """This one file cannot be restored where asked; the message names the path and why (one line)."""


@dataclass
class Placed:
    """A file written to its place: what the restore line reports."""

    path: Path
    mode: int
    mode_recorded: bool


@dataclass
class RestoreTarget:
    """A directory restore writes below; `write()` puts one file at rel, in dir fds all the way."""

    base: Path
    _cleared: set[tuple[int, int]] = field(default_factory=set)

    def open_dir(self, rel_dir: str) -> int:
        """The directory rel_dir below base, made where missing; Refused if a link or file is in the way."""
        try:
            self.base.mkdir(parents=True, exist_ok=True)  # the admin's own path: made as they typed it
            root = beneath.open_root(self.base)
        except OSError as exc:
            raise Refused(f"{self.base}: {exc.strerror or exc}") from None
        try:
            fd = beneath.make_dirs_at(root, rel_dir)
        except OSError as exc:
            where = self.base / exc.filename if isinstance(exc.filename, str) else self.base / rel_dir
            if exc.errno == errno.ELOOP:
                raise Refused(
                    f"{where} is a symlink where a directory is needed (never written through)"
                ) from None
            if exc.errno == errno.ENOTDIR:
                raise Refused(f"{where} is not a directory") from None
            raise Refused(f"{where}: {exc.strerror or exc}") from None
        finally:
            os.close(root)
        self._clear_leftovers(fd)
        return fd

    def write(self, rel: str, force: bool) -> PendingFile:
        """A temp file (0600) beside rel's place, after checking the place: Refused if it cannot be used."""
        parent, _, name = rel.rpartition("/")
        path = self.base / rel
        try:
            dir_fd = self.open_dir(parent)
        except Refused as exc:
            raise Refused(f"{path}: {exc}") from None
        try:
            _check_place(dir_fd, name, path, force)
            tmp = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
            except OSError as exc:
                raise Refused(f"{path}: cannot create a temp file beside it: {exc.strerror or exc}") from None
            fcntl.flock(fd, fcntl.LOCK_EX)  # held while it lives: a leftover with a free lock is stale
        except BaseException:
            os.close(dir_fd)
            raise
        return PendingFile(path, dir_fd, name, fd, tmp)

    def _clear_leftovers(self, dir_fd: int) -> None:
        """Remove temp files of restores that died here (once per directory and run)."""
        st = os.fstat(dir_fd)
        if (st.st_dev, st.st_ino) in self._cleared:
            return
        self._cleared.add((st.st_dev, st.st_ino))
        try:
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return
        try:
            with os.scandir(listing) as entries:
                names = [e.name for e in entries if e.name.startswith(TEMP_PREFIX)]
        finally:
            os.close(listing)
        for name in names:
            if _stale(dir_fd, name):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dir_fd)


@dataclass
class PendingFile:
    """The temp file being written; `place()` finishes it, `close()` removes what is left in any case."""

    path: Path
    dir_fd: int
    name: str
    fd: int
    tmp: str

    def place(self, ownership: Ownership, mtime_ns: int | None, force: bool) -> Placed:
        """Bytes checked: recorded owner (as root) and mode, mtime, then into place. Refused if it cannot."""
        mode = ownership.mode if ownership.mode is not None else NO_MODE
        uid, gid = ownership.uid, ownership.gid
        as_root = os.geteuid() == 0
        if as_root and (uid is None or gid is None):
            mode &= ~(stat.S_ISUID | stat.S_ISGID)  # never a root-owned set-id file that was not root's
        try:
            if as_root and uid is not None and gid is not None:
                os.fchown(self.fd, uid, gid)  # before chmod: chown clears set-id bits
            os.fchmod(self.fd, mode)
            if mtime_ns is not None:
                os.utime(self.fd, ns=(mtime_ns, mtime_ns))
            os.fsync(self.fd)
            if force:
                _check_place(self.dir_fd, self.name, self.path, force)
                os.replace(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            else:
                # Atomic no-clobber: never overwrite a file that appeared meanwhile.
                os.link(
                    self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd, follow_symlinks=False
                )
        except FileExistsError:
            raise Refused(f"{self.path}: exists; not overwritten (use --force)") from None
        except OSError as exc:
            raise Refused(f"{self.path}: {exc.strerror or exc}") from None
        return Placed(self.path, mode, ownership.mode is not None)

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp, dir_fd=self.dir_fd)
        os.close(self.fd)
        os.close(self.dir_fd)


def _check_place(dir_fd: int, name: str, path: Path, force: bool) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise Refused(f"{path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise Refused(f"{path} is a directory; not replaced by a file (move it away first)")
    if not force:
        raise Refused(f"{path}: exists; not overwritten (use --force)")


def _stale(dir_fd: int, name: str) -> bool:
    """A temp file no living restore writes: its lock is free and its PID gone (or, unnamed, it is old)."""
    match = _TEMP_NAME.fullmatch(name)
    if match is None:
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a restore is writing it
        if match.group(1) is None:
            return time.time() - st.st_mtime > OLD_TEMP_AGE
        return not _alive(int(match.group(1)))
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
