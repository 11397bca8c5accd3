"""What each subcommand does once its arguments are parsed: load the config, run, print the outcome."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from syncd.config import DEFAULT_CONFIG, Config, load_config, parse_duration
from syncd.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_UNAVAILABLE,
    ConfigError,
    UnavailableError,
    first_syncd_error,
)
from syncd.log import configure_logging


def default_config_path() -> str:
    return os.environ.get("SYNCD_CONFIG") or DEFAULT_CONFIG


def load(args: argparse.Namespace) -> Config:
    path = args.config or default_config_path()
    config = load_config(path)
    configure_logging(config.log.format, config.log.level)
    return config


def dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "demo":
        from syncd.demo import run_demo

        return run_demo(args.dir, args.port)
    config = load(args)
    if command == "run":
        from syncd.daemon import Daemon

        asyncio.run(Daemon(config).main())
        return EXIT_OK
    if command == "once":
        retry_for = parse_duration(args.retry_for, "--retry-for")
        progress = sys.stdout.isatty() and not args.no_progress and not args.dry_run
        return asyncio.run(run_once(config, dry_run=args.dry_run, retry_for=retry_for, progress=progress))
    if command == "check":
        return asyncio.run(run_check(config))
    from syncd import admin

    if command == "status":
        return admin.status(config)
    if command == "versions":
        return asyncio.run(admin.versions(config, args.path))
    if command == "restore":
        return asyncio.run(
            admin.restore(
                config, args.paths, version_id=args.version_id, at=args.at, to=args.to, force=args.force
            )
        )
    if command == "verify":
        return asyncio.run(admin.verify(config, repair=args.repair))
    raise ConfigError(f"unknown command {command!r}")


class Progress:
    """A one-line progress bar on a terminal: files, bytes, rate, ETA."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last_draw = 0.0

    def __call__(self, pipeline: Any) -> None:
        now = time.monotonic()
        if now - self.last_draw < 0.2:
            return
        self.last_draw = now
        self.draw(pipeline)

    def draw(self, pipeline: Any, final: bool = False) -> None:
        s = pipeline.stats
        done = s.uploaded + s.copied + s.unchanged + s.failed + s.skipped
        pending = len(pipeline.scheduler) + len(pipeline.settler)
        total = done + pending
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = s.bytes / elapsed
        files_rate = done / elapsed
        eta = pending / files_rate if files_rate > 0 and pending else 0
        width = 24
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        line = (
            f"\r[{bar}] {done}/{total} files  {_human(s.bytes)}  {_human(rate)}/s  "
            f"ETA {int(eta)}s  failed {s.failed + s.skipped}   "
        )
        sys.stdout.write(line + ("\n" if final else ""))
        sys.stdout.flush()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


async def run_once(config: Config, *, dry_run: bool, retry_for: float, progress: bool) -> int:
    from syncd.notify import Notifier
    from syncd.s3.client import open_client
    from syncd.sync.pipeline import Pipeline, run_stopping_cleanly
    from syncd.sync.state import StateLock, StateStore

    started = time.monotonic()
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = StateLock(config.state_file)
    lock.acquire()
    state = StateStore(config.state_file, config.identity)
    bar = Progress() if progress else None
    pipeline: Pipeline | None = None
    try:
        async with open_client(config.s3, pool=config.workers + 8) as client:
            pipeline = Pipeline(
                config,
                client,
                state,
                Notifier(socket_path=""),
                dry_run=dry_run,
                retry_for=retry_for,
                on_progress=bar,
            )
            await pipeline.prepare(check_only=dry_run)
            await run_stopping_cleanly(pipeline.run_once())
    except BaseException as exc:
        unavailable = first_syncd_error(exc)
        if isinstance(unavailable, UnavailableError):
            owed = state.counts().owed
            print(
                f"syncd: error: {unavailable} (gave up after {args_duration(retry_for)}); "
                f"{owed} files still owed (run again, or use syncd run)",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
        raise
    finally:
        counts = state.counts()
        state.close()
        lock.release()
    assert pipeline is not None
    s = pipeline.stats
    if bar is not None:
        bar.draw(pipeline, final=True)
    elapsed = time.monotonic() - started
    if dry_run:
        for rel in sorted(s.to_upload):
            sys.stdout.write(os.fsencode(rel).decode("utf-8", "backslashreplace") + "\n")
        print(f"syncd: dry run: {len(s.to_upload)} files would be uploaded", file=sys.stderr)
        return EXIT_OK
    print(
        f"syncd once: {s.uploaded} uploaded ({_human(s.bytes)}), {s.copied} copied, {s.unchanged} unchanged, "
        f"{s.failed + s.skipped} failed, {counts.owed} owed, in {elapsed:.1f}s"
    )
    return EXIT_SOME_FAILED if s.failed + s.skipped else EXIT_OK


def args_duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds >= 60 else f"{seconds:.0f}s"


async def run_check(config: Config) -> int:
    from syncd.s3.bucket import ensure_private_bucket
    from syncd.s3.client import open_client
    from syncd.s3.retry import Outage, Retrier

    async with open_client(config.s3, pool=4) as client:
        retrier = Retrier(Outage(), give_up_after=30)
        status = await retrier.call(
            lambda: ensure_private_bucket(
                client,
                config.bucket,
                region=config.s3.region,
                endpoint_url=config.s3.endpoint_url,
                check_only=True,
            )
        )
        lifecycle = await _lifecycle_warnings(client, config)
    print(f"config {config.path}: ok (folder {config.folder})")
    print("credentials: accepted")
    if not status.exists:
        print(f"bucket {config.bucket}: does not exist yet; syncd run creates it private")
    else:
        privacy = "private" if status.private else "NOT private now (syncd run makes it private)"
        owner = "ours" if status.owner_proven else "accessible (ownership not provable with this key)"
        print(f"bucket {config.bucket}: {owner}, {privacy}, versioning {status.versioning}")
        if status.versioning != "Enabled":
            print("  warning: an unversioned bucket keeps no history; overwrites destroy old bytes")
    for line in lifecycle:
        print(f"  warning: {line}")
    return EXIT_OK


async def _lifecycle_warnings(client: Any, config: Config) -> list[str]:
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


def _rule_prefix(rule: dict[str, Any]) -> str:
    """The key prefix a lifecycle rule applies to ("" for the whole bucket), in any of its three forms."""
    filter_ = rule.get("Filter", {})
    return str(filter_.get("Prefix") or filter_.get("And", {}).get("Prefix") or rule.get("Prefix") or "")
