"""A cheaper put_object for small files: the client's connection pool, without its pipeline.

Stock aiobotocore spends 1.2-1.6 ms of CPU per small PUT, most of it on work that is the same for every PUT
to one bucket: the endpoint ruleset (re-run for every new key), the user-agent string, event hooks, request
preparation and its HTTP wrapper. FastPut does that work once per bucket; per PUT it only signs and sends on
the client's own aiohttp session: about 0.27 ms for 16 KiB (bench/put_cpu.py), most of it in aiohttp.

Signing: botocore's S3SigV4Auth takes ~80 us per PUT (re-parsing the URL, email.message header maps,
deriving the signing key). FastPut signs the fixed header set it sends with plain string operations and a
signing key cached per (credentials, UTC day): ~20 us for 16 KiB over http, half of it the payload SHA-256.
tests/test_fastpath.py checks the URL and every header against S3SigV4Auth and the client's own request.
Headers outside that set (metadata names that are not plain tokens, non-ASCII content types) are signed by
S3SigV4Auth itself; SYNCD_FASTPATH_SIGNER=botocore, read when a FastPut is created, signs every PUT that way.

Parts: upload_part sends a part the caller hashed already (Content-MD5, and the payload SHA-256 on http)
and streams from an async iterable, so a part is re-read from disk as it goes out instead of being held;
bytes that changed in between are refused by the server (BadDigest).

It reaches into library internals, so it only runs against the versions it was checked with
(TESTED_VERSIONS); `create()` returns None otherwise and the caller keeps using client.put_object.
SYNCD_FASTPATH=0 turns it off, SYNCD_FASTPATH=force skips the version check.

Integrity: Content-MD5 is sent on every PUT (computed here when the caller gives none), so the server rejects
damaged bytes with BadDigest. Over http the payload SHA-256 is signed as well, as botocore does; over https
the payload is UNSIGNED-PAYLOAD with Content-MD5, as botocore does for streaming S3 uploads on TLS.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import socket
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import botocore.auth
import botocore.exceptions
import botocore.handlers
import botocore.parsers
from aiobotocore.httpsession import AIOHTTPSession
from botocore.compat import HTTPHeaders
from botocore.httpsession import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from botocore.regions import EndpointResolverBuiltins as Builtins
from yarl import URL

TESTED_VERSIONS = {"botocore": "1.40.61", "aiobotocore": "2.25.1", "aiohttp": "3.14.5"}
ENV_SWITCH = "SYNCD_FASTPATH"
SIGNER_SWITCH = "SYNCD_FASTPATH_SIGNER"  # "botocore": sign every PUT with S3SigV4Auth (for debugging)
# Below this size waiting for "100 Continue" costs a round trip and a loop wake-up for nothing: a rejected
# small body is cheap to have sent. At and above it we ask first, as botocore does for every PUT.
EXPECT_CONTINUE_MIN = 1024 * 1024


def installed_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in TESTED_VERSIONS}


def why_not(client: Any, bucket: str) -> str | None:
    """Why FastPut cannot stand in for this client's put_object on this bucket (None: it can)."""
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    if switch in ("0", "off", "false", "no"):
        return f"{ENV_SWITCH}={switch}"
    if switch != "force" and (found := installed_versions()) != TESTED_VERSIONS:
        return f"library versions {found} differ from the tested {TESTED_VERSIONS}"
    try:
        return _config_problem(client, bucket)
    except AttributeError as exc:  # a client shaped differently from the one this was written against
        return f"unexpected client internals: {exc}"


def _config_problem(client: Any, bucket: str) -> str | None:
    meta = client.meta
    config = meta.config
    signer = client._request_signer
    builtins = client._ruleset_resolver._builtins
    endpoint = builtins.get(Builtins.SDK_ENDPOINT)
    if meta.service_model.service_name != "s3":
        return "not an S3 client"
    if not isinstance(client._endpoint.http_session, AIOHTTPSession):
        return "the client does not use aiohttp"
    if not endpoint:
        return "no endpoint_url (AWS endpoints: virtual hosts, region redirects, S3 Express)"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query:
        return f"endpoint_url {endpoint!r} is not a bare http(s)://host[:port]"
    if not builtins.get(Builtins.AWS_S3_FORCE_PATH_STYLE):
        return "addressing_style is not 'path'"
    if builtins.get(Builtins.AWS_S3_ACCELERATE) or builtins.get(Builtins.AWS_USE_FIPS):
        return "accelerate or FIPS endpoints"
    if builtins.get(Builtins.AWS_USE_DUALSTACK):
        return "dualstack endpoints"
    if signer._signature_version != "s3v4" or signer._signing_name != "s3":
        return f"signature version {signer._signature_version!r} is not s3v4"
    if not signer._region_name or signer._region_name != builtins.get(Builtins.AWS_REGION):
        return "the signing region is not the client's region"
    if signer._credentials is None:
        return "no credentials (unsigned requests)"
    if config.request_checksum_calculation != "when_required":
        return "request_checksum_calculation is not 'when_required' (the client would add CRC32 headers)"
    if client._endpoint.http_session._proxy_config.proxy_url_for(endpoint):
        return "a proxy is configured for the endpoint"
    try:
        botocore.handlers.validate_bucket_name({"Bucket": bucket})
    except botocore.exceptions.ParamValidationError as exc:
        return str(exc)
    return None


