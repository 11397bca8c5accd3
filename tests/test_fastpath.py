"""FastPut against a real SeaweedFS and botocore's own signer: the same request, object, response and errors
as the plain client, on whatever botocore, aiobotocore and aiohttp are installed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import re
import socket
import string
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import botocore.auth
import botocore.exceptions
import pytest
from aiobotocore.credentials import AioRefreshableCredentials
from aiobotocore.session import AioSession
from badserver import Answer, BadServer, Request, error_answer, from_the_fast_path
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from helpers import bucket_objects, json_records, tree, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from syncd.config import S3Settings
from syncd.s3 import fastpath
from syncd.s3.client import ErrorKind, FastPathOff, boto_config, classify, error_code, http_status
from syncd.s3.fastpath import FastPut, why_not

T = TypeVar("T")
REGION = "us-east-1"
SPECIAL_KEYS = [
    "with space/two  spaces.txt",
    "percent%41%zz%.bin",
    "plus+sign+.txt",
    "hash#tag",
    "question?mark=1&x=2",
    "unicode/éüß/日本語 ☃.txt",
    "tilde~/~home",
    "semi;colon,comma'quote\"star*",
    "brackets[]{}()<>|^`",
    "a//double/slash",  # SeaweedFS stores it as a/double/slash (and a\b as a/b), whoever sends it
    "=$@!:",
]
# Headers FastPut sends that nobody signs: botocore leaves User-Agent and Expect out of the signature,
# Accept-Encoding and Content-Length are added after signing, as the client's transport adds them.
UNSIGNED = {"User-Agent", "Expect", "Accept-Encoding", "Content-Length"}
SIGV4_HEADERS = ("X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token", "Authorization")


@pytest.fixture(autouse=True)
def fast_path_switch_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests decide SYNCD_FASTPATH themselves, whatever the shell running them says."""
    monkeypatch.delenv(fastpath.ENV_SWITCH, raising=False)


class Clock:
    """One frozen UTC instant for botocore's signer (old releases read datetime.utcnow(), newer ones
    get_current_datetime()) and FastPut's own."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, when: datetime.datetime | None = None) -> None:
        self.now = when or datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        clock = self

        class Frozen(datetime.datetime):
            @classmethod
            def utcnow(cls) -> datetime.datetime:  # type: ignore[override]
                return clock.now

            @classmethod
            def now(cls, tz: Any = None) -> datetime.datetime:  # type: ignore[override]
                return clock.now if tz is None else clock.now.replace(tzinfo=datetime.UTC).astimezone(tz)

        shim = types.ModuleType("datetime")
        shim.__dict__.update(datetime.__dict__)
        shim.datetime = Frozen  # type: ignore[attr-defined]
        monkeypatch.setattr(botocore.auth, "datetime", shim)
        if hasattr(botocore.auth, "get_current_datetime"):
            monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: self.now)
        monkeypatch.setattr(fastpath, "_clock", lambda: self.now.replace(tzinfo=datetime.UTC).timestamp())


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def settings_for(endpoint_url: str | None, **more: Any) -> S3Settings:
    return S3Settings(endpoint_url=endpoint_url, region=REGION, **more)


@contextlib.asynccontextmanager
async def open_s3(
    endpoint_url: str, access_key: str, secret_key: str, **more: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """A client configured exactly as syncd's (syncd.s3.client.boto_config), with explicit keys, and the
    session's credentials."""
    s = settings_for(endpoint_url, **more)
    session = AioSession()
    session.set_credentials(access_key, secret_key)
    async with session.create_client(
        "s3", endpoint_url=s.endpoint_url, region_name=s.region, config=boto_config(s, 8)
    ) as client:
        yield client, await session.get_credentials()


def unprobed(client: Any, credentials: Any, endpoint_url: str, bucket: str) -> FastPut:
    """A FastPut made without the probe (for requests the probe would refuse, or no server at all)."""
    return FastPut(settings_for(endpoint_url), bucket, REGION, credentials, client, 8)


@contextlib.asynccontextmanager
async def client_and_fast(
    server: Any, bucket: str, *, access_key: str | None = None, secret_key: str | None = None
) -> AsyncIterator[tuple[Any, FastPut]]:
    access_key = access_key or server.admin.access_key
    secret_key = secret_key or server.admin.secret_key
    async with open_s3(server.endpoint_url, access_key, secret_key) as (client, credentials):
        fast = unprobed(client, credentials, server.endpoint_url, bucket)
        try:
            yield client, fast
        finally:
            await fast.close()


def versioned_bucket(s3: Any, name: str) -> str:
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


