"""The admin's commands: status, versions, restore, verify. Output is for humans, on stdout."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from syncd.config import Config
from syncd.errors import EXIT_OK, EXIT_SOME_FAILED, ConfigError, SyncdError
from syncd.keys import key_for_path, rel_path_for_key
from syncd.s3.client import describe, open_client
from syncd.s3.listing import Version, list_current, list_versions
from syncd.s3.retry import Outage, Retrier
from syncd.sync.state import StateLock, StateStore


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    moment = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = max(0, int(dt.datetime.now(dt.UTC).timestamp() - ts))
    return f"{moment} ({ago} s ago)"


def _show(rel: str) -> str:
    """A path for a terminal: undecodable bytes shown as escapes, never raw."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def status(config: Config) -> int:
    pid = StateLock(config.state_file).holder_pid()
    state = StateStore(config.state_file, config.identity, readonly=True)
    try:
        counts = state.counts()
        failures = state.failures(limit=20)
        bucket = state.get_meta("bucket")
        live = state.get_meta("status")
    finally:
        state.close()
    where = f"{config.bucket}/{config.prefix}" if config.prefix else config.bucket
    print(f"daemon: {'running (PID ' + str(pid) + ')' if pid else 'not running'}")
    print(f"folder: {config.folder} -> {where}")
    print(f"state: {config.state_file}")
    print(f"bucket: {bucket or 'not checked yet'}")
    if pid and live:
        print(f"status: {live}")
    print(f"uploaded: {counts.files:,} files, last upload {_when(counts.last_upload)}")
    print(f"owed: {counts.owed:,}")
    print(f"failed: {counts.failed:,}")
    for failure in failures:
        print(f"  {_show(failure.path)}: {failure.reason}")
    return EXIT_OK


def rel_from_user_path(config: Config, raw: str) -> str:
    """A path as a user types it (absolute or relative to cwd) -> relative path inside the folder."""
    absolute = Path(os.path.abspath(raw))
    # Resolve symlinks in the parents only: the file itself may no longer exist.
    parent = absolute.parent.resolve() if absolute.parent.exists() else absolute.parent
    absolute = parent / absolute.name if absolute.name else parent
    try:
        rel = absolute.relative_to(config.folder)
    except ValueError:
        raise ConfigError(f"{raw}: not inside the synced folder {config.folder}") from None
    return rel.as_posix() if str(rel) != "." else ""


async def versions(config: Config, raw_path: str) -> int:
    rel = rel_from_user_path(config, raw_path)
    if not rel:
        raise ConfigError(f"{raw_path}: give a file, not the folder itself")
    key = key_for_path(config.prefix, rel)
    state = StateStore(config.state_file, config.identity, readonly=True)
    try:
        record = state.get(rel)
    finally:
        state.close()
    async with open_client(config.s3, pool=4) as client:
        found = [
            v
            for v in await list_versions(client, config.bucket, key, Retrier(Outage(), give_up_after=60))
            if v.key == key
        ]
    if not found:
        print(f"no versions of {_show(rel)} (key {key}) in bucket {config.bucket}")
        return EXIT_SOME_FAILED
    found.sort(key=lambda v: v.modified, reverse=True)
    print(f"{'VERSION ID':<40} {'SIZE':>12}  {'MODIFIED (UTC)':<19}  NOTES")
    for v in found:
        notes = []
        if v.latest:
            notes.append("latest")
        if v.delete_marker:
            notes.append("delete marker")
        if record is not None and record.version_id == v.version_id:
            notes.append("uploaded last by syncd")
        size = "-" if v.delete_marker else f"{v.size:,}"
        print(
            f"{v.version_id:<40} {size:>12}  {v.modified.strftime('%Y-%m-%d %H:%M:%S')}  {', '.join(notes)}"
        )
    return EXIT_OK


