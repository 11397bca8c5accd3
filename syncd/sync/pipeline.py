"""One config's pipeline: the stages in one TaskGroup (start, run / run_once, reconcile, drain).

A changed file travels down the stages and never comes back up through a callback:
watcher -> settle (note_changes) -> queue -> uploader (path -> Outcome) -> recorder (state row, record).
The workers here only move a path from the queue to the uploader and its outcome to the recorder; a file
that changed during its upload goes round again through note_changes, like any other change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from syncd import fds, heap
from syncd.config import Config
from syncd.errors import SyncdError
from syncd.log import get_logger
from syncd.metrics import MetricsSink, NullMetrics
from syncd.notify import Notifier, watchdog_interval
from syncd.s3.bucket import BucketStatus
from syncd.s3.client import ErrorKind, classify, describe
from syncd.s3.listing import RemoteIndex
from syncd.s3.lock import LockPolicy
from syncd.s3.put import Sender
from syncd.s3.retry import Retrier
from syncd.s3.throttle import Throttle
from syncd.sync import scan, startup
from syncd.sync.deletions import Deletions
from syncd.sync.files import FileSkipped, present
from syncd.sync.folder import Folder
from syncd.sync.limits import ByteBudget, RateLimit
from syncd.sync.locks import LockExtender
from syncd.sync.queue import UploadQueue
from syncd.sync.recorder import Recorder, Stats
from syncd.sync.settle import Released, Settler
from syncd.sync.state import Counts, Signature, StateStore, unchanged
from syncd.sync.uploader import Uploader, UploadSettings
from syncd.sync.watcher import QUIET_STEP, Watcher

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = get_logger()
CREDENTIALS_PAUSE = 30.0  # seconds a worker waits after the server rejected the credentials
LOCK_METRICS_EVERY = 60.0  # seconds between counts of the locked current versions (a scan of the lock index)


class Pipeline:
    """One config's pipeline: `run()` watches until stopped, `run_once()` catches up and returns.

    `prepare()` first: start-up (startup.py) checks the bucket and chooses the sender, and only then is
    the Uploader built (once).
    """

    def __init__(
        self,
        config: Config,
        client: S3Client,
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
        self.throttle = Throttle(config.workers)
        self.retrier = Retrier.for_bucket(
            client,
            config.bucket,
            give_up_after=retry_for,
            throttle=self.throttle,
            request_timeout=config.s3.request_timeout,
        )
        self.outage = self.retrier.outage
        self.outage.listeners.append(self._outage_changed)
        self.outage.retry_listeners.append(self.metrics.retried)
        self.retry_timers: dict[str, asyncio.TimerHandle] = {}  # failed files, to be tried again
        self.lock = LockPolicy.of(config.object_lock)
        self.locks_counted = -LOCK_METRICS_EVERY
        self.locks_counted_for: tuple[float | None, int] = (None, -1)
        self.extender = (
            None if self.lock is None else LockExtender(client, config.bucket, state, self.lock, self.retrier)
        )
        self.excludes = config.excludes()
        self.loop = asyncio.get_running_loop()
        self.walk_opts = scan.WalkOptions(
            config.folder, self.excludes, config.follow_symlinks, on_unlisted=self._dir_unlisted
        )
        self.queue = UploadQueue()
        self.watcher = Watcher(config.folder, self._watched_paths_changed, self._watch_restarted)
        self.rescan_now = asyncio.Event()
        self.folder = Folder(config.folder, self.watcher, self.rescan_now, state, config.folder_grace)
        self.deletions = Deletions(
            config,
            client,
            state,
            self.retrier,
            self.folder,
            on_back=lambda rel: self.note_changes([(rel, None)]),
            dry_run=dry_run,
        )
        self.settler = Settler(
            config.folder,
            config.settle,
            config.max_delay,
            release=self.queue.put,
            on_dir=self._dir_appeared,
            on_gone=self.deletions.note_gone,
            on_skip=self._not_a_file,
            follow_symlinks=config.follow_symlinks,
        )
        self.remote = RemoteIndex(client, config.bucket, config.prefix, self.retrier)
        self.recorder = Recorder(state, self.metrics, locking=self.lock is not None, dry_run=dry_run)
        self._uploader: Uploader | None = None  # built once, by prepare()
        self.once = False  # run_once(): catch up and return
        self.group: asyncio.TaskGroup | None = None  # owns every task of a run (workers, walks, loops)
        self.stopping = False
        self.stop_by: float | None = None  # monotonic deadline of a SIGTERM's drain (stop_timeout)
        self.bucket: BucketStatus | None = None
        self.workers_wanted = config.workers
        self.workers_running = 0
        self.scanned_files = 0
        self.scanned = False  # a walk met the whole folder: every file it owes is marked owed
        self.sender: Sender | None = None  # chosen by prepare(), closed by close()

    @property
    def stats(self) -> Stats:
        return self.recorder.stats

    @property
    def uploader(self) -> Uploader:
        if self._uploader is None:
            raise RuntimeError("Pipeline.prepare() builds the uploader: call it first")
        return self._uploader

    # -- startup ---------------------------------------------------------------------------------------
    async def prepare(self, *, check_only: bool = False) -> BucketStatus:
        """Start-up (startup.py: the bucket, its leftovers, the sender), then the Uploader, built once."""
        started = await startup.start(
            self.config,
            self.client,
            self.state,
            self.retrier,
            self.metrics,
            check_only=check_only,
            dry_run=self.dry_run,
        )
        self.bucket = started.bucket
        self.sender = started.sender
        self._uploader = self._build_uploader(started.sender)
        heap.started()
        return started.bucket

    def _build_uploader(self, sender: Sender) -> Uploader:
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
            state=self.state,
            remote=self.remote,
            sender=sender,
            dry_run=self.dry_run,
        )

    def _outage_changed(self, down: bool, reason: str) -> None:
        self.metrics.set_s3_up(not down)
        if down:
            self.notifier.status(f"waiting for S3 ({reason})")
            self.notifier.extend_timeout(120)

    # -- intake: watcher events and walks become owed, settling paths ----------------------------------
    def _watched_paths_changed(self, paths: list[str]) -> None:
        changes: list[tuple[str, os.stat_result | None]] = []
        for path in paths:
            rel = scan.relative(self.config.folder, path)
            if rel is None:
                if path == str(self.config.folder):
                    self.rescan_now.set()  # the folder itself changed (moved, unmounted): check it
            elif not self.excludes.excluded(rel):
                changes.append((rel, None))
        self.note_changes(changes, quiet_since=time.monotonic() - QUIET_STEP)

    def note_changes(
        self, changes: list[tuple[str, os.stat_result | None]], *, quiet_since: float | None = None
    ) -> None:
        """Owed first, then settled: a crash between the two leaves a debt, never a silent gap.

        A stat from a walk lets the settle stage release a long-quiet file at once; quiet_since (when the
        paths were last seen changing) lets it take its first look when they can have settled.
        """
        if not changes:
            return
        if not self.dry_run:
            self.state.mark_owed([rel for rel, _st in changes])
        for rel, st in changes:
            self.settler.add(rel, st, quiet_since=quiet_since)

    def _watch_restarted(self, reason: str) -> None:
        log.info("rescan_requested", reason="watcher restarted")
        self.rescan_now.set()

    def _dir_appeared(self, rel: str) -> None:
        """A directory appeared: its files may predate the watch on it, so walk it now."""
        if not self.dry_run:
            self.state.forget([rel])
        if self.group is not None and not self.stopping:
            self.group.create_task(self._walk_new_dir(rel), name=f"walk {rel}")

    async def _walk_new_dir(self, rel: str) -> None:
        if self.excludes.excluded_dir(rel):
            return
        async for batch in scan.batches(self.walk_opts, start=rel):
            self._owe_changed(batch, uploaded=None)

    def _dir_unlisted(self, rel: str, reason: str) -> None:
        """A directory the walk (in its thread) could not look into: a failure of this run."""
        self.loop.call_soon_threadsafe(self.recorder.unlisted, rel, reason)

    def _not_a_file(self, rel: str) -> None:
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
        uploaded = self.state.signatures()
        before = len(self.queue) + len(self.settler)
        owed = 0
        self.scanned_files = 0
        async for batch in scan.batches(self.walk_opts):
            self.scanned_files += len(batch)
            if not self.remote.loaded and any(rel not in uploaded for rel, _st in batch):
                await self.remote.load()
            owed += self._owe_changed(batch, uploaded)
        if not self.folder.available():
            return owed  # went away during the walk: the "missing" files are not deletions
        self.scanned = True
        for rel in uploaded:  # what the walk did not meet
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

    def _owe_changed(
        self, batch: list[tuple[str, os.stat_result]], uploaded: dict[str, Signature] | None
    ) -> int:
        """Owe the walked files that are not unchanged since their upload; how many were.

        `uploaded` is the state's signatures for a whole walk (each entry met is taken out, so what is
        left was not met); None looks each file up instead, for the walk of one new directory.
        """
        changed: list[tuple[str, os.stat_result | None]] = []
        for rel, st in batch:
            sig = uploaded.pop(rel, None) if uploaded is not None else self._uploaded_sig(rel)
            if sig is None or not unchanged(Signature.of(st), sig, self.config.ignore_inode):
                changed.append((rel, st))
        self.note_changes(changed)
        return len(changed)

    def _uploaded_sig(self, rel: str) -> Signature | None:
        rec = self.state.get(rel)
        return rec.sig if rec else None

    # -- workers: queue -> uploader -> recorder ----------------------------------------------------
    def set_workers(self, n: int) -> None:
        """Start workers up to n; surplus ones (after a reload lowered `workers`) end after their file."""
        fds.raise_for(n)  # before the files and sockets n workers hold
        self.workers_wanted = n
        self.throttle.set_limit(n)
        if self.group is None:
            return  # run() starts them
        for i in range(self.workers_running, n):
            self.workers_running += 1
            self.group.create_task(self._work(), name=f"worker-{i}")

    async def _work(self) -> None:
        try:
            while not self.stopping and self.workers_running <= self.workers_wanted:
                await self._take_one()
        finally:
            self.workers_running -= 1

    async def _take_one(self) -> None:
        rel, released = await self.queue.get()
        try:
            if self.stopping:
                return  # taken as the stop began: it stays owed for the next start
            if self.folder.recently_available():
                await self._upload_one(rel, released)
            else:
                # try again when the folder is back
                self.settler.add(rel, unsettled_since=released.unsettled_since)
                await asyncio.sleep(1)
        finally:
            if self.queue.done(rel) and not self.stopping:
                self.settler.add(rel)
            if self.on_progress:
                self.on_progress(self)

    async def _upload_one(self, rel: str, released: Released) -> None:
        known, owed_since = self.state.lookup(rel)
        try:
            outcome = await self.uploader.upload(rel, known, released)
        except FileSkipped as exc:
            if exc.gone:
                log.info("vanished", path=rel, reason=exc.reason)
                self.deletions.note_gone(rel)
            else:
                self.recorder.skipped(rel, exc.reason)
            return
        except SyncdError:
            raise  # what the user must fix (or once's --retry-for ran out): the run's TaskGroup ends the run
        except Exception as exc:
            await self._failed(rel, exc)
            return
        if outcome.action == "handed_back":  # still owed; no record: nothing was read or sent
            log.debug("changed_while_queued", path=rel)
            now = time.monotonic()
            self.settler.add(
                rel, quiet_since=now, unsettled_since=released.spell(outcome.sig.changed_at()) or now
            )
            return
        self.recorder.record(outcome, None if self.dry_run else owed_since)
        # `once` and a file that never holds still (a live log): the version read is its backup for this
        # run; going round again would never end. The next run finds it changed.
        if outcome.action == "changed" and not (self.once and outcome.unsettled):
            self.note_changes([(rel, None)], quiet_since=time.monotonic())  # upload it again once it settles

    async def _failed(self, rel: str, exc: Exception) -> None:
        kind = classify(exc)
        if kind is ErrorKind.CREDENTIALS:
            # Not this file's fault: wait (the outage shows in the status) and try it again.
            self.outage.failed(exc)
            log.error("credentials_rejected", path=rel, reason=describe(exc))
            await asyncio.sleep(CREDENTIALS_PAUSE)
            self.settler.add(rel)
            return
        # The server failed this file while answering others: try it again later, ever less often.
        retry_in = self.recorder.failed(
            rel, describe(exc), retry=kind is ErrorKind.TRANSIENT and not self.stopping
        )
        if retry_in is not None:
            self._retry_later(rel, retry_in)

    def _retry_later(self, rel: str, delay: float) -> None:
        old = self.retry_timers.pop(rel, None)
        if old is not None:
            old.cancel()

        def again() -> None:
            self.retry_timers.pop(rel, None)
            if not self.stopping:
                self.note_changes([(rel, None)])

        self.retry_timers[rel] = asyncio.get_running_loop().call_later(delay, again)

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
        while len(self.settler) or len(self.queue):
            await asyncio.sleep(0.5)
        self.remote.drop()

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
        return self.watcher.healthy() and (self.sender is None or self.sender.healthy())

    def _start_stages(self, group: asyncio.TaskGroup) -> None:
        self.group = group
        group.create_task(self.settler.run(), name="settler")
        group.create_task(self.deletions.run(), name="deletions")
        if self.sender is not None:
            group.create_task(self.sender.watch(), name="sender")
        self.set_workers(self.workers_wanted)

    async def run(
        self,
        stop: asyncio.Event,
        ready: Callable[[], None],
        *,
        supervisor: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Watch and upload until `stop` is set; then drain in-flight uploads within stop_timeout.

        supervisor: the daemon's (signals and reloads set `stop`), run as a task of the run like the stages.
        """
        try:
            async with asyncio.TaskGroup() as group:
                if supervisor is not None:
                    group.create_task(supervisor(), name="supervisor")
                self._start_stages(group)
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
                group.create_task(self.drop_remote_index_when_idle(), name="drop remote index")
                group.create_task(self.periodic_rescan(), name="rescan")
                await stop.wait()
                await self.shutdown()
        finally:
            await self.close()

    def take_no_more(self) -> None:
        """The first step of a stop: workers start no new upload from here on (what waits stays owed)."""
        self.stopping = True
        self.watcher.stop()

    async def shutdown(self) -> None:
        """Like uvicorn's: take nothing new, let in-flight uploads finish within stop_timeout, then
        cancel every task of the run (the TaskGroup awaits them all before run() returns)."""
        self.take_no_more()
        self.stop_by = time.monotonic() + self.config.stop_timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._inflight_done(), self.config.stop_timeout)
        raise _Stop()

    async def _inflight_done(self) -> None:
        while self.queue.inflight:
            await asyncio.sleep(0.05)

    def _once_busy(self) -> bool:
        """Files settling or queued, or deletions waiting: `once` is not done."""
        return bool(len(self.settler) or len(self.queue) or self.deletions.busy)

    async def run_once(self) -> None:
        """Bring the bucket up to date with the folder, then return."""
        self.once = True
        try:
            async with asyncio.TaskGroup() as group:
                self._start_stages(group)
                if self.folder.available():  # not mounted: what is owed stays owed, nothing is walked
                    await self.queue_owed()
                    await self.reconcile("once")
                while self._once_busy() and self.folder.recently_available():  # gone: owed till next time
                    if len(self.queue):  # wake when the last upload ends, not up to 50 ms later
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.queue.wait_idle(), 0.05)
                    else:  # waiting for files to settle or deletions to be sent: look again soon
                        await asyncio.sleep(0.05)
                self.recorder.flush()
                if self.extender is not None and not self.dry_run:
                    await self.extender.extend_due()  # a cron-run `once` keeps current versions locked too
                self.stopping = True
                raise _Stop()
        finally:
            await self.close()

    async def close(self) -> None:
        for timer in self.retry_timers.values():
            timer.cancel()
        self.retry_timers.clear()
        self.watcher.stop()
        self.recorder.flush()  # first: nothing below may keep the last uploads out of the state
        if self.sender is not None:
            # A helper still holding PUTs at a stop gets what is left of stop_timeout, not 10 s more.
            left = None if self.stop_by is None else self.stop_by - time.monotonic()
            await self.sender.close(within=left)
            self.sender = None
        self.recorder.flush()  # what finished while the helper process stopped


class _Stop(Exception):
    """Raised inside a TaskGroup to cancel its remaining tasks on a clean stop."""


async def run_stopping_cleanly(coro: Any) -> None:
    """Await a pipeline run, treating our own _Stop as the normal end."""
    try:
        await coro
    except* _Stop:
        pass
