"""Small PUTs and streamed parts signed and sent by syncd itself, on public library APIs only.

The plain client spends over a millisecond of CPU per small PUT, most of it on work that is the same for every
PUT to one bucket (endpoint rules, request preparation, event hooks). FastPut does that work once and per PUT
only signs and sends (figures: bench/README.md). It is built from syncd's own config (endpoint_url, region,
path addressing, bucket) and public APIs: the session's credentials (refreshable ones renew themselves in
get_frozen_credentials), its own connections sized to the workers (small PUTs on wire.py's HTTP/1.1 pool,
streamed bodies on an aiohttp session, which waits for "100 Continue"), its own SigV4 signer (tests check
it against botocore's S3SigV4Auth), responses raised as botocore's ClientError and transport exceptions, so
syncd's one retry policy sorts them as it sorts the client's.

Decided by behaviour, not by library versions: `FastPut.create` sends one signed probe (an UploadPart to an
upload that does not exist, so nothing is stored) and says why not when the server does not take it. Later,
a SignatureDoesNotMatch that the plain client does not get turns the fast path off for good with a warning,
and the request goes out again through the client: it is never taken for wrong credentials.
SYNCD_FASTPATH=0 turns it off.

Integrity: Content-MD5 on every PUT, so the server refuses damaged bytes (BadDigest). Over http the payload
SHA-256 is signed as well; over https the payload is UNSIGNED-PAYLOAD with Content-MD5, as botocore does for
S3 uploads on TLS. Redirects are never followed (a 3xx is an error naming its Location), every request has a
deadline scaled to its size (client.request_deadline) and response bodies are read up to a cap.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterable, Callable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp
import botocore.exceptions
from yarl import URL

from syncd.config import S3Settings
from syncd.log import get_logger
from syncd.s3.client import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    FastPathOff,
    FrozenCredentials,
    SessionCredentials,
    describe,
    error_code,
    redirect_error,
    request_deadline,
    response_error,
)
from syncd.s3.transport import botocore_errors, read_capped, trusted
from syncd.s3.wire import Wire

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = get_logger()
ENV_SWITCH = "SYNCD_FASTPATH"
# Below this size waiting for "100 Continue" costs a round trip and a loop wake-up for nothing: a rejected
# small body is cheap to have sent. At and above it we ask first, as botocore does for every PUT.
EXPECT_CONTINUE_MIN = 1024 * 1024
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
PROBE_UPLOAD_ID = "syncd-fast-path-probe"
PROBE_NAME = ".syncd fast-path probe~"  # a space and a tilde: the key's quoting is signed as sent
# Answers to the probe that prove the server checked our signature and took it: the upload does not exist.
PROBE_ACCEPTED = frozenset({"NoSuchUpload", "InvalidArgument", "InvalidRequest", "InvalidPart"})
# botocore's rule for bucket names it sends as they are (anything else it refuses before sending).
_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}").fullmatch
# Metadata names our signer takes: RFC 9110 tokens, as syncd's own names are. A PUT with other names (or a
# non-ASCII content type) goes to the plain client, which has its own rules for them.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch
# The seconds the signature's X-Amz-Date is taken from (tests freeze it, as they freeze botocore's clock).
_clock: Callable[[], float] = time.time


def why_not(settings: S3Settings, bucket: str) -> str | None:
    """Why the fast path cannot serve this config (None: it can, if the probe agrees)."""
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    if switch in ("0", "off", "false", "no"):
        return f"{ENV_SWITCH}={switch}"
    endpoint = settings.endpoint_url
    if not endpoint:
        return "no endpoint_url: AWS endpoints (regions, FIPS, dualstack) are left to the client's rules"
    parts = urlsplit(endpoint)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        return f"endpoint_url {endpoint!r} is not a bare http(s)://host[:port]"
    if settings.checksum != "when_required":
        return f"checksum: {settings.checksum} (the client adds CRC32 checksums to PUTs)"
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
        return f"a proxy is set for {parts.scheme} (the client goes through it)"
    if not _BUCKET(bucket):
        return f"bucket name {bucket!r} is not one the client sends as it is"
    return None


def host_of(url: str) -> str:
    """The Host header aiohttp sends for url, which SigV4 signs: no default port, IPv6 in brackets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def quote_key(key: str) -> str:
    """The key as it goes into the URL path and the canonical request (botocore's quoting for S3)."""
    return quote(key.encode(), safe="/~")