def parse_time(raw: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--at {raw!r}: expected an ISO 8601 time like 2026-11-20T14:00 or 2026-11-20T14:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as the admin typed it
    return moment


def _pick(versions_of_key: list[Version], version_id: str | None, at: dt.datetime | None) -> Version | None:
    """The version to restore: the given ID, the newest at `at`, or the newest that is not a deletion."""
    ordered = sorted(versions_of_key, key=lambda v: v.modified, reverse=True)
    if version_id is not None:
        return next((v for v in ordered if v.version_id == version_id), None)
    if at is not None:
        candidate = next((v for v in ordered if v.modified <= at), None)
        return None if candidate is None or candidate.delete_marker else candidate
    return next((v for v in ordered if not v.delete_marker), None)


async def restore(
    config: Config,
    raw_paths: list[str],
    *,
    version_id: str | None,
    at: str | None,
    to: str | None,
    force: bool,
) -> int:
    moment = parse_time(at) if at else None
    retrier = Retrier(Outage(), give_up_after=120)
    failures = 0
    restored = 0
    async with open_client(config.s3, pool=8) as client:
        for raw in raw_paths:
            rel = rel_from_user_path(config, raw)
            file_key = key_for_path(config.prefix, rel) if rel else None
            dir_prefix = (key_for_path(config.prefix, rel) + "/") if rel else config.prefix
            listing = await list_versions(client, config.bucket, file_key or dir_prefix, retrier)
            by_key: dict[str, list[Version]] = {}
            for v in listing:
                if v.key == file_key or v.key.startswith(dir_prefix):
                    by_key.setdefault(v.key, []).append(v)
            is_file = file_key is not None and file_key in by_key
            if version_id is not None and not is_file:
                raise ConfigError(f"{raw}: --version needs a single file that has versions in the bucket")
            if not by_key:
                print(
                    f"{_show(rel) or '.'}: nothing in bucket {config.bucket} under {file_key or dir_prefix}",
                    file=sys.stderr,
                )
                failures += 1
                continue
            keys = [file_key] if is_file and file_key else sorted(k for k in by_key if k != file_key)
            for key in keys:
                assert key is not None
                chosen = _pick(by_key[key], version_id, moment)
                if chosen is None:
                    if version_id is not None:
                        print(f"{raw}: no version {version_id}", file=sys.stderr)
                        failures += 1
                    elif is_file:
                        print(f"{raw}: did not exist at {at} (or only as a deletion)", file=sys.stderr)
                        failures += 1
                    continue  # in a directory: this file did not exist at that time
                key_rel = rel_path_for_key(config.prefix, key)
                if key_rel is None:
                    print(f"{key}: not a key syncd wrote (cannot map it to a path); skipped", file=sys.stderr)
                    failures += 1
                    continue
                dest = _destination(config, rel, key_rel, is_file, to)
                ok = await _restore_one(client, config, chosen, dest, force, retrier)
                restored += ok
                failures += not ok
    noun = "file" if restored == 1 else "files"
    print(f"restored {restored} {noun}" + (f", {failures} not restored" if failures else ""))
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _destination(config: Config, asked_rel: str, key_rel: str, is_file: bool, to: str | None) -> Path:
    if to is None:
        return config.folder / key_rel
    target = Path(to)
    if is_file:
        return target / Path(key_rel).name if target.is_dir() else target
    inner = key_rel[len(asked_rel) + 1 :] if asked_rel else key_rel
    return target / inner


async def _restore_one(
    client: Any, config: Config, v: Version, dest: Path, force: bool, retrier: Retrier
) -> bool:
    """Download to a temp name beside dest, check the MD5, set mtime, then rename into place."""
    if (dest.exists() or dest.is_symlink()) and not force:
        print(f"{dest}: exists; not overwritten (use --force)", file=sys.stderr)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".syncd-restore-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            response = await retrier.call(
                lambda: client.get_object(Bucket=config.bucket, Key=v.key, VersionId=v.version_id)
            )
            md5 = hashlib.md5()
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), _mode_for(dest))
                # Not `async with Body as b`: aiobotocore's __aenter__ returns the raw aiohttp response.
                body = response["Body"]
                async with body:
                    while chunk := await body.read(1024 * 1024):
                        md5.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
                out.flush()
                os.fsync(out.fileno())
        except SyncdError:
            raise
        except Exception as exc:
            print(f"{dest}: download failed: {describe(exc)}", file=sys.stderr)
            return False
        meta = response.get("Metadata", {})
        expected = _expected_md5(meta, str(response.get("ETag", "")).strip('"'))
        if expected is not None and expected != md5.hexdigest():
            print(
                f"{dest}: MD5 mismatch (got {md5.hexdigest()}, expected {expected}); not restored",
                file=sys.stderr,
            )
            return False
        millis = meta.get("src_last_modified_millis")
        if millis and millis.isdigit():
            ns = int(millis) * 1_000_000
            os.utime(tmp, ns=(ns, ns))
        if force:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)  # atomic no-clobber: never overwrite a file that appeared meanwhile
            except FileExistsError:
                print(f"{dest}: exists; not overwritten (use --force)", file=sys.stderr)
                return False
        print(f"restored {_show(str(dest))} (version {v.version_id}, {v.size:,} bytes)")
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _mode_for(dest: Path) -> int:
    """As a copy would: the mode of the file being replaced, else 0666 less the umask (not mkstemp's 0600)."""
    with contextlib.suppress(OSError):
        st = os.lstat(dest)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def _expected_md5(meta: dict[str, str], etag: str) -> str | None:
    if meta.get("md5chksum"):
        with contextlib.suppress(ValueError):
            return base64.b64decode(meta["md5chksum"]).hex()
    if len(etag) == 32 and "-" not in etag:
        return etag
    return None