async def raised(call: Callable[[], Awaitable[Any]]) -> BaseException:
    try:
        await call()
    except Exception as exc:
        return exc
    raise AssertionError("no exception")


def comparable(exc: BaseException) -> tuple[dict[str, Any], int]:
    """A ClientError as FastPut and the client both give it (the client's class is a subclass made at
    run time; FastPut raises botocore's public ClientError itself)."""
    assert isinstance(exc, botocore.exceptions.ClientError)
    error = {k: v for k, v in exc.response["Error"].items() if k not in ("RequestId", "HostId")}
    return error, http_status(exc)


def signed_part(headers: dict[str, str]) -> dict[str, str]:
    """The headers of a request that its Authorization covers, by their names in SignedHeaders."""
    names = set(re.search(r"SignedHeaders=([^,]+)", headers["Authorization"]).group(1).split(";"))  # type: ignore[union-attr]
    return {k: v for k, v in headers.items() if k.lower() in names or k in SIGV4_HEADERS}


def botocore_signs(
    url: str, headers: dict[str, str], body: bytes, creds: tuple[str, str, str | None]
) -> dict[str, str]:
    """The SigV4 headers botocore's S3SigV4Auth gives a PUT with these headers, as the client's PutObject
    and UploadPart requests are made (streaming input with Content-MD5)."""
    given = {k: v for k, v in headers.items() if k not in SIGV4_HEADERS and k not in UNSIGNED}
    request = AWSRequest(method="PUT", url=url, headers=given, data=body)
    request.context["has_streaming_input"] = True
    botocore.auth.S3SigV4Auth(Credentials(*creds), "s3", REGION).add_auth(request)
    signed = {k: request.headers[k] for k in SIGV4_HEADERS if k in request.headers}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in signed.items()}


class Captured(Exception):
    """Raised from the client's before-send hook: its request, fully signed, and no network."""


def _capture(request: Any, **_: Any) -> None:
    raise Captured(request)


def sent_headers(request: Any) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}


@pytest.mark.parametrize("size", [0, 1000, fastpath.EXPECT_CONTINUE_MIN], ids=["empty", "small", "1MiB"])
@pytest.mark.parametrize("key", ["plain.txt", SPECIAL_KEYS[0], SPECIAL_KEYS[5], SPECIAL_KEYS[7]])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_put_is_signed_as_the_client_signs_it(
    monkeypatch: pytest.MonkeyPatch, key: str, size: int, scheme: str
) -> None:
    """Same second on the clock: the client's own PutObject request (captured before it is sent) has the
    same URL, the same signed headers and the same Authorization. No network."""
    Clock(monkeypatch)
    body = b"x" * size
    args = {
        "ContentMD5": md5_b64(body),
        "ContentType": "text/plain",
        "Metadata": {"a": "b", "Mixed-Case": "v"},
    }

    async def both() -> tuple[Any, tuple[str, dict[str, str]]]:
        endpoint = f"{scheme}://127.0.0.1:9"
        async with open_s3(endpoint, "AKIDEXAMPLE", "secret/example+key") as (client, credentials):
            fast = unprobed(client, credentials, endpoint, "sig-bucket")
            client.meta.events.register("before-send.s3.PutObject", _capture)
            exc = await raised(lambda: client.put_object(Bucket="sig-bucket", Key=key, Body=body, **args))
            assert isinstance(exc, Captured)
            ours = fast._own_signed(
                fastpath.quote_key(key),
                "",
                args["ContentMD5"],
                hashlib.sha256(body).hexdigest() if scheme == "http" else "UNSIGNED-PAYLOAD",
                args["ContentType"],
                args["Metadata"],
                await credentials.get_frozen_credentials(),
                size >= fastpath.EXPECT_CONTINUE_MIN,
            )
            return exc.args[0], (fast._base + fastpath.quote_key(key), ours)

    sent, (url, headers) = run(both())
    assert url == sent.url
    assert signed_part(headers) == signed_part(sent_headers(sent))
    assert set(headers) - set(signed_part(headers)) <= UNSIGNED
    expected = hashlib.sha256(body).hexdigest() if scheme == "http" else "UNSIGNED-PAYLOAD"
    assert headers["X-Amz-Content-SHA256"] == expected


TOKEN_CHARS = "!#$%&'*+.^_`|~-" + string.ascii_letters + string.digits
object_keys = st.text(
    st.characters(exclude_categories=["Cs"]) | st.sampled_from(list(" %+#?~‛/&=;:@!$'()*,[]\\")),
    min_size=1,
    max_size=30,
)
metadata_names = st.one_of(
    st.text(TOKEN_CHARS, min_size=1, max_size=12),
    # prefixes of each other (sorting "name:value" lines is not sorting names)
    st.sampled_from(["syncd", "syncd-mtime", "syncd.mtime", "syncd0", "syncd_x", "Mixed-Case"]),
)
metadata_values = st.one_of(
    st.text(string.printable, max_size=24),
    st.sampled_from(["", " spaced  value ", "tab\there", "1700000000.25"]),
)
metadata = st.dictionaries(metadata_names, metadata_values, max_size=4).filter(
    lambda m: len({name.lower() for name in m}) == len(m)
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/octet-stream", "text/plain; charset=utf-8", " text/x  spaced "]),
    st.text(string.printable, max_size=24),
)
credentials = st.one_of(
    st.sampled_from(
        [
            ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None),
            ("AKIDEXAMPLE", "rotated/secret", None),
            ("ASIATEMPORARY", "temporary+secret", "FwoGZXIvYXdzE//////////wEaD token=="),
            ("ASIATEMPORARY", "temporary+secret", " spaced  token "),
        ]
    ),
    st.tuples(
        st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=20),
        st.text(string.ascii_letters + string.digits + "/+=", min_size=1, max_size=40),
        st.none() | st.text(string.ascii_letters + string.digits + "/+= ", min_size=1, max_size=40),
    ),
)
instants = st.one_of(
    st.datetimes(datetime.datetime(2001, 1, 1), datetime.datetime(2099, 12, 31)),
    st.dates(datetime.date(2001, 1, 1), datetime.date(2099, 12, 30)).map(
        lambda d: datetime.datetime.combine(d, datetime.time(23, 59, 59, 999999))  # a day about to end
    ),
)
# Later PUTs of one example: same second, next microsecond (maybe the next day), next second, next day.
steps = st.lists(
    st.tuples(st.sampled_from([0, 1, 10**6, 86400 * 10**6]), credentials), min_size=1, max_size=3
)


class Frozen:
    """Credentials as a session hands them out (get_frozen_credentials), changeable between PUTs."""

    def __init__(self) -> None:
        self.current = Credentials("AKID", "secret")

    async def get_frozen_credentials(self) -> Any:
        return self.current.get_frozen_credentials()


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("endpoint", ["127.0.0.1:9", "[::1]:8333", "s3.example.test", "s3.example.test:443"])
def test_own_signer_signs_what_botocore_signs(
    monkeypatch: pytest.MonkeyPatch, scheme: str, endpoint: str
) -> None:
    """For random keys, bodies, metadata, content types, credentials (with and without a session token),
    instants (across midnight, across a credentials change), endpoints (default ports, IPv6) and parts,
    botocore's S3SigV4Auth on the installed botocore gives the request FastPut sends the same X-Amz-Date,
    payload hash, token and Authorization. No network."""
    clock = Clock(monkeypatch)
    bucket = "sig-bucket"
    frozen = Frozen()
    url = f"{scheme}://{endpoint}"
    fast = FastPut(settings_for(url), bucket, REGION, frozen, None, 8)
    seen: dict[str, int] = {"token": 0, "metadata": 0, "next day": 0, "part": 0, "content type": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        key=object_keys,
        size=st.sampled_from([0, 1000, 1024 * 1024]),
        content_type=content_types,
        meta=metadata,
        part=st.none()
        | st.tuples(st.integers(1, 10000), st.text(TOKEN_CHARS + "/=", min_size=1, max_size=40)),
        start=instants,
        steps=steps,
    )
    def check(
        key: str,
        size: int,
        content_type: str | None,
        meta: dict[str, str],
        part: tuple[int, str] | None,
        start: datetime.datetime,
        steps: list[tuple[int, tuple[str, str, str | None]]],
    ) -> None:
        body = (bytes(range(256)) * (size // 256 + 1))[:size]
        sha256 = hashlib.sha256(body).hexdigest()
        clock.now = start
        for microseconds, creds in steps:
            day = clock.now.date()
            clock.now += datetime.timedelta(microseconds=microseconds)
            frozen.current = Credentials(*creds)
            if part is None:
                sent_url = fast._base + fastpath.quote_key(key)
                payload = sha256 if scheme == "http" else "UNSIGNED-PAYLOAD"
                headers = fast._own_signed(
                    fastpath.quote_key(key),
                    "",
                    md5_b64(body),
                    payload,
                    content_type,
                    meta,
                    frozen.current.get_frozen_credentials(),
                    size >= fastpath.EXPECT_CONTINUE_MIN,
                )
            else:
                sent_url, headers = run(fast._part_signed(key, part[1], part[0], size, md5_b64(body), sha256))
            assert set(headers) - set(signed_part(headers)) <= UNSIGNED
            assert fast._target(sent_url) == URL(sent_url, encoded=True)
            theirs = botocore_signs(sent_url, headers, body, creds)
            assert {k: v for k, v in headers.items() if k in SIGV4_HEADERS} == theirs
            seen["token"] += bool(creds[2])
            seen["metadata"] += bool(meta) and part is None
            seen["content type"] += content_type is not None and part is None
            seen["part"] += part is not None
            seen["next day"] += clock.now.date() != day

    check()
    assert min(seen.values()) >= 3, seen  # each kind of case came up: the comparisons were not vacuous


def test_signing_key_is_derived_once_per_day_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch, datetime.datetime(2030, 5, 17, 23, 59, 58))
    frozen = Frozen()
    fast = FastPut(settings_for("http://127.0.0.1:9"), "bucket", REGION, frozen, None, 8)

    def key_after(change: Callable[[], object]) -> bytes:
        change()
        fast._own_signed("k", "", md5_b64(b"x"), "UNSIGNED-PAYLOAD", None, None, frozen.current, False)
        return fast._sigv4._key

    def tick() -> None:
        clock.now += datetime.timedelta(seconds=1)

    def rotate() -> None:
        frozen.current = Credentials("AKID", "rotated")

    first, same_day, next_day, rotated = [key_after(change) for change in (lambda: None, tick, tick, rotate)]
    assert same_day is first
    assert len({first, next_day, rotated}) == 3


@pytest.mark.parametrize(
    ("content_type", "meta"),
    [
        (None, {"Name": "first", "name": "second"}),  # equal but for case: the client sends one of them
        (None, {"with space": "x"}),  # not a token
        ("text/plain; charset=é", {}),  # non-ASCII content type
    ],
    ids=["case", "space", "non-ascii-type"],
)
def test_headers_the_signer_does_not_take_go_to_the_client(
    s3_server: Any,
    s3: Any,
    bucket_name: str,
    monkeypatch: pytest.MonkeyPatch,
    content_type: str | None,
    meta: dict[str, str],
) -> None:
    """Such a PUT is handed to client.put_object whole, rather than sent as a request the client would
    not send; the outcome is the client's."""
    bucket = versioned_bucket(s3, bucket_name)
    extra: dict[str, Any] = {"Metadata": meta} if meta else {}
    if content_type is not None:
        extra["ContentType"] = content_type

    async def outcome(call: Callable[[], Awaitable[dict[str, Any]]]) -> Any:
        try:
            return (await call())["ETag"]
        except botocore.exceptions.ClientError as exc:
            return comparable(exc)

    async def both() -> tuple[Any, Any, bool, list[dict[str, Any]]]:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            delegated: list[dict[str, Any]] = []
            put_object = client.put_object

            async def spy(**kwargs: Any) -> Any:
                delegated.append(kwargs)
                return await put_object(**kwargs)

            monkeypatch.setattr(client, "put_object", spy)
            quick = await outcome(
                lambda: fast.put_object(Key="k", Body=b"x", ContentMD5=md5_b64(b"x"), **extra)
            )
            plain = await outcome(
                lambda: put_object(Bucket=bucket, Key="k", Body=b"x", ContentMD5=md5_b64(b"x"), **extra)
            )
            return quick, plain, fast.on, delegated

    quick, plain, on, delegated = run(both())
    assert delegated == [{"Bucket": bucket, "Key": "k", "Body": b"x", "ContentMD5": md5_b64(b"x"), **extra}]
    assert quick == plain and on


def test_same_object_response_and_versions_as_the_client(s3_server: Any, s3: Any, bucket_name: str) -> None:
    bucket = versioned_bucket(s3, bucket_name)
    body = hashlib.sha256(b"seed").digest() * 100
    args: dict[str, Any] = {
        "Body": body,
        "ContentMD5": md5_b64(body),
        "ContentType": "text/x-syncd; charset=utf-8",
        "Metadata": {"syncd-mtime": "1700000000.25", "Mixed-Case": " spaced  value "},
    }

    async def both() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            plain = await client.put_object(Bucket=bucket, Key="plain/obj", **args)
            quick = await fast.put_object(Bucket=bucket, Key="fast/obj", **args)
            again = await fast.put_object(Key="fast/obj", **args)
            return plain, quick, again

    plain, quick, again = run(both())
    assert set(quick) == set(plain) == {"ResponseMetadata", "ETag", "VersionId"}
    assert quick["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert quick["ETag"] == plain["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert quick["VersionId"] and again["VersionId"] and quick["VersionId"] != again["VersionId"]

    stored = {key: s3.get_object(Bucket=bucket, Key=key) for key in ("plain/obj", "fast/obj")}
    assert stored["fast/obj"]["Body"].read() == stored["plain/obj"]["Body"].read() == body
    for field in ("ETag", "Metadata", "ContentType", "ContentLength"):
        assert stored["fast/obj"][field] == stored["plain/obj"][field], field
    assert stored["fast/obj"]["VersionId"] == again["VersionId"]
    versions = s3.list_object_versions(Bucket=bucket, Prefix="fast/")["Versions"]
    assert {v["VersionId"] for v in versions} == {quick["VersionId"], again["VersionId"]}


def test_damaged_bytes_are_rejected_as_bad_digest(s3_server: Any, s3: Any, bucket_name: str) -> None:
    bucket = versioned_bucket(s3, bucket_name)
    body = b"the bytes that were sent"
    wrong = md5_b64(b"the bytes that were read")

    async def both() -> tuple[BaseException, BaseException]:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            quick = await raised(lambda: fast.put_object(Key="damaged", Body=body, ContentMD5=wrong))
            plain = await raised(
                lambda: client.put_object(Bucket=bucket, Key="damaged", Body=body, ContentMD5=wrong)
            )
            return quick, plain

    quick, plain = run(both())
    assert error_code(quick) == "BadDigest"
    assert http_status(quick) == 400
    assert classify(quick) is ErrorKind.TRANSIENT
    assert comparable(quick) == comparable(plain)
    assert "Versions" not in s3.list_object_versions(Bucket=bucket, Prefix="damaged")


@pytest.mark.parametrize(
    ("wrong", "code"), [("secret", "SignatureDoesNotMatch"), ("key", "InvalidAccessKeyId")]
)
def test_wrong_credentials_are_credential_errors(
    s3_server: Any, s3: Any, bucket_name: str, wrong: str, code: str
) -> None:
    """When the client is refused too, the keys are wrong: the fast path stays on and says so."""
    bucket = versioned_bucket(s3, bucket_name)
    keys = {"secret_key": "not-the-secret"} if wrong == "secret" else {"access_key": "NOSUCHKEY0000"}

    async def both() -> tuple[BaseException, BaseException, bool]:
        async with client_and_fast(s3_server, bucket, **keys) as (client, fast):
            quick = await raised(lambda: fast.put_object(Key="k", Body=b"x"))
            plain = await raised(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"x"))
            return quick, plain, fast.on

    quick, plain, on = run(both())
    assert error_code(quick) == code
    assert classify(quick) is ErrorKind.CREDENTIALS
    assert comparable(quick) == comparable(plain)
    assert on


def test_a_signature_the_server_refuses_turns_the_fast_path_off(
    s3_server: Any, s3: Any, bucket_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signing change the server does not take (here: a signing key from the wrong day) is found by the
    probe; found later, it turns the fast path off, the PUT goes through the client and a streamed part is
    sent again by it, and nothing is ever a credentials error."""
    bucket = versioned_bucket(s3, bucket_name)
    real = fastpath.SigV4.signing_key

    def wrong_day(self: fastpath.SigV4, access_key: str, secret_key: str, date: str) -> bytes:
        return real(self, access_key, secret_key, "19991231")

    monkeypatch.setattr(fastpath.SigV4, "signing_key", wrong_day)
    part = b"p" * 5 * 1024 * 1024

    async def attempt() -> tuple[Any, dict[str, Any], bool, BaseException, str]:
        async with open_s3(
            s3_server.endpoint_url, s3_server.admin.access_key, s3_server.admin.secret_key
        ) as (
            client,
            credentials,
        ):
            probed = await FastPut.create(
                client, settings_for(s3_server.endpoint_url), bucket, credentials, pool=4
            )
            fast = unprobed(client, credentials, s3_server.endpoint_url, bucket)
            put = await fast.put_object(Key="through-the-client", Body=b"x", ContentMD5=md5_b64(b"x"))
            on_after_put = fast.on
            other = unprobed(client, credentials, s3_server.endpoint_url, bucket)
            upload = (await client.create_multipart_upload(Bucket=bucket, Key="big"))["UploadId"]
            args = {"Key": "big", "UploadId": upload, "PartNumber": 1, "ContentLength": len(part)}
            hashes = {"ContentMD5": md5_b64(part), "PayloadSHA256": hashlib.sha256(part).hexdigest()}
            off = await raised(lambda: other.upload_part(Body=chunks_of(part), **args, **hashes))
            again = await other.upload_part(Body=chunks_of(part), **args, **hashes)  # by the client now
            await client.abort_multipart_upload(Bucket=bucket, Key="big", UploadId=upload)
            await fast.close()
            await other.close()
            return probed, put, on_after_put, off, again["ETag"]

    probed, put, on_after_put, off, etag = run(attempt())
    assert isinstance(probed, str) and "SignatureDoesNotMatch" in probed
    assert not on_after_put
    assert s3.get_object(Bucket=bucket, Key="through-the-client")["VersionId"] == put["VersionId"]
    assert isinstance(off, FastPathOff) and classify(off) is not ErrorKind.CREDENTIALS
    assert etag == f'"{hashlib.md5(part).hexdigest()}"'


def test_probe_takes_a_working_server(s3_server: Any, s3: Any, bucket_name: str) -> None:
    bucket = versioned_bucket(s3, bucket_name)

    async def create() -> Any:
        async with open_s3(
            s3_server.endpoint_url, s3_server.admin.access_key, s3_server.admin.secret_key
        ) as (
            client,
            credentials,
        ):
            fast = await FastPut.create(
                client, settings_for(s3_server.endpoint_url), bucket, credentials, pool=4, probe_key="p/"
            )
            if isinstance(fast, FastPut):
                await fast.close()
            return fast

    assert isinstance(run(create()), FastPut)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "Versions" not in s3.list_object_versions(Bucket=bucket)  # the probe stored nothing


def test_special_keys_land_where_the_clients_do(s3_server: Any, s3: Any, bucket_name: str) -> None:
    bucket = versioned_bucket(s3, bucket_name)

    async def put_all() -> None:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            for key in SPECIAL_KEYS:
                await fast.put_object(Key="fast/" + key, Body=key.encode())
                await client.put_object(Bucket=bucket, Key="plain/" + key, Body=key.encode())

    run(put_all())
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(k.removeprefix("fast/") for k in listed if k.startswith("fast/")) == sorted(
        k.removeprefix("plain/") for k in listed if k.startswith("plain/")
    )
    for key in SPECIAL_KEYS:
        if "//" in key:
            continue
        assert s3.get_object(Bucket=bucket, Key="fast/" + key)["Body"].read() == key.encode(), key


def test_missing_md5_is_computed_and_empty_body_works(s3_server: Any, s3: Any, bucket_name: str) -> None:
    bucket = versioned_bucket(s3, bucket_name)

    async def put() -> dict[str, Any]:
        async with client_and_fast(s3_server, bucket) as (_, fast):
            return await fast.put_object(Key="empty", Body=b"")

    response = run(put())
    assert response["ETag"] == f'"{hashlib.md5(b"").hexdigest()}"'
    stored = s3.get_object(Bucket=bucket, Key="empty")
    assert stored["Body"].read() == b""
    assert stored["VersionId"] == response["VersionId"]


def test_server_refusal_raises_what_the_client_raises(s3_server: Any) -> None:
    bucket = "Bad_Bucket"  # botocore lets it through, SeaweedFS answers InvalidBucketName

    async def both() -> tuple[BaseException, BaseException]:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            quick = await raised(lambda: fast.put_object(Key="k", Body=b"x"))
            plain = await raised(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"x"))
            return quick, plain

    quick, plain = run(both())
    assert error_code(quick) == "InvalidBucketName"
    assert comparable(quick) == comparable(plain)
    assert classify(quick) is ErrorKind.PERMANENT


def test_unreachable_server_raises_the_clients_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        endpoint = f"http://127.0.0.1:{port}"

        async def both() -> tuple[BaseException, BaseException]:
            async with open_s3(endpoint, "AKID", "secret") as (client, credentials):
                fast = unprobed(client, credentials, endpoint, "bucket")
                quick = await raised(lambda: fast.put_object(Key="k", Body=b"x"))
                plain = await raised(lambda: client.put_object(Bucket="bucket", Key="k", Body=b"x"))
                await fast.close()
                return quick, plain

        quick, plain = run(both())
    assert type(quick) is type(plain) is botocore.exceptions.EndpointConnectionError
    assert classify(quick) is ErrorKind.TRANSIENT


def test_non_ascii_metadata_is_refused_like_the_client(s3_server: Any, bucket_name: str) -> None:
    async def both() -> tuple[BaseException, BaseException]:
        async with client_and_fast(s3_server, bucket_name) as (client, fast):
            meta = {"name": "café"}
            quick = await raised(lambda: fast.put_object(Key="k", Body=b"x", Metadata=meta))
            plain = await raised(
                lambda: client.put_object(Bucket=bucket_name, Key="k", Body=b"x", Metadata=meta)
            )
            return quick, plain

    quick, plain = run(both())
    assert type(quick) is type(plain) is botocore.exceptions.ParamValidationError
    assert str(quick) == str(plain)


def test_refreshable_credentials_are_refreshed_per_request(s3_server: Any, s3: Any, bucket_name: str) -> None:
    bucket = versioned_bucket(s3, bucket_name)
    refreshes = 0
    expired = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).isoformat()

    async def refresh() -> dict[str, Any]:
        nonlocal refreshes
        refreshes += 1
        valid = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
        admin = s3_server.admin
        return {
            "access_key": admin.access_key,
            "secret_key": admin.secret_key,
            "token": None,
            "expiry_time": valid,
        }

    async def put() -> tuple[dict[str, Any], dict[str, Any]]:
        async with open_s3(s3_server.endpoint_url, "STALEKEY", "stale-secret") as (client, _):
            refreshable = AioRefreshableCredentials.create_from_metadata(
                {"access_key": "STALEKEY", "secret_key": "stale", "token": None, "expiry_time": expired},
                refresh_using=refresh,
                method="test",
            )
            fast = unprobed(client, refreshable, s3_server.endpoint_url, bucket)
            first = await fast.put_object(Key="refreshed", Body=b"x")
            second = await fast.put_object(Key="refreshed", Body=b"y")
            await fast.close()
            return first, second

    first, second = run(put())
    assert first["ResponseMetadata"]["HTTPStatusCode"] == second["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert refreshes == 1  # renewed once, when expired; valid for an hour after that


def test_other_bucket_is_refused() -> None:
    fast = FastPut(settings_for("http://127.0.0.1:9"), "mine", REGION, Frozen(), None, 8)
    assert isinstance(run(raised(lambda: fast.put_object(Bucket="theirs", Key="k", Body=b"x"))), ValueError)


@pytest.mark.parametrize(
    ("env", "more", "endpoint", "reason"),
    [
        ({"SYNCD_FASTPATH": "0"}, {}, "http://127.0.0.1:9", "SYNCD_FASTPATH=0"),
        ({}, {}, None, "no endpoint_url"),
        ({}, {"checksum": "when_supported"}, "http://127.0.0.1:9", "CRC32"),
        ({}, {}, "http://127.0.0.1:9/prefix", "not a bare"),
        ({"HTTP_PROXY": "http://127.0.0.1:3128", "NO_PROXY": ""}, {}, "http://s3.example.test", "proxy"),
    ],
    ids=["switched-off", "aws", "crc32", "endpoint-path", "proxy"],
)
def test_create_declines_what_it_does_not_support(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    more: dict[str, Any],
    endpoint: str | None,
    reason: str,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def create() -> Any:
        async with open_s3(endpoint or "http://127.0.0.1:9", "AKID", "secret") as (client, credentials):
            return await FastPut.create(client, settings_for(endpoint, **more), "bucket", credentials, pool=4)

    why = run(create())
    assert isinstance(why, str) and reason in why
    assert why_not(settings_for(endpoint, **more), "bucket") == why


# -- upload_part: parts hashed by the caller and streamed --------------------------------------------------


async def chunks_of(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("size", [1000, fastpath.EXPECT_CONTINUE_MIN], ids=["small", "1MiB"])
@pytest.mark.parametrize("key", ["plain.bin", SPECIAL_KEYS[0], SPECIAL_KEYS[5]])
def test_part_request_is_the_one_botocore_sends(
    s3_server: Any, s3: Any, bucket_name: str, monkeypatch: pytest.MonkeyPatch, key: str, size: int
) -> None:
    """Same second on the clock: same URL (query too), headers and Authorization as client.upload_part."""
    bucket = versioned_bucket(s3, bucket_name)
    Clock(monkeypatch)
    body = b"p" * size
    seen: list[Any] = []

    async def both() -> tuple[str, dict[str, str]]:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            upload_id = (await client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
            client.meta.events.register(
                "before-send.s3.UploadPart", lambda request, **_: seen.append(request)
            )
            await client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=3, Body=body, ContentMD5=md5_b64(body)
            )
            await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            return await fast._part_signed(key, upload_id, 3, size, md5_b64(body), sha256_hex(body))

    url, headers = run(both())
    (sent,) = seen
    assert url == sent.url
    assert signed_part(headers) == signed_part(sent_headers(sent))
    assert set(headers) - set(signed_part(headers)) <= UNSIGNED
    assert headers["Content-Length"] == str(size)


def test_streamed_parts_complete_into_the_bytes_sent(s3_server: Any, s3: Any, bucket_name: str) -> None:
    """Parts streamed in pieces: the object holds the bytes, has the multipart ETag and the VersionId."""
    bucket = versioned_bucket(s3, bucket_name)
    parts = [hashlib.sha256(bytes([n])).digest() * (5 * 1024 * 1024 // 32) for n in range(2)] + [b"tail"]

    async def upload() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            upload_id = (await client.create_multipart_upload(Bucket=bucket, Key="big"))["UploadId"]
            done = []
            for number, part in enumerate(parts, start=1):
                response = await fast.upload_part(
                    Key="big",
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunks_of(part),
                    ContentLength=len(part),
                    ContentMD5=md5_b64(part),
                    PayloadSHA256=sha256_hex(part),
                )
                done.append({"PartNumber": number, "ETag": response["ETag"]})
            completed = await client.complete_multipart_upload(
                Bucket=bucket, Key="big", UploadId=upload_id, MultipartUpload={"Parts": done}
            )
            return done, completed

    done, completed = run(upload())
    assert [p["ETag"] for p in done] == [f'"{hashlib.md5(p).hexdigest()}"' for p in parts]
    stored = s3.get_object(Bucket=bucket, Key="big")
    assert stored["Body"].read() == b"".join(parts)
    assert stored["VersionId"] == completed["VersionId"]
    composite = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert stored["ETag"] == f'"{composite}-3"'


def test_part_bytes_that_differ_from_their_hashes_are_refused(
    s3_server: Any, s3: Any, bucket_name: str
) -> None:
    """What the caller hashed is what the server must get: other bytes are refused, never stored."""
    bucket = versioned_bucket(s3, bucket_name)
    hashed, sent = b"a" * 4096, b"b" * 4096

    async def attempt(**hashes: str) -> BaseException:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            upload_id = (await client.create_multipart_upload(Bucket=bucket, Key="k"))["UploadId"]
            try:
                return await raised(
                    lambda: fast.upload_part(
                        Key="k",
                        UploadId=upload_id,
                        PartNumber=1,
                        Body=chunks_of(sent),
                        ContentLength=len(sent),
                        **hashes,
                    )
                )
            finally:
                await client.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)

    both_stale = run(attempt(ContentMD5=md5_b64(hashed), PayloadSHA256=sha256_hex(hashed)))
    md5_stale = run(attempt(ContentMD5=md5_b64(hashed), PayloadSHA256=sha256_hex(sent)))
    for exc in (both_stale, md5_stale):
        assert isinstance(exc, botocore.exceptions.ClientError), exc
        assert error_code(exc) in ("BadDigest", "XAmzContentSHA256Mismatch", "SignatureDoesNotMatch")
    assert error_code(md5_stale) == "BadDigest"


# -- through the CLI, behind a front that fakes only the fast path's answers ---------------------------------


@pytest.mark.parametrize("when", ["probe", "later"])
def test_signatures_refused_only_on_the_fast_path_turn_it_off(
    tmp_path: Any, s3: Any, s3_server: Any, bucket_name: str, make_config: Any, run_syncd: Any, when: str
) -> None:
    """A server that refuses the fast path's signatures (a signing change) but takes the client's: the fast
    path turns off with a warning and everything is uploaded by the client; never exit 4 (credentials).
    'probe': refused from the first request (found by the probe); 'later': only after the probe."""

    def answer(request: Request) -> Answer | None:
        if not from_the_fast_path(request):
            return None
        if when == "later" and request.query.get("uploadId") == fastpath.PROBE_UPLOAD_ID:
            return None
        message = "The request signature we calculated does not match the signature you provided."
        return error_answer(403, "SignatureDoesNotMatch", message)

    folder = tmp_path / "data"
    for i in range(12):
        write(folder / f"d/f{i}.txt", f"file {i}".encode())
    write(folder / "medium.bin", bytes(range(256)) * 4096)  # 1 MiB: hashed, then streamed in one PUT
    with BadServer("proxy", upstream=s3_server.endpoint_url, answer=answer) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        result = run_syncd(["once", "-c", str(config)])

    assert result.returncode == 0, result.stderr
    assert bucket_objects(s3, bucket_name) == tree(folder)
    records = json_records(result.stderr)
    (off,) = [r for r in records if r.get("event") == "fastpath_off"]
    assert off["level"] == "warning" and "SignatureDoesNotMatch" in off["reason"]
    assert not [r for r in records if r.get("event") == "upload_failed"]
