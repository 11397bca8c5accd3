"""SQLite state: what was uploaded (and as which version), what is still owed, and the one-writer lock.

A change is recorded as owed before it is queued and cleared only once the server confirmed the upload,
so a crash at any point leaves a row that the next start uploads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from syncd.errors import ConfigError, LockedError

SCHEMA_VERSION = 1
GROUP_ROWS = 256  # uploads recorded per commit at most (record_upload)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    version_id TEXT,
    etag TEXT,
    uploaded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_md5 ON files (md5, size);
CREATE TABLE IF NOT EXISTS owed (
    path BLOB PRIMARY KEY,
    since REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    failed_at REAL
);
CREATE TABLE IF NOT EXISTS multipart (
    upload_id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    path BLOB NOT NULL,
    started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    path BLOB PRIMARY KEY,
    key TEXT NOT NULL,
    version_id TEXT,
    retain_until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS locks_until ON locks (retain_until, path);
"""


@dataclass(frozen=True)
class Signature:
    """What stat says about a file; equal signatures mean the file was not touched."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def same_as(self, other: Signature | None, ignore_inode: bool = False) -> bool:
        if other is None:
            return False
        if ignore_inode:
            return (self.size, self.mtime_ns, self.ctime_ns) == (other.size, other.mtime_ns, other.ctime_ns)
        return self == other

    def changed_at(self) -> float:
        """When the file last changed (its mtime or ctime, the later): what settling waits on."""
        return max(self.mtime_ns, self.ctime_ns) / 1e9

    def describes(self, st: os.stat_result, ignore_inode: bool = False) -> bool:
        """same_as(Signature.of(st)) without building one: asked two or three times per upload."""
        return (
            st.st_size == self.size
            and st.st_mtime_ns == self.mtime_ns
            and st.st_ctime_ns == self.ctime_ns
            and (ignore_inode or st.st_ino == self.inode)
        )


def unchanged(sig: Signature, uploaded: Signature | None, ignore_inode: bool) -> bool:
    """Is a file unchanged since its upload? The one answer, by stat alone (a file is never read for it).

    The scan asks it to owe nothing for an untouched tree, the uploader to skip a file that settled back
    to what was uploaded, `verify` to tell a local change from a bucket problem.
    """
    return sig.same_as(uploaded, ignore_inode)


@dataclass(frozen=True)
class FileRecord:
    path: str
    key: str
    sig: Signature
    md5: str  # hex
    version_id: str | None
    etag: str | None
    uploaded_at: float


@dataclass(frozen=True)
class LockRow:
    """The Object Lock of a file's current version, as last set or read (retain_until 0: not known yet)."""

    path: str
    key: str
    version_id: str | None
    retain_until: float


@dataclass(frozen=True)
class LockSummary:
    locked: int  # current versions whose lock has not run out
    earliest: float | None  # the earliest retain-until among them


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str
    failed_at: float


@dataclass(frozen=True)
class Counts:
    files: int
    owed: int
    failed: int
    last_upload: float | None


def _b(path: str) -> bytes:
    return os.fsencode(path)


def _s(blob: bytes) -> str:
    return os.fsdecode(blob)


class StateLock:
    """An flock on a file beside the database: the kernel drops it when the process dies, even on kill -9."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_suffix(".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder_pid()
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            raise LockedError(
                f"another syncd ({who}) is running on this state ({self.path.parent}); "
                "stop it first (e.g. systemctl stop syncd) or point state_dir elsewhere"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def holder_pid(self) -> int | None:
        """The PID of the process holding the lock, or None when nobody holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


