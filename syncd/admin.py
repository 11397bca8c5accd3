"""The admin's read-only commands: status, versions, verify, check. Output is for humans, on stdout."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd import lockview
from syncd.config import Config
from syncd.errors import EXIT_OK, EXIT_SOME_FAILED, ConfigError
from syncd.keys import key_for_path
from syncd.s3.client import open_client
from syncd.s3.listing import RemoteObject, list_current, list_versions
from syncd.s3.retry import Retrier
from syncd.sync.state import FileRecord, StateLock, StateStore

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    moment = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = max(0, int(dt.datetime.now(dt.UTC).timestamp() - ts))
    return f"{moment} ({ago} s ago)"


def show(rel: str) -> str:
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
        locks = state.lock_summary()
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
    if (locked := lockview.status_line(config, locks)) is not None:
        print(locked)
    for failure in failures:
        print(f"  {show(failure.path)}: {failure.reason}")
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
    locks: dict[str, str] = {}
    async with open_client(config.s3, pool=4) as client:
        retrier = Retrier.for_bucket(
            client, config.bucket, give_up_after=60, request_timeout=config.s3.request_timeout
        )
        found = [v for v in await list_versions(client, config.bucket, key, retrier) if v.key == key]
        if config.object_lock is not None:
            locks = await lockview.version_notes(client, config.bucket, found, retrier)
    if not found:
        print(f"no versions of {show(rel)} (key {key}) in bucket {config.bucket}")
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
        if v.version_id in locks:
            notes.append(locks[v.version_id])
        size = "-" if v.delete_marker else f"{v.size:,}"
        print(
            f"{v.version_id:<40} {size:>12}  {v.modified.strftime('%Y-%m-%d %H:%M:%S')}  {', '.join(notes)}"
        )
    return EXIT_OK


@dataclass
class Comparison:
    """What verify found: the state's records, the bucket's objects, and each (path, problem)."""

    records: dict[str, FileRecord]
    remote: dict[str, RemoteObject]
    problems: list[tuple[str, str]]
    deleted_locally: int


async def compare(config: Config, state: StateStore) -> Comparison:
    """Bucket, state and folder side by side; unchanged files are judged by their stat, never read."""
    from syncd.sync import scan
    from syncd.sync.state import Signature, unchanged

    async with open_client(config.s3, pool=4) as client:
        retrier = Retrier.for_bucket(
            client, config.bucket, give_up_after=120, request_timeout=config.s3.request_timeout
        )
        remote = await list_current(client, config.bucket, config.prefix, retrier)
    records: dict[str, FileRecord] = {}
    for rel in state.signatures():
        rec = state.get(rel)
        assert rec is not None
        records[rel] = rec
    problems: list[tuple[str, str]] = []
    walk = scan.WalkOptions(config.folder, config.excludes(), config.follow_symlinks)
    local = dict(await asyncio.to_thread(lambda: list(scan.walk(walk))))
    for rel, rec in records.items():
        obj = remote.get(rec.key)
        if obj is None:
            problems.append((rel, "missing in the bucket"))
        elif obj.size != rec.sig.size or (rec.etag and obj.etag != rec.etag):
            problems.append((rel, "different in the bucket"))
        elif rel in local and not unchanged(Signature.of(local[rel]), rec.sig, config.ignore_inode):
            problems.append((rel, "changed locally, not uploaded yet"))
    for rel in local:
        if rel not in records:
            key = key_for_path(config.prefix, rel)
            problems.append((rel, "not uploaded" if key not in remote else "in the bucket, not in the state"))
    deleted_locally = sum(1 for rel in records if rel not in local)
    return Comparison(records, remote, problems, deleted_locally)


def print_problems(found: Comparison) -> None:
    for rel, reason in sorted(found.problems):
        print(f"{show(rel)}: {reason}")
    print(
        f"verify: {len(found.records):,} tracked, {len(found.remote):,} objects, "
        f"{len(found.problems)} problems, {found.deleted_locally} deleted locally (kept in the bucket)"
    )


async def verify(config: Config) -> int:
    """Compare bucket, state and folder; report differences (`--repair` is once.py's verify_repair)."""
    state = StateStore(config.state_file, config.identity, readonly=True)
    try:
        found = await compare(config, state)
    finally:
        state.close()
    print_problems(found)
    return EXIT_SOME_FAILED if found.problems else EXIT_OK


async def check(config: Config) -> int:
    """`syncd check`: every startup check, changing nothing; warnings for what would lose history."""
    from syncd.s3.bucket import ensure_bucket

    async with open_client(config.s3, pool=4) as client:
        retrier = Retrier.for_bucket(
            client, config.bucket, give_up_after=30, request_timeout=config.s3.request_timeout
        )
        status = await ensure_bucket(
            client,
            config.s3,
            config.bucket,
            check_only=True,
            retrier=retrier,
            object_lock=config.object_lock is not None,
        )
        lock_lines = await lockview.check_lines(client, config, exists=status.exists)
        lifecycle = await _lifecycle_warnings(client, config)
    print(f"config {config.path}: ok (folder {config.folder})")
    print("credentials: accepted")
    if not status.exists:
        print(f"bucket {config.bucket}: does not exist yet; syncd run creates it private")
    else:
        privacy = (
            f"public by ACL ({', '.join(status.public_acl)}); syncd run makes it private"
            if status.public_acl
            else "private"
        )
        owner = "ours" if status.owner_proven else "accessible (ownership not provable with this key)"
        print(f"bucket {config.bucket}: {owner}, {privacy}, versioning {status.versioning}")
        if status.acls_ignored:
            print("  note: its ACL lists public grants, but Object Ownership is BucketOwnerEnforced: ignored")
        if status.versioning != "Enabled":
            print("  warning: an unversioned bucket keeps no history; overwrites destroy old bytes")
    for line in lock_lines:
        print(line)
    for line in lifecycle:
        print(f"  warning: {line}")
    return EXIT_OK


async def _lifecycle_warnings(client: S3Client, config: Config) -> list[str]:
    """Lifecycle rules that expire or delete history under syncd's prefix (reported by `check`)."""
    from syncd.s3.client import describe, error_code

    try:
        response = await client.get_bucket_lifecycle_configuration(Bucket=config.bucket)
    except Exception as exc:
        if error_code(exc) in ("NoSuchLifecycleConfiguration", "NoSuchBucket", "NotImplemented"):
            return []
        return [f"could not read the bucket's lifecycle rules ({describe(exc)}): check them yourself"]
    warnings = []
    for rule in response.get("Rules", []):
        scope = _rule_prefix(rule)
        if rule.get("Status") != "Enabled" or not (
            scope.startswith(config.prefix) or config.prefix.startswith(scope)
        ):
            continue  # off, or only for keys outside syncd's prefix
        name = rule.get("ID") or "(unnamed)"
        under = f" under {scope!r}" if scope else ""
        if "NoncurrentVersionExpiration" in rule:
            days = rule["NoncurrentVersionExpiration"].get("NoncurrentDays")
            warnings.append(f"lifecycle rule {name} deletes old versions after {days} days{under}")
        # ExpiredObjectDeleteMarker only removes delete markers that have no versions left: no history.
        expiration = {k: v for k, v in rule.get("Expiration", {}).items() if k != "ExpiredObjectDeleteMarker"}
        if expiration:
            warnings.append(f"lifecycle rule {name} expires current objects{under}: {expiration}")
    return warnings


def _rule_prefix(rule: Mapping[str, Any]) -> str:
    """The key prefix a lifecycle rule applies to ("" for the whole bucket), in any of its three forms."""
    filter_ = rule.get("Filter", {})
    return str(filter_.get("Prefix") or filter_.get("And", {}).get("Prefix") or rule.get("Prefix") or "")
