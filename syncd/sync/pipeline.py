"""One config's pipeline: the stages in one TaskGroup (start, run / run_once, drain)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from syncd.config import Config
from syncd.errors import ConfigError, SyncdError
from syncd.log import get_logger
from syncd.metrics import MetricsSink, NullMetrics
from syncd.notify import Notifier, watchdog_interval
from syncd.s3 import metadata
from syncd.s3.bucket import BucketStatus, ensure_private_bucket
from syncd.s3.client import ErrorKind, classify, describe, error_code
from syncd.s3.helper import Helper, HelperSettings, put_router
from syncd.s3.lifecycle import ensure_noncurrent_expiry
from syncd.s3.listing import RemoteObject, list_current
from syncd.s3.lock import BucketLock, LockPolicy, check_bucket_lock, rfc3339
from syncd.s3.retry import Outage, Retrier
from syncd.s3.throttle import Throttle
from syncd.sync import scan
from syncd.sync.deletions import Deletions
from syncd.sync.files import FileSkipped, present
from syncd.sync.folder import Folder
from syncd.sync.limits import ByteBudget, RateLimit
from syncd.sync.locks import LockExtender
from syncd.sync.queue import Scheduler
from syncd.sync.settle import Settler
from syncd.sync.state import Counts, Signature, StateStore
from syncd.sync.uploader import Outcome, Uploader, UploadSettings
from syncd.sync.watcher import Watcher

log = get_logger()
FLUSH_AFTER = 0.2  # seconds an upload may wait in the state's group commit
FAILED_RETRY_BASE = 5.0  # seconds before a file the server failed is tried again; doubles each time
FAILED_RETRY_CAP = 3600.0  # at most this long between two tries of such a file
LOCK_METRICS_EVERY = 60.0  # seconds between counts of the locked current versions (a scan of the lock index)


@dataclass
class Stats:
    uploaded: int = 0
    copied: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run's
    skipped: int = 0
    bytes: int = 0
    last_upload: float | None = None
    to_upload: list[str] = field(default_factory=list)  # dry-run: what would be uploaded


class Pipeline:
    """One config's pipeline: `run()` watches until stopped, `run_once()` catches up and returns."""

    def __init__(
        self,
        config: Config,
        client: Any,
        state: StateStore,
        notifier: Notifier,
        *,
        dry_run: bool = False,
        retry_for: float | None = None,
        on_progress: Callable[[Pipeline], None] | None = None,
        metrics: MetricsSink | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.state = state
        self.notifier = notifier
        self.dry_run = dry_run
        self.on_progress = on_progress
        self.metrics: MetricsSink = metrics or NullMetrics()
        self.stats = Stats()
        self.outage = Outage(probe=lambda: client.head_bucket(Bucket=config.bucket))
        self.outage.listeners.append(self._outage_changed)
        self.outage.retry_listeners.append(self.metrics.retried)
        self.throttle = Throttle(config.workers)
        self.retrier = Retrier(self.outage, give_up_after=retry_for, throttle=self.throttle)
        self.fatal: SyncdError | None = None  # raised in a worker: ends the run (once: exit 75)
        self.fatal_event = asyncio.Event()
        self.retry_timers: dict[str, asyncio.TimerHandle] = {}
        self.excludes = config.excludes()
        self.walk_opts = scan.WalkOptions(config.folder, self.excludes, config.follow_symlinks)
        self.scheduler = Scheduler()
        self.watcher = Watcher(config.folder, self._on_watch_events, self._on_watch_restart)
        self.rescan_now = asyncio.Event()
        self.folder = Folder(config.folder, self.watcher, self.rescan_now, state, config.folder_grace)
        self.deletions = Deletions(config, client, state, self.retrier, self.folder, dry_run=dry_run)
        self.settler = Settler(
            config.folder,
            config.settle,
            config.max_delay,
            release=self.scheduler.put,
            on_dir=self._on_dir,
            on_gone=self.deletions.note_gone,
            on_skip=self._on_skip,
            follow_symlinks=config.follow_symlinks,
        )
        self.remote: dict[str, RemoteObject] | None = None
        self.stopping = False
        self.bucket: BucketStatus | None = None
        self.workers_wanted = config.workers
        self.worker_tasks: set[asyncio.Task[None]] = set()
        self.workers_running = 0
        self.scanned_files = 0
        self.fast: Any = None
        self.helper: Helper | None = None
        self.helper_start: asyncio.Task[None] | None = None
        self.flush_handle: asyncio.TimerHandle | None = None
        self.lock = LockPolicy.of(config.object_lock)
        self.bucket_lock: BucketLock | None = None
        self.locks_counted = -LOCK_METRICS_EVERY
        self.locks_counted_for: tuple[float | None, int] = (None, -1)
        self.extender = (
            None if self.lock is None else LockExtender(client, config.bucket, state, self.lock, self.retrier)
        )
        self.uploader = self._make_uploader(None)

    def _make_uploader(self, fast: Any, put_object: Any = None) -> Uploader:
        c = self.config
        settings = UploadSettings(
            root=c.folder,
            bucket=c.bucket,
            prefix=c.prefix,
            multipart_threshold=c.multipart_threshold,
            multipart_chunksize=c.multipart_chunksize,
            follow_symlinks=c.follow_symlinks,
            ignore_inode=c.ignore_inode,
            lock=self.lock,
        )
        return Uploader(
            self.client,
            settings,
            self.retrier,
            ByteBudget(c.max_inflight),
            RateLimit(c.bandwidth_limit),
            lookup=self.state.get,
            by_content=self.state.by_content,
            multipart_started=lambda upload_id, key, rel: self.state.add_multipart(upload_id, key, rel),
            multipart_ended=self.state.remove_multipart,
            fast=fast,
            put_object=put_object,
            remote=self._remote_same,
            dry_run=self.dry_run,
        )

    # -- startup ---------------------------------------------------------------------------------------
    async def prepare(self, *, check_only: bool = False) -> BucketStatus:
        """Bucket exists, is ours, private and (where possible) versioned; waits while S3 is away."""
        c = self.config
        if c.upload_processes > 1 and not check_only and not self.dry_run:
            # Started first: its imports run on the other core while this process checks the bucket.
            self.helper = Helper(HelperSettings(c.s3, c.bucket, c.workers + 8, c.log.format, c.log.level))
            self.helper_start = asyncio.get_running_loop().create_task(self._start_helper(self.helper))
        status = await self.retrier.call(
            lambda: ensure_private_bucket(
                self.client,
                c.bucket,
                region=c.s3.region,
                endpoint_url=c.s3.endpoint_url,
                check_only=check_only,
                object_lock=self.lock is not None,
            )
        )
        self.bucket = status
        if self.lock is not None and status.exists:
            self.bucket_lock = await self.retrier.call(lambda: check_bucket_lock(self.client, c.bucket))
        if not check_only:
            if c.on_delete == "delete" and status.versioning != "Enabled":
                raise ConfigError(
                    f"{c.path}: on_delete: delete needs a versioned bucket ({c.bucket} is not): "
                    "enable versioning on it or set on_delete: keep"
                )
            log.info(
                "bucket_ready",
                bucket=c.bucket,
                created=status.created,
                private=status.private,
                made_private=status.made_private,
                versioning=status.versioning,
                owner_proven=status.owner_proven,
                **({} if c.object_lock is None else {"object_lock": c.object_lock.mode}),
            )
            self.state.set_meta(
                "bucket", f"{c.bucket}: private={status.private} versioning={status.versioning}"
            )
            self.metrics.set_s3_up(True)
            await self.retrier.call(
                lambda: ensure_noncurrent_expiry(self.client, c.bucket, c.prefix, c.keep_versions_days)
            )
            await self._abort_leftover_multiparts()
            if self.lock is not None and not self.dry_run:
                self.state.adopt_unlocked()  # current versions from before object_lock: lock them too
            if not self.dry_run:
                await self._enable_fast_path()
        return status

    async def _enable_fast_path(self) -> None:
        from syncd.s3.client import credentials_of
        from syncd.s3.fastpath import FastPut, why_not

        c = self.config
        fast = await FastPut.create(
            self.client, c.s3, c.bucket, credentials_of(self.client), pool=c.workers + 8, probe_key=c.prefix
        )
        if isinstance(fast, str):  # a warning when the server refused it, not the config
            (log.info if why_not(c.s3, c.bucket) else log.warning)("fastpath_off", reason=fast)
            return
        self.fast = fast
        put_object = self.fast.put_object
        if self.helper is not None:
            put_object = put_router(self.helper, put_object)
        self.uploader = self._make_uploader(self.fast, put_object)

    async def _start_helper(self, helper: Helper) -> None:
        try:
            why = await helper.start()
        except Exception as exc:  # e.g. fork failing (TasksMax)
            why = describe(exc)
        if why is not None:
            log.warning("helper_unavailable", reason=why, hint="small PUTs are sent by this process")

    async def _abort_leftover_multiparts(self) -> None:
        """Abort the multipart uploads this state started and never finished (never other clients')."""
        for upload_id, key in self.state.multiparts():
            try:
                await self.retrier.call(
                    functools.partial(
                        self.client.abort_multipart_upload,
                        Bucket=self.config.bucket,
                        Key=key,
                        UploadId=upload_id,
                    )
                )
            except Exception as exc:
                if error_code(exc) != "NoSuchUpload":
                    log.warning("multipart_abort_failed", key=key, reason=describe(exc))
                    continue
            self.state.remove_multipart(upload_id)
            log.info("multipart_aborted", key=key, upload_id=upload_id)

    def _outage_changed(self, down: bool, reason: str) -> None:
        self.metrics.set_s3_up(not down)
        if down:
            self.notifier.status(f"waiting for S3 ({reason})")
            self.notifier.extend_timeout(120)

    # -- inputs: watcher events, walks, deletions -----------------------------------------------------
    def _on_watch_events(self, paths: list[str]) -> None:
        changes: list[tuple[str, os.stat_result | None]] = []
        for path in paths:
            rel = scan.relative(self.config.folder, path)
            if rel is None:
                if path == str(self.config.folder):
                    self.rescan_now.set()  # the folder itself changed (moved, unmounted): check it
            elif not self.excludes.excluded(rel):
                changes.append((rel, None))
        self.note_changes(changes)

    def note_changes(self, changes: list[tuple[str, os.stat_result | None]]) -> None:
        """Owed first, then settled: a crash between the two leaves a debt, never a silent gap.

        A stat from a walk lets the settle stage release a long-quiet file at once.
        """
        if not changes:
            return
        if not self.dry_run:
            self.state.mark_owed([rel for rel, _st in changes])
        for rel, st in changes:
            self.settler.add(rel, st)

    def _on_watch_restart(self, reason: str) -> None:
        log.info("rescan_requested", reason="watcher restarted")
        self.rescan_now.set()

    def _on_dir(self, rel: str) -> None:
        """A directory appeared: its files may predate the watch on it, so walk it now."""
        if not self.dry_run:
            self.state.forget([rel])
        task = asyncio.get_running_loop().create_task(self._walk_new_dir(rel))
        self.worker_tasks.add(task)  # owned with the workers: cancelled at shutdown
        task.add_done_callback(self.worker_tasks.discard)

    async def _walk_new_dir(self, rel: str) -> None:
        if self.excludes.excluded_dir(rel):
            return
        async for batch in scan.batches(self.walk_opts, start=rel):
            self._feed(batch, known=None)

    def _on_skip(self, rel: str) -> None:
        """Not a file syncd uploads (FIFO, socket, symlink not followed): nothing is owed for it."""
        if not self.dry_run:
            self.state.forget_owed(rel)

    # -- reconcile ------------------------------------------------------------------------------------
    async def reconcile(self, reason: str) -> int:
        """Walk the folder, owe each file whose stat differs from the state; never read unchanged files."""
        if not self.folder.available():
            log.debug("scan_paused", reason=reason)  # tests wait on it: the rescan looked and held back
            return 0
        started = time.monotonic()
        known = self.state.signatures()
        before = len(self.scheduler) + len(self.settler)
        owed = 0
        self.scanned_files = 0
        async for batch in scan.batches(self.walk_opts):
            self.scanned_files += len(batch)
            if self.remote is None and any(rel not in known for rel, _st in batch):
                await self._load_remote_index()
            owed += self._feed(batch, known)
        if not self.folder.available():
            return owed  # went away during the walk: the "missing" files are not deletions
        for rel in known:
            if not present(
                self.config.folder, rel, self.config.follow_symlinks
            ) and not self.excludes.excluded(rel):
                self.deletions.note_gone(rel)
        log.info(
            "scan_done",
            reason=reason,
            files=self.scanned_files,
            changed=owed,
            queued_before=before,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        return owed

    def _feed(self, batch: list[tuple[str, os.stat_result]], known: dict[str, Any] | None) -> int:
        changed: list[tuple[str, os.stat_result | None]] = []
        for rel, st in batch:
            sig = known.pop(rel, None) if known is not None else self.state_sig(rel)
            if sig is None or not Signature.of(st).same_as(sig, self.config.ignore_inode):
                changed.append((rel, st))
        self.note_changes(changed)
        return len(changed)

    def state_sig(self, rel: str) -> Signature | None:
        rec = self.state.get(rel)
        return rec.sig if rec else None

    async def _load_remote_index(self) -> None:
        """What the bucket already holds under the prefix, so a fresh state re-uploads nothing it has."""
        started = time.monotonic()
        self.remote = await list_current(self.client, self.config.bucket, self.config.prefix, self.retrier)
        log.info(
            "bucket_listed", objects=len(self.remote), duration_ms=int((time.monotonic() - started) * 1000)
        )

    async def _remote_same(self, key: str, size: int, md5: str) -> dict[str, Any] | None:
        """The bucket's current object for key already has these bytes: its ETag and VersionId, else None."""
        if not self.remote:
            return None
        obj = self.remote.pop(key, None)
        if obj is None or obj.size != size:
            return None
        if obj.plain_md5 == md5:
            return {"ETag": obj.etag, "VersionId": None}  # the listing proves it: no HEAD per file
        try:  # multipart or encrypted: the ETag is no MD5, our md5chksum metadata is
            head = await self.retrier.call(
                lambda: self.client.head_object(Bucket=self.config.bucket, Key=key), key=key
            )
        except Exception:
            return None
        if metadata.md5_hex(head.get("Metadata")) != md5:
            return None
        return {"ETag": head.get("ETag", obj.etag), "VersionId": head.get("VersionId")}

    # -- workers ---------------------------------------------------------------------------------------
    def set_workers(self, n: int) -> None:
        """Start workers up to n; surplus ones (after a reload lowered `workers`) end after their file."""
        self.workers_wanted = n
        self.throttle.set_limit(n)
        for i in range(self.workers_running, n):
            self.workers_running += 1
            task = asyncio.get_running_loop().create_task(self.worker(), name=f"worker-{i}")
            self.worker_tasks.add(task)
            task.add_done_callback(self.worker_tasks.discard)

    async def worker(self) -> None:
        try:
            while not self.stopping and self.workers_running <= self.workers_wanted:
                await self._work_one()
        finally:
            self.workers_running -= 1

    async def _work_one(self) -> None:
        rel = await self.scheduler.get()
        try:
            if self.folder.recently_available():
                await self.process(rel)
            else:
                self.settler.add(rel)  # try again when the folder is back
                await asyncio.sleep(1)
        finally:
            if self.scheduler.done(rel) and not self.stopping:
                self.settler.add(rel)
            if self.on_progress:
                self.on_progress(self)

    async def process(self, rel: str) -> None:
        owed_since = None if self.dry_run else self.state.owed_since(rel)
        try:
            outcome = await self.uploader.upload(rel)
        except FileSkipped as exc:
            if exc.gone:
                log.info("vanished", path=rel, reason=exc.reason)
                self.deletions.note_gone(rel)
                return
            self.stats.skipped += 1
            self.stats.failures.append((rel, exc.reason))
            self.metrics.failed()
            log.warning("upload_skipped", path=rel, reason=exc.reason)
            if not self.dry_run:
                self.state.record_failure(rel, exc.reason)
            return
        except SyncdError as exc:
            # Not raised out of the worker (nothing awaits it there): the run loop raises it.
            if self.fatal is None:
                self.fatal = exc
                self.fatal_event.set()
            return
        except Exception as exc:
            await self._failed(rel, exc)
            return
        self._record(outcome, owed_since)

    async def _failed(self, rel: str, exc: Exception) -> None:
        kind = classify(exc)
        if kind is ErrorKind.CREDENTIALS:
            self.outage.failed(exc)
            log.error("credentials_rejected", path=rel, reason=describe(exc))
            await asyncio.sleep(30)
            self.settler.add(rel)
            return
        self.stats.failed += 1
        self.stats.failures.append((rel, describe(exc)))
        self.metrics.failed()
        reason = describe(exc)
        if self.dry_run:
            log.error("upload_failed", path=rel, reason=reason)
            return
        attempts = self.state.record_failure(rel, reason)
        if kind is ErrorKind.TRANSIENT and not self.stopping:
            # The server failed this file while answering others: try again later, ever less often.
            delay = min(FAILED_RETRY_BASE * 2 ** min(attempts - 1, 20), FAILED_RETRY_CAP)
            delay *= random.uniform(0.8, 1.2)
            log.error("upload_failed", path=rel, reason=reason, attempts=attempts, retry_in_s=round(delay, 1))
            self._retry_later(rel, delay)
        else:
            log.error("upload_failed", path=rel, reason=reason, attempts=attempts)

    def _retry_later(self, rel: str, delay: float) -> None:
        old = self.retry_timers.pop(rel, None)
        if old is not None:
            old.cancel()

        def again() -> None:
            self.retry_timers.pop(rel, None)
            if not self.stopping:
                self.note_changes([(rel, None)])

        self.retry_timers[rel] = asyncio.get_running_loop().call_later(delay, again)

    def _record_upload(self, outcome: Outcome, owed_since: float | None) -> None:
        """Store the upload in the state's group commit; commit it within FLUSH_AFTER seconds."""
        self.state.record_upload(outcome.record(), owed_since=owed_since)
        if self.state.pending and self.flush_handle is None:
            self.flush_handle = asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flush)

    def _flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()  # a no-op when the timer itself is calling
            self.flush_handle = None
        self.state.flush()

    def _record(self, outcome: Outcome, owed_since: float | None) -> None:
        rel = outcome.path
        if outcome.action == "would_upload":
            self.stats.to_upload.append(rel)
            return
        if outcome.action == "unchanged":
            self.stats.unchanged += 1
            self._record_upload(outcome, owed_since)
            if self.lock is not None:  # adopted from the bucket: the extension pass locks it
                self.state.adopt_lock(rel, outcome.key, outcome.version_id)
            log.debug("unchanged", path=rel, key=outcome.key)
            return
        if outcome.version_id is not None or outcome.etag is not None:
            # A new version exists in the bucket: log it (every version has its record) and store it.
            self.stats.last_upload = time.time()
            self._record_upload(outcome, owed_since)
            if self.lock is not None:
                self.state.record_lock(rel, outcome.key, outcome.version_id, outcome.retain_until or 0.0)
            if outcome.source_key:
                self.stats.copied += 1
                self.metrics.copied()
            else:
                self.stats.uploaded += 1
                self.stats.bytes += outcome.sig.size
                self.metrics.uploaded(outcome.sig.size)
            self.metrics.set_last_success(self.stats.last_upload)
            fields: dict[str, Any] = {
                "path": rel,
                "key": outcome.key,
                "size": outcome.sig.size,
                "etag": outcome.etag,
                "version_id": outcome.version_id,
                "duration_ms": outcome.duration_ms,
                "md5": outcome.md5,
            }
            if outcome.source_key:
                fields["source_key"] = outcome.source_key
            if outcome.multipart_parts:
                fields["parts"] = outcome.multipart_parts
            if outcome.retain_until is not None:
                fields["retain_until"] = rfc3339(outcome.retain_until)
            if outcome.action == "changed":
                fields["changed_during_upload"] = True
            log.info("copied" if outcome.source_key else "uploaded", **fields)
        if outcome.action == "changed":
            log.info("changed_during_upload", path=rel)
            self.note_changes([(rel, None)])

    # -- the loops -------------------------------------------------------------------------------------
    async def queue_owed(self) -> None:
        owed = self.state.owed()
        if owed:
            log.info("owed_resumed", files=len(owed))
            for rel in owed:
                self.settler.add(rel)

    async def periodic_rescan(self) -> None:
        interval = self.config.rescan_interval
        while True:
            timeout = min(interval, 60.0) if interval and self.watcher.degraded else interval or 60.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rescan_now.wait(), timeout)
            self.rescan_now.clear()
            await self.reconcile("periodic" if interval else "watcher")

    async def drop_remote_index_when_idle(self) -> None:
        await asyncio.sleep(0.5)
        while len(self.settler) or len(self.scheduler):
            await asyncio.sleep(0.5)
        self.remote = {}

    def status_line(self, counts: Counts | None = None) -> str:
        c = counts or self.state.counts()
        if self.outage.down:
            return f"waiting for S3 ({self.outage.reason}): {c.owed} owed"
        if not self.folder.ok:
            return f"paused: {self.folder.problem} ({self.config.folder}), {c.owed} owed"
        last = f", last {int(time.time() - c.last_upload)} s ago" if c.last_upload else ""
        return f"watching {self.config.folder}: {c.owed} owed, {c.files:,} uploaded, {c.failed} failed{last}"

    async def heartbeat(self) -> None:
        """STATUS= kept current; WATCHDOG=1 only while the pipeline is healthy."""
        interval = watchdog_interval()
        period = min(interval, 5.0) if interval else 5.0
        while True:
            counts = self.state.counts()
            text = self.status_line(counts)
            self.metrics.set_owed(counts.owed)
            if counts.last_upload:
                self.metrics.set_last_success(counts.last_upload)
            if self.lock is not None:
                self._count_locks(counts.last_upload)
            self.notifier.status(text)
            self.state.set_meta("status", text)
            if interval and self.healthy():
                self.notifier.watchdog()
            self.folder.available()
            if self.helper is not None and self.helper_start is not None and self.helper_start.done():
                self.helper_start = self.helper.check()  # never awaited here: the heartbeat goes on
            await asyncio.sleep(period)

    def _count_locks(self, last_upload: float | None) -> None:
        """The lock gauges: counted again after an upload or an extension, else every LOCK_METRICS_EVERY."""
        extended = self.extender.extended if self.extender is not None else 0
        changed = (last_upload, extended) != self.locks_counted_for
        if changed or time.monotonic() >= self.locks_counted + LOCK_METRICS_EVERY:
            self.locks_counted, self.locks_counted_for = time.monotonic(), (last_upload, extended)
            locks = self.state.lock_summary()
            self.metrics.set_locks(locks.locked, locks.earliest)

    def healthy(self) -> bool:
        helper_ok = self.helper is None or self.helper.healthy()
        return self.watcher.healthy() and helper_ok

    async def start_workers(self, group: asyncio.TaskGroup) -> None:
        group.create_task(self.settler.run(), name="settler")
        group.create_task(self.deletions.run(), name="deletions")
        self.set_workers(self.workers_wanted)

    async def run(self, stop: asyncio.Event, ready: Callable[[], None]) -> None:
        """Watch and upload until `stop` is set; then drain in-flight uploads within stop_timeout."""
        try:
            async with asyncio.TaskGroup() as group:
                await self.start_workers(group)
                group.create_task(self.watcher.run(), name="watcher")
                # The watcher task sets up its inotify watches before its first await: once it has run,
                # nothing written from here on can fall between the watch and the walk.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                group.create_task(self.heartbeat(), name="heartbeat")
                if self.extender is not None:  # before the startup walk: locks due now must not wait for it
                    group.create_task(self.extender.run(), name="locks")
                ready()
                await self.queue_owed()
                await self.reconcile("startup")
                group.create_task(self.drop_remote_index_when_idle())
                group.create_task(self.periodic_rescan(), name="rescan")
                group.create_task(self._raise_fatal(), name="fatal")
                await stop.wait()
                await self.shutdown(group)
        finally:
            await self.close()

    async def shutdown(self, group: asyncio.TaskGroup) -> None:
        self.stopping = True
        self.watcher.stop()
        deadline = self.config.stop_timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._inflight_done(), deadline)
        for task in list(self.worker_tasks):
            task.cancel()
        # Cancel everything else the group owns by raising out of it.
        raise _Stop()

    async def _inflight_done(self) -> None:
        while self.scheduler.inflight:
            await asyncio.sleep(0.05)

    def _once_busy(self) -> bool:
        """Files settling or queued, or deletions waiting: `once` is not done."""
        return bool(len(self.settler) or len(self.scheduler) or self.deletions.busy)

    async def run_once(self) -> None:
        """Bring the bucket up to date with the folder, then return."""
        try:
            async with asyncio.TaskGroup() as group:
                await self.start_workers(group)
                if self.folder.available():  # not mounted: what is owed stays owed, nothing is walked
                    await self.queue_owed()
                    await self.reconcile("once")
                while self._once_busy() and self.folder.recently_available():  # gone: owed till next time
                    if self.fatal is not None:
                        await self._cancel_workers()
                        raise self.fatal
                    if len(self.scheduler):  # wake when the last upload ends, not up to 50 ms later
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.scheduler.wait_idle(), 0.05)
                    else:  # waiting for files to settle or deletions to be sent: look again soon
                        await asyncio.sleep(0.05)
                self._flush()
                if self.fatal is not None:
                    raise self.fatal
                if self.extender is not None and not self.dry_run:
                    await self.extender.extend_due()  # a cron-run `once` keeps current versions locked too
                self.stopping = True
                raise _Stop()
        finally:
            await self.close()

    async def _raise_fatal(self) -> None:
        await self.fatal_event.wait()
        await self._cancel_workers()
        assert self.fatal is not None
        raise self.fatal

    async def _cancel_workers(self) -> None:
        self.stopping = True
        tasks = list(self.worker_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for timer in self.retry_timers.values():
            timer.cancel()
        self.retry_timers.clear()
        self.watcher.stop()
        self._flush()  # first: nothing below may keep the last uploads out of the state
        if self.helper_start is not None:
            self.helper_start.cancel()
            await asyncio.gather(self.helper_start, return_exceptions=True)
        if self.helper is not None:
            await self.helper.stop()
        self._flush()  # what finished while the helper stopped
        if self.fast is not None:
            await self.fast.close()
            self.fast = None


class _Stop(Exception):
    """Raised inside a TaskGroup to cancel its remaining tasks on a clean stop."""


async def run_stopping_cleanly(coro: Any) -> None:
    """Await a pipeline run, treating our own _Stop as the normal end."""
    try:
        await coro
    except* _Stop:
        pass
