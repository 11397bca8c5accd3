"""Upload one file: skip, adopt, copy, put_object or multipart, Content-MD5 on every request.

The uploader never trusts a file to hold still: it compares fstat before and after reading and the path's
stat after the upload, and reports `changed` so the daemon settles and uploads the file again. How files
are read and hashed (never blocking the loop on a disk) is files.py's; the memory and bandwidth limits are
limits.py's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import mimetypes
import os
import posixpath
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from syncd.config import MiB
from syncd.keys import KeyTooLong, key_for_path
from syncd.s3 import metadata
from syncd.s3.client import error_code, etag_checked
from syncd.s3.listing import RemoteIndex
from syncd.s3.lock import LockPolicy, ensure_retention, set_retention
from syncd.s3.put import Sender
from syncd.s3.retry import Retrier
from syncd.sync.files import (
    HASH_CHUNK,
    STREAM_CHUNK,
    FileSkipped,
    PartBody,
    PartChanged,
    PartHashes,
    hash_range,
    open_file,
    read_hashed,
    read_soon,
    stat_path,
)
from syncd.sync.limits import ByteBudget, RateLimit
from syncd.sync.settle import Released
from syncd.sync.state import FileRecord, Signature, StateStore, unchanged

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef

MAX_PARTS = 10_000
MAX_COPY_SIZE = 5 * 1024**3
STREAM_HOLD = 2 * STREAM_CHUNK  # what a streamed part holds: the piece being sent and the transport's copy
MAX_PART_LANES = 8  # parts of one file in flight at once
ABORT_ON_STOP = 2.0  # seconds a multipart abort may hold up a stop; then the next start aborts it (state)
DIGEST_MISMATCH = ("BadDigest", "XAmzContentSHA256Mismatch")
SMALL_FILE = 256 * 1024  # read on the loop when cached (read_soon), sent from memory
# Copies of a small file's bytes held while it is sent: the body, the HTTP layer's, and with
# upload_processes: 2 the frame to the helper and the helper's own.
SMALL_COPIES = 4


@dataclass(frozen=True)
class Outcome:
    """What happened to one file. action: uploaded | copied | unchanged | changed | would_upload (dry run)
    | handed_back (written again while it waited for a worker: not read, back to the settle stage)."""

    action: str
    path: str
    key: str
    sig: Signature
    md5: str = ""
    etag: str | None = None
    version_id: str | None = None
    duration_ms: int = 0
    source_key: str | None = None
    multipart_parts: int = 0
    retain_until: float | None = None  # the version's Object Lock, as the server holds it
    unsettled: bool = False  # read before it settled (unsettled_upload)

    def record(self) -> FileRecord:
        return FileRecord(self.path, self.key, self.sig, self.md5, self.version_id, self.etag, time.time())


@dataclass(frozen=True)
class OpenFile:
    """One file being uploaded: where it is, what it was when opened, what the state knew of it."""

    rel: str
    key: str
    fd: int
    sig: Signature
    owner: dict[str, str]  # mode, uid and gid as object metadata (metadata.owner)
    known: FileRecord | None
    started: float
    # Read before it settled (unsettled_upload): what was hashed is sent even if the file moves on
    # meanwhile (Content-MD5 keeps the version whole); the outcome is `changed`, so it goes round again.
    unsettled: bool = False


@dataclass(frozen=True)
class UploadSettings:
    root: Path
    bucket: str
    prefix: str
    multipart_threshold: int
    multipart_chunksize: int
    follow_symlinks: bool = False
    ignore_inode: bool = False
    lock: LockPolicy | None = None  # object_lock: every version written is locked


class Locked:
    """The lock sent with one attempt of a request: recomputed per attempt, so a retried request still
    locks its version until at least now + retain; `until` is that of the attempt that succeeded."""

    def __init__(self, policy: LockPolicy | None) -> None:
        self.policy = policy
        self.until: float | None = None

    def args(self) -> Mapping[str, Any]:
        if self.policy is None:
            return {}
        self.until = self.policy.until()
        return self.policy.request_args(self.until)


def part_size_for(size: int, chunksize: int) -> int:
    """The smallest whole-MiB part size >= chunksize that needs at most 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    part = max(chunksize, needed, 5 * MiB)
    return -(-part // MiB) * MiB


_TYPES: dict[str, str] = {}  # extension -> content type, for extensions whose answer depends on nothing else


def content_type(path: str) -> str:
    """mimetypes' answer for path, remembered per extension: the lookup cost more per small file than
    its state row. Not remembered where more than the extension decides: an encoding or a suffix
    alias (.gz, .tgz: the suffix before it counts) or a path mimetypes reads as a URL (a colon)."""
    ext = posixpath.splitext(path.rpartition("/")[2])[1]
    if ":" not in path:
        known = _TYPES.get(ext)
        if known is not None:
            return known
    ctype = mimetypes.guess_type(path, strict=False)[0] or "application/octet-stream"
    plain = ext.lower() not in mimetypes.suffix_map and ext not in mimetypes.encodings_map
    if plain and ":" not in path and len(_TYPES) < 1024:
        _TYPES[ext] = ctype
    return ctype


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _etag(response: Mapping[str, Any]) -> str:
    """The ETag of a put, a completed multipart upload or a copy, unquoted ("" when the server gave none)."""
    etag = response.get("ETag") or response.get("CopyObjectResult", {}).get("ETag") or ""
    return str(etag).strip('"')


R = TypeVar("R", bound=Mapping[str, Any])


async def checked(response: Awaitable[R], md5_hex: str, operation: str = "PutObject") -> R:
    """The answer to a PUT of bytes whose MD5 is md5_hex, refused when its ETag says other bytes."""
    answer = await response
    etag_checked(answer, md5_hex, operation)
    return answer


class Uploader:
    """Turns a path into a new object version, using one shared client, retrier and byte budget."""

    def __init__(
        self,
        client: S3Client,
        settings: UploadSettings,
        retrier: Retrier,
        budget: ByteBudget,
        rate: RateLimit,
        *,
        state: StateStore,
        remote: RemoteIndex,
        sender: Sender,
        dry_run: bool = False,
    ) -> None:
        self.client = client
        self.settings = settings
        self.retrier = retrier
        self.budget = budget
        self.rate = rate
        self.state = state  # what was uploaded (skip, copy sources) and the multipart uploads in flight
        self.remote = remote  # what a fresh state's bucket already holds
        self.sender = sender  # small PUTs, streamed PUTs and parts: the way chosen at startup (put.py)
        self.dry_run = dry_run

    def key_for(self, rel: str) -> str:
        try:
            return key_for_path(self.settings.prefix, rel)
        except KeyTooLong as exc:
            raise FileSkipped(str(exc)) from None
        except ValueError as exc:
            raise FileSkipped(f"cannot map to a key: {exc}") from None

    async def upload(self, rel: str, known: FileRecord | None, released: Released | None = None) -> Outcome:
        """Bring the bucket up to date with this one file (known: its state row; released: what the settle
        stage saw of it); raises FileSkipped or the S3 error.

        Opening is metadata work done on the loop, like the settler's stat. Small files (most of a tree)
        are read and hashed there too when the page cache holds them, under a reservation of the byte
        budget for every copy of them; larger ones are hashed in threads and streamed from disk.
        """
        started = time.monotonic()
        key = self.key_for(rel)
        known_sig = known.sig if known is not None and known.key == key else None
        fd = -1
        try:  # every way out closes the fd: returns included, not only exceptions
            fd, st = open_file(self.settings.root, rel, self.settings.follow_symlinks)
            sig = Signature.of(st)
            if known is not None and unchanged(sig, known_sig, self.settings.ignore_inode):
                return Outcome("unchanged", rel, key, sig, known.md5, known.etag, known.version_id)
            unsettled = False
            if released is not None and not released.quiet(st):
                if not released.overdue(rel, st):
                    return Outcome("handed_back", rel, key, sig)
                unsettled = True  # read anyway: its unsettled spell is max_delay old
            f = OpenFile(rel, key, fd, sig, metadata.owner(st), known, started, unsettled)
            if sig.size <= SMALL_FILE:
                async with self.budget.hold(SMALL_COPIES * sig.size):
                    body = await read_soon(fd, sig.size)
                    return await self._upload_hashed(f, hashlib.md5(body).hexdigest(), body)
            return await self._upload_large(f)
        finally:
            if fd >= 0:
                os.close(fd)

    async def _upload_large(self, f: OpenFile) -> Outcome:
        """Hash the file in a thread, then stream it from disk; without the fast path a file below
        multipart_threshold is read and sent from memory."""
        multipart = f.sig.size >= self.settings.multipart_threshold
        streams = self.sender.streams
        if not streams and not multipart:
            # The HTTP layer copies the body once more while sending it: count both copies.
            async with self.budget.hold(2 * f.sig.size):
                body, digest = await asyncio.to_thread(read_hashed, f.fd, f.sig.size)
                return await self._upload_hashed(f, digest.hex(), body)
        hashes = None
        if multipart and streams and not self.dry_run:
            part_size = part_size_for(f.sig.size, self.settings.multipart_chunksize)
            hashes = PartHashes(f.fd, f.sig.size, part_size, self.sender.payload_signed, self.budget)
        # A single streamed PUT signs its payload hash too (http); a multipart upload's parts have theirs.
        sha256 = not multipart and streams and self.sender.payload_signed
        try:
            async with self.budget.hold(HASH_CHUNK):
                hashed = await asyncio.to_thread(hash_range, f.fd, 0, f.sig.size, sha256)
            if hashed is None:
                return Outcome("changed", f.rel, f.key, f.sig)
            return await self._upload_hashed(f, hashed[0].hex(), None, hashes, sha256=hashed[1])
        finally:
            if hashes is not None:
                await hashes.close()

    async def _upload_hashed(
        self,
        f: OpenFile,
        md5: str,
        body: bytes | None,
        hashes: PartHashes | None = None,
        *,
        sha256: str | None = None,
    ) -> Outcome:
        """Read and hashed: skip, adopt, copy server-side, put or multipart."""
        rel, key, sig, known = f.rel, f.key, f.sig, f.known
        if not self._held(f) or (body is not None and len(body) != sig.size):
            return Outcome("changed", rel, key, sig)
        if known is not None and known.key == key and known.md5 == md5:
            return Outcome("unchanged", rel, key, sig, md5, known.etag, known.version_id)
        if known is None:
            there = await self.remote.holds(key, sig.size, md5)
            if there is not None:  # a fresh state over a bucket that already has these bytes
                etag = str(there.get("ETag") or "").strip('"') or None
                return Outcome("unchanged", rel, key, sig, md5, etag, there.get("VersionId"))
        if self.dry_run:
            return Outcome("would_upload", rel, key, sig, md5)
        meta = {**metadata.for_upload(md5, sig.mtime_ns), **f.owner}
        ctype = content_type(rel)
        source = self._copy_source(rel, md5, sig.size)
        if source is not None:
            lock = Locked(self.settings.lock)
            copied = await self._copy(source, key, meta, ctype, lock)
            if copied is not None:
                copied = await self._filled_in(key, copied, md5, sig.size)
                # Servers may give a copy the source's lock instead of the one asked for: read it back.
                until = await self._lock_held(key, copied, lock)
                return self._finish(f, "copied", md5, copied, source_key=source.key, retain_until=until)
        lock = Locked(self.settings.lock)
        if body is not None:
            response = await self._put(key, body, md5, meta, ctype, lock)
            until = await self._lock_kept(key, response, lock)
            return self._finish(f, "uploaded", md5, response, retain_until=until)
        if sig.size < self.settings.multipart_threshold:
            streamed = await self._put_streamed(f, md5, sha256, meta, ctype, lock)
            if streamed is None:
                return Outcome("changed", rel, key, sig)
            until = await self._lock_kept(key, streamed, lock)
            return self._finish(f, "uploaded", md5, streamed, retain_until=until)
        completed, parts = await self._multipart(f, meta, ctype, hashes, lock)
        if completed is None:
            return Outcome("changed", rel, key, sig)
        # Some servers drop the lock sent with CreateMultipartUpload (Ceph RGW 16.2), and the lock was
        # dated when the upload began: read it back and set it to now + retain where it falls short.
        completed = await self._filled_in(key, completed, md5, sig.size)
        until = await self._lock_held(key, completed, lock)
        return self._finish(f, "uploaded", md5, completed, parts=parts, retain_until=until)

    async def _lock_kept(self, key: str, response: Mapping[str, Any], lock: Locked) -> float | None:
        """After a PUT that took longer than LATENCY_MARGIN (a large body, a slow link), the server may
        have dated the version later than the lock allows for: extend the lock to now + retain then."""
        version_id = response.get("VersionId")
        if lock.policy is None or lock.until is None or not version_id:
            return lock.until
        until = lock.policy.until()
        if until <= lock.until:
            return lock.until
        policy, vid = lock.policy, str(version_id)
        held = await self.retrier.call(
            lambda: set_retention(self.client, self.settings.bucket, key, vid, policy, until), key=key
        )
        return held.until

    async def _lock_held(self, key: str, response: dict[str, Any], lock: Locked) -> float | None:
        """The retain-until the server holds for the new version, extended to now + retain if short.

        A copy's answer may lack the new VersionId (Ceph RGW 16.2): _filled_in, called first, looks it up.
        """
        version_id = response.get("VersionId")
        if lock.policy is None or not version_id:
            return lock.until
        return await ensure_retention(
            self.client,
            self.retrier,
            self.settings.bucket,
            key,
            str(version_id),
            lock.policy,
            lock.policy.until(),
        )

    async def _filled_in(self, key: str, response: Mapping[str, Any], md5: str, size: int) -> dict[str, Any]:
        """response with the ETag and VersionId a server left out, read back with HeadObject.

        Ceph RGW omits x-amz-version-id on CopyObject and (16.2) answers CompleteMultipartUpload with an
        empty ETag. The HEAD is only believed when it shows our bytes (size and md5chksum); an unversioned
        bucket has no VersionId to find, so the HEAD is made then too, once per copy or multipart upload.
        """
        if _etag(response) and response.get("VersionId"):
            return dict(response)
        try:
            head = await self.retrier.call(
                lambda: self.client.head_object(Bucket=self.settings.bucket, Key=key), key=key
            )
        except Exception:
            return dict(response)  # the object is stored; only its record lacks what the server did not say
        if head.get("ContentLength") != size or metadata.md5_hex(head.get("Metadata")) != md5:
            return dict(response)  # overwritten since: the HEAD describes another version
        return {
            **response,
            "ETag": _etag(response) or head.get("ETag"),
            "VersionId": response.get("VersionId") or head.get("VersionId"),
        }

    def _finish(
        self,
        f: OpenFile,
        action: str,
        md5: str,
        response: Mapping[str, Any],
        *,
        source_key: str | None = None,
        parts: int = 0,
        retain_until: float | None = None,
    ) -> Outcome:
        etag = _etag(response)
        if not self._still(f.fd, f.sig) or not self._path_is(f.rel, f.sig):
            # The server has a consistent snapshot, but the file moved on: upload again after it settles.
            action = "changed"
        return Outcome(
            action,
            f.rel,
            f.key,
            f.sig,
            md5,
            etag or None,
            response.get("VersionId"),
            int((time.monotonic() - f.started) * 1000),
            source_key,
            parts,
            retain_until,
            f.unsettled,
        )

    def _still(self, fd: int, sig: Signature) -> bool:
        return sig.describes(os.fstat(fd))

    def _held(self, f: OpenFile) -> bool:
        """May what was hashed still be sent? Yes when the file is as hashed, or was read unsettled: a live
        log bigger than a read and a PUT between two of its lines would otherwise never be sent."""
        return f.unsettled or self._still(f.fd, f.sig)

    def _path_is(self, rel: str, sig: Signature) -> bool:
        try:
            now = stat_path(self.settings.root, rel, self.settings.follow_symlinks)
        except OSError:
            return True  # gone: the watcher reports the deletion; what we uploaded was consistent
        return sig.describes(now, self.settings.ignore_inode)

    async def _put(
        self, key: str, body: bytes, md5: str, meta: dict[str, str], ctype: str, lock: Locked
    ) -> Mapping[str, Any]:
        await self.rate.consume(len(body))
        content_md5 = b64(bytes.fromhex(md5))
        return await self.retrier.call(
            lambda: checked(
                self.sender.put(
                    Key=key,
                    Body=body,
                    ContentMD5=content_md5,
                    ContentType=ctype,
                    Metadata=meta,
                    **lock.args(),
                ),
                md5,
            ),
            key=key,
            size=len(body),
        )

    def _copy_source(self, rel: str, md5: str, size: int) -> FileRecord | None:
        """A file the bucket already holds with the same bytes (a rename or a copy): copy it server-side."""
        if size == 0 or size > MAX_COPY_SIZE:
            return None
        for rec in self.state.by_content(md5, size):
            if rec.path != rel and rec.key.startswith(self.settings.prefix):
                return rec
        return None

    async def _copy(
        self, source: FileRecord, key: str, meta: dict[str, str], ctype: str, lock: Locked
    ) -> Mapping[str, Any] | None:
        copy_source: CopySourceTypeDef = {"Bucket": self.settings.bucket, "Key": source.key}
        if source.version_id:
            copy_source["VersionId"] = source.version_id
        try:
            return await self.retrier.call(
                lambda: self.client.copy_object(
                    Bucket=self.settings.bucket,
                    Key=key,
                    CopySource=copy_source,
                    MetadataDirective="REPLACE",
                    Metadata=meta,
                    ContentType=ctype,
                    **lock.args(),
                ),
                key=key,
                size=source.sig.size,  # the server copies the bytes before it answers
            )
        except Exception as exc:
            if error_code(exc) in (
                "NoSuchKey",
                "NoSuchVersion",
                "InvalidRequest",
                "NotImplemented",
                "AccessDenied",
            ):
                return None  # the source is gone or copies are not allowed: upload the bytes instead
            raise

    async def _multipart(
        self, f: OpenFile, meta: dict[str, str], ctype: str, hashes: PartHashes | None, lock: Locked
    ) -> tuple[Mapping[str, Any] | None, int]:
        """Several parts in flight, each with Content-MD5; with the fast path each is hashed and then
        streamed from disk as it is sent, so memory per part is a few MiB whatever the part size."""
        rel, key, sig = f.rel, f.key, f.sig
        part_size = part_size_for(sig.size, self.settings.multipart_chunksize)
        count = -(-sig.size // part_size)
        created = await self.retrier.call(
            lambda: self.client.create_multipart_upload(
                Bucket=self.settings.bucket, Key=key, Metadata=meta, ContentType=ctype, **lock.args()
            ),
            key=key,
        )
        upload_id = created["UploadId"]
        self.state.add_multipart(upload_id, key, rel)
        etags: dict[int, str] = {}
        changed = False
        skipped: FileSkipped | None = None

        async def send(number: int) -> None:
            nonlocal changed, skipped
            offset = (number - 1) * part_size
            length = min(part_size, sig.size - offset)
            try:
                if hashes is not None:
                    hashed = await hashes.get(number)
                    etags[number] = await self._stream_part(f, key, upload_id, number, offset, length, hashed)
                else:
                    etags[number] = await self._buffered_part(f, key, upload_id, number, offset, length)
            except PartChanged:
                changed = True
            except FileSkipped as exc:  # raised out of the TaskGroup below, not wrapped in a group
                skipped, changed = exc, True

        try:
            held = STREAM_HOLD if hashes is not None else 2 * part_size
            concurrency = max(2, min(MAX_PART_LANES, self.budget.limit // held))
            numbers = iter(range(1, count + 1))

            async def lane() -> None:
                for number in numbers:
                    if changed:
                        return
                    await send(number)

            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, count)):
                    group.create_task(lane())
            if changed or not self._held(f):
                await self._abort(key, upload_id)
                if skipped is not None:
                    raise skipped
                return None, count
            parts: list[CompletedPartTypeDef] = [
                {"PartNumber": n, "ETag": etags[n]} for n in range(1, count + 1)
            ]
            response = await self.retrier.call(
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.settings.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
                key=key,
                size=sig.size,  # servers assemble the parts before they answer: scaled like a PUT
            )
        except asyncio.CancelledError:  # a stop, past stop_timeout: the abort must not hold it up for long
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._abort(key, upload_id), ABORT_ON_STOP)
            raise
        except BaseException:
            await asyncio.shield(self._abort(key, upload_id))
            raise
        self.state.remove_multipart(upload_id)
        return response, count

    async def _stream_part(
        self,
        f: OpenFile,
        key: str,
        upload_id: str,
        number: int,
        offset: int,
        length: int,
        hashed: tuple[bytes, str | None],
    ) -> str:
        """Send a part hashed already by re-reading it from disk: it is never held whole."""
        md5_digest, sha256 = hashed
        async with self.budget.hold(STREAM_HOLD):
            await self.rate.consume(length)
            response = await self._send_streamed(
                f,
                offset,
                length,
                lambda chunks: checked(
                    self.sender.streamed.upload_part(
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunks,
                        ContentLength=length,
                        ContentMD5=b64(md5_digest),
                        PayloadSHA256=sha256,
                    ),
                    md5_digest.hex(),
                    "UploadPart",
                ),
            )
        return str(response["ETag"])

    async def _put_streamed(
        self, f: OpenFile, md5: str, sha256: str | None, meta: dict[str, str], ctype: str, lock: Locked
    ) -> Mapping[str, Any] | None:
        """A file below multipart_threshold, hashed already, streamed from disk; None if it changed."""
        content_md5 = b64(bytes.fromhex(md5))
        async with self.budget.hold(STREAM_HOLD):
            await self.rate.consume(f.sig.size)
            try:
                return await self._send_streamed(
                    f,
                    0,
                    f.sig.size,
                    lambda chunks: checked(
                        self.sender.streamed.put_object_streamed(
                            Key=f.key,
                            Body=chunks,
                            ContentLength=f.sig.size,
                            ContentMD5=content_md5,
                            PayloadSHA256=sha256,
                            ContentType=ctype,
                            Metadata=meta,
                            **lock.args(),
                        ),
                        md5,
                    ),
                )
            except PartChanged:
                return None

    async def _send_streamed(
        self,
        f: OpenFile,
        offset: int,
        length: int,
        send: Callable[[Any], Awaitable[Mapping[str, Any]]],
    ) -> Mapping[str, Any]:
        """send(chunks) with retries, each attempt reading the bytes from disk again.

        PartChanged when the file moved on since it was hashed, FileSkipped when the disk fails.
        """

        async def attempt() -> Mapping[str, Any]:
            if not self._held(f):
                raise PartChanged("the file changed")
            body = PartBody(f.fd, offset, length)
            try:
                return await send(body.chunks())
            except Exception as exc:
                if body.problem is not None:
                    raise body.problem from None
                # Bytes that no longer match the hashes taken before: the file moved on, even where
                # fstat cannot tell (a write within one timestamp tick, a write through a mapping).
                # Sending them again would fail the same way: upload the file afresh instead.
                if error_code(exc) in DIGEST_MISMATCH or not self._held(f):
                    raise PartChanged("the file changed") from None
                raise

        return await self.retrier.call(attempt, key=f.key, size=length)

    async def _buffered_part(
        self, f: OpenFile, key: str, upload_id: str, number: int, offset: int, length: int
    ) -> str:
        """Without the fast path: read and hash the part in a thread, send it from memory."""
        # The HTTP layer copies a part's bytes once more while sending it: count both copies.
        async with self.budget.hold(2 * length):
            data, md5_digest = await asyncio.to_thread(read_hashed, f.fd, length, offset)
            if len(data) != length:
                raise PartChanged("the file ended early")
            await self.rate.consume(length)
            digest = b64(md5_digest)
            response = await self.retrier.call(
                lambda: checked(
                    self.client.upload_part(
                        Bucket=self.settings.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                        ContentMD5=digest,
                    ),
                    md5_digest.hex(),
                    "UploadPart",
                ),
                key=key,
                size=length,
            )
        return str(response["ETag"])

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self.client.abort_multipart_upload(Bucket=self.settings.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if error_code(exc) not in ("NoSuchUpload",):
                return  # stays recorded in the state; the next start aborts it
        self.state.remove_multipart(upload_id)
