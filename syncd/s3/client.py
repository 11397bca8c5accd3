"""One aioboto3 client for the process, and the one place that sorts S3 errors into kinds."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import aiohttp
import botocore.exceptions
from botocore.config import Config as BotoConfig

from syncd.config import S3Settings
from syncd.errors import CredentialsError


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"  # retry with backoff: the server or the network is away or busy
    CREDENTIALS = "credentials"  # the keys are wrong: nothing will work until the user fixes them
    CLOCK = "clock"  # the local clock is too far off for SigV4
    PERMANENT = "permanent"  # this request will never succeed as it is


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
    }
)
CLOCK_CODES = frozenset({"RequestTimeTooSkewed"})


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
        aiohttp.ClientError,
        ConnectionError,
        asyncio.TimeoutError,
        TimeoutError,
    )
    if isinstance(exc, transient_types):
        return ErrorKind.TRANSIENT
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return ErrorKind.CREDENTIALS
    return ErrorKind.PERMANENT


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


def boto_config(settings: S3Settings, pool: int) -> BotoConfig:
    """botocore retries are off: syncd retries in one place (retry.py) with its own backoff."""
    return BotoConfig(
        region_name=settings.region,
        max_pool_connections=max(pool, 10),
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        request_checksum_calculation=settings.checksum,
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if settings.endpoint_url else {},
        user_agent_extra="syncd",
    )


def make_session(settings: S3Settings) -> aioboto3.Session:
    if settings.profile:
        try:
            return aioboto3.Session(profile_name=settings.profile)
        except botocore.exceptions.ProfileNotFound as exc:
            raise CredentialsError(
                f"the AWS profile {settings.profile!r} (s3.profile) is not in the shared config or "
                "credentials file; add it or remove s3.profile"
            ) from exc
    return aioboto3.Session()


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


@contextlib.asynccontextmanager
async def open_client(settings: S3Settings, pool: int = 16) -> AsyncIterator[Any]:
    """The process's one S3 client, sized for `pool` concurrent requests."""
    session = make_session(settings)
    async with session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=boto_config(settings, pool),
    ) as client:
        if settings.checksum == "when_required":
            client.meta.events.register("before-call.s3", content_md5_instead_of_crc32)
        # Found once here, so every command (versions, restore, verify too) says what is missing.
        if await session.get_credentials() is None:
            raise CredentialsError(NO_CREDENTIALS)
        yield client
