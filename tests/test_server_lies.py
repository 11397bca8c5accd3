"""Servers that lie (issue 10): nothing is recorded as uploaded that the server did not store.

Each test puts a fault-injecting front (tests/badserver.py) before the session's real SeaweedFS: every
request goes through to the real server except the one answer the attack fakes, on the fast path and on
the plain client (SYNCD_FASTPATH=0) where both send the request.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from badserver import Answer, BadServer, Request
from helpers import bucket_objects, json_records, write

from syncd.s3 import fastpath

SENDERS = ["fast", "plain"]


def env_for(syncd_env: dict[str, str], sender: str) -> dict[str, str]:
    return dict(syncd_env, SYNCD_FASTPATH="1" if sender == "fast" else "0")


def object_put(request: Request, key: str) -> bool:
    """A PUT of the object `key` (not the fast path's probe, not a bucket request)."""
    return (
        request.method == "PUT"
        and request.path.split("?")[0].endswith("/" + key)
        and request.query.get("uploadId") != fastpath.PROBE_UPLOAD_ID
    )


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == name]


@pytest.mark.parametrize("sender", SENDERS)
def test_a_redirect_is_an_error_naming_where_it_points_never_followed(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd, syncd_env, sender
):
    """A 307 to another host that answers 200 with a version id of its own: no sender follows it (nothing,
    not even the bytes without the Authorization header, reaches the other host) and the upload fails
    naming where it points."""
    folder = tmp_path / "data"
    write(folder / "kept.txt", b"stays here")
    write(folder / "secret.txt", b"must not go elsewhere")

    def elsewhere_answer(request: Request) -> Answer:
        etag = hashlib.md5(request.body).hexdigest()
        return Answer(200, b"", {"ETag": f'"{etag}"', "x-amz-version-id": "elsewhere-1"})

    with BadServer("500", answer=elsewhere_answer) as elsewhere:

        def redirect(request: Request) -> Answer | None:
            if object_put(request, "secret.txt"):
                return Answer(307, b"", {"Location": elsewhere.url + request.path})
            return None

        with BadServer("proxy", upstream=s3_server.endpoint_url, answer=redirect) as front:
            config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
            result = run_syncd(["once", "-c", str(config)], env=env_for(syncd_env, sender))

    records = json_records(result.stderr)
    assert result.returncode == 1, result.stderr
    assert elsewhere.requests == []  # nothing was sent to the other host
    assert [r["key"] for r in events(records, "uploaded")] == ["kept.txt"]
    (failed,) = events(records, "upload_failed")
    assert failed["path"] == "secret.txt"
    assert elsewhere.url in failed["reason"] and "does not follow redirects" in failed["reason"]
    assert bucket_objects(s3, bucket_name) == {"kept.txt": b"stays here"}


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("encryption", ["none", "aws:kms"])
def test_an_etag_that_is_not_the_md5_sent_fails_the_upload(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd, syncd_env, sender, encryption
):
    """A 200 whose ETag is an MD5 other than the Content-MD5 syncd sent: retried, then upload_failed,
    never `uploaded`. SSE-KMS objects have ETags that are not their MD5: taken as they are."""
    folder = tmp_path / "data"
    write(folder / "kept.txt", b"stays here")
    write(folder / "lied.txt", b"the server says it stored other bytes")
    puts = 0

    def wrong_etag(request: Request) -> Answer | None:
        nonlocal puts
        if not object_put(request, "lied.txt"):
            return None
        puts += 1
        real = front.forward(request)
        headers = dict(real.headers, ETag=f'"{hashlib.md5(b"other bytes").hexdigest()}"')
        if encryption != "none":
            headers["x-amz-server-side-encryption"] = encryption
        return Answer(real.status, real.body, headers)

    with BadServer("proxy", upstream=s3_server.endpoint_url, answer=wrong_etag) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        result = run_syncd(["once", "-c", str(config)], env=env_for(syncd_env, sender))

    records = json_records(result.stderr)
    uploaded = sorted(r["key"] for r in events(records, "uploaded"))
    if encryption == "none":
        assert result.returncode == 1, result.stderr
        assert uploaded == ["kept.txt"]
        (failed,) = events(records, "upload_failed")
        assert failed["path"] == "lied.txt" and "ETagMismatch" in failed["reason"]
        assert puts > 1  # sent again before giving up
    else:
        assert result.returncode == 0, result.stderr
        assert uploaded == ["kept.txt", "lied.txt"] and puts == 1


