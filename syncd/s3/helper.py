"""The second upload process (`upload_processes: 2`): small PUTs signed and sent on another core.

A small PUT costs syncd about 0.4 ms of CPU, and most of it (signing, aiohttp, the response) needs nothing
but the request. The helper is a child process with its own event loop, client and FastPut; the main
process keeps everything else (watching, the state, scheduling, reading and hashing files, multipart
uploads, the `uploaded` record) and stays the only writer of the state and the only one talking to
systemd. It hands each PUT over a pipe and gets the response, or the error rebuilt so that syncd's one
retry policy sorts it as before.

Lifecycle: the helper ignores SIGTERM and SIGINT (systemd signals the whole cgroup, a terminal the whole
process group) and ends when the main process closes the pipe after draining its uploads, or when the
main process dies (the kernel closes the pipe then). The main process pings it every few seconds: one
that stops answering is killed, one that exits is reported, and either way its PUTs go to the main
process's own FastPut (syncd/s3/put.py routes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from syncd.config import S3Settings
from syncd.log import configure_logging, get_logger
from syncd.s3.client import describe, error_code, http_status

log = get_logger()
FRAME = struct.Struct("!I")
START_TIMEOUT = 20.0  # seconds for the helper to import, open its client and answer
PUT_TIMEOUT = 180.0  # seconds for one answer: longer than a PUT can take (connect 10 s, read 120 s)
HUNG_AFTER = 30.0  # seconds without an answer to a ping before the helper is killed
CHECK_EVERY = 5.0  # seconds between pings (and restarts of a helper that died)
STOP_TIMEOUT = 10.0  # seconds for the helper to exit after its pipe is closed
STOP_LEAST = 1.0  # ... at least, when a daemon's stop_timeout is nearly spent: time to exit cleanly
MAX_RESTARTS = 3  # helpers started again after one died; then the main process sends everything itself


@dataclass(frozen=True)
class UploadProcessSettings:
    """What the helper needs to open its own client: the main process's settings, nothing secret."""

    s3: S3Settings
    bucket: str
    pool: int
    log_format: str
    log_level: str


class UploadProcessGone(ConnectionError):
    """The helper exited or was stopped before it answered: send the PUT from the main process."""


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(data)) + data


