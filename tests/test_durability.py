"""Lose nothing: kills, outages, rewrites during upload, touch storms, lost state, missed events."""

from __future__ import annotations

import mmap
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from badserver import Answer, BadServer, Request, error_answer
from helpers import (
    S3TestServer,
    bucket_matches,
    bucket_objects,
    every_server,
    json_records,
    list_versions,
    s3_client,
    tree,
    wait_until,
    write,
)

MiB = 1024 * 1024


def new_versions(s3: Any, bucket: str) -> int:
    return len(list_versions(s3, bucket))


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[S3TestServer]:
    """A SeaweedFS of this test's own, so it can be stopped and started without disturbing others."""
    server = S3TestServer(tmp_path / "own-seaweed")
    yield server
    server.stop()


def env_for(server: S3TestServer, base: dict[str, str]) -> dict[str, str]:
    return dict(
        base, AWS_ACCESS_KEY_ID=server.admin.access_key, AWS_SECRET_ACCESS_KEY=server.admin.secret_key
    )


def test_kill_9_mid_burst_then_restart_uploads_everything(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    folder.mkdir()
    config = make_config(folder, bucket_name, workers=4)
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    for i in range(500):
        write(folder / f"burst/{i % 10}/{i:03d}.bin", os.urandom(4096))
    daemon.wait_for(lambda r: r.get("event") == "uploaded", timeout=30)
    daemon.kill()
    done_before = len(daemon.uploaded())
    assert done_before < 500, "the burst finished before the kill: nothing was interrupted"
    # While it is down: more files, and some of the burst rewritten.
    for i in range(50):
        write(folder / f"while-down/{i}.txt", f"written while syncd was dead {i}".encode())
    for i in range(0, 500, 25):
        write(folder / f"burst/{i % 10}/{i:03d}.bin", b"modified while down %d" % i)

    started = time.monotonic()
    again = start_daemon(config)
    again.wait_for_event("ready", timeout=60)
    wait_until(lambda: bucket_matches(s3, bucket_name, folder), timeout=60, interval=0.5)
    print(
        f"kill -9 recovery: {done_before} uploaded before the kill; "
        f"caught up in {time.monotonic() - started:.1f}s"
    )
    assert again.terminate() == 0


def test_server_outage_mid_burst_and_daemon_started_while_server_down(
    tmp_path, own_server, make_config, start_daemon, syncd_env
):
    own_server.start()
    s3 = s3_client(own_server, own_server.admin)
    env = env_for(own_server, syncd_env)
    endpoint = {"endpoint_url": own_server.endpoint_url}
    folder = tmp_path / "data"
    folder.mkdir()
    config = make_config(folder, "outage", s3=endpoint, log={"level": "debug"})
    daemon = start_daemon(config, env=env)
    daemon.wait_for_event("ready", timeout=60)
    for i in range(100):
        write(folder / f"a/{i}.bin", os.urandom(2048))
    daemon.wait_for(lambda r: r.get("event") == "uploaded", timeout=30)
    own_server.stop()
    for i in range(100):
        write(folder / f"b/{i}.bin", os.urandom(2048))
    # A daemon started while the server is down (on a folder and bucket of its own, during the same
    # outage) waits, says so, and uploads once the server is back.
    late_folder = tmp_path / "late"
    write(late_folder / "c/late.txt", b"written before the server came back")
    late = start_daemon(make_config(late_folder, "outage-late", s3=endpoint, log={"level": "debug"}), env=env)

    unreachable = daemon.wait_for_event("s3_unreachable", timeout=30)
    down = daemon.records().index(unreachable)
    # The outage lasts until every worker has failed and backed off a few times (each s3_retried is one
    # failed attempt): long enough to prove the retries, short enough that no backoff grows to a minute.
    wait_until(lambda: sum(r.get("event") == "s3_retried" for r in daemon.records()[down:]) >= 16, timeout=60)
    late_unreachable = late.wait_for_event("s3_unreachable", timeout=60)
    late_down = late.records().index(late_unreachable)
    wait_until(lambda: len([r for r in late.records()[late_down:] if r.get("event") == "s3_retried"]) >= 3)
    assert daemon.returncode is None, "the daemon must stay up while the server is away"
    assert late.returncode is None
    assert not [r for r in late.records() if r.get("event") == "ready"]
    own_server.start()
    daemon.wait_for_event("s3_recovered", timeout=90)
    wait_until(lambda: bucket_matches(s3, "outage", folder), timeout=90, interval=0.5)
    records = daemon.records()
    assert len([r for r in records if r.get("event") == "s3_unreachable"]) == 1, "one per outage"
    assert len([r for r in records if r.get("event") == "s3_recovered"]) == 1, "one per outage"
    logged = [r for r in records if r.get("level") != "debug"]  # what the default level (info) writes
    assert len(logged) < 600, "one record per upload and per outage, not one per retry"
    assert daemon.terminate() == 0

    late.wait_for_event("ready", timeout=120)
    wait_until(lambda: bucket_matches(s3, "outage-late", late_folder), timeout=60, interval=0.5)
    assert late.terminate() == 0


# The 3,000 files run in -m slow (the upload before the restart takes most of the time).
@pytest.mark.parametrize("files", [1000, pytest.param(3000, marks=pytest.mark.slow)])
def test_restart_over_synced_tree_puts_nothing(
    tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd, files
):
    folder = tmp_path / "data"
    for i in range(files):
        write(folder / f"d{i % 30}/f{i}.txt", b"x%d" % i)
    config = make_config(folder, bucket_name, workers=8)
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    versions = new_versions(s3, bucket_name)
    assert versions == files

    started = time.monotonic()
    daemon = start_daemon(config)
    scanned = daemon.wait_for_event("scan_done", timeout=60)
    idle_after = time.monotonic() - started
    # Every file walked, none owed: nothing can be uploaded after this (the watcher has seen no change).
    assert (scanned["files"], scanned["changed"], scanned["queued_before"]) == (files, 0, 0), scanned
    assert daemon.terminate() == 0
    print(f"restart over {files:,} synced files: idle after {idle_after:.2f}s")
    assert daemon.uploaded() == []
    assert new_versions(s3, bucket_name) == versions


def test_touch_storm_creates_no_versions(tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd):
    folder = tmp_path / "data"
    for i in range(1000):
        write(folder / f"t/{i}.txt", b"same bytes %d" % i)
    config = make_config(folder, bucket_name, workers=8, log={"level": "debug"})
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: len(daemon.uploaded()) == 1000, timeout=90, interval=0.2)
    before = new_versions(s3, bucket_name)
    start = len(daemon.records())
    for path in (folder / "t").iterdir():
        os.utime(path)  # new mtime, same bytes
        path.chmod(0o640)  # new ctime
    for i in range(0, 1000, 100):
        write(folder / f"t/{i}.txt", b"same bytes %d" % i)  # rewritten with identical bytes

    # Wait until syncd has looked at every touched file (an `unchanged` record each), then owes nothing.
    def looked_at() -> set[str]:
        return {r["path"] for r in daemon.records()[start:] if r.get("event") == "unchanged"}

    wait_until(lambda: len(looked_at()) == 1000, timeout=60, interval=0.2)
    wait_until(
        lambda: "owed: 0\n" in run_syncd(["status", "-c", str(config)]).stdout, timeout=60, interval=0.5
    )
    assert daemon.terminate() == 0
    assert len(daemon.uploaded()) == 1000
    assert new_versions(s3, bucket_name) == before