def _lock_headers(mode: str | None, until: dt.datetime | None) -> dict[str, str]:
    """Object Lock headers as botocore serializes ObjectLockMode and ObjectLockRetainUntilDate."""
    headers: dict[str, str] = {}
    if mode is not None:
        headers["x-amz-object-lock-mode"] = mode
    if until is not None:
        until = until.astimezone(dt.UTC) if until.tzinfo is not None else until
        pattern = "%Y-%m-%dT%H:%M:%S.%fZ" if until.microsecond else "%Y-%m-%dT%H:%M:%SZ"
        headers["x-amz-object-lock-retain-until-date"] = until.strftime(pattern)
    return headers


def _trim(value: str) -> str:
    """SigV4's Trimall: outer whitespace off, inner runs of it one space."""
    return " ".join(value.split())


class SigV4:
    """SigV4 for S3 requests to one bucket: what is the same for each (host, path prefix, scope) is worked
    out once, and the signing key once per (credentials, UTC day). Callers build the canonical header lines.
    """

    def __init__(self, base_url: str, region: str) -> None:
        self.host = host_of(base_url)
        self._path = urlsplit(base_url).path  # S3 paths are signed as sent, not normalised
        self._region = region
        self._scope_tail = f"/{region}/s3/aws4_request"
        self._key_for: tuple[str, str, str] | None = None
        self._key = b""
        self._second = -1
        self._stamp = ""

    def timestamp(self) -> str:
        """X-Amz-Date for now, formatted once per second."""
        second = int(_clock())
        if second != self._second:
            self._stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            self._second = second
        return self._stamp

    def signing_key(self, access_key: str, secret_key: str, date: str) -> bytes:
        """The derived key for this day's scope; four HMACs, so kept until the day or the keys change."""
        if self._key_for != (access_key, secret_key, date):
            key = ("AWS4" + secret_key).encode()
            for part in (date, self._region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key, self._key_for = key, (access_key, secret_key, date)
        return self._key

    def authorization(
        self,
        access_key: str,
        secret_key: str,
        stamp: str,
        quoted_key: str,
        canonical_headers: str,
        signed_headers: str,
        payload_hash: str,
        query: str = "",
        method: str = "PUT",
    ) -> str:
        """The Authorization header of a request to `quoted_key` with these sorted, trimmed header lines.

        query: the canonical query string (sorted by name, percent-encoded), as sent.
        """
        canonical = (
            f"{method}\n{self._path}{quoted_key}\n{query}\n{canonical_headers}\n\n{signed_headers}\n"
            f"{payload_hash}"
        )
        scope = stamp[:8] + self._scope_tail
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = self.signing_key(access_key, secret_key, stamp[:8])
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )


def _user_agent() -> str:
    try:
        version = metadata.version("syncd")
    except metadata.PackageNotFoundError:
        version = "0"
    python = ".".join(map(str, sys.version_info[:3]))
    return f"syncd/{version} aiohttp/{aiohttp.__version__} Python/{python}"