class StateStore:
    """One database per (endpoint, bucket, prefix, folder); only the lock holder writes."""

    def __init__(self, path: Path, identity: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.pending = 0  # uploads recorded in the open transaction, not committed yet
        if readonly and not path.exists():
            self.db = sqlite3.connect(":memory:")
            self.db.executescript(_SCHEMA)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if not readonly:
                self.db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"state_dir: cannot open the state database {path}: {exc}; "
                "make the directory writable for syncd or set state_dir"
            ) from None
        if not readonly:
            self._check_identity(identity)

    def _check_identity(self, identity: str) -> None:
        row = self.db.execute("SELECT v FROM meta WHERE k='identity'").fetchone()
        if row is None:
            with self.transaction():
                self.db.execute("INSERT INTO meta VALUES ('identity', ?)", (identity,))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != identity:
            raise ConfigError(
                f"state_dir: {self.path} belongs to another folder/bucket; remove it or use another state_dir"
            )

    def close(self) -> None:
        self.flush()
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write. The uploads recorded since the last flush are committed first, so a failing
        write rolls back only itself."""
        self.flush()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def flush(self) -> None:
        """Commit the uploads recorded since the last flush (see record_upload)."""
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.pending = 0

    # -- files ---------------------------------------------------------------------------------------
    def get(self, path: str) -> FileRecord | None:
        row = self.db.execute(
            "SELECT path, key, size, mtime_ns, ctime_ns, inode, md5, version_id, etag, uploaded_at "
            "FROM files WHERE path=?",
            (_b(path),),
        ).fetchone()
        return _record(row) if row else None

    def lookup(self, path: str) -> tuple[FileRecord | None, float | None]:
        """The path's row and when its debt began (None: not owed), read in one query as an upload
        starts (two queries cost a third more of this per-file work)."""
        row = self.db.execute(
            "SELECT f.path, f.key, f.size, f.mtime_ns, f.ctime_ns, f.inode, f.md5, f.version_id, f.etag, "
            "f.uploaded_at, o.since FROM (SELECT ? AS p) q "
            "LEFT JOIN files f ON f.path=q.p LEFT JOIN owed o ON o.path=q.p",
            (_b(path),),
        ).fetchone()
        since = None if row[10] is None else float(row[10])
        return (_record(row[:10]) if row[0] is not None else None), since

    def signatures(self) -> dict[str, Signature]:
        """Every tracked file's last signature, for a reconcile walk that reads no unchanged file."""
        return {
            _s(p): Signature(size, m, c, i)
            for p, size, m, c, i in self.db.execute("SELECT path, size, mtime_ns, ctime_ns, inode FROM files")
        }

    def by_content(self, md5: str, size: int) -> list[FileRecord]:
        rows = self.db.execute(
            "SELECT path, key, size, mtime_ns, ctime_ns, inode, md5, version_id, etag, uploaded_at "
            "FROM files WHERE md5=? AND size=?",
            (md5, size),
        ).fetchall()
        return [_record(r) for r in rows]

    def record_upload(self, rec: FileRecord, *, owed_since: float | None = None) -> None:
        """The bucket holds this file's bytes (just uploaded, or unchanged since the last upload): store
        the row and clear the debt.

        Group commit: the rows join an open transaction that the caller flushes within a fraction of a
        second (and every GROUP_ROWS rows); a commit per file cost more CPU than the PUT's own signing. A
        crash before the flush leaves those files owed: they are uploaded again, never lost. Reads on
        this connection see the rows at once.
        owed_since: if the path was owed again after this upload started, keep that newer debt.
        """
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
        self._put(rec)
        self._clear_owed(rec.path, owed_since)
        self.pending += 1
        if self.pending >= GROUP_ROWS:
            self.flush()

    def _put(self, rec: FileRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                _b(rec.path),
                rec.key,
                rec.sig.size,
                rec.sig.mtime_ns,
                rec.sig.ctime_ns,
                rec.sig.inode,
                rec.md5,
                rec.version_id,
                rec.etag,
                rec.uploaded_at,
            ),
        )

    def _clear_owed(self, path: str, owed_since: float | None) -> None:
        if owed_since is None:
            self.db.execute("DELETE FROM owed WHERE path=?", (_b(path),))
        else:
            self.db.execute("DELETE FROM owed WHERE path=? AND since<=?", (_b(path), owed_since))

    def forget(self, paths: Iterable[str]) -> None:
        with self.transaction():
            for path in paths:
                self.db.execute("DELETE FROM files WHERE path=?", (_b(path),))
                self.db.execute("DELETE FROM owed WHERE path=?", (_b(path),))
                self.db.execute("DELETE FROM locks WHERE path=?", (_b(path),))

    def forget_owed(self, path: str) -> None:
        """Nothing to upload for this path after all (gone, special file, directory)."""
        self.db.execute("DELETE FROM owed WHERE path=?", (_b(path),))

    # -- owed ----------------------------------------------------------------------------------------
    def mark_owed(self, paths: Iterable[str]) -> float:
        """Record a debt for each path (kept if already owed); returns the time stamp used."""
        now = time.time()
        with self.transaction():
            self.db.executemany(
                "INSERT INTO owed (path, since) VALUES (?, ?) "
                "ON CONFLICT(path) DO UPDATE SET since=excluded.since, last_error=NULL, failed_at=NULL",
                ((_b(p), now) for p in paths),
            )
        return now

    def owed(self) -> list[str]:
        return [
            _s(p) for (p,) in self.db.execute("SELECT path FROM owed WHERE failed_at IS NULL ORDER BY since")
        ]

    def record_failure(self, path: str, reason: str) -> int:
        """A failure for this file: it stays owed but is not retried until it changes again (or the
        pipeline tries it again later); returns how many times it has failed in a row."""
        with self.transaction():
            row = self.db.execute(
                "INSERT INTO owed (path, since, attempts, last_error, failed_at) VALUES (?, ?, 1, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET attempts=attempts+1, last_error=excluded.last_error, "
                "failed_at=excluded.failed_at RETURNING attempts",
                (_b(path), time.time(), reason, time.time()),
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else 1

    def failures(self, limit: int = 50) -> list[Failure]:
        rows = self.db.execute(
            "SELECT path, last_error, failed_at FROM owed WHERE failed_at IS NOT NULL "
            "ORDER BY failed_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [Failure(_s(p), r or "", float(t)) for p, r, t in rows]

    def counts(self) -> Counts:
        files = self.db.execute("SELECT count(*), max(uploaded_at) FROM files").fetchone()
        owed = self.db.execute("SELECT count(*) FROM owed WHERE failed_at IS NULL").fetchone()[0]
        failed = self.db.execute("SELECT count(*) FROM owed WHERE failed_at IS NOT NULL").fetchone()[0]
        return Counts(files=files[0], owed=owed, failed=failed, last_upload=files[1])

    # -- multipart uploads we started ---------------------------------------------------------------
    def add_multipart(self, upload_id: str, key: str, path: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO multipart VALUES (?,?,?,?)", (upload_id, key, _b(path), time.time())
            )

    def remove_multipart(self, upload_id: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM multipart WHERE upload_id=?", (upload_id,))

    def multiparts(self) -> list[tuple[str, str]]:
        return [(u, k) for u, k in self.db.execute("SELECT upload_id, key FROM multipart")]

    # -- the Object Lock of current versions (object_lock) -------------------------------------------
    def record_lock(self, path: str, key: str, version_id: str | None, retain_until: float) -> None:
        """The path's current version is locked until retain_until; joins record_upload's group commit."""
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(
            "INSERT OR REPLACE INTO locks VALUES (?,?,?,?)", (_b(path), key, version_id, retain_until)
        )

    def adopt_lock(self, path: str, key: str, version_id: str | None) -> None:
        """A current version syncd did not lock itself (adopted, or from before object_lock): the
        extension pass reads its lock and extends it. A row for this same version is kept as it is."""
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(
            "INSERT INTO locks VALUES (?,?,?,0) ON CONFLICT(path) DO UPDATE SET key=excluded.key, "
            "version_id=excluded.version_id, retain_until=0 "
            "WHERE excluded.version_id IS NOT NULL AND locks.version_id IS NOT excluded.version_id",
            (_b(path), key, version_id),
        )

    def adopt_unlocked(self) -> int:
        """Every tracked file without a lock row gets one to fill in (object_lock turned on later)."""
        with self.transaction():
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO locks SELECT path, key, version_id, 0 FROM files "
                "WHERE path NOT IN (SELECT path FROM locks)"
            )
        return cursor.rowcount

    def locks_due(self, before: float, after: tuple[float, str] | None, limit: int) -> list[LockRow]:
        """Current versions locked until before `before`, in (retain_until, path) order after `after`."""
        start_until, start_path = after if after is not None else (-1.0, "")
        rows = self.db.execute(
            "SELECT path, key, version_id, retain_until FROM locks WHERE retain_until < ? "
            "AND (retain_until, path) > (?, ?) ORDER BY retain_until, path LIMIT ?",
            (before, start_until, _b(start_path), limit),
        ).fetchall()
        return [LockRow(_s(p), str(k), None if v is None else str(v), float(u)) for p, k, v, u in rows]

    def set_locks(self, updates: Iterable[tuple[str, str | None, float]]) -> None:
        """(path, version_id, retain_until) after an extension; only where the row still has that version
        (or had none), so a version replaced meanwhile keeps its own row."""
        with self.transaction():
            self.db.executemany(
                "UPDATE locks SET version_id=?2, retain_until=?3 WHERE path=?1 "
                "AND (version_id IS NULL OR version_id=?2)",
                ((_b(path), version_id, until) for path, version_id, until in updates),
            )

    def drop_lock(self, path: str, version_id: str | None) -> None:
        """The version is gone from the bucket: nothing to keep locked."""
        with self.transaction():
            self.db.execute("DELETE FROM locks WHERE path=? AND version_id IS ?", (_b(path), version_id))

    def next_lock_end(self) -> float | None:
        """The earliest retain-until among current versions (0 for one not known yet), None if none."""
        row = self.db.execute("SELECT min(retain_until) FROM locks").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def lock_summary(self, now: float | None = None) -> LockSummary:
        """How many current versions are locked now, and the earliest retain-until among them."""
        now = time.time() if now is None else now
        try:
            count, earliest = self.db.execute(
                "SELECT count(*), min(retain_until) FROM locks WHERE retain_until > ?", (now,)
            ).fetchone()
        except sqlite3.OperationalError:  # a state from before object_lock, opened read-only
            return LockSummary(0, None)
        return LockSummary(int(count), None if earliest is None else float(earliest))

    # -- small key/value facts (last status for `syncd status`) ---------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return str(row[0]) if row else None


def _record(row: tuple[object, ...]) -> FileRecord:
    path, key, size, mtime_ns, ctime_ns, inode, md5, version_id, etag, uploaded_at = row
    return FileRecord(
        path=_s(path),  # type: ignore[arg-type]
        key=str(key),
        sig=Signature(int(size), int(mtime_ns), int(ctime_ns), int(inode)),  # type: ignore[call-overload]
        md5=str(md5),
        version_id=None if version_id is None else str(version_id),
        etag=None if etag is None else str(etag),
        uploaded_at=float(uploaded_at),  # type: ignore[arg-type]
    )
