"""One aiobotocore client for the process, and the one place that sorts S3 errors into kinds.

The client's libraries (aiobotocore, botocore's client, aiohttp) take ~0.4 s to import: they are imported
when a client is opened, so the commands that make no request (status) and the error sorting that every
module uses do not pay for them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import http.client
import ssl
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import botocore.exceptions

from syncd import fds, heap
from syncd.config import S3Settings
from syncd.errors import CredentialsError

if TYPE_CHECKING:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession
    from types_aiobotocore_s3 import S3Client


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"  # retry with backoff: the server or the network is away or busy
    CREDENTIALS = "credentials"  # the keys are wrong: nothing will work until the user fixes them
    CLOCK = "clock"  # the local clock is too far off for SigV4
    PERMANENT = "permanent"  # this request will never succeed as it is


# Not the server's: syncd's name for a 200 whose ETag is an MD5 other than the one sent (etag_checked).
ETAG_MISMATCH = "ETagMismatch"
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
)
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "TooManyRequestsException",
        "OperationAborted",
        "BadDigest",  # the bytes were damaged on the way: sending them again is the fix
        "IncompleteBody",
        "XAmzContentSHA256Mismatch",
        ETAG_MISMATCH,
    }
)
CLOCK_CODES = frozenset({"RequestTimeTooSkewed"})
_HEX32 = frozenset("0123456789abcdef")


def etag_checked(response: Mapping[str, Any], md5_hex: str, operation: str = "PutObject") -> None:
    """The answer to a single PUT or part sent with Content-MD5, refused when its ETag is a plain MD5 that
    is not the one sent: the server (or something before it) did not store the bytes syncd sent. Raised
    as a transient ClientError, so the request is sent again and, if it keeps happening, fails.

    SSE-KMS and SSE-C objects have ETags that are not their MD5 (the answer says so: aws:kms, or a customer
    key algorithm), and multipart ETags have a "-N": those are taken as they are.
    """
    etag = str(response.get("ETag", "")).strip('"').lower()
    if len(etag) != 32 or not _HEX32.issuperset(etag) or etag == md5_hex.lower():
        return
    if str(response.get("ServerSideEncryption", "")).startswith("aws:kms") or response.get(
        "SSECustomerAlgorithm"
    ):
        return
    error = {
        "Code": ETAG_MISMATCH,
        "Message": f"the server answered ETag {etag} for bytes whose MD5 is {md5_hex}: it did not store them",
    }
    meta = dict(response.get("ResponseMetadata", {}))
    exc: Exception = botocore.exceptions.ClientError({"Error": error, "ResponseMetadata": meta}, operation)
    raise exc


CONNECT_TIMEOUT = 10.0  # seconds to open a connection
READ_TIMEOUT = 120.0  # seconds the server may stay silent while answering


class FastPathOff(Exception):
    """The fast path turned itself off during this request: send it again at once, by the plain client."""


def response_error(status: int, headers: dict[str, str], body: bytes, operation: str) -> Exception:
    """The ClientError botocore raises for this S3 error response: the XML's fields, else the status."""
    error: dict[str, str] = {}
    meta: dict[str, Any] = {"HTTPStatusCode": status, "HTTPHeaders": headers, "RetryAttempts": 0}
    if "x-amz-request-id" in headers:
        meta["RequestId"] = headers["x-amz-request-id"]
        meta["HostId"] = headers.get("x-amz-id-2", "")
    if body.strip():
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            root = None
        if root is not None:
            for child in root:
                if len(child) == 0:
                    error[child.tag.rpartition("}")[2]] = child.text or ""
    for name in ("RequestId", "HostId"):
        if name in error:
            meta[name] = error.pop(name)
    if not error.get("Code"):
        error = {"Code": str(status), "Message": http.client.responses.get(status, "")}
    exc: Exception = botocore.exceptions.ClientError({"Error": error, "ResponseMetadata": meta}, operation)
    return exc


