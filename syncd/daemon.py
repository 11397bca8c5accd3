"""`syncd run`: signals become events, systemd notification, reload, the one-writer lock, metrics.

The stages themselves live in `syncd.sync.pipeline`; `Daemon` rebuilds that pipeline when the folder,
bucket or prefix changes on reload.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace

from syncd import heap
from syncd.config import Config, load_config
from syncd.errors import ConfigError, SyncdError
from syncd.log import configure_logging, get_logger
from syncd.metrics import MetricsSink, NullMetrics, metrics_for
from syncd.notify import Notifier, watchdog_interval
from syncd.s3.bucket import ensure_bucket
from syncd.s3.client import describe, open_client
from syncd.sync.pipeline import Pipeline, run_stopping_cleanly
from syncd.sync.state import StateLock, StateStore

log = get_logger()


class Daemon:
    """`syncd run`: signals, systemd notification, reload; the pipeline does the work."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.notifier = Notifier()
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()
        self.pipeline: Pipeline | None = None
        self.metrics: MetricsSink = NullMetrics()
        self.lock = StateLock(config.state_file)  # acquired in main()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)

    async def main(self) -> None:
        self._install_signals()
        self.lock = _lock_state(self.config)
        try:
            # After the lock: a second syncd on this state exits 5, not with "address already in use".
            self.metrics = metrics_for(self.config.metrics.listen)
            await self._serve()
        finally:
            self.metrics.stop()
            self.lock.release()

    async def _serve(self) -> None:
        config = self.config
        while True:
            state = StateStore(config.state_file, config.identity)
            try:
                outcome = await self._run_config(config, state)
            finally:
                state.close()  # commits the last group of upload rows, also when the run failed
                heap.ended()
            if outcome is None:
                return
            # A reload that changes what is synced: take the new state's lock before letting go of the old.
            if outcome.metrics != config.metrics:
                self._move_metrics(outcome.metrics.listen)
            if outcome.state_file != config.state_file:
                new_lock = _lock_state(outcome)
                self.lock.release()
                self.lock = new_lock
            config = outcome
            self.config = config

    def _move_metrics(self, listen: str | None) -> None:
        """metrics.listen changed on reload: open the new endpoint; if that fails, keep the old one."""
        try:
            moved = metrics_for(listen)
        except ConfigError as exc:
            log.error("metrics_not_moved", reason=str(exc))
            return
        self.metrics.stop()
        self.metrics = moved

    async def _run_config(self, config: Config, state: StateStore) -> Config | None:
        """Run one config until stop (None) or a reload that needs a new pipeline (the new Config)."""
        async with open_client(config.s3, pool=config.workers + 8) as client:
            pipeline = Pipeline(config, client, state, self.notifier, metrics=self.metrics)
            self.pipeline = pipeline
            self.notifier.status(f"checking bucket {config.bucket}")
            if not await self._prepare_unless_stopped(pipeline, config):
                self.notifier.stopping()
                log.info("stopped", uploaded=0, owed=state.counts().owed, reason="stopped before ready")
                return None
            pipe_stop = asyncio.Event()
            result: list[Config | None] = [None]

            def ready() -> None:
                self.notifier.ready(pipeline.status_line())
                log.info("ready", folder=str(config.folder), bucket=config.bucket, prefix=config.prefix)

            async def supervise() -> None:
                """Signals and reloads, a task of the pipeline's run (its TaskGroup ends it with the run)."""
                while True:
                    await _first_set(self.stop, self.reload)
                    if self.stop.is_set():
                        pipeline.take_no_more()  # now, not when run() next gets the loop
                        self.notifier.stopping()
                        self.notifier.extend_timeout(config.stop_timeout + 10)
                        log.info("stopping", reason="signal")
                        pipe_stop.set()
                        return
                    self.reload.clear()
                    new = await self._reload(pipeline)
                    if new is not None:
                        result[0] = new
                        pipe_stop.set()
                        return

            await run_stopping_cleanly(pipeline.run(pipe_stop, ready, supervisor=supervise))
            counts = state.counts()
            log.info(
                "stopped" if result[0] is None else "pipeline_restarted",
                uploaded=pipeline.stats.uploaded,
                copied=pipeline.stats.copied,
                unchanged=pipeline.stats.unchanged,
                failed=pipeline.stats.failed,
                owed=counts.owed,
            )
            return result[0]

    async def _prepare_unless_stopped(self, pipeline: Pipeline, config: Config) -> bool:
        """Bucket checks (which wait out an unreachable server) with systemd kept waiting, abandoned
        cleanly on SIGTERM. Its tasks run before the pipeline's TaskGroup exists: all end here."""
        prepare = asyncio.ensure_future(pipeline.prepare())
        stopped = asyncio.ensure_future(self.stop.wait())
        keepalive = asyncio.ensure_future(self._keep_systemd_waiting(config))
        try:
            await asyncio.wait({prepare, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (prepare, stopped, keepalive):
                task.cancel()  # a finished prepare keeps its result
            await asyncio.gather(prepare, stopped, keepalive, return_exceptions=True)
        if prepare.cancelled():
            return False
        prepare.result()  # raises what start-up raised
        return True

    async def _keep_systemd_waiting(self, config: Config) -> None:
        """While the bucket is checked: keep extending the start timeout (and feeding the watchdog after a
        reload); the pipeline's heartbeat takes over once it runs.

        Starting can take long for good reasons (S3 unreachable at boot, a new pipeline after a reload);
        a definite answer ends it with an exit code, not a timeout.
        """
        while True:
            self.notifier.extend_timeout(30)
            if watchdog_interval():
                self.notifier.watchdog()
            await asyncio.sleep(10)

    async def _reload(self, pipeline: Pipeline) -> Config | None:
        """SIGHUP: apply what can change live; return a new Config when the pipeline must restart."""
        self.notifier.reloading()
        pipeline.folder.forget_mount()  # the hint of folder_still_unavailable: a disk gone for good
        old = pipeline.config
        try:
            new = load_config(old.path)
        except SyncdError as exc:
            log.error("reload_rejected", reason=str(exc))
            self.notifier.ready(pipeline.status_line())
            return None
        if _same_target(old, new):
            configure_logging(new.log.format, new.log.level)
            pipeline.set_workers(new.workers)
            pipeline.config = new
            log.info("reloaded", workers=new.workers, log_level=new.log.level, restarted=False)
            self.notifier.ready(pipeline.status_line())
            return None
        try:
            async with open_client(new.s3, pool=4) as client:
                status = await ensure_bucket(client, new.s3, new.bucket, check_only=True)
                if new.object_lock is not None and status.exists:
                    from syncd.s3.lock import check_bucket_lock

                    await check_bucket_lock(client, new.bucket)  # an unlocked bucket: rejected, old config on
        except Exception as exc:
            log.error("reload_rejected", reason=str(exc) if isinstance(exc, SyncdError) else describe(exc))
            self.notifier.ready(pipeline.status_line())
            return None
        configure_logging(new.log.format, new.log.level)
        log.info("reloaded", restarted=True, folder=str(new.folder), bucket=new.bucket, prefix=new.prefix)
        return new


def _lock_state(config: Config) -> StateLock:
    """The one-writer lock of this config's state (LockedError, exit 5, when another syncd has it)."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = StateLock(config.state_file)
    lock.acquire()
    return lock


async def _first_set(*events: asyncio.Event) -> None:
    """Return once any of the events is set (the waits on the others are cancelled and awaited)."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def _same_target(old: Config, new: Config) -> bool:
    """Only workers or log settings changed: those apply live, anything else needs a new pipeline."""
    return replace(new, workers=old.workers, log=old.log) == old


__all__ = ["Daemon"]