# The deadline is the retrier's, the same for both senders: the plain client's run (12 s) is in -m slow.
@pytest.mark.parametrize("sender", ["fast", pytest.param("plain", marks=pytest.mark.slow)])
def test_a_server_that_drips_its_answer_becomes_a_retry_not_a_hang(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd, syncd_env, sender
):
    """The answer to one PUT comes a byte every 5 s (no socket read timeout ever fires): each attempt ends
    at its deadline (s3.request_timeout, 1 s here: the least it takes) and is retried; the file fails, the
    rest is uploaded."""
    folder = tmp_path / "data"
    write(folder / "kept.txt", b"stays here")
    write(folder / "dripped.txt", b"its answer never ends")
    stop = threading.Event()

    answer = b"<?xml version='1.0'?><PutObjectResult/>"

    def drip() -> Iterator[bytes]:
        for byte in answer:
            yield bytes([byte])
            if stop.wait(5):
                return

    def dripping(request: Request) -> Answer | None:
        if object_put(request, "dripped.txt"):
            return Answer(200, drip(), {"Content-Length": str(len(answer)), "ETag": '"00"'})
        return None

    try:
        with BadServer("proxy", upstream=s3_server.endpoint_url, answer=dripping) as front:
            config = make_config(folder, bucket_name, s3={"endpoint_url": front.url, "request_timeout": "1s"})
            result = run_syncd(["once", "-c", str(config)], env=env_for(syncd_env, sender))
    finally:
        stop.set()

    records = json_records(result.stderr)
    assert result.returncode == 1, result.stderr
    assert [r["key"] for r in events(records, "uploaded")] == ["kept.txt"]
    (failed,) = events(records, "upload_failed")
    assert failed["path"] == "dripped.txt" and "Timeout" in failed["reason"]
    dripped = [r for r in front.requests if r[0] == "PUT" and "dripped.txt" in r[1]]
    assert len(dripped) > 1  # retried, each attempt ended by its deadline


@pytest.mark.parametrize(
    ("sender", "framing"), [("fast", "length"), ("plain", "length"), ("fast", "chunked")]
)
def test_an_error_body_is_read_up_to_a_cap(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd, syncd_env, sender, framing
):
    """A 500 whose XML body is 256 MiB (with its length, or chunked): each sender reads at most 1 MiB of it
    per attempt (the bytes the front sent bound what syncd held; the connection is then closed, never
    reused), retries, and fails the file with a one-line reason."""
    folder = tmp_path / "data"
    write(folder / "kept.txt", b"stays here")
    write(folder / "huge.txt", b"its error never ends")
    head = b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>"
    chunk = b"x" * (1024 * 1024)
    chunks = 256

    def huge() -> Iterator[bytes]:
        for piece in [head] + [chunk] * chunks:
            yield b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece
        if framing == "chunked":
            yield b"0\r\n\r\n"

    def endless_error(request: Request) -> Answer | None:
        if object_put(request, "huge.txt"):
            headers = {
                "Content-Type": "application/xml",
                "Content-Length": str(len(head) + chunks * len(chunk)),
            }
            if framing == "chunked":
                headers = {"Content-Type": "application/xml", "Transfer-Encoding": "chunked"}
            return Answer(500, huge(), headers)
        return None

    with BadServer("proxy", upstream=s3_server.endpoint_url, answer=endless_error) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        result = run_syncd(["once", "-c", str(config)], env=env_for(syncd_env, sender))

    records = json_records(result.stderr)
    assert result.returncode == 1, result.stderr
    assert [r["key"] for r in events(records, "uploaded")] == ["kept.txt"]
    (failed,) = events(records, "upload_failed")
    assert failed["path"] == "huge.txt" and "500" in failed["reason"] and "\n" not in failed["reason"]
    attempts = len([r for r in front.requests if r[0] == "PUT" and "huge.txt" in r[1]])
    assert attempts > 1
    assert front.sent < attempts * 16 * 1024 * 1024  # 1 MiB read, plus what the sockets buffered


