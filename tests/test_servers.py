"""What other S3 servers do, through the CLI: one key the server keeps failing, the documented answers of
servers we cannot reach (AWS with ACLs disabled, Backblaze B2), throttling.

Each runs syncd against a front (tests/badserver.py, tests/s3front.py) that passes every request through
to the real SeaweedFS except the answers it reproduces.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from badserver import Answer, BadServer, Request, error_answer
from helpers import bucket_matches, bucket_objects, error_line, json_records, put_of, wait_until, write
from s3front import B2, R2, AwsAclsDisabled, front


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == name]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert "never retrieved" not in result.stderr, result.stderr


def keys_in(s3: Any, bucket: str) -> set[str]:
    return set(bucket_objects(s3, bucket))


# -- one key that keeps failing on a server that works ----------------------------------------------------


def test_once_with_one_key_failing_on_a_working_server_exits_1_naming_it(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """As RGW answers 500 for a key longer than osd_max_object_name_len: the other files go up, the one
    file fails with the server's reason, exit 1 (was: retried as an outage, then exit 0, a traceback)."""
    folder = tmp_path / "data"
    write(folder / "good.txt", b"good")
    write(folder / "bad.txt", b"bad")
    with BadServer("500", upstream=s3_server.endpoint_url, only=put_of("bad.txt")) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        result = run_syncd(["once", "--retry-for", "10s", "-c", str(config)], timeout=90)
    no_traceback(result)
    assert result.returncode == 1, result.stderr
    records = json_records(result.stderr)
    failed = events(records, "upload_failed")
    assert [r["path"] for r in failed] == ["bad.txt"], failed
    assert "InternalError" in failed[0]["reason"] and "500" in failed[0]["reason"]
    assert not events(records, "s3_unreachable"), "one key failing is not an outage"
    assert "failed: bad.txt: InternalError" in result.stderr
    assert "1 failed" in result.stdout
    assert keys_in(s3, bucket_name) == {"good.txt"}
    assert front.matched >= 2, "the failing PUT is tried more than once"


