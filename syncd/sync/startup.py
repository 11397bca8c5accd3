"""Before a pipeline runs: the bucket checked (made private and versioned, or only looked at for a dry
run), its lifecycle rule, the multipart uploads a killed run left behind aborted, versions from before
object_lock adopted, and the sender chosen. Waits while S3 is away (the retrier's outage)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncd.config import Config
from syncd.errors import ConfigError
from syncd.log import get_logger
from syncd.metrics import MetricsSink
from syncd.s3 import put
from syncd.s3.bucket import BucketStatus, ensure_bucket
from syncd.s3.client import describe, error_code
from syncd.s3.lifecycle import ensure_noncurrent_expiry
from syncd.s3.lock import check_bucket_lock
from syncd.s3.put import Sender
from syncd.s3.retry import Retrier
from syncd.sync.state import StateStore

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = get_logger()


@dataclass(frozen=True)
class Started:
    """What a pipeline needs from its start-up."""

    bucket: BucketStatus
    sender: Sender  # the pipeline closes it at the end of its run


async def start(
    config: Config,
    client: S3Client,
    state: StateStore,
    retrier: Retrier,
    metrics: MetricsSink,
    *,
    check_only: bool = False,
    dry_run: bool = False,
) -> Started:
    """Bucket exists, is ours, private and (where possible) versioned; then the rest of the start-up.

    check_only: look at the bucket, change nothing (a dry run); dry_run: nothing is uploaded, so no
    sender but the plain client.
    """
    sending = not check_only and not dry_run
    settings = put.SenderSettings(
        config.s3,
        config.bucket,
        config.prefix,
        config.workers + 8,
        config.upload_processes,
        config.log.format,
        config.log.level,
    )
    process = put.launch(settings) if sending else None
    try:
        status = await ensure_bucket(
            client,
            config.s3,
            config.bucket,
            check_only=check_only,
            retrier=retrier,
            object_lock=config.object_lock is not None,
        )
        if config.object_lock is not None and status.exists:
            await retrier.call(lambda: check_bucket_lock(client, config.bucket), what="an Object Lock check")
        if check_only:
            return Started(status, Sender(client, config.bucket))
        await _bucket_ready(config, client, state, retrier, metrics, status)
        if config.object_lock is not None and not dry_run:
            state.adopt_unlocked()  # current versions from before object_lock: lock them too
        sender = await put.choose(client, settings, process) if sending else Sender(client, config.bucket)
    except BaseException:
        if process is not None:
            await process.stop()
        raise
    return Started(status, sender)


async def _bucket_ready(
    config: Config,
    client: S3Client,
    state: StateStore,
    retrier: Retrier,
    metrics: MetricsSink,
    status: BucketStatus,
) -> None:
    """The checked bucket taken into use: on_delete's needs, the record, the lifecycle rule, leftovers."""
    if config.on_delete == "delete" and status.versioning != "Enabled":
        raise ConfigError(
            f"{config.path}: on_delete: delete needs a versioned bucket ({config.bucket} is not): "
            "enable versioning on it or set on_delete: keep"
        )
    log.info(
        "bucket_ready",
        bucket=config.bucket,
        created=status.created,
        private=status.private,
        made_private=status.made_private,
        versioning=status.versioning,
        owner_proven=status.owner_proven,
        **({} if config.object_lock is None else {"object_lock": config.object_lock.mode}),
    )
    state.set_meta("bucket", f"{config.bucket}: private={status.private} versioning={status.versioning}")
    metrics.set_s3_up(True)
    await retrier.call(
        lambda: ensure_noncurrent_expiry(client, config.bucket, config.prefix, config.keep_versions_days),
        what="a lifecycle check",
    )
    await abort_leftover_multiparts(client, config.bucket, state, retrier)


async def abort_leftover_multiparts(
    client: S3Client, bucket: str, state: StateStore, retrier: Retrier
) -> None:
    """Abort the multipart uploads this state started and never finished (never other clients')."""
    for upload_id, key in state.multiparts():
        try:
            await retrier.call(
                functools.partial(client.abort_multipart_upload, Bucket=bucket, Key=key, UploadId=upload_id),
                key=key,
            )
        except Exception as exc:
            if error_code(exc) != "NoSuchUpload":
                log.warning("multipart_abort_failed", key=key, reason=describe(exc))
                continue
        state.remove_multipart(upload_id)
        log.info("multipart_aborted", key=key, upload_id=upload_id)