def test_an_answer_over_the_cap_is_refused_unread(tmp_path, s3_server, bucket_name, make_config, run_syncd):
    """A listing answered 200 with a body said to be 1 GiB: the plain client refuses it without reading it
    (it used to read any answer whole), retries, and stops with one line naming the listing and the cap
    (exit 75)."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    chunk = b"x" * (1024 * 1024)
    chunks = 1024

    def huge() -> Iterator[bytes]:
        yield b"<?xml version='1.0'?><ListBucketResult>"
        for _ in range(chunks):
            yield chunk

    def huge_listing(request: Request) -> Answer | None:
        if request.method == "GET" and "list-type" in request.query:
            return Answer(200, huge(), {"Content-Type": "application/xml", "Content-Length": str(1 << 30)})
        return None

    with BadServer("proxy", upstream=s3_server.endpoint_url, answer=huge_listing) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url, "request_timeout": "5s"})
        result = run_syncd(["once", "-c", str(config), "--retry-for", "3s"], timeout=90)

    assert result.returncode == 75, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("syncd: error:")]
    # The server answers the rest (HeadBucket, the PUT probe): the listing alone failed, and is named.
    assert "kept failing ListObjectsV2" in line and "over syncd's cap" in line, line
    listings = len([r for r in front.requests if r[0] == "GET" and "list-type" in r[1]])
    assert listings > 1  # retried
    assert front.sent < listings * 16 * 1024 * 1024  # only what the sockets buffered, never the body


def truncated_forever(kind: str) -> Any:
    """An answer() that passes the listing of `kind` through but says IsTruncated=true, with a marker that
    never moves on."""

    def answer(front: BadServer, request: Request) -> Answer | None:
        query = request.query
        listing = "list-type" in query if kind == "objects" else "versions" in query
        if request.method != "GET" or not listing:
            return None
        real = front.forward(request)
        assert isinstance(real.body, bytes)
        body = re.sub(
            r"<Next(ContinuationToken|KeyMarker|VersionIdMarker)>[^<]*</Next\1>", "", real.body.decode()
        )
        if kind == "objects":
            more = "<NextContinuationToken>same</NextContinuationToken>"
        else:
            more = "<NextKeyMarker>a.txt</NextKeyMarker><NextVersionIdMarker>v1</NextVersionIdMarker>"
        body = re.sub(r"<IsTruncated>\w+</IsTruncated>", "<IsTruncated>true</IsTruncated>" + more, body)
        return Answer(real.status, body.encode(), real.headers)

    return answer


@pytest.mark.parametrize("command", ["versions", "once"])
def test_a_listing_that_never_advances_stops_with_a_clear_error(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd, command
):
    """IsTruncated=true with the same marker every time: syncd stops with one line saying so (exit 75),
    instead of asking forever. `versions` lists versions, `once` the current objects."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    s3.create_bucket(Bucket=bucket_name)
    s3.put_bucket_versioning(Bucket=bucket_name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket_name, Key="a.txt", Body=b"a")
    stuck = truncated_forever("versions" if command == "versions" else "objects")
    with BadServer("proxy", upstream=s3_server.endpoint_url) as front:
        front.answer = lambda request: stuck(front, request)
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        if command == "versions":
            result = run_syncd(["versions", "-c", str(config), str(folder / "a.txt")], timeout=60)
        else:
            result = run_syncd(["once", "-c", str(config)], timeout=60)

    assert result.returncode == 75, result.stderr
    assert "does not advance" in result.stderr
    listings = [r for r in front.requests if r[0] == "GET" and ("versions" in r[1] or "list-type" in r[1])]
    assert len(listings) <= 3


@pytest.mark.parametrize("command", ["versions", "restore"])
def test_a_wrong_secret_is_exit_4_for_versions_and_restore(
    tmp_path, s3, bucket_name, make_config, run_syncd, syncd_env, command
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    s3.create_bucket(Bucket=bucket_name)
    s3.put_object(Bucket=bucket_name, Key="a.txt", Body=b"a")
    config = make_config(folder, bucket_name)
    env = dict(syncd_env, AWS_SECRET_ACCESS_KEY="not-the-secret")
    target = ["--to", str(tmp_path / "out")] if command == "restore" else []
    result = run_syncd([command, "-c", str(config), str(folder / "a.txt"), *target], env=env)

    assert result.returncode == 4, result.stderr
    assert "credentials" in result.stderr and "internal error" not in result.stderr


def test_a_restore_whose_download_drips_fails_that_file_not_the_restore(
    tmp_path, s3_server, bucket_name, make_config, run_syncd
):
    """The body of one GetObject comes a byte every 2 s, without end (the socket read timeout never fires):
    each attempt ends at its deadline (s3.request_timeout, 1 s here, the least it takes, plus the size's
    share), is tried again, and the file fails with a one-line reason (exit 1); the other file is restored
    and no partial file is left."""
    folder = tmp_path / "data"
    write(folder / "kept.txt", b"comes back")
    write(folder / "dripped.txt", b"its download never ends")
    config = make_config(folder, bucket_name)
    uploaded = run_syncd(["once", "-c", str(config)])
    assert uploaded.returncode == 0, uploaded.stderr
    stop = threading.Event()

    def drip() -> Iterator[bytes]:
        while not stop.wait(2):
            yield b"x"

    def dripping(request: Request) -> Answer | None:
        if request.method == "GET" and request.path.split("?")[0].endswith("/dripped.txt"):
            real = front.forward(request)  # the real headers (ETag, metadata), then a body without end
            return Answer(200, drip(), dict(real.headers, **{"Content-Length": str(1 << 30)}))
        return None

    out = tmp_path / "out"
    try:
        with BadServer("proxy", upstream=s3_server.endpoint_url, answer=dripping) as front:
            config = make_config(folder, bucket_name, s3={"endpoint_url": front.url, "request_timeout": "1s"})
            result = run_syncd(["restore", "-c", str(config), str(folder), "--to", str(out)], timeout=90)
    finally:
        stop.set()

    assert result.returncode == 1, result.stdout + result.stderr
    assert (out / "kept.txt").read_bytes() == b"comes back"
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]  # no partial or temp file left
    (line,) = [line for line in result.stderr.splitlines() if "dripped.txt" in line]
    assert line.startswith(f"{out}/dripped.txt: download failed") and "no answer within" in line, line
    assert "restored 1 file, 1 not restored" in result.stdout
    gets = [r for r in front.requests if r[0] == "GET" and r[1].split("?")[0].endswith("/dripped.txt")]
    assert len(gets) > 1  # retried, each attempt ended by its deadline