def test_verify_repair_with_one_key_failing_exits_1_naming_it(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """`verify --repair` uploads what is missing through the same path: the key the server keeps failing
    is named and the exit is 1 (was: retried as an outage for verify's 10 minutes, then exit 0)."""
    folder = tmp_path / "data"
    write(folder / "good.txt", b"good")
    with BadServer("500", upstream=s3_server.endpoint_url, only=put_of("bad.txt")) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        assert run_syncd(["once", "-c", str(config)]).returncode == 0
        write(folder / "bad.txt", b"bad")
        result = run_syncd(["verify", "--repair", "-c", str(config)], timeout=90)
    no_traceback(result)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "bad.txt: not uploaded" in result.stdout
    assert "failed: bad.txt: InternalError" in result.stderr
    assert keys_in(s3, bucket_name) == {"good.txt"}


def test_once_when_the_whole_server_fails_mid_run_exits_75_naming_what_is_owed(
    tmp_path, s3_server, bucket_name, make_config, run_syncd
):
    """The server answers the bucket checks, then 500 for everything from the first object PUT on:
    exit 75 and the owed file named (was: "Task exception was never retrieved", exit 0)."""
    folder = tmp_path / "data"
    write(folder / "owed.txt", b"owed")
    broken = {"now": False}

    def fails(method: str, path: str) -> bool:
        broken["now"] = broken["now"] or put_of("owed.txt")(method, path)
        return broken["now"]

    with BadServer("500", upstream=s3_server.endpoint_url, only=fails) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        result = run_syncd(["once", "--retry-for", "3s", "-c", str(config)], timeout=90)
    no_traceback(result)
    assert result.returncode == 75, result.stderr
    line = error_line(result)
    assert "unreachable" in line and "1 files still owed: owed.txt" in line, line
    assert len(events(json_records(result.stderr), "s3_unreachable")) == 1


def test_once_when_every_put_fails_but_headbucket_answers_is_an_outage(
    tmp_path, s3_server, bucket_name, make_config, run_syncd
):
    """Every object PUT answered 500 while HeadBucket still answers (a server whose storage is down):
    other keys failing too with nothing served makes it an outage, exit 75, not one failure per file."""
    folder = tmp_path / "data"
    for name in ("a.txt", "b.txt", "c.txt"):
        write(folder / name, name.encode())

    def object_put(method: str, path: str) -> bool:
        return method == "PUT" and not _is_bucket_path(path)

    with BadServer("500", upstream=s3_server.endpoint_url, only=object_put) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        result = run_syncd(["once", "--retry-for", "3s", "-c", str(config)], timeout=90)
    no_traceback(result)
    assert result.returncode == 75, result.stderr
    assert "3 files still owed" in result.stderr, result.stderr
    records = json_records(result.stderr)
    assert len(events(records, "s3_unreachable")) == 1


# -- one request failing, about no key, on a server that answers the rest --------------------------------


def is_listing(method: str, path: str) -> bool:
    """A ListObjectsV2 page: what the scan of a fresh state asks the bucket."""
    return method == "GET" and "list-type=2" in urllib.parse.urlsplit(path).query


def is_versioning_read(method: str, path: str) -> bool:
    """A GetBucketVersioning: one of the bucket checks of a start-up and of `check`."""
    return method == "GET" and "versioning" in urllib.parse.urlsplit(path).query


def is_version_listing(method: str, path: str) -> bool:
    """A ListObjectVersions page: what `versions` and `restore` ask the bucket."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query, keep_blank_values=True)
    return method == "GET" and "versions" in query


def test_once_with_a_listing_held_past_its_deadline_retries_it_and_uploads(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """The scan's first ListObjectsV2 held unanswered past s3.request_timeout (5 s), the rest answered,
    `--retry-for 1s`: the listing is sent again (HeadBucket says the server answers), no outage, every
    file uploaded, exit 0 (was: `s3_unreachable` dated from when the listing was sent, so down 5 s at its
    first timeout: exit 75 "stayed unreachable" on a server that answered all along)."""
    folder = tmp_path / "data"
    for name in ("a.txt", "b/c.txt", "d.bin"):
        write(folder / name, name.encode() * 100)
    listings = itertools.count()

    def first_listing(method: str, path: str) -> bool:
        return is_listing(method, path) and next(listings) == 0

    with BadServer("hang", upstream=s3_server.endpoint_url, only=first_listing) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url, "request_timeout": "5s"})
        result = run_syncd(["once", "--retry-for", "1s", "-c", str(config)], timeout=90)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert front.matched == 1 and sum(is_listing(*r) for r in front.requests) >= 2, front.requests
    records = json_records(result.stderr)
    assert not events(records, "s3_unreachable") and not events(records, "s3_recovered"), result.stderr
    assert {r["path"] for r in events(records, "uploaded")} == {"a.txt", "b/c.txt", "d.bin"}
    assert bucket_matches(s3, bucket_name, folder)


def test_once_with_every_listing_failing_on_a_working_server_exits_75_naming_it(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """Every ListObjectsV2 answered 500 while the rest (HeadBucket, the bucket checks) is answered: the
    listing is given up after its tries with one line naming it and the server's reason, exit 75, no
    outage logged and nothing recorded as uploaded (was: an outage, `s3_unreachable`, waited out for the
    whole --retry-for, then "stayed unreachable"; `run` waited forever). The line says the folder was not
    scanned (was: "0 files still owed", with two files to upload: they are marked owed only as the walk
    meets them, after the listing); the next `once` on a working server uploads them."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    write(folder / "b/c.txt", b"c")
    with BadServer("500", upstream=s3_server.endpoint_url, only=is_listing) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        result = run_syncd(["once", "--retry-for", "30s", "-c", str(config)], timeout=90)
    no_traceback(result)
    assert result.returncode == 75, result.stderr
    line = error_line(result)
    assert "ListObjectsV2" in line and "InternalError (HTTP 500)" in line, line
    assert "unreachable" not in line and "gave up after" not in line, line
    assert "the folder was not scanned to the end" in line and "files still owed" not in line, line
    records = json_records(result.stderr)
    assert not events(records, "s3_unreachable"), "the server answered: not an outage"
    assert not events(records, "uploaded")
    assert front.matched >= 2, "the listing is tried more than once"
    assert keys_in(s3, bucket_name) == set()

    config = make_config(folder, bucket_name, s3={"endpoint_url": s3_server.endpoint_url})
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    assert bucket_matches(s3, bucket_name, folder)


def test_once_with_a_bucket_check_failing_on_a_working_server_exits_75_naming_it(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """GetBucketVersioning (a start-up check) answered 500 every time while the rest is answered: the
    start-up ends after its tries with one line naming the request and the server's reason, exit 75, no
    outage logged, nothing uploaded (was: an outage waited out for the whole --retry-for)."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with BadServer("500", upstream=s3_server.endpoint_url, only=is_versioning_read) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        result = run_syncd(["once", "--retry-for", "30s", "-c", str(config)], timeout=90)
    no_traceback(result)
    assert result.returncode == 75, result.stderr
    line = error_line(result)
    assert "GetBucketVersioning" in line and "InternalError (HTTP 500)" in line, line
    assert "the folder was not scanned to the end" in line, line
    records = json_records(result.stderr)
    assert not events(records, "s3_unreachable"), "the server answered: not an outage"
    assert not events(records, "uploaded") and not events(records, "bucket_ready")
    assert front.matched >= 2, "the check is tried more than once"
    assert keys_in(s3, bucket_name) == set()


@pytest.mark.parametrize(
    ("command", "fails", "operation"),
    [
        (["check"], is_versioning_read, "GetBucketVersioning"),
        (["verify"], is_listing, "ListObjectsV2"),
        (["versions", "{folder}/a.txt"], is_version_listing, "ListObjectVersions"),
    ],
    ids=["check", "verify", "versions"],
)
def test_a_command_with_one_request_failing_on_a_working_server_exits_75_naming_it(
    tmp_path, s3_server, bucket_name, make_config, run_syncd, command, fails, operation
):
    """`check`, `verify` and `versions` where one request is answered 500 every time while the rest
    (HeadBucket included) is answered: that request is given up after its tries, one line names it and the
    server's reason, exit 75 (was: with no HeadBucket probe, taken as an outage and waited out for the
    command's 30, 120 or 60 s, then "stayed unreachable")."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    assert run_syncd(["once", "-c", str(make_config(folder, bucket_name))]).returncode == 0
    with BadServer("500", upstream=s3_server.endpoint_url, only=fails) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        args = [arg.format(folder=folder) for arg in command]
        result = run_syncd([*args, "-c", str(config)], timeout=200)
    no_traceback(result)
    assert result.returncode == 75, result.stdout + result.stderr
    line = error_line(result)
    assert f"kept failing {operation} on bucket {bucket_name}" in line, line
    assert "InternalError (HTTP 500)" in line and "unreachable" not in line, line
    assert not events(json_records(result.stderr), "s3_unreachable"), "the server answered: not an outage"
    assert front.matched >= 2, "the request is tried more than once"


def _epoch(record: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


def test_uploads_waiting_out_an_outage_go_again_as_soon_as_the_server_is_back(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon
):
    """Two files whose uploads back off through an outage (each worker's next try seconds away) are sent
    when the server answers again (here: a third file's upload), not when their backoff ends (a backoff
    grows to a minute, so the old daemon held its files up to a minute after s3_recovered)."""
    folder = tmp_path / "data"
    folder.mkdir()
    with BadServer("proxy", upstream=s3_server.endpoint_url) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url}, log={"level": "debug"})
        daemon = start_daemon(config)
        daemon.wait_for_event("ready", timeout=60)
        front.mode = "500"
        write(folder / "a.txt", b"a")
        write(folder / "b.txt", b"b")
        daemon.wait_for_event("s3_unreachable", timeout=30)

        def pending_wakes() -> list[float]:
            """When the retries logged so far go again, for those still ahead (2 s or more)."""
            now = time.time()
            retries = [r for r in events(daemon.records(), "s3_retried") if "retry_in_s" in r]
            return sorted(t for t in (_epoch(r) + r["retry_in_s"] for r in retries) if t > now + 2)

        # Both workers (one per file) now sleep until at least 2 s from here.
        wakes = wait_until(lambda: (found := pending_wakes()) and len(found) >= 2 and found, timeout=60)
        front.mode = "proxy"
        write(folder / "c.txt", b"c")  # a free worker sends it: the server answers, the outage ends
        daemon.wait_for_event("s3_recovered", timeout=30)
        wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt", "c.txt"}, timeout=60)
        sent = {r["path"]: _epoch(r) for r in daemon.uploaded()}
        assert sent["a.txt"] < wakes[0] and sent["b.txt"] < wakes[0], (sent, wakes)
        assert daemon.terminate() == 0


@pytest.mark.slow  # 23 s of the product's fixed retry delays; `once` with a failing key is in the default run
def test_run_fails_one_key_retries_it_later_and_keeps_going(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon
):
    """`run` with one key the server keeps failing: `upload_failed` with the server's reason, no outage,
    other files uploaded meanwhile, the file tried again later (ever less often) and uploaded once the
    server takes it, and SIGTERM does not wait for it (was: "waiting for S3" forever, the whole
    stop_timeout on SIGTERM)."""
    folder = tmp_path / "data"
    write(folder / "good.txt", b"good")
    write(folder / "bad.txt", b"bad")
    with BadServer("500", upstream=s3_server.endpoint_url, only=put_of("bad.txt")) as front:
        config = make_config(folder, bucket_name, stop_timeout=300, s3={"endpoint_url": front.url})
        daemon = start_daemon(config)
        first = daemon.wait_for_event("upload_failed", timeout=60, path="bad.txt")
        assert "InternalError" in first["reason"] and first["attempts"] == 1 and first["retry_in_s"] > 0
        wait_until(lambda: keys_in(s3, bucket_name) == {"good.txt"}, timeout=30)
        write(folder / "later.txt", b"later")  # not held back by the failing file
        wait_until(lambda: keys_in(s3, bucket_name) == {"good.txt", "later.txt"}, timeout=30)
        second = daemon.wait_for(
            lambda r: r.get("event") == "upload_failed" and r.get("attempts") == 2, timeout=60
        )
        assert second["retry_in_s"] > first["retry_in_s"] * 1.2, (first, second)
        assert not events(daemon.records(), "s3_unreachable"), "one key failing is not an outage"
        front.mode = "proxy"  # the server takes the key now: the next try uploads it
        daemon.wait_for_event("uploaded", timeout=60, path="bad.txt")
        assert keys_in(s3, bucket_name) == {"good.txt", "later.txt", "bad.txt"}
        front.mode = "500"
        start = len(daemon.records())
        write(folder / "bad.txt", b"bad again")
        daemon.wait_for_event("upload_failed", timeout=60, start=start, path="bad.txt")
        assert daemon.terminate(timeout=60) == 0  # with stop_timeout 300: not held back by the key


# -- servers we cannot reach: their documented answers, reproduced ----------------------------------------


def rejected(front: BadServer, code: str) -> list[str]:
    """'METHOD path' of each request the emulated server refused with this code."""
    return [
        f"{r.method} {r.path}"
        for r, answer in front.answered
        if f"<Code>{code}</Code>".encode() in answer.body
    ]


def public_grants(s3: Any, bucket: str) -> list[str]:
    return [
        g["Permission"] for g in s3.get_bucket_acl(Bucket=bucket)["Grants"] if "URI" in g.get("Grantee", {})
    ]


def b2_bucket(s3: Any, bucket: str, *, public: bool = False) -> None:
    """A bucket as B2 makes them: always versioned (B2 offers no way to turn it off)."""
    s3.create_bucket(Bucket=bucket, **({"ACL": "public-read"} if public else {}))
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def test_b2_takes_no_checksum_headers_whatever_the_environment_says(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd, syncd_env
):
    """B2 refuses x-amz-checksum-* and x-amz-sdk-checksum-algorithm. botocore adds CRC32 headers to
    PutBucketAcl and PutBucketLifecycleConfiguration even under when_required, and to everything under
    AWS_REQUEST_CHECKSUM_CALCULATION=when_supported: the config's `checksum: when_required` must win and
    those requests carry Content-MD5 instead (was: exit 3, 'could not remove the public grant')."""
    b2_bucket(s3, bucket_name, public=True)
    folder = tmp_path / "data"
    write(folder / "small.txt", b"small")
    write(folder / "big.bin", bytes(6 * 1024 * 1024))
    env = {**syncd_env, "AWS_REQUEST_CHECKSUM_CALCULATION": "when_supported"}
    with front(s3_server.endpoint_url, B2()) as b2:
        config = make_config(
            folder,
            bucket_name,
            keep_versions_days=30,
            multipart_threshold="5MiB",
            s3={"endpoint_url": b2.url, "checksum": "when_required"},
        )
        result = run_syncd(["once", "-c", str(config)], env=env, timeout=120)
    no_traceback(result)
    assert not rejected(b2, "InvalidArgument"), result.stderr
    assert result.returncode == 0, result.stderr
    ready = events(json_records(result.stderr), "bucket_ready")[0]
    assert ready["made_private"] is True and ready["versioning"] == "Enabled"
    assert public_grants(s3, bucket_name) == []
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket_name)["Rules"]
    assert [r["NoncurrentVersionExpiration"]["NoncurrentDays"] for r in rules] == [30]
    assert keys_in(s3, bucket_name) == {"small.txt", "big.bin"}


