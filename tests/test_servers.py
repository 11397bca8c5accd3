"""What other S3 servers do, through the CLI: one key the server keeps failing, the documented answers of
servers we cannot reach (AWS with ACLs disabled, Backblaze B2), throttling.

Each runs syncd against a front (tests/badserver.py, tests/s3front.py) that passes every request through
to the real SeaweedFS except the answers it reproduces.
"""

from __future__ import annotations

import subprocess
import urllib.parse
from collections.abc import Callable
from typing import Any

from badserver import BadServer
from helpers import bucket_objects, json_records, wait_until, write


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == name]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert "never retrieved" not in result.stderr, result.stderr


def keys_in(s3: Any, bucket: str) -> set[str]:
    return set(bucket_objects(s3, bucket))


def put_of(name: str) -> Callable[[str, str], bool]:
    """Matches the PUT of one object (its single PUT, or its parts)."""

    def matches(method: str, path: str) -> bool:
        return method == "PUT" and urllib.parse.urlsplit(path).path.endswith("/" + name)

    return matches


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
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("syncd: error: "), result.stderr
    assert "unreachable" in lines[0] and "1 files still owed: owed.txt" in lines[0], lines[0]
    assert len(events(json_records(result.stderr), "s3_unreachable")) == 1


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