def redirect_error(status: int, headers: dict[str, str], body: bytes, operation: str) -> Exception:
    """A 3xx as an error naming where it points: syncd never follows a redirect (its bytes and version
    id would come from a server that is not the configured one)."""
    exc: Any = response_error(status, headers, body, operation)
    exc.response["Error"]["Message"] = redirect_message(exc, exc.response["Error"].get("Message", ""))
    redirect: Exception = exc
    return redirect


def redirect_message(exc: Any, said: str) -> str:
    """What a 3xx answer means for syncd, naming where it points (the plain client's too: botocore does
    not follow redirects either, but its error does not say where to)."""
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    location = headers.get("location", "") or exc.response.get("Error", {}).get("Endpoint", "")
    return (
        f"the server redirects to {location or '(no Location)'}; syncd does not follow redirects: set "
        f"endpoint_url to the server that stores the bucket{f' ({said})' if said else ''}"
    )


# Every request ends: a server that sends one byte every few seconds never trips the read timeout. The base
# (s3.request_timeout) covers connecting and a server that thinks for READ_TIMEOUT; a body adds a second
# per MIN_BANDWIDTH bytes.
REQUEST_TIMEOUT = CONNECT_TIMEOUT + READ_TIMEOUT
MIN_BANDWIDTH = 16 * 1024  # bytes/s: a request moving its bytes slower than this is stuck (128 kbit/s)


def request_deadline(size: int = 0, base: float = REQUEST_TIMEOUT) -> float:
    """Seconds a request with a `size`-byte body (or answer) may take in all."""
    return base + size / MIN_BANDWIDTH


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ('' for anything else)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def classify(exc: BaseException) -> ErrorKind:
    """Sort an exception from an S3 call; retry logic and exit codes both start here."""
    code = error_code(exc)
    if code in CREDENTIAL_CODES:
        return ErrorKind.CREDENTIALS
    if code in CLOCK_CODES:
        return ErrorKind.CLOCK
    if code in TRANSIENT_CODES:
        return ErrorKind.TRANSIENT
    if isinstance(exc, botocore.exceptions.ClientError):
        status = http_status(exc)
        if code == "NotImplemented" or status == 501:
            return ErrorKind.PERMANENT  # the server lacks the operation (R2, B2): asking again will not help
        return ErrorKind.TRANSIENT if status >= 500 or status in (408, 429) else ErrorKind.PERMANENT
    if isinstance(exc, ssl.SSLCertVerificationError | botocore.exceptions.SSLError):
        return ErrorKind.PERMANENT
    transient_types = (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ResponseStreamingError,
        botocore.exceptions.IncompleteReadError,
        ConnectionError,
        asyncio.TimeoutError,
        TimeoutError,
    )
    if isinstance(exc, transient_types) or _is_aiohttp_error(exc):
        return ErrorKind.TRANSIENT
    if isinstance(exc, OSError) and exc.errno in fds.OUT_OF_FDS:
        return ErrorKind.TRANSIENT  # out of file descriptors: some close as requests end (fds.py)
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return ErrorKind.CREDENTIALS
    return ErrorKind.PERMANENT


def _is_aiohttp_error(exc: BaseException) -> bool:
    """An aiohttp transport error; none can exist before a client (which imports aiohttp) is opened."""
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


def describe(exc: BaseException) -> str:
    """A short, credential-free description of an S3 failure for one log field or error line."""
    code = error_code(exc)
    if code:
        message = (
            str(exc.response.get("Error", {}).get("Message", ""))
            if isinstance(exc, botocore.exceptions.ClientError)
            else ""
        )
        status = http_status(exc)
        if 300 <= status < 400 and "does not follow redirects" not in message:
            message = redirect_message(exc, message)
        return f"{code} (HTTP {status}){': ' + message if message else ''}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for the service, in its "
    "EnvironmentFile), set s3.profile, or put them in the shared credentials file"
)


