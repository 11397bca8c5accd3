"""How an upload's requests leave this process, chosen once at startup: the plain client, the fast path
(fastpath.py), or the fast path with the helper process in front of it (`upload_processes: 2`, helper.py).

The uploader holds one Sender and calls it the same way whichever was chosen. What can still change after
startup stays inside the sender: the helper process may die (its PUTs go to this process's fast path) and
the fast path turns itself off when the server refuses its signatures (fastpath_off; the client sends).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from syncd.config import S3Settings
from syncd.log import get_logger
from syncd.s3.client import credentials_of
from syncd.s3.fastpath import FastPut, why_not
from syncd.s3.helper import UploadProcess, UploadProcessGone, UploadProcessSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = get_logger()


@dataclass(frozen=True)
class SenderSettings:
    """What choosing a sender needs from the config."""

    s3: S3Settings
    bucket: str
    prefix: str  # where the fast path's probe pretends to upload a part (syncd's permissions cover it)
    pool: int  # connections: one per worker and a few more
    upload_processes: int
    log_format: str
    log_level: str


class Sender:
    """Sends small PUTs (and, with the fast path, streamed PUTs and parts) to one bucket, the way chosen
    at startup.

    Made by `launch()` and `choose()` (or `Sender(client, bucket)`: the plain client); closed before the
    client. `watch()` runs in the pipeline's TaskGroup while a helper process is in use.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        fast: FastPut | None = None,
        process: UploadProcess | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.fast = fast
        self.process = process

    @property
    def streams(self) -> bool:
        """Bodies are streamed from disk (the fast path is on); else the client sends them from memory."""
        return self.fast is not None and self.fast.on

    @property
    def payload_signed(self) -> bool:
        """Streamed requests carry the payload's SHA-256 (http), which the caller then computes."""
        return self.fast is not None and self.fast.payload_signed

    async def put(
        self,
        *,
        Key: str,
        Body: bytes,
        ContentMD5: str,
        ContentType: str,
        Metadata: dict[str, str],
        ObjectLockMode: str | None = None,
        ObjectLockRetainUntilDate: dt.datetime | None = None,
    ) -> Mapping[str, Any]:
        """put_object of a body in memory: by the helper process while it runs, else the fast path, else
        the client. A PUT the helper sent but could not answer for is sent again here: at worst one more
        version of the same bytes, as after any lost response."""
        args: dict[str, Any] = {
            "Key": Key,
            "Body": Body,
            "ContentMD5": ContentMD5,
            "ContentType": ContentType,
            "Metadata": Metadata,
        }
        if ObjectLockMode is not None:
            args["ObjectLockMode"] = ObjectLockMode
        if ObjectLockRetainUntilDate is not None:
            args["ObjectLockRetainUntilDate"] = ObjectLockRetainUntilDate
        if self.fast is None:
            return await self.client.put_object(Bucket=self.bucket, **args)
        if self.process is not None and self.process.alive:
            try:
                return await self.process.put_object(**args)
            except UploadProcessGone:
                pass
        return await self.fast.put_object(**args)

    @property
    def streamed(self) -> FastPut:
        """The fast path, for PUTs and parts streamed from disk and hashed already (only while `streams`;
        turned off meanwhile, it joins the body in memory and hands it to the client)."""
        if self.fast is None:
            raise RuntimeError("streamed requests need the fast path: check Sender.streams first")
        return self.fast

    async def watch(self) -> None:
        """In the pipeline's TaskGroup: the helper process's start, pings and restarts (if there is one)."""
        if self.process is not None:
            await self.process.watch()

    def healthy(self) -> bool:
        """Not hung: the helper process, if any, answered lately (the watchdog asks)."""
        return self.process is None or self.process.healthy()

    async def close(self, within: float | None = None) -> None:
        """The helper process first (it finishes the PUTs it has, in `within` seconds if given), then the
        fast path's connections."""
        if self.process is not None:
            await self.process.stop(within)
            self.process = None
        if self.fast is not None:
            await self.fast.close()
            self.fast = None


def launch(settings: SenderSettings) -> UploadProcess | None:
    """The helper process, started now when the config asks for one: its imports run on the other core
    while this one checks the bucket. None: every request is sent from this process."""
    if settings.upload_processes < 2:
        return None
    process = UploadProcess(
        UploadProcessSettings(
            settings.s3, settings.bucket, settings.pool, settings.log_format, settings.log_level
        )
    )
    process.begin()
    return process


async def choose(client: S3Client, settings: SenderSettings, process: UploadProcess | None) -> Sender:
    """The sender for this run, once the bucket is there: the fast path when its signed probe is taken
    (with the launched helper process in front of it), else the plain client (fastpath_off says why)."""
    fast = await FastPut.create(
        client,
        settings.s3,
        settings.bucket,
        credentials_of(client),
        pool=settings.pool,
        probe_key=settings.prefix,
    )
    if isinstance(fast, str):  # a warning when the server refused it, not the config
        (log.info if why_not(settings.s3, settings.bucket) else log.warning)("fastpath_off", reason=fast)
        if process is not None:
            await process.stop()  # it would send through a fast path of its own, which this server refuses
        return Sender(client, settings.bucket)
    return Sender(client, settings.bucket, fast, process)
