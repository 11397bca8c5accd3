"""What the README promises and no other test checked, through the CLI against the real SeaweedFS.

Where a promise is about a server misbehaving (a request held past stop_timeout, bytes damaged on the way),
tests/badserver.py stands in front of SeaweedFS and passes everything else through.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from badserver import Answer, BadServer, Request
from helpers import (
    UNPRIVILEGED,
    Daemon,
    bucket_matches,
    bucket_objects,
    for_nobody,
    json_records,
    libfaketime,
    list_delete_markers,
    list_versions,
    needs_setpriv,
    put_of,
    tree,
    wait_until,
    write,
)


def events(records: list[dict[str, Any]], name: str, **fields: Any) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == name and all(r.get(k) == v for k, v in fields.items())]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def versions_of(s3: Any, bucket: str, key: str) -> list[bytes]:
    """The bytes of every version of key, sorted (LastModified has whole seconds: no order by time)."""
    return sorted(
        s3.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"].read()
        for v in list_versions(s3, bucket, key)
        if v["Key"] == key
    )


# -- settle: the wall clock steps ------------------------------------------------------------------------


def test_a_wall_clock_step_back_does_not_hold_a_file_waiting_to_settle(
    tmp_path, s3, bucket_name, make_config, start_daemon, syncd_env
):
    """The wall clock steps back 10 minutes (NTP at boot, a resumed VM) while a new file waits for its look:
    it is uploaded seconds later, not once the clock has caught up. libfaketime steps syncd's clock alone, so
    the file keeps the kernel's time, as a file written before a real step does."""
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    env = dict(
        syncd_env,
        LD_PRELOAD=libfaketime(),
        FAKETIME_TIMESTAMP_FILE=str(clock),
        FAKETIME_NO_CACHE="1",  # read at every call: the step takes effect at once
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    folder = tmp_path / "data"
    folder.mkdir()
    daemon = start_daemon(make_config(folder, bucket_name, settle=2), env)
    daemon.wait_for_event("ready", timeout=60)
    write(folder / "x.txt", b"written just before the step")
    time.sleep(0.7)  # the watcher has handed the change over (within 0.25 s); its look is over 1 s away
    clock.write_text("-10m\n")  # within S3's 15 minutes of allowed skew: requests still pass
    daemon.wait_for_event("uploaded", path="x.txt", timeout=30)
    assert daemon.terminate() == 0
    assert versions_of(s3, bucket_name, "x.txt") == [b"written just before the step"]


# -- settle: max_delay -----------------------------------------------------------------------------------


def test_a_file_that_never_settles_is_uploaded_after_max_delay_with_a_warning(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    folder.mkdir()
    daemon = start_daemon(make_config(folder, bucket_name, settle=0.5, max_delay=2))
    daemon.wait_for_event("ready", timeout=60)
    stop = threading.Event()

    def append_forever() -> None:  # a log written every 0.1 s: never quiet for the 0.5 s settle
        with open(folder / "growing.log", "ab") as f:
            while not stop.is_set():
                f.write(b"one more line\n")
                f.flush()
                stop.wait(0.1)

    writer = threading.Thread(target=append_forever)
    writer.start()
    try:
        unsettled = daemon.wait_for_event("unsettled_upload", path="growing.log", timeout=30)
        daemon.wait_for_event("uploaded", path="growing.log", timeout=30)
        assert writer.is_alive(), "uploaded while it was still being written"
    finally:
        stop.set()
        writer.join()
    assert unsettled["level"] == "warning" and unsettled["waited_s"] >= 2, unsettled
    final = (folder / "growing.log").read_bytes()
    wait_until(lambda: s3.get_object(Bucket=bucket_name, Key="growing.log")["Body"].read() == final)
    assert daemon.terminate() == 0


# -- a small file changed while its PUT is on the way ----------------------------------------------------


def test_a_small_file_changed_during_its_upload_goes_round_again(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    folder.mkdir()
    first, second = b"first version", b"second version, written while the first was being sent"
    with BadServer("hang", upstream=s3_server.endpoint_url, only=put_of("doc.txt")) as front:
        daemon = start_daemon(make_config(folder, bucket_name, s3={"endpoint_url": front.url}))
        daemon.wait_for_event("ready", timeout=60)
        write(folder / "doc.txt", first)
        wait_until(lambda: front.matched >= 1)  # its PUT (the first bytes) is held at the server's door
        write(folder / "doc.txt", second)
        front.mode = "proxy"  # the server gets it now
        daemon.wait_for_event("changed_during_upload", path="doc.txt")
        daemon.wait_for(lambda r: r.get("event") == "uploaded" and r.get("md5") == md5(second))
        assert daemon.terminate() == 0
    uploads = events(daemon.records(), "uploaded", path="doc.txt")
    assert [(u["md5"], u.get("changed_during_upload")) for u in uploads] == [
        (md5(first), True),  # a whole, older version: recorded as such, never as the file's bytes now
        (md5(second), None),
    ]
    assert versions_of(s3, bucket_name, "doc.txt") == sorted([first, second])
    assert s3.get_object(Bucket=bucket_name, Key="doc.txt")["Body"].read() == second


@pytest.mark.parametrize("command", ["run", "once"])
def test_a_big_live_log_gets_a_version_by_max_delay_and_once_ends(
    tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd, command
):
    """A 32 MiB log appended every 50 ms: reading and sending it outlasts the gap between two lines, so
    a read that had to hold still would never be sent (and `once` went round for ever). Read unsettled,
    what was hashed is sent: a whole prefix of the log, with the warning."""
    folder = tmp_path / "data"
    applog = write(folder / "app.log", os.urandom(32 * 1024 * 1024))
    config = make_config(folder, bucket_name, settle=0.3, max_delay=2)
    stop = threading.Event()

    def append_forever() -> None:
        with open(applog, "ab") as f:
            for line in range(100_000):
                if stop.wait(0.05):
                    return
                f.write(b"log line %d\n" % line)
                f.flush()

    writer = threading.Thread(target=append_forever)
    writer.start()
    try:
        if command == "run":
            daemon = start_daemon(config)
            daemon.wait_for_event("uploaded", path="app.log", timeout=30)
            assert writer.is_alive()
            records = daemon.records()
        else:
            done = run_syncd(["once", "-c", str(config)], timeout=60)
            assert done.returncode == 0, done.stderr[-2000:]
            records = json_records(done.stdout + done.stderr)
    finally:
        stop.set()
        writer.join()
    assert events(records, "unsettled_upload", path="app.log")
    sent = s3.get_object(Bucket=bucket_name, Key="app.log")["Body"].read()
    assert len(sent) >= 32 * 1024 * 1024 and applog.read_bytes().startswith(sent)
    if command == "run":
        assert daemon.terminate() == 0


# -- a file written again while it waits in the queue for a worker ---------------------------------------


@pytest.fixture
def busy_worker(
    tmp_path: Path, s3_server: Any, bucket_name: str, make_config: Any, start_daemon: Any, syncd_env: Any
) -> Iterator[Callable[..., tuple[Any, threading.Semaphore, list[str], Path]]]:
    """busy_worker(settle, unprivileged=False, dirs=()): a daemon with one worker (max_delay 2 s) whose PUTs
    of keys starting with "blk" wait at a front until the test releases the semaphore once for each; the
    worker is held by blk-0.txt's PUT when it returns (daemon, semaphore, the held PUTs' paths, the folder).
    The folder is tmp_path/data, holding `dirs`; with unprivileged, one nobody owns, and syncd runs as
    nobody."""
    gate = threading.Semaphore(0)
    held: list[str] = []

    def answer(request: Request) -> Answer | None:
        if request.method == "PUT" and urllib.parse.urlsplit(request.path).path.split("/")[-1].startswith(
            "blk"
        ):
            held.append(request.path)
            gate.acquire(timeout=60)
        return None  # then passed on to the server

    with contextlib.ExitStack() as stack:
        front = stack.enter_context(BadServer("proxy", upstream=s3_server.endpoint_url, answer=answer))
        stack.callback(lambda: [gate.release() for _ in range(50)])

        def start(
            settle: float, unprivileged: bool = False, dirs: tuple[str, ...] = ()
        ) -> tuple[Any, threading.Semaphore, list[str], Path]:
            base = tmp_path
            if unprivileged:
                needs_setpriv()
                base = Path(tempfile.mkdtemp(prefix="syncd-promises-", dir="/tmp"))  # tmp_path is 0700
                stack.callback(shutil.rmtree, base, True)
            folder = base / "data"
            folder.mkdir()
            for name in dirs:  # there before the start: the first scan knows them
                (folder / name).mkdir()
            config = make_config(
                folder,
                bucket_name,
                workers=1,
                settle=settle,
                max_delay=2,
                state_dir=str(base / "state"),
                s3={"endpoint_url": front.url},
                log={"level": "debug"},
            )
            if unprivileged:
                config = Path(shutil.copy(config, base / "config.yaml"))
                env = for_nobody(base, syncd_env)
                daemon = Daemon(config, env, tmp_path, "nobody", wrapper=UNPRIVILEGED)
                stack.callback(daemon.kill)
            else:
                daemon = start_daemon(config)
            daemon.wait_for_event("ready", timeout=60)
            write(folder / "blk-0.txt", b"the only worker waits on this PUT")
            wait_until(lambda: len(held) == 1)
            return daemon, gate, held, folder

        yield start


def appended_while_the_worker_is_freed(log: Path, gate: threading.Semaphore) -> bytes:
    """Appends a line to log every 50 ms for 2 s, freeing busy_worker's worker after 0.5 s: the bytes then."""
    for i in range(1, 41):
        with open(log, "ab") as f:
            f.write(b"line %d\n" % i)
        if i == 10:
            gate.release()
        time.sleep(0.05)
    return log.read_bytes()


def test_a_file_whose_look_failed_is_not_read_mid_write_once_it_can_be_read(s3, bucket_name, busy_worker):
    """The settle stage's stat fails (its directory is closed to syncd's user for a moment), so the file is
    let through unseen; by its worker's turn it can be read again and is being appended to. Nothing but the
    worker's own stat says it is not quiet: it must wait, not be read mid-burst."""
    daemon, gate, _held, folder = busy_worker(0.5, unprivileged=True, dirs=("d",))
    log = folder / "d/x.txt"
    write(log, b"line 0\n")
    os.chmod(folder / "d", 0)  # root still writes into it; nobody cannot even stat d/x.txt
    daemon.wait_for_event("look_failed", path="d/x.txt")  # let through, in the queue behind blk-0.txt
    os.chmod(folder / "d", 0o755)
    final = appended_while_the_worker_is_freed(log, gate)
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r.get("md5") == md5(final), timeout=30)
    time.sleep(1)  # a second upload of d/x.txt would be on its way by now
    assert daemon.terminate() == 0
    assert versions_of(s3, bucket_name, "d/x.txt") == [final]


def test_a_settled_file_written_again_while_it_waits_for_a_worker_is_read_once_quiet_again(
    tmp_path, s3, bucket_name, busy_worker
):
    """Settled, queued behind a held PUT, then appended to while the worker is freed: the worker that takes
    it must not read it mid-burst. It goes back to the settle stage and is uploaded once, whole."""
    daemon, gate, _held, _folder = busy_worker(0.5)
    log = tmp_path / "data/x.txt"
    write(log, b"line 0\n")
    daemon.wait_for_event("settled", path="x.txt")  # in the queue, behind blk-0.txt
    final = appended_while_the_worker_is_freed(log, gate)
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r.get("md5") == md5(final), timeout=30)
    time.sleep(1)  # a second upload of x.txt would be on its way by now
    assert daemon.terminate() == 0
    assert versions_of(s3, bucket_name, "x.txt") == [final]
    assert [u["md5"] for u in events(daemon.records(), "uploaded", path="x.txt")] == [md5(final)]
    assert events(daemon.records(), "changed_while_queued", path="x.txt")


def test_a_file_written_again_each_time_it_waits_for_a_worker_is_uploaded_by_max_delay(tmp_path, busy_worker):
    """A slow log, quiet for longer than `settle` between lines, that always waits behind the busy worker
    and gets its next line just before the worker is free: handed back each time, it is still read with
    the warning once `max_delay` has passed since the first hand-back (not starved while this lasts)."""
    daemon, gate, held, _folder = busy_worker(0.3)
    log = tmp_path / "data/x.txt"
    write(log, b"line 0\n")
    first_change, mark = time.time(), 0
    for cycle in range(1, 40):
        daemon.wait_for_event("settled", path="x.txt", start=mark)  # queued behind a held PUT
        mark = len(daemon.records())
        blocker = f"blk-{cycle}.txt"
        write(tmp_path / "data" / blocker, b"queued behind x.txt")
        daemon.wait_for_event("settled", path=blocker, start=mark)
        with open(log, "ab") as f:
            f.write(b"line %d\n" % cycle)
        time.sleep(0.05)
        taken, mark = len(held), len(daemon.records())
        gate.release()  # the worker is free: x.txt is next, changed 0.05 s ago
        taken_x = daemon.wait_for(
            lambda r: r.get("path") == "x.txt" and r.get("event") in ("changed_while_queued", "uploaded"),
            start=mark,
        )
        if taken_x["event"] == "uploaded" or time.time() - first_change > 10:
            break
        wait_until(lambda n=taken: len(held) > n)  # and holds the next blocker
    waited = time.time() - first_change
    assert taken_x["event"] == "uploaded", f"x.txt never uploaded in {waited:.0f} s (max_delay 2 s)"
    assert events(daemon.records(), "unsettled_upload", path="x.txt"), "read unsettled without the warning"
    assert daemon.terminate() == 0


def test_a_file_let_through_by_max_delay_is_not_handed_back_when_it_settles_again_in_the_queue(
    tmp_path, busy_worker
):
    """Overdue (max_delay) and queued behind the busy worker, the file settles once more and is written
    again just before the worker is free: it was let through already, so it is read, not settled anew."""
    daemon, gate, _held, _folder = busy_worker(0.3)
    log, line = tmp_path / "data/x.txt", 0
    while not events(daemon.records(), "overdue", path="x.txt"):  # every 0.1 s: let through by max_delay
        with open(log, "ab") as f:
            f.write(b"line %d\n" % line)
        line += 1
        time.sleep(0.1)
        assert line < 100, "never let through by max_delay"
    mark = len(daemon.records())
    for more in range(3):  # written on while it waits: it settles again in the queue
        with open(log, "ab") as f:
            f.write(b"more %d\n" % more)
        time.sleep(0.1)
    daemon.wait_for_event("settled", path="x.txt", start=mark)
    with open(log, "ab") as f:
        f.write(b"one more line, just before the worker is free\n")
    time.sleep(0.05)
    gate.release()
    daemon.wait_for_event("uploaded", path="x.txt", timeout=20)
    assert not events(daemon.records()[mark:], "changed_while_queued", path="x.txt")
    assert daemon.terminate() == 0


@pytest.mark.parametrize("queued", ["settled", "after_a_hand_back", "after_max_delay"])
def test_a_file_that_waited_in_the_queue_longer_than_max_delay_is_not_read_mid_rewrite(
    tmp_path, s3, bucket_name, busy_worker, queued
):
    """A backlog longer than max_delay: the file went quiet and was released long ago (after settling, after
    a hand-back, or let through by max_delay and quiet since), and is only now rewritten, in two parts with
    the worker freed between them. That is a new change, not part of an old unsettled spell: it goes back to
    settle and is uploaded once, whole."""
    daemon, gate, held, _folder = busy_worker(1.0)
    doc = tmp_path / "data/doc.txt"
    if queued == "after_max_delay":
        with open(doc, "ab") as f:
            for line in range(15):  # 3 s, never quiet for the 1 s settle: let through at 2 s
                f.write(b"log line %d\n" % line)
                f.flush()
                time.sleep(0.2)
        daemon.wait_for_event("overdue", path="doc.txt")
    else:
        write(doc, b"version one, whole\n")
    mark = len(daemon.records())
    daemon.wait_for_event("settled", path="doc.txt")
    if queued == "after_a_hand_back":
        write(tmp_path / "data/blk-1.txt", b"queued behind doc.txt")
        daemon.wait_for_event("settled", path="blk-1.txt")
        write(doc, b"version two, whole, written at once\n")
        time.sleep(0.1)
        gate.release()  # the worker takes doc.txt, changed 0.1 s ago: handed back; then holds blk-1.txt
        daemon.wait_for_event("changed_while_queued", path="doc.txt")
        wait_until(lambda: len(held) == 2)
        daemon.wait_for_event("settled", path="doc.txt", start=mark + 1)
    time.sleep(3)  # queued, quiet, longer than max_delay
    with open(doc, "r+b") as f:  # rewritten in place by a slow writer
        f.truncate(0)
        f.write(b"version three: first half ... ")
        f.flush()
        gate.release()  # the worker is free, mid-rewrite
        time.sleep(0.5)  # shorter than settle: one rewrite
        f.write(b"second half\n")
    final = doc.read_bytes()
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r.get("md5") == md5(final), timeout=20)
    time.sleep(1.5)  # a second upload would be on its way by now
    assert daemon.terminate() == 0
    assert versions_of(s3, bucket_name, "doc.txt") == [final]
    assert not events(daemon.records(), "unsettled_upload", path="doc.txt")