class FastPut:
    """client.put_object / upload_part for one bucket on a path-style endpoint_url.

    Made by `await FastPut.create(...)` (which probes the server), closed before the client. It does not
    retry: syncd retries in one place. `on` turns False when the server refuses its signatures but not the
    client's; from then on every call goes to the client.
    """

    def __init__(
        self,
        settings: S3Settings,
        bucket: str,
        region: str,
        credentials: SessionCredentials,
        client: S3Client,
        pool: int,
    ) -> None:
        endpoint = (settings.endpoint_url or "").rstrip("/")
        self.bucket = bucket
        self.on = True
        self.off_reason = ""
        self._client = client
        self._credentials = credentials
        self._pool = pool
        self._base = f"{endpoint}/{quote(bucket.encode(), safe='-_.~')}/"
        self._base_url = URL(self._base, encoded=True)
        self._sigv4 = SigV4(self._base, region)
        self._host_line = "host:" + self._sigv4.host
        # As botocore: https with Content-MD5 leaves the payload unsigned, http signs its SHA-256.
        self._sign_payload = self._base.startswith("http:")
        self._user_agent = _user_agent()
        self._request_timeout = settings.request_timeout
        self._profile = settings.profile
        self._http: aiohttp.ClientSession | None = None
        self._wire = Wire(endpoint, self._sigv4.host, pool, lambda: trusted(self._profile))
        self._closed = False

    @classmethod
    async def create(
        cls,
        client: S3Client,
        settings: S3Settings,
        bucket: str,
        credentials: SessionCredentials,
        *,
        pool: int,
        probe_key: str = "",
        probe: bool = True,
    ) -> FastPut | str:
        """A probed FastPut for `bucket`, or why the plain client stays in charge.

        client: the plain client (the fallback, and its region when the config names none); credentials:
        the session's (get_frozen_credentials()); pool: connections, one per worker; probe_key: where the
        probe pretends to upload a part (syncd's prefix, which its permissions cover); probe=False: another
        FastPut of this config probed already (the helper process's, made before the bucket may exist).
        """
        why = why_not(settings, bucket)
        if why is None and credentials is None:
            why = "no credentials (unsigned requests)"
        if why is not None:
            return why
        fast = cls(settings, bucket, settings.region or client.meta.region_name, credentials, client, pool)
        why = await fast.probe(probe_key + PROBE_NAME) if probe else None
        if why is not None:
            await fast.close()
            return why
        return fast

    async def probe(self, key: str) -> str | None:
        """None when the server takes a PUT signed here (content type, metadata, query and all); else why.

        An UploadPart to an upload that does not exist: a server checks the signature first and then
        answers NoSuchUpload; nothing is stored.
        """
        body = b"syncd fast path probe"
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        quoted = quote_key(key)
        query = f"partNumber=1&uploadId={PROBE_UPLOAD_ID}"
        try:
            credentials = await self._credentials.get_frozen_credentials()
            payload_hash = hashlib.sha256(body).hexdigest() if self._sign_payload else UNSIGNED_PAYLOAD
            headers = self._own_signed(
                quoted, query, md5, payload_hash, "text/plain", {"syncd-probe": "1"}, credentials, False
            )
            await self._send(
                f"{self._base}{quoted}?uploadId={PROBE_UPLOAD_ID}&partNumber=1", headers, body, len(body)
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in PROBE_ACCEPTED:
                return None
            return f"the server refused the fast path's signed probe: {describe(exc)}"
        except Exception as exc:
            return f"the fast path's probe failed: {describe(exc)}"
        return None

    async def close(self) -> None:
        self._closed = True
        await self._wire.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def payload_signed(self) -> bool:
        """Whether requests carry the payload's SHA-256 (http, as botocore does) or UNSIGNED-PAYLOAD."""
        return self._sign_payload

    async def put_object(
        self,
        *,
        Key: str,
        Body: bytes,
        ContentMD5: str | None = None,
        ContentType: str | None = None,
        Metadata: dict[str, str] | None = None,
        Bucket: str | None = None,
        ObjectLockMode: str | None = None,
        ObjectLockRetainUntilDate: dt.datetime | None = None,
    ) -> Mapping[str, Any]:
        """PUT one object; returns and raises what client.put_object would for these arguments."""
        self._check_bucket(Bucket)
        args: dict[str, Any] = {"Key": Key, "Body": Body}
        given = {
            "ContentMD5": ContentMD5,
            "ContentType": ContentType,
            "Metadata": Metadata,
            "ObjectLockMode": ObjectLockMode,
            "ObjectLockRetainUntilDate": ObjectLockRetainUntilDate,
        }
        args.update((name, value) for name, value in given.items() if value is not None)
        if not self.on or not self._plain(ContentType, Metadata) or not isinstance(Body, bytes | bytearray):
            return await self._client.put_object(Bucket=self.bucket, **args)
        if not isinstance(Key, str) or not Key:
            raise botocore.exceptions.ParamValidationError(report=f"Invalid Key {Key!r}: a non-empty string")
        quoted = quote_key(Key)
        # Always sent: the server checks the bytes it received against it (BadDigest), on http and https.
        md5 = ContentMD5 or base64.b64encode(hashlib.md5(Body).digest()).decode()
        # Asked per request: refreshable credentials renew themselves inside get_frozen_credentials().
        credentials = await self._credentials.get_frozen_credentials()
        payload_hash = hashlib.sha256(Body).hexdigest() if self._sign_payload else UNSIGNED_PAYLOAD
        expect = len(Body) >= EXPECT_CONTINUE_MIN
        lock = _lock_headers(ObjectLockMode, ObjectLockRetainUntilDate)
        headers = self._own_signed(
            quoted, "", md5, payload_hash, ContentType, Metadata, credentials, expect, lock
        )
        try:
            return await self._send(self._base + quoted, headers, Body, len(Body))
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "SignatureDoesNotMatch":
                raise
            # The client decides: if it gets the same PUT through, our signing is what is wrong. If it
            # does not, its error (wrong credentials, say) is the answer.
            response = await self._client.put_object(Bucket=self.bucket, **args)
            self._turn_off(exc)
            return response

    async def put_object_streamed(
        self,
        *,
        Key: str,
        Body: AsyncIterable[bytes],
        ContentLength: int,
        ContentMD5: str,
        PayloadSHA256: str | None = None,
        ContentType: str | None = None,
        Metadata: dict[str, str] | None = None,
        ObjectLockMode: str | None = None,
        ObjectLockRetainUntilDate: dt.datetime | None = None,
    ) -> Mapping[str, Any]:
        """put_object for a body streamed from disk and hashed already, as upload_part does for parts.

        Metadata names must be plain tokens, values and the content type ASCII.
        """
        if not self._plain(ContentType, Metadata):
            raise ValueError("streamed PUTs take metadata names that are tokens and ASCII values")
        args: dict[str, Any] = {"Key": Key, "ContentLength": ContentLength, "ContentMD5": ContentMD5}
        given = {
            "ContentType": ContentType,
            "Metadata": Metadata or None,
            "ObjectLockMode": ObjectLockMode,
            "ObjectLockRetainUntilDate": ObjectLockRetainUntilDate,
        }
        args.update((name, value) for name, value in given.items() if value is not None)
        if not self.on:
            return await self._client.put_object(
                Bucket=self.bucket, Body=await _joined(Body, ContentLength), **args
            )
        quoted = quote_key(Key)
        lock = _lock_headers(ObjectLockMode, ObjectLockRetainUntilDate)
        headers = await self._streamed_headers(
            quoted, "", ContentLength, ContentMD5, PayloadSHA256, ContentType, Metadata, lock
        )
        return await self._send_or_off(self._base + quoted, headers, Body, ContentLength)

    async def upload_part(
        self,
        *,
        Key: str,
        UploadId: str,
        PartNumber: int,
        Body: AsyncIterable[bytes],
        ContentLength: int,
        ContentMD5: str,
        PayloadSHA256: str | None = None,
        Bucket: str | None = None,
    ) -> Mapping[str, Any]:
        """client.upload_part for a part streamed from Body: exactly ContentLength bytes, hashed already.

        The caller hashes a part first (MD5, and SHA-256 when payload_signed) and then streams it again
        from disk, so a part is never held in memory whole; bytes that changed in between are refused by
        the server (BadDigest, XAmzContentSHA256Mismatch). Returns and raises what the client would.
        """
        self._check_bucket(Bucket)
        if not self.on:
            return await self._client.upload_part(
                Bucket=self.bucket,
                Key=Key,
                UploadId=UploadId,
                PartNumber=PartNumber,
                Body=await _joined(Body, ContentLength),
                ContentLength=ContentLength,
                ContentMD5=ContentMD5,
            )
        url, headers = await self._part_signed(
            Key, UploadId, PartNumber, ContentLength, ContentMD5, PayloadSHA256
        )
        return await self._send_or_off(url, headers, Body, ContentLength)

    async def _part_signed(
        self, key: str, upload_id: str, number: int, length: int, md5: str, sha256: str | None
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of an UploadPart, as botocore sends them (Content-Length given: streamed)."""
        quoted = quote_key(key)
        upload_id = quote(upload_id, safe="-_.~")
        query = f"partNumber={number}&uploadId={upload_id}"  # canonical: sorted by name
        headers = await self._streamed_headers(quoted, query, length, md5, sha256, None, None)
        return f"{self._base}{quoted}?uploadId={upload_id}&partNumber={number}", headers

    async def _streamed_headers(
        self,
        quoted: str,
        query: str,
        length: int,
        md5: str,
        sha256: str | None,
        content_type: str | None,
        metadata: dict[str, str] | None,
        lock: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Signed headers for a body hashed by the caller and streamed: Content-Length is given."""
        credentials = await self._credentials.get_frozen_credentials()
        if not self._sign_payload:
            payload_hash = UNSIGNED_PAYLOAD
        elif sha256:
            payload_hash = sha256
        else:
            raise ValueError("PayloadSHA256 is required: this endpoint signs the payload (http)")
        expect = length >= EXPECT_CONTINUE_MIN
        headers = self._own_signed(
            quoted, query, md5, payload_hash, content_type, metadata, credentials, expect, lock
        )
        headers["Content-Length"] = str(length)
        return headers

    def _own_signed(
        self,
        quoted: str,
        query: str,
        md5: str,
        payload_hash: str,
        content_type: str | None,
        metadata: dict[str, str] | None,
        credentials: FrozenCredentials,
        expect: bool,
        lock: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The headers of a PUT: Content-MD5, Content-Type, metadata, Object Lock, the token and SigV4's.

        query: the canonical query string (sorted, percent-encoded), as sent; lock: _lock_headers().
        """
        stamp = self._sigv4.timestamp()
        token = credentials.token
        lines = ["content-md5:" + _trim(md5)]
        signed = "content-md5;"
        headers = {"Content-MD5": md5}
        if content_type is not None:
            headers["Content-Type"] = content_type
            lines.append("content-type:" + _trim(content_type))
            signed += "content-type;"
        lines += (self._host_line, "x-amz-content-sha256:" + payload_hash, "x-amz-date:" + stamp)
        signed += "host;x-amz-content-sha256;x-amz-date"
        if metadata:
            named = sorted(("x-amz-meta-" + name.lower(), value) for name, value in metadata.items())
            lines += [f"{name}:{_trim(value)}" for name, value in named]
            signed += "".join(";" + name for name, _ in named)
            for name, value in metadata.items():
                headers["x-amz-meta-" + name] = value
        if lock:  # x-amz-object-lock-* sorts after x-amz-meta-* and before x-amz-security-token
            for name, value in sorted(lock.items()):
                lines.append(f"{name}:{_trim(value)}")
                signed += ";" + name
                headers[name] = value
        if token:
            lines.append("x-amz-security-token:" + _trim(token))
            signed += ";x-amz-security-token"
        headers["User-Agent"] = self._user_agent
        if expect:
            headers["Expect"] = "100-continue"
        headers["X-Amz-Date"] = stamp
        if token:
            headers["X-Amz-Security-Token"] = token
        headers["X-Amz-Content-SHA256"] = payload_hash
        headers["Authorization"] = self._sigv4.authorization(
            credentials.access_key,
            credentials.secret_key,
            stamp,
            quoted,
            "\n".join(lines),
            signed,
            payload_hash,
            query,
        )
        headers["Accept-Encoding"] = "identity"  # unsigned: bodies come back as the server wrote them
        return headers

    @staticmethod
    def _plain(content_type: str | None, metadata: dict[str, str] | None) -> bool:
        """Whether our signer covers these headers: ASCII, metadata names tokens distinct without case."""
        if content_type is not None and not (isinstance(content_type, str) and content_type.isascii()):
            return False
        if not metadata:
            return True
        names = {name.lower() for name in metadata if isinstance(name, str) and _TOKEN(name)}
        values = all(isinstance(value, str) and value.isascii() for value in metadata.values())
        return values and len(names) == len(metadata)

    def _check_bucket(self, bucket: str | None) -> None:
        if bucket is not None and bucket != self.bucket:
            raise ValueError(f"this FastPut is for bucket {self.bucket!r}, not {bucket!r}")

    def _turn_off(self, exc: BaseException) -> None:
        if self.on:
            self.on = False
            self.off_reason = f"the server refuses its signatures but not the client's: {describe(exc)}"
            log.warning("fastpath_off", reason=self.off_reason, hint="uploads go on through the plain client")

    async def _send_or_off(
        self, url: str, headers: dict[str, str], body: AsyncIterable[bytes], size: int
    ) -> dict[str, Any]:
        """_send for a streamed body; a SignatureDoesNotMatch the client does not get turns us off."""
        try:
            return await self._send(url, headers, body, size)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "SignatureDoesNotMatch":
                raise
            # The body is spent: ask the client something signed of its own. Wrong credentials fail
            # there too (and that error is the answer); else the caller sends again through the client.
            await self._client.head_bucket(Bucket=self.bucket)
            self._turn_off(exc)
            raise FastPathOff(self.off_reason) from exc

    def _session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("FastPut is closed")
        if self._http is None:
            # The plain client's trust (AWS_CA_BUNDLE, the profile's ca_bundle, certifi), built for TLS only.
            context = trusted(self._profile) if self._base.startswith("https:") else True
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool, ssl=context),
                timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._http

    async def _send(
        self, url: str, headers: dict[str, str], body: bytes | AsyncIterable[bytes], size: int
    ) -> dict[str, Any]:
        """PUT; transport failures become the botocore exceptions the client raises.

        A body in memory that does not wait for "100 Continue" goes through wire.py (small PUTs: most of
        aiohttp's CPU per request is machinery they do not need); streamed ones through aiohttp.
        """
        # The whole request, body and answer, has one deadline: a server dripping bytes never trips the
        # socket read timeout, and a stuck request must become a retry, not a hung worker.
        timeout = request_deadline(size, self._request_timeout)
        if isinstance(body, bytes | bytearray) and "Expect" not in headers:
            answer = await self._wire.request("PUT", url, headers, body, timeout)
            status, raw, payload = answer.status, answer.headers, answer.body
        else:
            status, raw, payload = await self._send_streamed(url, headers, body, timeout)
        operation = "UploadPart" if "?" in url else "PutObject"
        if 300 <= status < 400:
            raise redirect_error(status, raw, payload, operation)
        if status >= 300 or status < 200:
            raise response_error(status, raw, payload, operation)
        return _parsed_ok(status, raw)

    async def _send_streamed(
        self, url: str, headers: dict[str, str], body: bytes | AsyncIterable[bytes], timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        """PUT through aiohttp (which waits for "100 Continue" when asked): status, headers, capped body."""
        session = self._session()
        deadline = aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        with botocore_errors(url):
            async with session.put(
                self._target(url), headers=headers, data=body, allow_redirects=False, timeout=deadline
            ) as response:
                status = response.status
                raw = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.raw_headers}
                payload = await read_capped(response.content)
        return status, raw, payload

    def _target(self, url: str) -> URL:
        """URL(url, encoded=True) for a URL under this bucket, without parsing all of it again."""
        if "?" in url:  # a part: one per several MiB, parsed in full
            return URL(url, encoded=True)
        return self._base_url.with_path(self._base_url.raw_path + url[len(self._base) :], encoded=True)


# Response headers of PutObject/UploadPart and the members the client returns them as (text ones).
_MEMBERS = {
    "etag": "ETag",
    "x-amz-version-id": "VersionId",
    "x-amz-expiration": "Expiration",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
    "x-amz-server-side-encryption-customer-algorithm": "SSECustomerAlgorithm",
    "x-amz-server-side-encryption-customer-key-md5": "SSECustomerKeyMD5",
    "x-amz-server-side-encryption-context": "SSEKMSEncryptionContext",
    "x-amz-request-charged": "RequestCharged",
    "x-amz-checksum-crc32": "ChecksumCRC32",
    "x-amz-checksum-crc32c": "ChecksumCRC32C",
    "x-amz-checksum-sha1": "ChecksumSHA1",
    "x-amz-checksum-sha256": "ChecksumSHA256",
}


def _parsed_ok(status: int, headers: dict[str, str]) -> dict[str, Any]:
    """What client.put_object returns: the header members and ResponseMetadata."""
    meta: dict[str, Any] = {}
    if "x-amz-request-id" in headers:
        meta["RequestId"] = headers["x-amz-request-id"]
        meta["HostId"] = headers.get("x-amz-id-2", "")
    meta.update(HTTPStatusCode=status, HTTPHeaders=headers, RetryAttempts=0)
    parsed: dict[str, Any] = {"ResponseMetadata": meta}
    for header, name in _MEMBERS.items():
        if header in headers:
            parsed[name] = headers[header]
    if "x-amz-server-side-encryption-bucket-key-enabled" in headers:
        parsed["BucketKeyEnabled"] = headers["x-amz-server-side-encryption-bucket-key-enabled"] == "true"
    return parsed


async def _joined(body: AsyncIterable[bytes], length: int) -> bytes:
    """A streamed body in memory, for the client once the fast path is off (the parts in flight then)."""
    data = b"".join([chunk async for chunk in body])
    if len(data) != length:
        raise ValueError(f"the body has {len(data)} bytes, not {length}")
    return data
