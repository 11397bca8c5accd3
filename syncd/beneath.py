"""Opening paths beneath a folder without following a symlink in any component: the one way syncd does it.

The folder is owned by the admin; everything below it may be written by others, and swapped for a
symlink at any moment. So a path under the folder is never handed to the kernel as a string to resolve:
Linux's openat2() with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS resolves it in one call (5.6+); elsewhere
(an older kernel, a seccomp filter refusing the call) each directory is opened in turn from the folder
down with O_NOFOLLOW | O_DIRECTORY, relative to the one above. Either way a symlink anywhere on the path
is ELOOP. The folder itself is opened per call, never held: a held fd would keep an unmounted folder busy.

SYNCD_OPENAT2=off (in the environment) forces the walk, so tests cover both ways.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from functools import cache
from pathlib import Path

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (added after the syscall tables merged)
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_BENEATH = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS
_AT_FDCWD = -100
_O_PATH = getattr(os, "O_PATH", 0)
DIR_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC  # to resolve through, not to read
_TRIES = 8  # openat2 answers EAGAIN when a rename raced the lookup: try again


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_HOW_SIZE = ctypes.sizeof(_OpenHow)


@cache
def _syscall() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if os.environ.get("SYNCD_OPENAT2", "").lower() in ("off", "0", "no", "false"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


_works: bool | None = None  # None until the first call tells whether the kernel has openat2


_hows: dict[tuple[int, int, int], _OpenHow] = {}


def _openat2(dir_fd: int, rel: str, flags: int, mode: int, resolve: int = _BENEATH) -> int | None:
    """openat2 beneath dir_fd without symlinks; None when the kernel (or a filter) refuses the call."""
    global _works
    fn = _syscall()
    if fn is None or _works is False:
        return None
    mode = mode if flags & os.O_CREAT else 0
    how = _hows.get((flags, mode, resolve))
    if how is None:  # one per kind of open: syncd makes a handful
        how = _hows[flags, mode, resolve] = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    name = os.fsencode(rel)
    for _ in range(_TRIES):
        fd = fn(_SYS_OPENAT2, dir_fd, name, ctypes.byref(how), _HOW_SIZE)
        if fd >= 0:
            _works = True
            return int(fd)
        err = ctypes.get_errno()
        if err == errno.EAGAIN:
            continue
        if err in (errno.ENOSYS, errno.EPERM) and not _works:
            _works = False  # no openat2 here (EPERM: a seccomp filter): walk instead
            return None
        if err == errno.EXDEV:
            err = errno.ELOOP  # tried to leave the folder: only a symlink or ".." can, and both are refused
        raise OSError(err, os.strerror(err), rel)
    raise OSError(errno.EAGAIN, "kept changing while it was opened", rel)


def _parts(rel: str) -> list[str]:
    parts = rel.split("/") if rel else []
    if "" in parts or "." in parts or ".." in parts:
        raise OSError(errno.EINVAL, "not a plain relative path", rel)
    return parts


def _open_child_dir(dir_fd: int, name: str, rel: str) -> int:
    """One directory below dir_fd; ELOOP for a symlink (dangling or not), ENOTDIR for anything else."""
    try:
        return os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    except NotADirectoryError:
        # O_PATH | O_NOFOLLOW opens a symlink itself, which O_DIRECTORY then refuses: say which it was.
        try:
            link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        if link:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), rel) from None
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), rel) from None


def _walk_to(dir_fd: int, parts: list[str], rel: str) -> int:
    """The directory `parts` below dir_fd, one O_NOFOLLOW step at a time (a new fd: the caller closes it)."""
    fd = os.dup(dir_fd)
    try:
        for i, name in enumerate(parts):
            child = _open_child_dir(fd, name, "/".join(parts[: i + 1]) or rel)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_root(root: str | Path) -> int:
    """The folder itself (the admin's path, symlinks in it allowed), to resolve beneath."""
    return os.open(root, DIR_FLAGS)


def open_at(dir_fd: int, rel: str, flags: int, mode: int = 0o600) -> int:
    """Open rel below dir_fd, refusing a symlink in any component (ELOOP); flags as for os.open."""
    parts = _parts(rel)
    if not parts:
        return os.dup(dir_fd) if flags & _O_PATH else os.open(".", flags | os.O_CLOEXEC, dir_fd=dir_fd)
    fd = _openat2(dir_fd, rel, flags, mode)
    if fd is not None:
        return fd
    parent = _walk_to(dir_fd, parts[:-1], rel)
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, rel) from None
    finally:
        os.close(parent)


def open_beneath(root: str | Path, rel: str, flags: int, mode: int = 0o600) -> int:
    """Open root/rel refusing a symlink in any component below root (ELOOP); flags as for os.open.

    First in one call on the whole path with no symlink anywhere (the config's folder is resolved, so
    its own path has none, and rel has no "..": nothing but real directories below the folder can be
    on the way); only if that meets a symlink is the folder opened to tell whether it was above it.
    """
    root = os.fspath(root)  # once: a Path is turned into text on every use (a few us per file twice over)
    if rel and root.startswith("/"):
        _parts(rel)
        try:
            fd = _openat2(_AT_FDCWD, f"{root}/{rel}", flags, mode, _RESOLVE_NO_SYMLINKS)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise OSError(exc.errno, exc.strerror, rel) from None
        else:
            if fd is not None:
                return fd
    root_fd = open_root(root)
    try:
        return open_at(root_fd, rel, flags, mode)
    finally:
        os.close(root_fd)


def lstat_beneath(root: str | Path, rel: str) -> os.stat_result:
    """lstat of root/rel whose directories above are reached without symlinks (ELOOP if one is one)."""
    parent, _, name = rel.rpartition("/")
    if not name:
        return os.stat(root)
    fd = open_beneath(root, parent, DIR_FLAGS) if parent else open_root(root)
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def is_symlink_error(exc: OSError) -> bool:
    """The path was refused because of a symlink in it."""
    return exc.errno == errno.ELOOP


def make_dirs_at(dir_fd: int, rel: str, mode: int = 0o777) -> int:
    """Open (creating what is missing) the directory rel below dir_fd, refusing symlinks at every step.

    Returns a new fd for it. A symlink on the way is ELOOP (with the path up to it in filename), a file
    on the way ENOTDIR; nothing is created through either.
    """
    fd = os.dup(dir_fd)
    try:
        parts = _parts(rel)
        for i, name in enumerate(parts):
            here = "/".join(parts[: i + 1])
            try:
                child = _open_child_dir(fd, name, here)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # made meanwhile: opened (and checked) below
                    os.mkdir(name, mode, dir_fd=fd)
                child = _open_child_dir(fd, name, here)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, here) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise
