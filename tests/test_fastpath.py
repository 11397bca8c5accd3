"""FastPut against a real SeaweedFS: the same request, object, response and errors as client.put_object."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime
import hashlib
import re
import socket
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aioboto3
import botocore.auth
import botocore.exceptions
import pytest
from aiobotocore.credentials import AioCredentials, AioRefreshableCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from syncd.config import S3Settings
from syncd.s3 import fastpath
from syncd.s3.client import ErrorKind, boto_config, classify, error_code, http_status
from syncd.s3.fastpath import TESTED_VERSIONS, FastPut, installed_versions, why_not

T = TypeVar("T")
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
# Headers the client sends that FastPut leaves out on purpose: SDK retry telemetry, and the Content-Length
# that aiohttp adds from the body. None of them is signed.
UNSENT = {"amz-sdk-invocation-id", "amz-sdk-request", "Content-Length"}


@pytest.fixture(autouse=True)
def fast_path_switch_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests decide SYNCD_FASTPATH(_SIGNER) themselves, whatever the shell running them says."""
    monkeypatch.delenv(fastpath.ENV_SWITCH, raising=False)
    monkeypatch.delenv(fastpath.SIGNER_SWITCH, raising=False)


def botocore_signed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[FastPut, str]]:
    """From now on, record each (FastPut, quoted key) signed by botocore's S3SigV4Auth instead of our own."""
    calls: list[tuple[FastPut, str]] = []
    original = FastPut._botocore_signed

    def recorded(self: FastPut, quoted: str, *args: Any) -> tuple[str, dict[str, str]]:
        calls.append((self, quoted))
        return original(self, quoted, *args)

    monkeypatch.setattr(FastPut, "_botocore_signed", recorded)
    return calls


class Clock:
    """One frozen UTC instant for both signers: botocore's (the client's) and FastPut's own."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, when: datetime.datetime | None = None) -> None:
        self.now = when or datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: self.now)
        monkeypatch.setattr(fastpath, "_clock", lambda: self.now.replace(tzinfo=datetime.UTC).timestamp())


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


@contextlib.asynccontextmanager
async def open_s3(endpoint_url: str, access_key: str, secret_key: str, **settings: Any) -> AsyncIterator[Any]:
    """A client configured exactly as syncd's (syncd.s3.client.boto_config), with explicit keys."""
    s = S3Settings(endpoint_url=endpoint_url, region="us-east-1", **settings)
    session = aioboto3.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    async with session.client(
        "s3", endpoint_url=s.endpoint_url, region_name=s.region, config=boto_config(s, 8)
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def client_and_fast(
    server: Any, bucket: str, *, access_key: str | None = None, secret_key: str | None = None
) -> AsyncIterator[tuple[Any, FastPut]]:
    access_key = access_key or server.admin.access_key
    async with open_s3(server.endpoint_url, access_key, secret_key or server.admin.secret_key) as client:
        fast = FastPut.create(client, bucket)
        assert fast is not None, why_not(client, bucket)
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


def comparable(exc: BaseException) -> tuple[type[BaseException], dict[str, Any], int]:
    assert isinstance(exc, botocore.exceptions.ClientError)
    error = {k: v for k, v in exc.response["Error"].items() if k not in ("RequestId", "HostId")}
    return type(exc), error, http_status(exc)


def test_installed_versions_are_the_tested_ones() -> None:
    """Fails (never skips) on an upgrade: FastPut reads botocore/aiobotocore/aiohttp internals."""
    found = installed_versions()
    assert found == TESTED_VERSIONS, (
        f"installed {found} but syncd.s3.fastpath.TESTED_VERSIONS is {TESTED_VERSIONS}. FastPut now turns "
        "itself off (create() returns None). Re-check the internals it uses (client._request_signer, "
        "_ruleset_resolver._builtins, _endpoint.http_session._get_session, S3SigV4Auth's reads of the "
        "request and its _should_sha256_sign_payload, botocore.auth._host_from_url, the SigV4 canonical "
        "request our own signer rebuilds, aiobotocore's transport error mapping, the retry metadata), run "
        "this file with SYNCD_FASTPATH=force, then update TESTED_VERSIONS."
    )


@pytest.mark.parametrize("signer", ["own", "botocore"])
def test_same_object_response_and_versions_as_the_client(
    s3_server: Any, s3: Any, bucket_name: str, monkeypatch: pytest.MonkeyPatch, signer: str
) -> None:
    """The server takes FastPut's signature (its own or, with SYNCD_FASTPATH_SIGNER=botocore, botocore's)."""
    if signer == "botocore":
        monkeypatch.setenv(fastpath.SIGNER_SWITCH, signer)
    calls = botocore_signed(monkeypatch)
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
    assert [key for _, key in calls] == ([] if signer == "own" else ["fast/obj", "fast/obj"])
    assert set(quick) == set(plain) == {"ResponseMetadata", "ETag", "VersionId"}
    assert set(quick["ResponseMetadata"]) == set(plain["ResponseMetadata"])
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


@pytest.mark.parametrize("size", [0, 1000, fastpath.EXPECT_CONTINUE_MIN], ids=["empty", "small", "1MiB"])
@pytest.mark.parametrize("key", ["plain.txt", SPECIAL_KEYS[0], SPECIAL_KEYS[5], SPECIAL_KEYS[7]])
def test_signed_request_is_the_one_botocore_sends(
    s3_server: Any, s3: Any, bucket_name: str, monkeypatch: pytest.MonkeyPatch, key: str, size: int
) -> None:
    """Same second on the clock: same URL, same headers, same Authorization as the client's own request."""
    bucket = versioned_bucket(s3, bucket_name)
    Clock(monkeypatch)
    body = b"x" * size
    seen: list[Any] = []

    async def both() -> tuple[str, dict[str, str]]:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            client.meta.events.register("before-send.s3.PutObject", lambda request, **_: seen.append(request))
            await client.put_object(
                Bucket=bucket, Key=key, Body=body, ContentMD5=md5_b64(body), Metadata={"a": "b"}
            )
            return await fast._signed(key, body, md5_b64(body), None, {"a": "b"})

    url, headers = run(both())
    (sent,) = seen
    theirs = {
        k: v.decode() if isinstance(v, bytes) else v for k, v in sent.headers.items() if k not in UNSENT
    }
    theirs["Accept-Encoding"] = "identity"  # added by aiobotocore's transport after before-send
    if size < fastpath.EXPECT_CONTINUE_MIN:
        del theirs["Expect"]  # not signed; FastPut skips the 100-continue round trip for small bodies
    assert url == sent.url
    assert headers == theirs
    assert headers["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()  # http: payload signed


def test_https_uses_unsigned_payload_like_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """On TLS the client signs UNSIGNED-PAYLOAD with Content-MD5; FastPut must do the same. No network:
    the client's request is captured before it is sent."""
    Clock(monkeypatch)
    body = b"tls body"

    class Captured(Exception):
        pass

    def capture(request: Any, **_: Any) -> None:
        raise Captured(request)

    async def both() -> tuple[Any, tuple[str, dict[str, str]]]:
        async with open_s3("https://127.0.0.1:9", "AKIDEXAMPLE", "secret/example+key") as client:
            fast = FastPut.create(client, "tls-bucket")
            assert fast is not None
            client.meta.events.register("before-send.s3.PutObject", capture)
            exc = await raised(
                lambda: client.put_object(
                    Bucket="tls-bucket", Key="k ey", Body=body, ContentMD5=md5_b64(body)
                )
            )
            assert isinstance(exc, Captured)
            return exc.args[0], await fast._signed("k ey", body, md5_b64(body), None, None)

    sent, (url, headers) = run(both())
    assert url == sent.url
    assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert headers["Content-MD5"] == md5_b64(body)
    assert headers["Authorization"] == sent.headers["Authorization"].decode()


class Captured(Exception):
    """Raised from the client's before-send hook: its request, fully signed, and no network."""


def _capture(request: Any, **_: Any) -> None:
    raise Captured(request)


TOKEN_CHARS = "!#$%&'*+.^_`|~-" + string.ascii_letters + string.digits
# The metadata names FastPut's own signer takes; the rest are signed by S3SigV4Auth (and must still match).
OWN_SIGNER_NAME = re.compile(f"[{re.escape(TOKEN_CHARS)}]+")
object_keys = st.text(
    st.characters(exclude_categories=["Cs"]) | st.sampled_from(list(" %+#?~‛/&=;:@!$'()*,[]\\")),
    min_size=1,
    max_size=30,
)
metadata_names = st.one_of(
    st.text(TOKEN_CHARS, min_size=1, max_size=12),
    # prefixes of each other (sorting "name:value" lines is not sorting names); equal but for case
    st.sampled_from(["syncd", "syncd-mtime", "syncd.mtime", "syncd0", "syncd_x", "Mixed-Case", "mixed-case"]),
    st.text(string.printable, max_size=8),  # spaces, colons, newlines, empty: botocore's signer
)
metadata_values = st.one_of(
    st.text(string.printable, max_size=24),
    st.sampled_from(["", " spaced  value ", "tab\there", "1700000000.25"]),
)
ascii_metadata = st.dictionaries(metadata_names, metadata_values, max_size=4)
any_metadata = st.dictionaries(st.text(max_size=3), st.text(max_size=3), min_size=1, max_size=2)
# One in five may hold non-ASCII names or values: refused by both, with the same ParamValidationError.
metadata = st.integers(0, 4).flatmap(lambda n: any_metadata if n == 0 else ascii_metadata)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/octet-stream", "text/plain; charset=utf-8", " text/x  spaced "]),
    st.text(string.printable, max_size=24),
    st.text(max_size=6),  # non-ASCII: botocore's signer
)
credentials = st.one_of(
    st.sampled_from(
        [
            ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None),
            ("AKIDEXAMPLE", "rotated/secret", None),
            ("ASIATEMPORARY", "temporary+secret", "FwoGZXIvYXdzE//////////wEaD token=="),
            ("ASIATEMPORARY", "temporary+secret", " spaced  token "),
            ("ASIATEMPORARY", "temporary+secret", ""),
        ]
    ),
    st.tuples(
        st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=20),
        st.text(min_size=1, max_size=40),
        st.none() | st.text(max_size=40),
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


def uses_own_signer(content_type: str | None, metadata: dict[str, str]) -> bool:
    names = [name for name in metadata if OWN_SIGNER_NAME.fullmatch(name)]
    distinct = len({name.lower() for name in names}) == len(metadata)
    return distinct and (content_type is None or content_type.isascii())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_own_signer_signs_what_botocore_signs(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    """For random keys, bodies, metadata, content types, credentials (with and without a session token) and
    instants (across midnight, across a credentials change), FastPut's own signer gives the URL and every
    header, Authorization included, that S3SigV4Auth gives (SYNCD_FASTPATH_SIGNER=botocore) and the client
    itself sends. No network: the client's request is captured before it is sent."""
    clock = Clock(monkeypatch)
    bucket = "sig-bucket"

    async def outcome(call: Awaitable[tuple[str, dict[str, str]]]) -> Any:
        try:
            return await call
        except Exception as exc:
            return type(exc), str(exc)

    async def clients_request(client: Any, args: dict[str, Any]) -> Any:
        try:
            await client.put_object(Bucket=bucket, **args)
        except Captured as captured:
            sent = captured.args[0]
        except Exception as exc:
            return type(exc), str(exc)
        else:
            raise AssertionError("the before-send hook did not run")
        headers = {
            k: v.decode() if isinstance(v, bytes) else v for k, v in sent.headers.items() if k not in UNSENT
        }
        headers["Accept-Encoding"] = "identity"  # added by aiobotocore's transport after before-send
        if len(args["Body"]) < fastpath.EXPECT_CONTINUE_MIN:
            del headers["Expect"]  # not signed; FastPut skips the 100-continue round trip for small bodies
        return sent.url, headers

    with asyncio.Runner() as runner, contextlib.ExitStack() as undo:
        exits = contextlib.AsyncExitStack()
        undo.callback(lambda: runner.run(exits.aclose()))
        client = runner.run(exits.enter_async_context(open_s3(f"{scheme}://127.0.0.1:9", "AKID", "secret")))
        client.meta.events.register("before-send.s3.PutObject", _capture)
        own = FastPut.create(client, bucket)
        monkeypatch.setenv(fastpath.SIGNER_SWITCH, "botocore")
        reference = FastPut.create(client, bucket)
        monkeypatch.delenv(fastpath.SIGNER_SWITCH)
        assert own is not None and reference is not None
        calls = botocore_signed(monkeypatch)
        seen: collections.Counter[str] = collections.Counter()

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            key=object_keys,
            size=st.sampled_from([0, 1000, 1024 * 1024]),
            give_md5=st.booleans(),
            content_type=content_types,
            metadata=metadata,
            start=instants,
            steps=steps,
        )
        def check(
            key: str,
            size: int,
            give_md5: bool,
            content_type: str | None,
            metadata: dict[str, str],
            start: datetime.datetime,
            steps: list[tuple[int, tuple[str, str, str | None]]],
        ) -> None:
            body = (bytes(range(256)) * (size // 256 + 1))[:size]
            clock.now = start
            for microseconds, creds in steps:
                day = clock.now.date()
                clock.now += datetime.timedelta(microseconds=microseconds)
                client._request_signer._credentials = AioCredentials(*creds)
                calls.clear()
                md5 = md5_b64(body) if give_md5 else None
                call = (key, body, md5, content_type, metadata)
                ours = runner.run(outcome(own._signed(*call)))
                theirs = runner.run(outcome(reference._signed(*call)))
                assert ours == theirs
                signed = isinstance(ours[1], dict)
                if signed:  # and the URL aiohttp is given is that URL, as the client's transport makes it
                    target = own._target(ours[0])
                    assert target == URL(ours[0], encoded=True) and str(target) == ours[0]
                fallbacks = [quoted for fast, quoted in calls if fast is own]
                if signed:
                    assert bool(fallbacks) != uses_own_signer(content_type, metadata)
                    seen["botocore's signer" if fallbacks else "own signer"] += 1
                    seen["session token"] += bool(creds[2])
                    seen["metadata"] += bool(metadata) and not fallbacks
                    seen["next day"] += clock.now.date() != day
                else:
                    seen["refused"] += 1
                if give_md5 and len({name.lower() for name in metadata}) == len(metadata):
                    # (names equal but for case go to client.put_object: a test of its own)
                    args = {"Key": key, "Body": body, "ContentMD5": md5, "Metadata": metadata}
                    if content_type is not None:
                        args["ContentType"] = content_type
                    assert ours == runner.run(clients_request(client, args))
                    seen["same as the client's"] += signed

        check()
    # The comparisons above were not vacuous: each kind of case came up.
    kinds = ("botocore's signer", "session token", "metadata", "refused", "next day")
    assert min(seen[kind] for kind in kinds) >= 3, seen
    assert seen["own signer"] >= 80 and seen["same as the client's"] >= 40, seen


def test_signing_key_is_derived_once_per_day_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch, datetime.datetime(2030, 5, 17, 23, 59, 58))

    async def keys_used() -> list[bytes]:
        async with open_s3("http://127.0.0.1:9", "AKID", "secret") as client:
            fast = FastPut.create(client, "bucket")
            assert fast is not None

            async def key_after(change: Callable[[], object]) -> bytes:
                change()
                await fast._signed("k", b"x", None, None, None)
                return fast._sigv4._key

            def tick() -> None:
                clock.now += datetime.timedelta(seconds=1)

            def rotate() -> None:
                client._request_signer._credentials = AioCredentials("AKID", "rotated")

            return [await key_after(change) for change in (lambda: None, tick, tick, rotate)]

    first, same_day, next_day, rotated = run(keys_used())
    assert same_day is first
    assert len({first, next_day, rotated}) == 3


def test_metadata_names_equal_but_for_case_go_to_the_client(
    s3_server: Any, s3: Any, bucket_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client signs both values of {"Name": .., "name": ..} but sends one header; FastPut hands such a
    PUT to client.put_object rather than send a request of its own that the client would not."""
    bucket = versioned_bucket(s3, bucket_name)
    meta = {"Name": "first", "name": "second"}

    async def both() -> tuple[Any, Any, list[dict[str, Any]]]:
        async with client_and_fast(s3_server, bucket) as (client, fast):
            delegated: list[dict[str, Any]] = []
            put_object = client.put_object

            async def spy(**kwargs: Any) -> Any:
                delegated.append(kwargs)
                return await put_object(**kwargs)

            monkeypatch.setattr(client, "put_object", spy)
            quick = await raised(
                lambda: fast.put_object(Key="k", Body=b"x", ContentMD5=md5_b64(b"x"), Metadata=meta)
            )
            plain = await raised(lambda: put_object(Bucket=bucket, Key="k", Body=b"x", Metadata=meta))
            return quick, plain, delegated

    quick, plain, delegated = run(both())
    assert delegated == [
        {"Bucket": bucket, "Key": "k", "Body": b"x", "ContentMD5": md5_b64(b"x"), "Metadata": meta}
    ]
    assert comparable(quick) == comparable(plain)


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
    bucket = versioned_bucket(s3, bucket_name)
    keys = {"secret_key": "not-the-secret"} if wrong == "secret" else {"access_key": "NOSUCHKEY0000"}

    async def both() -> tuple[BaseException, BaseException]:
        async with client_and_fast(s3_server, bucket, **keys) as (client, fast):
            quick = await raised(lambda: fast.put_object(Key="k", Body=b"x"))
            plain = await raised(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"x"))
            return quick, plain

    quick, plain = run(both())
    assert error_code(quick) == code
    assert classify(quick) is ErrorKind.CREDENTIALS
    assert comparable(quick) == comparable(plain)


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

    async def put() -> tuple[dict[str, Any], dict[str, str]]:
        async with client_and_fast(s3_server, bucket) as (_, fast):
            _, headers = await fast._signed("empty", b"", None, None, None)
            return await fast.put_object(Key="empty", Body=b""), headers

    response, headers = run(put())
    assert headers["Content-MD5"] == md5_b64(b"")
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

        async def both() -> tuple[BaseException, BaseException]:
            async with open_s3(f"http://127.0.0.1:{port}", "AKID", "secret") as client:
                fast = FastPut.create(client, "bucket")
                assert fast is not None
                quick = await raised(lambda: fast.put_object(Key="k", Body=b"x"))
                plain = await raised(lambda: client.put_object(Bucket="bucket", Key="k", Body=b"x"))
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

    async def put() -> dict[str, Any]:
        async with open_s3(s3_server.endpoint_url, "STALEKEY", "stale-secret") as client:
            client._request_signer._credentials = AioRefreshableCredentials.create_from_metadata(
                {"access_key": "STALEKEY", "secret_key": "stale", "token": None, "expiry_time": expired},
                refresh_using=refresh,
                method="test",
            )
            fast = FastPut.create(client, bucket)
            assert fast is not None
            return await fast.put_object(Key="refreshed", Body=b"x")

    response = run(put())
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert refreshes == 1


def test_other_bucket_is_refused() -> None:
    async def call() -> BaseException:
        async with open_s3("http://127.0.0.1:9", "AKID", "secret") as client:
            fast = FastPut.create(client, "mine")
            assert fast is not None
            return await raised(lambda: fast.put_object(Bucket="theirs", Key="k", Body=b"x"))

    assert isinstance(run(call()), ValueError)


@pytest.mark.parametrize(
    ("env", "versions", "settings", "endpoint", "reason"),
    [
        ("0", None, {}, "http://127.0.0.1:9", "SYNCD_FASTPATH=0"),
        ("", {"botocore": "0.0.1"}, {}, "http://127.0.0.1:9", "differ from the tested"),
        ("", None, {}, None, "no endpoint_url"),
        ("", None, {"checksum": "when_supported"}, "http://127.0.0.1:9", "request_checksum_calculation"),
        ("", None, {}, "http://127.0.0.1:9/prefix", "not a bare"),
    ],
    ids=["switched-off", "other-versions", "aws", "crc32", "endpoint-path"],
)
def test_create_declines_what_it_does_not_support(
    monkeypatch: pytest.MonkeyPatch,
    env: str,
    versions: dict[str, str] | None,
    settings: dict[str, Any],
    endpoint: str | None,
    reason: str,
) -> None:
    monkeypatch.setenv(fastpath.ENV_SWITCH, env)
    if versions is not None:
        monkeypatch.setattr(fastpath, "TESTED_VERSIONS", {**TESTED_VERSIONS, **versions})

    async def create() -> tuple[FastPut | None, str | None]:
        s = S3Settings(endpoint_url=endpoint, region="us-east-1", **settings)
        session = aioboto3.Session(aws_access_key_id="AKID", aws_secret_access_key="secret")
        async with session.client("s3", endpoint_url=endpoint, config=boto_config(s, 8)) as client:
            return FastPut.create(client, "bucket"), why_not(client, "bucket")

    fast, why = run(create())
    assert fast is None
    assert why is not None and reason in why


def test_force_skips_only_the_version_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fastpath.ENV_SWITCH, "force")
    monkeypatch.setattr(fastpath, "TESTED_VERSIONS", {**TESTED_VERSIONS, "aiohttp": "0.0.1"})

    async def create() -> tuple[FastPut | None, FastPut | None]:
        async with open_s3("http://127.0.0.1:9", "AKID", "secret") as client:
            path = FastPut.create(client, "bucket")
        async with open_s3("http://127.0.0.1:9", "AKID", "secret", checksum="when_supported") as client:
            return path, FastPut.create(client, "bucket")

    supported, unsupported = run(create())
    assert supported is not None
    assert unsupported is None


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
    theirs = {
        k: v.decode() if isinstance(v, bytes) else v
        for k, v in sent.headers.items()
        if k not in UNSENT - {"Content-Length"}
    }
    theirs["Accept-Encoding"] = "identity"  # added by aiobotocore's transport after before-send
    theirs.setdefault("Content-Length", str(size))
    if size < fastpath.EXPECT_CONTINUE_MIN:
        theirs.pop("Expect", None)  # not signed; FastPut skips the 100-continue round trip for small bodies
    assert url == sent.url
    assert headers == theirs


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