@dataclass(slots=True)
class _SigningRequest:
    """The parts of botocore's AWSRequest that S3SigV4Auth reads, without its per-read prepare() step.

    AWSRequest.body re-prepares the whole request on every read (twice per signature); the signer only
    needs the bytes. The equivalence test checks the Authorization header against the client's own.
    """

    url: str
    headers: HTTPHeaders
    body: bytes
    context: dict[str, Any]
    method: str = "PUT"
    params: dict[str, str] = field(default_factory=dict)


# The seconds the signature's X-Amz-Date is taken from (tests freeze it, as they freeze botocore's clock).
_clock: Callable[[], float] = time.time
# Metadata names our signer takes: RFC 9110 tokens. botocore signs anything else as it comes (a name with
# spaces or a colon keeps them in the canonical headers), so those PUTs are signed by S3SigV4Auth itself.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch


def _quote_key(key: str) -> str:
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
    """SigV4's Trimall, exactly as SigV4Auth._header_value does it."""
    return " ".join(value.split())


class _SigV4:
    """S3SigV4Auth's Authorization header for FastPut's PUTs, without its per-request parsing.

    Everything that is the same for every PUT to one bucket (host, path prefix, scope) is worked out here
    once; the signing key is derived once per (credentials, UTC day). The caller builds the canonical header
    lines of the fixed header set it sends.
    """

    def __init__(self, base_url: str, region: str) -> None:
        self.host = botocore.auth._host_from_url(base_url)  # botocore's own rules: default ports, IPv6
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

    def _signing_key(self, access_key: str, secret_key: str, date: str) -> bytes:
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
    ) -> str:
        """The Authorization header of a PUT to `quoted_key` with these sorted, trimmed header lines.

        query: the canonical query string (sorted, percent-encoded), as sent.
        """
        canonical = (
            f"PUT\n{self._path}{quoted_key}\n{query}\n{canonical_headers}\n\n{signed_headers}\n{payload_hash}"
        )
        scope = stamp[:8] + self._scope_tail
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = self._signing_key(access_key, secret_key, stamp[:8])
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )


class FastPut:
    """A drop-in for client.put_object(...) for one bucket on a path-style endpoint_url.

    Create one per bucket after the client is open (`FastPut.create(client, bucket)`, None means use
    client.put_object), close it before the client. It shares the client's credentials (refreshed per
    request), signer settings and aiohttp connection pool, so it adds no sockets of its own. It does not
    retry: syncd retries in one place.
    """

    def __init__(self, client: Any, bucket: str) -> None:
        signer = client._request_signer
        endpoint = client._ruleset_resolver._builtins[Builtins.SDK_ENDPOINT].rstrip("/")
        self.bucket = bucket
        self._client = client
        self._signer = signer
        self._region = signer._region_name
        self._http: AIOHTTPSession = client._endpoint.http_session
        self._session: aiohttp.ClientSession | None = None
        self._base = f"{endpoint}/{quote(bucket.encode(), safe='-_.~')}/"
        self._user_agent = client._user_agent_creator.to_string()
        # What S3SigV4Auth reads to choose a signed or UNSIGNED-PAYLOAD body, as the client's request has.
        self._context = {"client_config": client.meta.config, "has_streaming_input": True}
        self._base_url = URL(self._base, encoded=True)
        self._sigv4 = _SigV4(self._base, self._region)
        self._host_line = "host:" + self._sigv4.host
        self._own_signer = os.environ.get(SIGNER_SWITCH, "").strip().lower() != "botocore"
        # S3SigV4Auth's own choice for a PUT with Content-MD5 to this URL and config: it depends on neither
        # the key nor the body.
        probe = HTTPHeaders()
        probe["Content-MD5"] = "probe"
        probe_request = _SigningRequest(self._base + "probe", probe, b"", dict(self._context))
        reference = botocore.auth.S3SigV4Auth(None, "s3", self._region)
        self._sign_payload: bool = reference._should_sha256_sign_payload(probe_request)
        model = client.meta.service_model
        # Per operation: its output shape (for botocore's error parser) and its response header members.
        self._outputs: dict[str, tuple[Any, dict[str, tuple[str, str]]]] = {}
        for name in ("PutObject", "UploadPart"):
            shape = model.operation_model(name).output_shape
            members = {
                member.serialization.get("name", member_name).lower(): (member_name, member.type_name)
                for member_name, member in shape.members.items()
                if member.serialization.get("location") == "header"
            }
            self._outputs[name] = (shape, members)
        # With one attempt per request (client.boto_config) the client's standard retry handler marks every
        # parsed response, success or error, as MaxAttemptsReached.
        retries = client.meta.config.retries or {}
        one_attempt = (
            retries.get("mode") in ("standard", "adaptive") and retries.get("total_max_attempts") == 1
        )
        self._retry_metadata: dict[str, Any] = {"MaxAttemptsReached": True} if one_attempt else {}
        self._closed = False

    @classmethod
    def create(cls, client: Any, bucket: str) -> FastPut | None:
        """A FastPut for `bucket`, or None when this client or these library versions are not supported."""
        if why_not(client, bucket) is not None:
            return None
        return cls(client, bucket)

    async def close(self) -> None:
        """Stop using the client's pool; the pool itself closes with the client."""
        self._closed = True
        self._session = None

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
    ) -> dict[str, Any]:
        """PUT one object; returns and raises what client.put_object would for these arguments."""
        if Bucket is not None and Bucket != self.bucket:
            raise ValueError(f"this FastPut is for bucket {self.bucket!r}, not {Bucket!r}")
        if Metadata and len({name.lower() for name in Metadata}) != len(Metadata):
            # Names equal but for case: the client signs every value but sends only the last one (its
            # request fails); FastPut would send them all. Whatever the client does, do that.
            args: dict[str, Any] = {
                "ContentMD5": ContentMD5,
                "ContentType": ContentType,
                "ObjectLockMode": ObjectLockMode,
                "ObjectLockRetainUntilDate": ObjectLockRetainUntilDate,
            }
            args = {name: value for name, value in args.items() if value is not None}
            return await self._client.put_object(  # type: ignore[no-any-return]
                Bucket=self.bucket, Key=Key, Body=Body, Metadata=Metadata, **args
            )
        lock = _lock_headers(ObjectLockMode, ObjectLockRetainUntilDate)
        url, headers = await self._signed(Key, Body, ContentMD5, ContentType, Metadata, lock)
        return await self._send(url, headers, Body, "PutObject")

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
    ) -> dict[str, Any]:
        """put_object for a body streamed from disk and hashed already, as upload_part does for parts.

        Always signed by FastPut's own signer (botocore's needs the bytes): metadata names must be plain
        tokens, values and the content type ASCII.
        """
        if Metadata:
            botocore.handlers.validate_ascii_metadata({"Metadata": Metadata})
            if not self._plain_metadata(Metadata):
                raise ValueError("streamed PUTs take metadata names that are tokens, distinct without case")
        if ContentType is not None and not ContentType.isascii():
            raise ValueError("streamed PUTs take an ASCII content type")
        quoted = _quote_key(Key)
        lock = _lock_headers(ObjectLockMode, ObjectLockRetainUntilDate)
        headers = await self._streamed_headers(
            quoted, "", ContentLength, ContentMD5, PayloadSHA256, ContentType, Metadata, lock
        )
        return await self._send(self._base + quoted, headers, Body, "PutObject")

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
        credentials = await self._signer._credentials.get_frozen_credentials()
        expect = length >= EXPECT_CONTINUE_MIN
        payload_hash = self._payload_hash(sha256)
        headers = self._own_signed(
            quoted, query, md5, payload_hash, content_type, metadata, credentials, expect, lock
        )
        headers["Content-Length"] = str(length)
        return headers

    def _payload_hash(self, sha256: str | None) -> str:
        """What X-Amz-Content-SHA256 says for a body hashed by the caller."""
        if not self._sign_payload:
            return str(botocore.auth.UNSIGNED_PAYLOAD)
        if not sha256:
            raise ValueError("PayloadSHA256 is required: this endpoint signs the payload (http)")
        return sha256

    @property
    def payload_signed(self) -> bool:
        """Whether requests carry the payload's SHA-256 (http, as botocore does) or UNSIGNED-PAYLOAD."""
        return self._sign_payload

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
    ) -> dict[str, Any]:
        """client.upload_part for a part streamed from Body: exactly ContentLength bytes, hashed already.

        The caller hashes a part first (MD5, and SHA-256 when payload_signed) and then streams it again
        from disk, so a part is never held in memory whole; bytes that changed in between are refused by
        the server (BadDigest, XAmzContentSHA256Mismatch). Returns and raises what the client would.
        """
        if Bucket is not None and Bucket != self.bucket:
            raise ValueError(f"this FastPut is for bucket {self.bucket!r}, not {Bucket!r}")
        url, headers = await self._part_signed(
            Key, UploadId, PartNumber, ContentLength, ContentMD5, PayloadSHA256
        )
        return await self._send(url, headers, Body, "UploadPart")

    async def _part_signed(
        self, key: str, upload_id: str, number: int, length: int, md5: str, sha256: str | None
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of an UploadPart, as botocore sends them (Content-Length given: streamed)."""
        quoted = _quote_key(key)
        upload_id = quote(upload_id, safe="-_.~")
        query = f"partNumber={number}&uploadId={upload_id}"  # canonical: sorted by name
        headers = await self._streamed_headers(quoted, query, length, md5, sha256, None, None)
        return f"{self._base}{quoted}?uploadId={upload_id}&partNumber={number}", headers

    async def _signed(
        self,
        key: str,
        body: bytes,
        content_md5: str | None,
        content_type: str | None,
        metadata: dict[str, str] | None,
        lock: dict[str, str] | None = None,
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of the PUT, in botocore's order, signed as S3SigV4Auth signs them.

        lock: the Object Lock headers (_lock_headers), signed like every x-amz- header."""
        if not isinstance(key, str) or not key:
            raise botocore.exceptions.ParamValidationError(report=f"Invalid Key {key!r}: a non-empty string")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise botocore.exceptions.ParamValidationError(report=f"Invalid Body type {type(body).__name__}")
        own = self._own_signer
        if metadata:
            botocore.handlers.validate_ascii_metadata({"Metadata": metadata})
            own = own and self._plain_metadata(metadata)
        quoted = _quote_key(key)
        # Always sent: the server checks the bytes it received against it (BadDigest), on http and https.
        md5 = content_md5 or base64.b64encode(hashlib.md5(body).digest()).decode()
        own = own and md5.isascii() and (content_type is None or content_type.isascii())
        # Asked per request: refreshable credentials renew themselves inside get_frozen_credentials().
        credentials = await self._signer._credentials.get_frozen_credentials()
        if not own:
            return self._botocore_signed(quoted, body, md5, content_type, metadata, credentials, lock)
        payload_hash = (
            hashlib.sha256(body).hexdigest() if self._sign_payload else botocore.auth.UNSIGNED_PAYLOAD
        )
        expect = len(body) >= EXPECT_CONTINUE_MIN
        headers = self._own_signed(
            quoted, "", md5, payload_hash, content_type, metadata, credentials, expect, lock
        )
        return self._base + quoted, headers

    def _own_signed(
        self,
        quoted: str,
        query: str,
        md5: str,
        payload_hash: str,
        content_type: str | None,
        metadata: dict[str, str] | None,
        credentials: Any,
        expect: bool,
        lock: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The headers of a PUT with FastPut's fixed header set, in botocore's order, signed as
        S3SigV4Auth signs them. query: the canonical query string (sorted, percent-encoded), as sent."""
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
        headers["Accept-Encoding"] = "identity"  # as aiobotocore sends it (botocore issue 1255)
        return headers

    @staticmethod
    def _plain_metadata(metadata: dict[str, str]) -> bool:
        """Whether our signer covers these metadata names: tokens, distinct without case."""
        names = {name.lower() for name in metadata if _TOKEN(name)}
        return len(names) == len(metadata)

    def _botocore_signed(
        self,
        quoted: str,
        body: bytes,
        md5: str,
        content_type: str | None,
        metadata: dict[str, str] | None,
        credentials: Any,
        lock: dict[str, str] | None = None,
    ) -> tuple[str, dict[str, str]]:
        """The same PUT signed by botocore's S3SigV4Auth: the reference, and the signer for odd headers."""
        url = self._base + quoted
        headers = HTTPHeaders()
        headers["Content-MD5"] = md5
        if content_type is not None:
            headers["Content-Type"] = content_type
        if metadata:
            for name, value in metadata.items():
                headers["x-amz-meta-" + name] = value
        for name, value in (lock or {}).items():
            headers[name] = value
        headers["User-Agent"] = self._user_agent
        if len(body) >= EXPECT_CONTINUE_MIN:
            headers["Expect"] = "100-continue"
        request = _SigningRequest(url, headers, bytes(body), dict(self._context))
        botocore.auth.S3SigV4Auth(credentials, "s3", self._region).add_auth(request)
        sent = dict(headers.items())
        sent["Accept-Encoding"] = "identity"  # as aiobotocore sends it (botocore issue 1255)
        return url, sent

    async def _send(
        self, url: str, headers: dict[str, str], body: bytes | AsyncIterable[bytes], operation: str
    ) -> dict[str, Any]:
        """Send on the client's pool; transport failures become the botocore exceptions aiobotocore raises."""
        if self._closed:
            raise RuntimeError("FastPut is closed")
        if self._session is None:
            self._session = await self._http._get_session(None)
        try:
            async with self._session.put(self._target(url), headers=headers, data=body) as response:
                payload = await response.read()
                status = response.status
                raw = {k.decode().lower(): v.decode() for k, v in response.raw_headers}
        except aiohttp.ClientSSLError as e:
            raise SSLError(endpoint_url=url, error=e) from e
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.http_exceptions.BadStatusLine,
        ) as e:
            raise ConnectionClosedError(error=e, endpoint_url=url) from e
        except aiohttp.ServerTimeoutError as e:
            if str(e).lower().startswith("connect"):
                raise ConnectTimeoutError(endpoint_url=url, error=e) from e
            raise ReadTimeoutError(endpoint_url=url, error=e) from e
        except (aiohttp.ClientConnectorError, aiohttp.ClientConnectionError, socket.gaierror) as e:
            raise EndpointConnectionError(endpoint_url=url, error=e) from e
        except TimeoutError as e:
            raise ReadTimeoutError(endpoint_url=url, error=e) from e
        except Exception as e:
            raise HTTPClientError(error=e) from e
        if status >= 300:
            raise self._client_error(status, raw, payload, operation)
        return self._parse_ok(status, raw, operation)

    def _target(self, url: str) -> URL:
        """URL(url, encoded=True) for a URL under this bucket, without parsing all of it again."""
        if "?" in url:  # a part: one per several MiB, parsed in full
            return URL(url, encoded=True)
        return self._base_url.with_path(self._base_url.raw_path + url[len(self._base) :], encoded=True)

    def _parse_ok(self, status: int, headers: dict[str, str], operation: str) -> dict[str, Any]:
        """What client.put_object returns: ResponseMetadata as botocore fills it, the header members."""
        meta: dict[str, Any] = {}
        if "x-amzn-requestid" in headers:
            meta["RequestId"] = headers["x-amzn-requestid"]
        elif "x-amz-request-id" in headers:
            meta["RequestId"] = headers["x-amz-request-id"]
            meta["HostId"] = headers.get("x-amz-id-2", "")
        meta.update(HTTPStatusCode=status, HTTPHeaders=headers, RetryAttempts=0, **self._retry_metadata)
        parsed: dict[str, Any] = {"ResponseMetadata": meta}
        members = self._outputs[operation][1]
        for header, value in headers.items():
            member = members.get(header)
            if member is None:
                continue
            name, type_name = member
            if type_name == "boolean":
                parsed[name] = value.lower() == "true"
            elif type_name in ("integer", "long"):
                parsed[name] = int(value)
            else:
                parsed[name] = value
        return parsed

    def _client_error(self, status: int, headers: dict[str, str], body: bytes, operation: str) -> Exception:
        """The exception the client raises for this response, parsed by botocore's own parser."""
        parser = botocore.parsers.create_parser("rest-xml")
        response = {"status_code": status, "headers": headers, "body": body}
        parsed = parser.parse(response, self._outputs[operation][0])
        parsed.setdefault("ResponseMetadata", {}).update(RetryAttempts=0, **self._retry_metadata)
        code = parsed.get("Error", {}).get("Code")
        error_class: type[Exception] = self._client.exceptions.from_code(code)
        return error_class(parsed, operation)