def test_files_written_in_pieces_for_many_watcher_batches_get_one_version_of_their_final_bytes(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    """A write burst longer than the watcher's batches (0.25 s): each batch hands the files over again
    while they are still being written; none is released before it has stopped changing for `settle`."""
    folder = tmp_path / "data"
    folder.mkdir()
    outside = tmp_path / "elsewhere"
    config = make_config(folder, bucket_name, settle=1.0)
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    files = [folder / f"growing/{i}.log" for i in range(20)]
    for piece in range(30):  # 1.5 s of appends, one every 50 ms per file: never quiet for `settle`
        for path in files:
            path.parent.mkdir(exist_ok=True)
            with open(path, "ab") as f:
                f.write(b"piece %d of %s\n" % (piece, path.name.encode()))
        time.sleep(0.05)
    # Renamed in with an mtime from an hour ago: the rename moves its ctime, so it settles as a new file.
    old = write(outside / "old.txt", b"written long ago, moved in now")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.rename(old, folder / "old.txt")

    wait_until(lambda: bucket_matches(s3, bucket_name, folder), timeout=60, interval=0.2)
    time.sleep(1.5)  # anything released early would have a second version by now
    assert daemon.terminate() == 0
    versions = list_versions(s3, bucket_name)
    assert sorted(v["Key"] for v in versions) == sorted(["old.txt", *(f"growing/{i}.log" for i in range(20))])
    assert len(daemon.uploaded()) == 21


def test_large_file_rewritten_during_upload_ends_with_final_bytes(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    folder.mkdir()
    config = make_config(
        folder, bucket_name, multipart_threshold="5MiB", multipart_chunksize="5MiB", bandwidth_limit="3MB"
    )
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    big = folder / "big.bin"
    write(big, os.urandom(8 * MiB))
    # Its multipart upload (two parts) has started: parts are being sent (about 2.8 s at 3 MB/s).
    wait_until(lambda: s3.list_multipart_uploads(Bucket=bucket_name).get("Uploads"), timeout=30)
    final = os.urandom(8 * MiB)
    with open(big, "r+b") as f:  # rewritten in place while its parts are being sent
        f.write(final)
    wait_until(
        lambda: s3.get_object(Bucket=bucket_name, Key="big.bin")["Body"].read() == final,
        timeout=60,
        interval=0.5,
    )
    assert daemon.terminate() == 0
    assert any(r.get("event") == "changed_during_upload" for r in daemon.records())
    # No multipart upload was left behind.
    assert s3.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []) == []


def test_a_rewrite_during_an_upload_stays_owed_after_kill_9(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon, run_syncd
):
    """The upload of the old bytes is recorded, and the rewrite made meanwhile stays a debt in the state
    through a kill -9: the old bytes' record clears only a debt as old as their upload (and the
    `changed` outcome owes the file again)."""
    folder = tmp_path / "data"
    folder.mkdir()
    doc = folder / "doc.txt"
    write(doc, b"first version")
    release, finished = threading.Event(), threading.Event()
    puts: list[Request] = []

    def hold_doc(request: Request) -> Answer | None:
        """The first PUT of doc.txt waits for `release`; the next ones are held until the test ends."""
        if request.method != "PUT" or not request.path.split("?")[0].endswith("/doc.txt"):
            return None
        puts.append(request)
        if len(puts) == 1 and release.wait(60):
            return front.forward(request)
        finished.wait(60)
        return error_answer(503, "SlowDown", "held by the test")

    def settled() -> int:
        return sum(r.get("event") == "settled" and r.get("path") == "doc.txt" for r in daemon.records())

    def status() -> str:
        return str(run_syncd(["status", "-c", str(config)]).stdout)

    with BadServer("proxy", upstream=s3_server.endpoint_url, answer=hold_doc) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url}, log={"level": "debug"})
        daemon = start_daemon(config)
        wait_until(lambda: len(puts) >= 1, timeout=60)  # the first bytes' PUT is held at the door
        before = settled()  # the startup walk's, or none
        write(doc, b"second version, written while the first was being sent")
        wait_until(lambda: settled() > before, timeout=30)  # the watcher saw the rewrite and owed it
        release.set()
        daemon.wait_for_event("changed_during_upload", path="doc.txt")
        wait_until(lambda: len(puts) >= 2, timeout=30)  # the rewrite's PUT, held
        wait_until(lambda: "uploaded: 1 files" in status(), timeout=30, interval=0.3)  # committed
        daemon.kill()
        finished.set()
    shown = status()
    assert "uploaded: 1 files" in shown and "owed: 1" in shown, shown