# -- restore checks the MD5 ------------------------------------------------------------------------------


def test_restore_refuses_bytes_whose_md5_does_not_match(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    folder = tmp_path / "data"
    write(folder / "doc.txt", b"the bytes that were uploaded\n")
    write(folder / "other.txt", b"undamaged")
    assert run_syncd(["once", "-c", str(make_config(folder, bucket_name))]).returncode == 0
    dest = tmp_path / "restored"
    dest.mkdir()

    def get_of_doc(method: str, path: str) -> bool:
        return method == "GET" and path.split("?")[0].endswith("/doc.txt")

    with BadServer("corrupt", upstream=s3_server.endpoint_url, only=get_of_doc) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url})
        result = run_syncd(["restore", "-c", str(config), str(folder), "--to", str(dest)])
        assert front.matched >= 1, "the download never went through the damaging front"

    assert result.returncode == 1, result.stdout + result.stderr
    assert "MD5 mismatch" in result.stderr and "doc.txt" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert tree(dest) == {"other.txt": b"undamaged"}  # no damaged file, no temporary file left behind


# -- SIGTERM: the drain within stop_timeout, and when it runs out ----------------------------------------


def test_sigterm_waits_for_an_upload_in_flight_within_stop_timeout(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    folder.mkdir()
    with BadServer("hang", upstream=s3_server.endpoint_url, only=put_of("held.txt")) as front:
        config = make_config(folder, bucket_name, stop_timeout=60, s3={"endpoint_url": front.url})
        daemon = start_daemon(config)
        daemon.wait_for_event("ready", timeout=60)
        write(folder / "held.txt", b"in flight at SIGTERM")
        wait_until(lambda: front.matched >= 1)
        start = len(daemon.records())
        os.kill(daemon.pid, signal.SIGTERM)
        daemon.wait_for_event("stopping", start=start)
        assert daemon.returncode is None, "exited with its upload held at the server"
        front.mode = "proxy"  # the server answers now
        assert daemon.terminate() == 0
    after_stop = daemon.records()[start:]
    assert events(after_stop, "uploaded", path="held.txt"), after_stop
    (stopped,) = events(after_stop, "stopped")
    assert stopped["owed"] == 0 and stopped["uploaded"] == 1, stopped
    assert bucket_objects(s3, bucket_name) == {"held.txt": b"in flight at SIGTERM"}


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "helper"])
def test_sigterm_gives_up_on_an_upload_after_stop_timeout_and_it_stays_owed(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon, run_syncd, processes
):
    folder = tmp_path / "data"
    folder.mkdir()
    with BadServer("hang", upstream=s3_server.endpoint_url, only=put_of("held.txt")) as front:
        config = make_config(
            folder, bucket_name, stop_timeout=1, upload_processes=processes, s3={"endpoint_url": front.url}
        )
        daemon = start_daemon(config)
        daemon.wait_for_event("ready", timeout=60)
        write(folder / "held.txt", b"never answered")
        wait_until(lambda: front.matched >= 1)
        # The server never answers (until the front closes and drops it): the daemon must not wait on it,
        # nor on a helper process that holds the request (it had 10 s of its own after stop_timeout).
        began = time.monotonic()
        assert daemon.terminate(timeout=30) == 0
        assert time.monotonic() - began < 1 + 5, "SIGTERM took far longer than stop_timeout (1 s)"
        port = front.port
    # The held request was dropped, never passed on: the bucket has no version of held.txt.
    assert list_versions(s3, bucket_name, "held.txt") == []
    records = daemon.records()
    assert not events(records, "uploaded", path="held.txt")
    (stopped,) = events(records, "stopped")
    assert stopped["owed"] == 1 and stopped["uploaded"] == 0, stopped

    # Owed in the state (same endpoint, so the same state): the next run uploads it.
    with BadServer("proxy", upstream=s3_server.endpoint_url, port=port):
        result = run_syncd(["once", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in events(json_records(result.stderr), "uploaded")] == ["held.txt"]
    assert versions_of(s3, bucket_name, "held.txt") == [b"never answered"]


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "helper"])
def test_sigterm_during_a_multipart_upload_whose_parts_and_abort_hang_ends_in_time(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon, run_syncd, processes
):
    """The server holds the parts and the abort: the abort must not hold the stop for its read timeout
    (120 s); the upload stays in the state and the next run aborts it and uploads the file."""
    folder = tmp_path / "data"
    folder.mkdir()
    armed = [False]  # after start-up: the fast path's probe sends a part too
    held = lambda method, path: armed[0] and "uploadId=" in path  # noqa: E731 (parts, complete, abort)
    with BadServer("hang", upstream=s3_server.endpoint_url, only=held) as front:
        config = make_config(
            folder,
            bucket_name,
            stop_timeout=2,
            upload_processes=processes,
            multipart_threshold="8MiB",
            multipart_chunksize="5MiB",
            s3={"endpoint_url": front.url},
        )
        daemon = start_daemon(config)
        daemon.wait_for_event("ready", timeout=60)
        if processes == 2:
            daemon.wait_for_event("helper_started", timeout=30)
        armed[0] = True
        write(folder / "big.bin", os.urandom(12 * 1024 * 1024))
        wait_until(lambda: front.matched >= 1, timeout=30)
        began = time.monotonic()
        assert daemon.terminate(timeout=60) == 0
        took = time.monotonic() - began
        port = front.port
    assert took < 2 + 6, f"SIGTERM took {took:.1f} s with stop_timeout 2"
    with BadServer("proxy", upstream=s3_server.endpoint_url, port=port):
        result = run_syncd(["once", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    assert bucket_objects(s3, bucket_name) == tree(folder)


# -- a deleted file that comes back while its deletion is sent ----------------------------------------


def test_a_file_back_on_disk_before_its_delete_is_sent_keeps_its_version(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    """A batch of deletions is sent one by one (about 5 ms each): zz.txt, last in it, is back by its turn."""
    folder = tmp_path / "data"
    doomed = [f"a/{i:04d}.txt" for i in range(200)]
    for name in [*doomed, "zz.txt", "keep.txt"]:
        write(folder / name, name.encode())
    config = make_config(folder, bucket_name, on_delete="delete", delete_guard="100%", workers=8)
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: bucket_matches(s3, bucket_name, folder), timeout=60, interval=0.2)
    start = len(daemon.records())
    for name in doomed:
        os.unlink(folder / name)
    os.unlink(folder / "zz.txt")
    daemon.wait_for_event("deleted", start=start, timeout=60)  # the batch is being sent, zz.txt in it
    write(folder / "zz.txt", b"back again")
    wait_until(lambda: len(events(daemon.records()[start:], "deleted")) >= len(doomed), timeout=60)
    wait_until(lambda: bucket_matches(s3, bucket_name, folder), timeout=30, interval=0.2)
    assert not events(daemon.records()[start:], "deleted", path="zz.txt")
    assert daemon.terminate() == 0
    assert bucket_objects(s3, bucket_name) == {"keep.txt": b"keep.txt", "zz.txt": b"back again"}


def test_a_file_back_while_its_delete_is_on_its_way_is_uploaded_again(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon
):
    """The DELETE is held at the server while the file is written again and uploaded: the delete marker
    lands on top of that upload, so syncd uploads the file once more."""
    folder = tmp_path / "data"
    write(folder / "zz.txt", b"first")
    write(folder / "keep.txt", b"keep")
    delete_of_zz = lambda method, path: method == "DELETE" and path.split("?")[0].endswith("/zz.txt")  # noqa: E731
    with BadServer("hang", upstream=s3_server.endpoint_url, delay=2, only=delete_of_zz) as front:
        config = make_config(folder, bucket_name, on_delete="delete", s3={"endpoint_url": front.url})
        daemon = start_daemon(config)
        daemon.wait_for_event("ready", timeout=60)
        wait_until(lambda: bucket_matches(s3, bucket_name, folder), timeout=60, interval=0.2)
        start = len(daemon.records())
        os.unlink(folder / "zz.txt")
        wait_until(lambda: front.matched >= 1, timeout=30)  # the DELETE is at the server, held 2 s
        write(folder / "zz.txt", b"back again")
        daemon.wait_for(lambda r: r.get("event") == "uploaded" and r.get("path") == "zz.txt", start=start)
        daemon.wait_for_event("deleted_file_back", path="zz.txt", start=start, timeout=30)
        wait_until(lambda: bucket_objects(s3, bucket_name).get("zz.txt") == b"back again", timeout=30)
        assert daemon.terminate() == 0
    assert bucket_objects(s3, bucket_name) == {"keep.txt": b"keep", "zz.txt": b"back again"}
    assert list_delete_markers(s3, bucket_name, "zz.txt")  # the marker is there, under the new upload


# -- the delete guard's cap ------------------------------------------------------------------------------


# A guard in files (limit: 10) caps at that many, 100% of them or not; a percentage caps at 1,000 files,
# which takes 2,010 files and 1,000 deletions to show (-m slow).
@pytest.mark.parametrize(
    ("guard", "cap"),
    [({"limit": 10}, 10), pytest.param("100%", 1000, marks=pytest.mark.slow)],
    ids=["limit-10-files", "100%-capped-at-1000-files"],
)
def test_delete_guard_caps_a_batch_in_files_whatever_the_percentage(
    tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd, guard, cap
):
    folder = tmp_path / "data"
    total = 2 * cap + 10
    names = [f"d{i % 20:02d}/f{i:04d}.txt" for i in range(total)]
    for name in names:
        write(folder / name, name.encode())
    config = make_config(folder, bucket_name, on_delete="delete", delete_guard=guard, workers=16)
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    daemon = start_daemon(config)
    scanned = daemon.wait_for_event("scan_done", timeout=60)
    assert (scanned["files"], scanned["changed"]) == (total, 0), scanned

    for name in names[: cap + 1]:  # 50% of the tracked files, under the 100% guard, but over the cap
        os.unlink(folder / name)
    tripped = daemon.wait_for_event("delete_guard_tripped", timeout=60)
    assert (tripped["count"], tripped["tracked"], tripped["limit"]) == (cap + 1, total, cap), tripped
    assert not list_delete_markers(s3, bucket_name)

    start = len(daemon.records())
    for name in names[cap + 1 : 2 * cap + 1]:  # exactly at the cap: propagated
        os.unlink(folder / name)
    wait_until(lambda: len(events(daemon.records()[start:], "deleted")) == cap, timeout=180, interval=0.5)
    assert not events(daemon.records()[start:], "delete_guard_tripped")
    assert {m["Key"] for m in list_delete_markers(s3, bucket_name)} == set(names[cap + 1 : 2 * cap + 1])
    assert daemon.terminate() == 0


# -- verify finds an object someone else replaced --------------------------------------------------------


def test_verify_reports_an_object_replaced_in_the_bucket_and_repair_puts_it_back(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    folder = tmp_path / "data"
    for name in ("a.txt", "b.txt", "c.txt"):
        write(folder / name, f"{name} as it is here".encode())
    config = make_config(folder, bucket_name)
    assert run_syncd(["once", "-c", str(config)]).returncode == 0

    # Someone else writes new versions: one the same size (only the ETag tells), one of another size.
    s3.put_object(Bucket=bucket_name, Key="b.txt", Body=b"B.TXT AS IT IS HERE")
    s3.put_object(Bucket=bucket_name, Key="c.txt", Body=b"shorter")
    result = run_syncd(["verify", "-c", str(config)])

    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if not line.startswith("verify:")]
    assert problems == ["b.txt: different in the bucket", "c.txt: different in the bucket"], result.stdout
    repaired = run_syncd(["verify", "--repair", "-c", str(config)])
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert bucket_objects(s3, bucket_name) == tree(folder)
    assert run_syncd(["verify", "-c", str(config)]).returncode == 0