async def verify(config: Config, *, repair: bool) -> int:
    """Compare bucket, state and folder; report differences; --repair uploads them again."""
    from syncd.sync import scan
    from syncd.sync.state import Signature

    lock = StateLock(config.state_file)
    if repair:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock.acquire()
    state = StateStore(config.state_file, config.identity, readonly=not repair)
    try:
        async with open_client(config.s3, pool=4) as client:
            remote = await list_current(
                client, config.bucket, config.prefix, Retrier(Outage(), give_up_after=120)
            )
        records = {rel: state.get(rel) for rel in state.signatures()}
        problems: list[tuple[str, str]] = []
        walk = scan.WalkOptions(config.folder, config.excludes(), config.follow_symlinks)
        local = dict(await asyncio.to_thread(lambda: list(scan.walk(walk))))
        for rel, rec in records.items():
            assert rec is not None
            obj = remote.get(rec.key)
            if obj is None:
                problems.append((rel, "missing in the bucket"))
            elif obj.size != rec.sig.size or (rec.etag and obj.etag != rec.etag):
                problems.append((rel, "different in the bucket"))
            elif rel in local and not Signature.of(local[rel]).same_as(rec.sig, config.ignore_inode):
                problems.append((rel, "changed locally, not uploaded yet"))
        for rel in local:
            if rel not in records:
                key = key_for_path(config.prefix, rel)
                problems.append(
                    (rel, "not uploaded" if key not in remote else "in the bucket, not in the state")
                )
        deleted_locally = sum(1 for rel in records if rel not in local)
        for rel, reason in sorted(problems):
            print(f"{_show(rel)}: {reason}")
        print(
            f"verify: {len(records):,} tracked, {len(remote):,} objects, {len(problems)} problems, "
            f"{deleted_locally} deleted locally (kept in the bucket)"
        )
        if repair and problems:
            fix = [rel for rel, reason in problems if reason != "in the bucket, not in the state"]
            state.forget(fix)
            state.mark_owed(fix)
            print(f"verify: {len(fix)} files queued for upload; uploading now")
    finally:
        state.close()
        lock.release()
    if repair and problems:
        from syncd.commands import run_once

        return await run_once(config, dry_run=False, retry_for=600, progress=False)
    return EXIT_SOME_FAILED if problems else EXIT_OK
