"""`syncd restore`: get files back from the bucket, a version or a moment, checked against their MD5."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd.admin import rel_from_user_path, show
from syncd.config import Config
from syncd.errors import EXIT_OK, EXIT_SOME_FAILED, ConfigError, SyncdError
from syncd.keys import key_for_path, rel_path_for_key
from syncd.restore_target import Refused, RestoreTarget
from syncd.s3 import metadata
from syncd.s3.client import describe, open_client
from syncd.s3.listing import Version, list_versions, object_md5
from syncd.s3.retry import Retrier

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


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
    failures = 0
    restored = 0
    targets: dict[Path, RestoreTarget] = {}
    async with open_client(config.s3, pool=8) as client:
        retrier = Retrier.for_bucket(
            client, config.bucket, give_up_after=120, request_timeout=config.s3.request_timeout
        )
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
                    f"{show(rel) or '.'}: nothing in bucket {config.bucket} under {file_key or dir_prefix}",
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
                base, dest_rel = _destination(config, rel, key_rel, is_file, to)
                target = targets.setdefault(base, RestoreTarget(base))  # one per run: leftovers cleared once
                ok = await _restore_one(client, config, chosen, (target, dest_rel), force, retrier)
                restored += ok
                failures += not ok
    noun = "file" if restored == 1 else "files"
    print(f"restored {restored} {noun}" + (f", {failures} not restored" if failures else ""))
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _destination(
    config: Config, asked_rel: str, key_rel: str, is_file: bool, to: str | None
) -> tuple[Path, str]:
    """(target directory, path below it): the target is the admin's; below it nothing follows a symlink."""
    if to is None:
        return config.folder, key_rel
    target = Path(to)
    if is_file:
        return (target, Path(key_rel).name) if target.is_dir() else (target.parent, target.name)
    inner = key_rel[len(asked_rel) + 1 :] if asked_rel else key_rel
    return target, inner


async def _restore_one(
    client: S3Client,
    config: Config,
    v: Version,
    where: tuple[RestoreTarget, str],
    force: bool,
    retrier: Retrier,
) -> bool:
    """Download to a 0600 temp file beside the destination, check the MD5, then owner, mode, mtime and
    into place, every step relative to directory fds that refuse symlinks (restore_target.py)."""
    target, rel = where
    try:
        pending = target.write(rel, force)
    except Refused as exc:
        print(f"{exc}; not restored", file=sys.stderr)
        return False
    dest = pending.path

    async def download() -> tuple[Mapping[str, Any], str]:
        """One attempt: the whole body into the temp file from its start; (the answer, the body's MD5)."""
        os.ftruncate(pending.fd, 0)
        os.lseek(pending.fd, 0, os.SEEK_SET)
        response = await client.get_object(Bucket=config.bucket, Key=v.key, VersionId=v.version_id)
        md5 = hashlib.md5()
        # Not `async with Body as b`: aiobotocore's __aenter__ returns the raw aiohttp response.
        body = response["Body"]
        async with body:
            while chunk := await body.read(1024 * 1024):
                md5.update(chunk)
                await _write_through(pending.fd, chunk)
        return response, md5.hexdigest()

    try:
        try:
            # The body inside the attempt: its deadline (scaled to the size) covers a download that drips.
            response, digest = await retrier.call(download, key=v.key, size=v.size)
        except SyncdError:
            raise
        except Exception as exc:
            print(f"{dest}: download failed: {describe(exc)}", file=sys.stderr)
            return False
        meta = response.get("Metadata", {})
        expected = object_md5(meta, str(response.get("ETag", "")))
        if expected is not None and expected != digest:
            print(f"{dest}: MD5 mismatch (got {digest}, expected {expected}); not restored", file=sys.stderr)
            return False
        try:
            placed = pending.place(metadata.ownership(meta), metadata.mtime_ns(meta), force)
        except Refused as exc:
            print(f"{exc}; not restored", file=sys.stderr)
            return False
        mode = f"mode {placed.mode:04o}" if placed.mode_recorded else "no mode recorded: made 0600"
        print(f"restored {show(str(dest))} (version {v.version_id}, {v.size:,} bytes, {mode})")
        return True
    finally:
        pending.close()


async def _write_through(fd: int, data: bytes) -> None:
    """_write_all in a thread, finished even when the attempt ends at its deadline: a write still going
    must not land in the temp file after the next attempt has emptied it."""
    write = asyncio.ensure_future(asyncio.to_thread(_write_all, fd, data))
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await write
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