@every_server
def test_deleted_state_uploads_nothing_already_in_bucket(tmp_path, s3, bucket_name, make_config, run_syncd):
    folder = tmp_path / "data"
    for i in range(30):
        write(folder / f"s/{i}.txt", b"small %d" % i)
    # Multipart: its ETag is no MD5, so its HEAD is read, whose Content-Length (the object's 17 MiB) is over
    # the cap on answers syncd reads whole (16 MiB): a HEAD has no body to cap.
    write(folder / "multi.bin", os.urandom(17 * MiB))
    config = make_config(folder, bucket_name, multipart_threshold="5MiB", multipart_chunksize="5MiB")
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    versions = new_versions(s3, bucket_name)
    head = s3.head_object(Bucket=bucket_name, Key="multi.bin")
    assert "-" in head["ETag"] and head["Metadata"]["md5chksum"]

    for state_file in (tmp_path / "state").iterdir():
        state_file.unlink()
    result = run_syncd(["once", "-c", str(config)])

    assert result.returncode == 0, result.stderr
    assert new_versions(s3, bucket_name) == versions
    summary = r"syncd once: 0 uploaded \(.*, 31 unchanged, 0 failed, 0 owed"
    assert re.match(summary, result.stdout), result.stdout  # not "30 uploaded"
    assert not [r for r in json_records(result.stderr) if r.get("event") == "uploaded"]