def credentials_error(exc: BaseException) -> CredentialsError:
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return CredentialsError(f"{NO_CREDENTIALS} ({describe(exc)})")
    return CredentialsError(
        f"the server rejected the credentials ({error_code(exc) or type(exc).__name__}); "
        "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the s3.profile or the shared credentials file"
    )


def boto_config(settings: S3Settings, pool: int) -> AioConfig:
    """botocore retries are off: syncd retries in one place (retry.py) with its own backoff. The HTTP
    session never follows a redirect and reads answers up to a cap (transport.py)."""
    from aiobotocore.config import AioConfig

    from syncd.s3.transport import NoRedirectSession

    return AioConfig(
        http_session_cls=NoRedirectSession,
        region_name=settings.region,
        max_pool_connections=max(pool, 10),
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        request_checksum_calculation=settings.checksum,
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if settings.endpoint_url else {},
        user_agent_extra="syncd",
    )


def make_session(settings: S3Settings) -> AioSession:
    """aiobotocore's session (aioboto3's would add boto3's resources, which syncd does not use, and
    ~0.05-0.1 s of imports to every command)."""
    from aiobotocore.session import AioSession

    if settings.profile:
        session = AioSession(profile=settings.profile)
        try:
            session.get_scoped_config()  # a profile that is in neither file: said now, as a user error
        except botocore.exceptions.ProfileNotFound as exc:
            raise CredentialsError(
                f"the AWS profile {settings.profile!r} (s3.profile) is not in the shared config or "
                "credentials file; add it or remove s3.profile"
            ) from exc
        return session
    return AioSession()


def content_md5_instead_of_crc32(params: dict[str, Any], **_: Any) -> None:
    """`checksum: when_required`: an operation that must carry a checksum (PutBucketAcl,
    PutBucketVersioning, PutBucketLifecycleConfiguration) carries Content-MD5, as before botocore 1.36,
    not the x-amz-checksum-crc32 and x-amz-sdk-checksum-algorithm headers botocore now adds (B2 and
    other servers answer those 400)."""
    checksum = params.get("context", {}).get("checksum", {})
    algorithm = checksum.get("request_algorithm")
    body = params.get("body")
    if isinstance(algorithm, dict) and algorithm.get("in") == "header" and isinstance(body, bytes):
        del checksum["request_algorithm"]
        checksum.pop("request_algorithm_header", None)
        params["headers"]["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


class FrozenCredentials(Protocol):
    """One request's keys (botocore's ReadOnlyCredentials)."""

    @property
    def access_key(self) -> str: ...

    @property
    def secret_key(self) -> str: ...

    @property
    def token(self) -> str | None: ...


class SessionCredentials(Protocol):
    """A session's credentials (aiobotocore's, refreshable or not): asked for the keys per request."""

    async def get_frozen_credentials(self) -> FrozenCredentials: ...


# The credentials each open client signs with (the session's: refreshable ones renew themselves).
_credentials: dict[int, SessionCredentials] = {}


def credentials_of(client: S3Client) -> SessionCredentials:
    """The session credentials of a client from open_client (for signers of our own: the fast path)."""
    return _credentials[id(client)]


@contextlib.asynccontextmanager
async def open_client(settings: S3Settings, pool: int = 16) -> AsyncIterator[S3Client]:
    """The process's one S3 client, sized for `pool` concurrent requests."""
    session = make_session(settings)
    async with session.create_client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=boto_config(settings, pool),
    ) as client:
        heap.built()
        if settings.checksum == "when_required":
            client.meta.events.register("before-call.s3", content_md5_instead_of_crc32)
        # Found once here, so every command (versions, restore, verify too) says what is missing.
        credentials = await session.get_credentials()
        if credentials is None:
            raise CredentialsError(NO_CREDENTIALS)
        _credentials[id(client)] = credentials
        try:
            yield client
        finally:
            _credentials.pop(id(client), None)