def test_b2_check_and_run_without_policy_status_or_versioning_calls(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """B2 answers NotImplemented to GetBucketPolicyStatus, GetBucketPolicy and PutBucketVersioning: `check`
    and `once` prove privacy without them, report the bucket versioned, and never ask to change it."""
    b2_bucket(s3, bucket_name)
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with front(s3_server.endpoint_url, B2()) as b2:
        config = make_config(folder, bucket_name, s3={"endpoint_url": b2.url})
        checked = run_syncd(["check", "-c", str(config)], timeout=60)
        result = run_syncd(["once", "-c", str(config)], timeout=60)
    no_traceback(checked)
    assert checked.returncode == 0, checked.stderr
    assert (
        "private" in checked.stdout
        and "NOT private" not in checked.stdout
        and "versioning Enabled" in checked.stdout
    )
    assert result.returncode == 0, result.stderr
    assert not [p for p in rejected(b2, "NotImplemented") if "versioning" in p], (
        "versioning was not left alone"
    )
    assert not [r for r in json_records(result.stderr) if r.get("level") in ("warning", "error")], (
        result.stderr
    )
    assert keys_in(s3, bucket_name) == {"a.txt"}


def test_b2_slowdown_retry_after_is_honoured(tmp_path, s3, s3_server, bucket_name, make_config, run_syncd):
    """503 SlowDown with Retry-After: 2 on the first two PUTs: the next PUT of the file comes no sooner
    than the server asked (was: again after 0.25-1 s of backoff)."""
    b2_bucket(s3, bucket_name)
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    b2_answers = B2()
    b2_answers.slowdown(2, retry_after=2)
    times: list[float] = []

    def timed(request: Request) -> Answer | None:
        if request.method == "PUT" and request.path.split("?")[0].endswith("/a.txt"):
            times.append(time.monotonic())
        return b2_answers(request)

    with front(s3_server.endpoint_url, timed) as b2:
        config = make_config(folder, bucket_name, s3={"endpoint_url": b2.url})
        result = run_syncd(["once", "-c", str(config)], timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(rejected(b2, "SlowDown")) == 2 and len(times) == 3, times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 1.9, gaps
    assert events(json_records(result.stderr), "s3_throttled"), "the slow-down is reported"
    assert keys_in(s3, bucket_name) == {"a.txt"}


def test_aws_acls_disabled_fresh_bucket(tmp_path, s3, s3_server, bucket_name, make_config, run_syncd):
    """AWS with BucketOwnerEnforced and Block Public Access, a bucket syncd creates: created, proven
    private (owner-only ACL read, anonymous requests refused), uploads; `check` agrees."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with front(s3_server.endpoint_url, AwsAclsDisabled()) as aws:
        config = make_config(folder, bucket_name, s3={"endpoint_url": aws.url})
        result = run_syncd(["once", "-c", str(config)], timeout=60)
        checked = run_syncd(["check", "-c", str(config)], timeout=60)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert not rejected(aws, "AccessControlListNotSupported") and not rejected(
        aws, "InvalidBucketAclWithObjectOwnership"
    )
    ready = events(json_records(result.stderr), "bucket_ready")[0]
    assert ready["private"] is True and ready["created"] is True
    assert checked.returncode == 0 and "NOT private" not in checked.stdout, checked.stdout + checked.stderr
    assert keys_in(s3, bucket_name) == {"a.txt"}


def test_aws_acls_disabled_with_grants_listed_is_private_not_exit_3(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """A bucket whose ACL read still lists a public grant while Object Ownership is BucketOwnerEnforced
    (the grant is inert: ACLs grant nothing there, and PutBucketAcl answers AccessControlListNotSupported).
    AWS itself shows the owner-only ACL then; servers that copy its ownership controls may not. syncd reads
    GetBucketOwnershipControls, proves privacy with the anonymous probe, and runs (was: exit 3, 'still
    grants AllUsers:READ after setting ACL private'; `check` said NOT private)."""
    s3.create_bucket(Bucket=bucket_name, ACL="public-read")
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with front(s3_server.endpoint_url, AwsAclsDisabled()) as aws:
        config = make_config(folder, bucket_name, s3={"endpoint_url": aws.url})
        checked = run_syncd(["check", "-c", str(config)], timeout=60)
        result = run_syncd(["once", "-c", str(config)], timeout=60)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert checked.returncode == 0 and "NOT private" not in checked.stdout, checked.stdout + checked.stderr
    assert "BucketOwnerEnforced" in checked.stdout, checked.stdout
    records = json_records(result.stderr)
    ready = events(records, "bucket_ready")[0]
    assert ready["private"] is True and ready["made_private"] is False
    assert events(records, "bucket_acl_ignored"), "the inert grant is reported"
    assert keys_in(s3, bucket_name) == {"a.txt"}


def test_r2_without_acls_or_versioning_uploads_and_says_it_keeps_no_history(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """R2 answers NotImplemented to GetBucketAcl and GetBucketVersioning (and to an ACL on CreateBucket):
    syncd creates the bucket, proves it private with the anonymous probe, uploads, and says there is no
    history; `on_delete: delete` is refused (was: NotImplemented retried as an outage, exit 75)."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with front(s3_server.endpoint_url, R2()) as r2:
        config = make_config(folder, bucket_name, s3={"endpoint_url": r2.url})
        result = run_syncd(["once", "--retry-for", "10s", "-c", str(config)], timeout=90)
        checked = run_syncd(["check", "-c", str(config)], timeout=60)
        deleting = make_config(folder, bucket_name, on_delete="delete", s3={"endpoint_url": r2.url})
        refused = run_syncd(["once", "-c", str(deleting)], timeout=60)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    records = json_records(result.stderr)
    ready = events(records, "bucket_ready")[0]
    assert ready["created"] is True and ready["private"] is True and ready["versioning"] == "Unsupported"
    assert events(records, "bucket_unversioned") and not events(records, "s3_unreachable")
    assert keys_in(s3, bucket_name) == {"a.txt"}
    assert checked.returncode == 0 and "versioning Unsupported" in checked.stdout, checked.stdout
    assert "keeps no history" in checked.stdout
    assert refused.returncode == 2 and "needs a versioned bucket" in refused.stderr, refused.stderr


# -- throttling -----------------------------------------------------------------------------------------


class ConcurrencyLimit:
    """A server that takes at most `limit` object PUTs at once (each held `hold` seconds) and answers
    503 SlowDown to the rest, as a provider's per-prefix limit does."""

    def __init__(self, limit: int, hold: float) -> None:
        self.limit, self.hold = limit, hold
        self.inflight = 0
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Answer | None:
        if request.method != "PUT" or _is_bucket_path(request.path):
            return None
        with self.lock:
            if self.inflight >= self.limit:
                return error_answer(503, "SlowDown", "Please reduce your request rate.")
            self.inflight += 1
        try:
            time.sleep(self.hold)
        finally:
            with self.lock:
                self.inflight -= 1
        return None


def _is_bucket_path(path: str) -> bool:
    return "/" not in urllib.parse.urlsplit(path).path.strip("/")


def test_slowdown_shrinks_the_requests_in_flight_instead_of_storming(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """A server that takes 6 PUTs at once and answers SlowDown above that, 100 files and workers: 32. syncd
    lowers its window of requests in flight to what the server takes: a SlowDown for fewer than a third
    of the files, no outage (was: 32 in flight throughout, about one SlowDown per file, each episode an
    s3_unreachable)."""
    folder = tmp_path / "data"
    for i in range(100):
        write(folder / f"f{i:02d}.txt", b"x" * i)
    with front(s3_server.endpoint_url, ConcurrencyLimit(6, hold=0.1)) as limited:
        config = make_config(folder, bucket_name, workers=32, s3={"endpoint_url": limited.url})
        result = run_syncd(["once", "-c", str(config)], timeout=120)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    slowdowns = len(rejected(limited, "SlowDown"))
    assert 0 < slowdowns < 33, f"{slowdowns} SlowDown answers for 100 files"
    records = json_records(result.stderr)
    assert not events(records, "s3_unreachable"), "a server asking to slow down is not unreachable"
    assert events(records, "s3_throttled")
    assert len(keys_in(s3, bucket_name)) == 100


# -- the original repro on Ceph RGW ---------------------------------------------------------------------


@contextlib.contextmanager
def osd_setting(server: Any, name: str, value: str) -> Iterator[None]:
    """`ceph config set osd NAME VALUE` on the session's RGW cluster for the block, then removed."""
    server.ceph("config", "set", "osd", name, value)
    try:
        yield
    finally:
        server.ceph("config", "rm", "osd", name)


@pytest.mark.servers("rgw")
def test_rgw_key_longer_than_the_osd_takes_fails_that_file_only(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """Issue 11's repro: osd_max_object_name_len = 460 and a ~440-byte key (RGW's object name adds the
    bucket marker): RGW answers 500 for that key only. `once` exits 1 naming it, the other file is
    uploaded (was: exit 0, '1 owed', 'Task exception was never retrieved')."""
    folder = tmp_path / "data"
    long_name = "d" * 200 + "/" + "f" * 239
    write(folder / "good.txt", b"good")
    write(folder / long_name, b"long")
    with osd_setting(s3_server, "osd_max_object_name_len", "460"):
        config = make_config(folder, bucket_name)
        result = run_syncd(["once", "--retry-for", "10s", "-c", str(config)], timeout=120)
    no_traceback(result)
    assert result.returncode == 1, result.stderr
    failed = events(json_records(result.stderr), "upload_failed")
    assert [r["path"] for r in failed] == [long_name] and "500" in failed[0]["reason"], failed
    assert f"failed: {long_name}" in result.stderr
    assert keys_in(s3, bucket_name) == {"good.txt"}