def test_change_the_watcher_never_reported_lands_within_rescan_interval(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    target = folder / "mapped.db"
    write(target, b"A" * 8192)
    daemon = start_daemon(make_config(folder, bucket_name, rescan_interval=3))
    daemon.wait_for_event("ready", timeout=60)
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "mapped.db")
    # Writes through a shared mapping raise no inotify event (as a database's would): only a rescan sees it.
    with open(target, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[:4] = b"BBBB"
        m.flush()
    expected = target.read_bytes()
    start = time.monotonic()
    wait_until(
        lambda: s3.get_object(Bucket=bucket_name, Key="mapped.db")["Body"].read() == expected,
        timeout=20,
        interval=0.2,
    )
    print(f"unreported change landed after {time.monotonic() - start:.1f}s (rescan_interval 3s)")
    records = daemon.records()
    second = [i for i, r in enumerate(records) if r.get("event") == "uploaded" and r["path"] == "mapped.db"][
        1
    ]
    periodic = [
        i for i, r in enumerate(records) if r.get("event") == "scan_done" and r["reason"] == "periodic"
    ]
    assert periodic and periodic[0] < second, "the change must have been found by the periodic rescan"
    assert daemon.terminate() == 0


@every_server
def test_rename_is_copied_server_side(tmp_path, s3, bucket_name, make_config, start_daemon):
    folder = tmp_path / "data"
    write(folder / "old-name.bin", os.urandom(300_000))
    daemon = start_daemon(make_config(folder, bucket_name))
    daemon.wait_for_event("ready", timeout=60)
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "old-name.bin")
    (folder / "old-name.bin").rename(folder / "new-name.bin")
    copied = daemon.wait_for(lambda r: r.get("event") == "copied", timeout=30)
    assert copied["path"] == "new-name.bin" and copied["source_key"] == "old-name.bin"
    # RGW leaves x-amz-version-id out of CopyObject's answer: the record still names the version made.
    head = s3.head_object(Bucket=bucket_name, Key="new-name.bin")
    assert copied["version_id"] and copied["version_id"] == head["VersionId"]
    assert copied["etag"] == head["ETag"].strip('"')
    assert daemon.terminate() == 0
    assert not [r for r in daemon.uploaded() if r["path"] == "new-name.bin"]
    body = s3.get_object(Bucket=bucket_name, Key="new-name.bin")["Body"].read()
    assert body == (folder / "new-name.bin").read_bytes()


@every_server
def test_verify_reports_and_repairs(tmp_path, s3, bucket_name, make_config, run_syncd):
    folder = tmp_path / "data"
    for name in ("a.txt", "b.txt", "c.txt"):
        write(folder / name, name.encode())
    config = make_config(folder, bucket_name)
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    assert run_syncd(["verify", "-c", str(config)]).returncode == 0

    s3.delete_object(Bucket=bucket_name, Key="b.txt")  # someone removed it from the bucket
    result = run_syncd(["verify", "-c", str(config)])
    assert result.returncode == 1
    assert "b.txt: missing in the bucket" in result.stdout

    repaired = run_syncd(["verify", "--repair", "-c", str(config)])
    assert repaired.returncode == 0, repaired.stderr
    assert bucket_objects(s3, bucket_name) == tree(folder)
    assert run_syncd(["verify", "-c", str(config)]).returncode == 0


def test_once_gives_up_after_retry_for_with_exit_75(tmp_path, s3_server, bucket_name, make_config, run_syncd):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    # The server behind a front of its own that goes away: the same refused connections as a server
    # stopped, without starting and stopping one for this test.
    with BadServer("proxy", upstream=s3_server.endpoint_url) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        assert run_syncd(["once", "-c", str(config)]).returncode == 0
    write(folder / "b.txt", b"b")
    result = run_syncd(["once", "--retry-for", "3s", "-c", str(config)], timeout=60)
    assert result.returncode == 75, result.stderr
    assert "owed" in result.stderr and "Traceback" not in result.stderr