async def _read(reader: asyncio.StreamReader) -> Any:
    (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
    return pickle.loads(await reader.readexactly(size))


def error_fields(exc: BaseException) -> dict[str, Any]:
    """An exception as plain data (the client's exception classes are made at run time: no pickling)."""
    return {
        "type": type(exc).__name__,
        "code": error_code(exc),
        "status": http_status(exc),
        "message": describe(exc) if error_code(exc) else str(exc),
    }


def rebuild_error(fields: dict[str, Any]) -> Exception:
    """The exception for error_fields(): same S3 code and status, or the same botocore transport class."""
    if fields["code"] or fields["status"]:
        response = {
            "Error": {"Code": fields["code"], "Message": fields["message"]},
            "ResponseMetadata": {"HTTPStatusCode": fields["status"]},
        }
        error: Exception = botocore.exceptions.ClientError(response, "PutObject")
        return error
    cls = getattr(botocore.exceptions, fields["type"], None)
    if isinstance(cls, type) and issubclass(cls, botocore.exceptions.BotoCoreError):
        with contextlib.suppress(Exception):
            error = cls(endpoint_url="(helper)", error=fields["message"], report=fields["message"])
            return error
    return RuntimeError(f"{fields['type']}: {fields['message']}")


# -- the main process's side ---------------------------------------------------------------------------
class UploadProcess:
    """The main process's handle on the helper process: start, PUTs over the pipe, pings, restarts, stop."""

    def __init__(self, settings: UploadProcessSettings) -> None:
        self.settings = settings
        self.proc: asyncio.subprocess.Process | None = None
        self.alive = False
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.last_answer = time.monotonic()
        self.restarts = 0
        self.answered = 0  # PUTs the helpers sent and answered for
        self.stopping = False
        self._starting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """Start the process in the background, so that its imports run on the other core while this one
        checks the bucket: a task made before the run's TaskGroup exists, awaited by watch() (in it) and
        cancelled by stop()."""
        self._starting = asyncio.get_running_loop().create_task(self._start_or_say_why(), name="helper start")

    async def _start_or_say_why(self) -> None:
        try:
            why = await self.start()
        except Exception as exc:  # e.g. fork failing (TasksMax)
            why = describe(exc)
        if why is not None:
            log.warning("helper_unavailable", reason=why, hint="small PUTs are sent by this process")

    async def watch(self) -> None:
        """In the run's TaskGroup: wait for the start, then every CHECK_EVERY seconds ping the process,
        kill one that stopped answering, start a dead one again (bounded)."""
        if self._starting is not None:
            await self._starting  # cancelled with this task: a start still running is killed
        while True:
            await asyncio.sleep(CHECK_EVERY)
            try:
                await self._ping_or_restart()
            except Exception as exc:  # e.g. fork failing (TasksMax): the main process sends the PUTs
                log.warning("helper_unavailable", reason=describe(exc))

    async def start(self) -> str | None:
        """Start the helper; None once it is ready, else why it is not used (then PUTs stay here)."""
        # No preexec_fn (not fork-safe with threads running): the helper ends when its stdin closes,
        # which the kernel does for us when this process dies, however it dies.
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "syncd.s3.helper",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(_frame(self.settings))
        try:
            answer = await asyncio.wait_for(_read(self.proc.stdout), START_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, pickle.UnpicklingError, EOFError, ValueError):
            await self._kill()
            return f"it did not start within {START_TIMEOUT:.0f}s (exit code {self.proc.returncode})"
        except asyncio.CancelledError:  # the pipeline stopped first
            await asyncio.shield(self._kill())
            raise
        if answer[0] != "ready":
            await self._kill()
            self.restarts = MAX_RESTARTS  # it cannot work here: do not try again
            return str(answer[2])
        self.alive = True
        self.last_answer = time.monotonic()
        # Lives as long as the pipe, which can outlast the run's TaskGroup (PUTs answered while stopping):
        # it ends when the process's stdout closes, and stop() awaits it.
        self._reader = asyncio.get_running_loop().create_task(self._read_answers(self.proc.stdout))
        log.info("helper_started", pid=self.proc.pid)
        return None

    async def put_object(self, **kwargs: Any) -> dict[str, Any]:
        """client.put_object in the helper; UploadProcessGone when it cannot answer."""
        if not self.alive or self.proc is None or self.proc.stdin is None:
            raise UploadProcessGone("the helper process is not running")
        self.next_id += 1
        number = self.next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[number] = future
        self.proc.stdin.write(_frame(("put", number, kwargs)))
        try:
            return await asyncio.wait_for(future, PUT_TIMEOUT)
        except TimeoutError:  # an answer lost in a helper that still answers pings
            self.pending.pop(number, None)
            raise UploadProcessGone(f"no answer from the helper within {PUT_TIMEOUT:.0f}s") from None

    async def _read_answers(self, stdout: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, number, payload = await _read(stdout)
                self.last_answer = time.monotonic()
                if kind == "pong":
                    continue
                future = self.pending.pop(number, None)
                if future is None or future.done():
                    continue
                if kind == "ok":
                    self.answered += 1
                    future.set_result(payload)
                else:
                    future.set_exception(rebuild_error(payload))
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError, ValueError):
            pass
        finally:
            self._gone()

    def _gone(self) -> None:
        was_alive, self.alive = self.alive, False
        for future in self.pending.values():
            if not future.done():
                future.set_exception(UploadProcessGone("the helper process exited"))
        self.pending.clear()
        if was_alive and not self.stopping:
            code = self.proc.returncode if self.proc is not None else None
            log.error("helper_exited", exit_code=code, hint="its uploads continue in the main process")

    async def _ping_or_restart(self) -> None:
        if self.stopping or self.proc is None:
            return
        if self.alive and self.proc is not None and self.proc.stdin is not None:
            if time.monotonic() - self.last_answer > HUNG_AFTER:
                log.error(
                    "helper_hung", seconds=HUNG_AFTER, hint="killed; its uploads go on in the main process"
                )
                await self._kill()
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.proc.stdin.write(_frame(("ping", 0, None)))
            return
        if self.restarts < MAX_RESTARTS:
            self.restarts += 1
            why = await self.start()
            if why is not None:
                log.warning("helper_unavailable", reason=why)

    def healthy(self) -> bool:
        """Not hung: a live helper answered within HUNG_AFTER (a dead one is replaced or done without)."""
        return not self.alive or time.monotonic() - self.last_answer <= HUNG_AFTER

    async def stop(self, within: float | None = None) -> None:
        """Close the pipe (the helper finishes what it has and exits); kill it if it does not, after
        STOP_TIMEOUT or `within` seconds (what is left of a daemon's stop_timeout), whichever is shorter."""
        self.stopping = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()  # a start that never got to the run's TaskGroup (startup failed)
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.proc.stdin.close()
        try:
            limit = STOP_TIMEOUT if within is None else min(STOP_TIMEOUT, max(within, STOP_LEAST))
            await asyncio.wait_for(self.proc.wait(), limit)
        except TimeoutError:
            await self._kill()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._gone()
        log.info("helper_stopped", puts=self.answered, exit_code=self.proc.returncode)

    async def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self._gone()


# -- the helper process --------------------------------------------------------------------------------
async def _serve() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    settings: UploadProcessSettings = await _read(reader)
    configure_logging(settings.log_format, settings.log_level)

    from syncd.s3.client import credentials_of, open_client
    from syncd.s3.fastpath import FastPut

    async with open_client(settings.s3, pool=settings.pool) as client:
        fast = await FastPut.create(
            client,
            settings.s3,
            settings.bucket,
            credentials_of(client),
            pool=settings.pool,
            probe=False,  # the main process probes once the bucket is there, then routes PUTs here
        )
        if isinstance(fast, str):
            writer.write(_frame(("unavailable", 0, f"no fast path: {fast}")))
            await writer.drain()
            return 0
        writer.write(_frame(("ready", os.getpid(), None)))
        tasks: set[asyncio.Task[None]] = set()

        async def put(number: int, kwargs: dict[str, Any]) -> None:
            try:
                response = await fast.put_object(**kwargs)
            except Exception as exc:
                writer.write(_frame(("err", number, error_fields(exc))))
            else:
                response = {k: v for k, v in response.items() if k != "ResponseMetadata"}
                writer.write(_frame(("ok", number, response)))

        while True:
            try:
                kind, number, payload = await _read(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the main process closed the pipe: finish and exit
            if kind == "ping":
                writer.write(_frame(("pong", 0, None)))
            elif kind == "put":
                task = loop.create_task(put(number, payload))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()
        await asyncio.gather(*tasks, return_exceptions=True)
        await writer.drain()
        await fast.close()
    return 0


def main() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return asyncio.run(_serve())


if __name__ == "__main__":
    sys.exit(main())
