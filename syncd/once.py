"""`syncd once` and `syncd verify --repair`: bring the bucket up to date with the folder, then exit.

Both run the same pipeline as the daemon, without the watcher; a progress bar shows on a terminal.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from syncd.config import Config
from syncd.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_UNAVAILABLE,
    RequestFailedError,
    UnavailableError,
    first_syncd_error,
)


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
        done = s.done
        pending = len(pipeline.queue) + len(pipeline.settler)
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
            owed = state.owed()
            waited = (
                ""
                if isinstance(unavailable, RequestFailedError)
                else f" (gave up after {args_duration(retry_for)})"
            )
            owes = _still_owed(owed, scanned=pipeline is not None and pipeline.scanned)
            print(
                f"syncd: error: {unavailable}{waited}; {owes} (run again, or use syncd run)",
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
    for rel, reason in s.failures[:NAMED_FAILURES]:
        print(f"syncd once: failed: {_show(rel)}: {reason}", file=sys.stderr)
    if len(s.failures) > NAMED_FAILURES:
        print(f"syncd once: ... and {len(s.failures) - NAMED_FAILURES} more (syncd status)", file=sys.stderr)
    if not pipeline.folder.ok:
        print(
            f"syncd once: error: {pipeline.folder.problem}: {config.folder}; nothing was synced from it "
            f"(mount it, or check the path), {counts.owed} files still owed",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return EXIT_SOME_FAILED if s.failed + s.skipped else EXIT_OK


NAMED_FAILURES = 20  # files named one per line after `syncd once`; `syncd status` lists the rest


def _show(rel: str) -> str:
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _still_owed(owed: list[str], scanned: bool) -> str:
    """What a run that ended early leaves owed. Files are marked owed as the walk meets them (after the
    bucket's listing, for a fresh state): before the walk ended, those it did not reach are not counted."""
    if scanned:
        return f"{len(owed)} files still owed{_named(owed)}"
    if not owed:
        return "the folder was not scanned to the end, so which files are owed is not known yet"
    return f"the folder was not scanned to the end: {len(owed)} files owed so far{_named(owed)}"


def _named(paths: list[str], most: int = 5) -> str:
    """': a, b, c and N more' for the first few of paths ('' for none)."""
    if not paths:
        return ""
    shown = ", ".join(_show(rel) for rel in paths[:most])
    return f": {shown}" + (f" and {len(paths) - most} more" if len(paths) > most else "")


def args_duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds >= 60 else f"{seconds:.0f}s"


async def verify_repair(config: Config) -> int:
    """`verify --repair`: report what differs, owe it again, then upload it as `syncd once` does."""
    from syncd.admin import compare, print_problems
    from syncd.sync.state import StateLock, StateStore

    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = StateLock(config.state_file)
    lock.acquire()
    state = StateStore(config.state_file, config.identity)
    try:
        found = await compare(config, state)
        print_problems(found)
        if found.problems:
            fix = [rel for rel, reason in found.problems if reason != "in the bucket, not in the state"]
            state.forget(fix)
            state.mark_owed(fix)
            print(f"verify: {len(fix)} files queued for upload; uploading now")
    finally:
        state.close()
        lock.release()
    if found.problems:
        return await run_once(config, dry_run=False, retry_for=600, progress=False)
    return EXIT_OK
