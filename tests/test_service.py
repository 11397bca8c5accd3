"""Running as a service: sd_notify on a socket the test owns, SIGHUP reload, the admin commands
(status, versions, restore), the Prometheus endpoint and keep_versions_days; the real daemon through the
CLI against a real SeaweedFS."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from helpers import (
    bucket_objects,
    every_server,
    fast_heartbeat,
    list_delete_markers,
    s3_client,
    skip_or_fail,
    tree,
    wait_until,
    write,
)

from syncd.config import S3Settings
from syncd.errors import ConfigError
from syncd.metrics import Metrics, NullMetrics, metrics_for, parse_listen
from syncd.s3.client import open_client
from syncd.s3.lifecycle import RULE_ID, ensure_noncurrent_expiry, rule_id
from syncd.seaweed import Identity, SeaweedServer

Record = dict[str, Any]
T = TypeVar("T")


def mtime_ms(path: Path) -> int:
    return path.stat().st_mtime_ns // 1_000_000


def edit_config(path: Path, **changes: Any) -> None:
    """Rewrite the config in place (the daemon re-reads this path on SIGHUP); None removes a key."""
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_if(value: T, ok: Callable[[T], bool]) -> T | None:
    """value when ok(value), else None: for wait_until on something that is read, then judged."""
    return value if ok(value) else None


def uploads_of(daemon: Any, path: str) -> list[Record]:
    return [r for r in daemon.records() if r.get("event") == "uploaded" and r.get("path") == path]


class NotifySocket:
    """The service manager's end of $NOTIFY_SOCKET: every datagram, in order, as a dict of its fields."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """base plus the variables systemd sets for Type=notify with WatchdogSec=2s (WATCHDOG_PID unset)."""
        env = dict(base, NOTIFY_SOCKET=self.path, WATCHDOG_USEC="2000000")
        env.pop("WATCHDOG_PID", None)
        return env

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(fields)

    def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 30, start: int = 0
    ) -> int:
        """Index of the first message from `start` on that satisfies predicate (receiving as needed)."""
        deadline = time.monotonic() + timeout
        checked = start
        while True:
            for i in range(checked, len(self.messages)):
                if predicate(self.messages[i]):
                    return i
            checked = max(checked, len(self.messages))
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no matching notification within {timeout}s; got {self.messages[start:]}"
                )
            self._receive(min(left, 0.5))

    def drain(self, quiet: float = 0.3) -> None:
        """Receive until nothing arrives for `quiet` seconds."""
        while True:
            before = len(self.messages)
            self._receive(quiet)
            if len(self.messages) == before:
                return

    def indexes(self, key: str, value: str = "1", start: int = 0) -> list[int]:
        return [i for i, m in enumerate(self.messages) if i >= start and m.get(key) == value]

    def wait_count(self, key: str, n: int, start: int = 0, timeout: float = 30) -> None:
        """Until at least n messages from `start` on have KEY=1."""
        self.wait_for(lambda _m: len(self.indexes(key, start=start)) >= n, timeout, start)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(tmp_path / "notify.sock")
    yield receiver
    receiver.close()


# -- sd_notify ------------------------------------------------------------------------------------------


def test_notify_ready_after_bucket_check_then_watchdog_and_stopping(
    tmp_path, s3, bucket_name, make_config, start_daemon, syncd_env, notify
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"alpha")
    daemon = start_daemon(make_config(folder, bucket_name), env=notify.env(syncd_env))

    ready = notify.wait_for(lambda m: m.get("READY") == "1", timeout=60)
    # READY is sent once the bucket is checked: its record is already in the log.
    assert any(r.get("event") == "bucket_ready" for r in daemon.records()), daemon.tail()
    before = notify.messages[:ready]
    assert any(m.get("STATUS", "").startswith(f"checking bucket {bucket_name}") for m in before), before
    assert notify.messages[ready].get("STATUS", "").startswith(f"watching {folder}")

    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "a.txt")
    # WATCHDOG_USEC=2 s: a ping at least every second while healthy, with STATUS kept current.
    notify.wait_count("WATCHDOG", 3, start=ready, timeout=10)
    notify.wait_for(lambda m: "0 owed, 1 uploaded" in m.get("STATUS", ""), timeout=10, start=ready)
    assert not notify.indexes("STOPPING")

    assert daemon.terminate() == 0
    notify.drain()
    stopping = notify.indexes("STOPPING")
    assert len(stopping) == 1 and stopping[0] > ready
    assert not notify.indexes("READY", start=stopping[0])


def test_start_while_server_down_waits_then_becomes_ready(
    tmp_path, bucket_name, make_config, start_daemon, syncd_env, notify
):
    """Boot with the S3 server not up yet: "waiting for S3", no READY, then READY once it answers."""
    identity = Identity.generate("admin")
    s3_port = SeaweedServer(tmp_path / "weed", [identity]).ports["s3"]  # S3 port fixed from here on
    server = SeaweedServer(tmp_path / "weed", [identity], s3_port=s3_port)
    folder = tmp_path / "data"
    write(folder / "early.txt", b"written before the server was up")
    config = make_config(folder, bucket_name, s3={"endpoint_url": server.endpoint_url})
    env = notify.env(
        dict(syncd_env, AWS_ACCESS_KEY_ID=identity.access_key, AWS_SECRET_ACCESS_KEY=identity.secret_key)
    )
    daemon = start_daemon(config, env=env)
    try:
        waiting = notify.wait_for(lambda m: m.get("STATUS", "").startswith("waiting for S3"), timeout=30)
        daemon.wait_for_event("s3_unreachable")
        notify.drain()
        assert not notify.indexes("READY")
        assert daemon.returncode is None

        server.start()
        ready = notify.wait_for(lambda m: m.get("READY") == "1", timeout=90, start=waiting)
        assert ready > waiting
        daemon.wait_for_event("s3_recovered")
        daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "early.txt", timeout=30)
        write(folder / "later.txt", b"written once it was up")
        s3 = s3_client(server, identity)
        expected = tree(folder)
        wait_until(lambda: bucket_objects(s3, bucket_name) == expected, timeout=30)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        server.stop()


# -- SIGHUP -----------------------------------------------------------------------------------------------


def reload(daemon: Any, notify: NotifySocket, event: str, **fields: Any) -> Record:
    """SIGHUP; the record `event` follows, and RELOADING=1 then READY=1 reach the socket."""
    start = len(daemon.records())
    mark = len(notify.messages)
    os.kill(daemon.pid, signal.SIGHUP)
    record = daemon.wait_for_event(event, start=start, **fields)
    reloading = notify.wait_for(lambda m: m.get("RELOADING") == "1", start=mark)
    assert "MONOTONIC_USEC" in notify.messages[reloading]
    notify.wait_for(lambda m: m.get("READY") == "1", start=reloading + 1, timeout=60)
    return record


def test_sighup_applies_valid_config_rejects_invalid_restarts_on_new_prefix(
    tmp_path, s3, bucket_name, make_config, start_daemon, syncd_env, notify
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    config = make_config(folder, bucket_name, workers=4)
    daemon = start_daemon(config, env=notify.env(syncd_env))
    notify.wait_for(lambda m: m.get("READY") == "1", timeout=60)
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "a.txt")

    # Workers and log level apply live.
    edit_config(config, workers=8, log={"level": "debug"})
    record = reload(daemon, notify, "reloaded")
    assert record["restarted"] is False and record["workers"] == 8 and record["log_level"] == "debug"
    start = len(daemon.records())
    os.utime(folder / "a.txt")  # same bytes, new mtime: an "unchanged" record, logged at debug level
    daemon.wait_for(lambda r: r.get("event") == "unchanged" and r.get("path") == "a.txt", start=start)
    write(folder / "b.txt", b"b")
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "b.txt")

    # An invalid config is refused and the running one goes on.
    edit_config(config, bogus_key=1)
    record = reload(daemon, notify, "reload_rejected")
    assert "bogus_key" in record["reason"]
    write(folder / "c.txt", b"c")
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "c.txt")
    assert daemon.returncode is None

    # A new prefix needs a new pipeline; new files land under it (and the folder is uploaded there).
    edit_config(config, bogus_key=None, prefix="moved/")
    record = reload(daemon, notify, "reloaded", restarted=True)
    assert record["prefix"] == "moved/"
    daemon.wait_for_event("pipeline_restarted")
    write(folder / "d.txt", b"d")
    expected = {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"}
    expected |= {f"moved/{name}": data for name, data in tree(folder).items()}
    wait_until(lambda: bucket_objects(s3, bucket_name) == expected, timeout=30)
    assert daemon.terminate() == 0


# -- syncd status -----------------------------------------------------------------------------------------


def test_status_shows_the_running_daemon_then_not_running(
    tmp_path, bucket_name, make_config, start_daemon, run_syncd
):
    folder = tmp_path / "data"
    for name in ("one.txt", "two.txt", "three.txt"):
        write(folder / name, name.encode())
    config = make_config(folder, bucket_name)
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: len(daemon.uploaded()) == 3)

    def status() -> str:
        result = run_syncd(["status", "-c", str(config)])
        assert result.returncode == 0, result.stderr
        return result.stdout

    # The upload rows are committed up to 0.2 s after their records are logged: wait for all three.
    shown = ("status: watching", "uploaded: 3 files, last upload", "owed: 0")
    out = wait_until(lambda: first_if(status(), lambda text: all(s in text for s in shown)), timeout=30)
    assert f"daemon: running (PID {daemon.pid})" in out
    assert "uploaded: 3 files, last upload" in out
    assert "owed: 0" in out
    assert f"bucket: {bucket_name}: private=True versioning=Enabled" in out

    assert daemon.terminate() == 0
    out = status()
    assert "daemon: not running" in out
    assert "uploaded: 3 files" in out
    assert "status:" not in out


# -- syncd versions / restore -----------------------------------------------------------------------------

ROUNDS = [b"first version\n", b"the second version\n", b"and the third, last version\n"]


def three_versions(folder: Path, daemon: Any) -> tuple[list[str], list[int]]:
    """Write doc.txt three times (each one uploaded); version IDs and mtimes (ms) in order."""
    mtimes = []
    for n, data in enumerate(ROUNDS, start=1):
        write(folder / "doc.txt", data)
        mtimes.append(mtime_ms(folder / "doc.txt"))
        wait_until(lambda n=n: len(uploads_of(daemon, "doc.txt")) >= n, timeout=30)
    return [u["version_id"] for u in uploads_of(daemon, "doc.txt")], mtimes


@every_server
def test_versions_lists_every_version_for_relative_absolute_and_deleted_paths(
    tmp_path, bucket_name, make_config, start_daemon, run_syncd
):
    folder = tmp_path / "data"
    folder.mkdir()
    config = make_config(folder, bucket_name)
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    ids, _ = three_versions(folder, daemon)
    assert daemon.terminate() == 0
    assert len(set(ids)) == 3

    def versions(path: str) -> list[str]:
        result = run_syncd(["versions", "-c", str(config), path])
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("VERSION ID")
        return lines[1:]

    lines = versions("data/doc.txt")  # relative to the current directory (run_syncd's is tmp_path)
    assert len(lines) == 3, lines
    by_id = {line.split()[0]: line for line in lines}
    assert set(by_id) == set(ids)
    latest = by_id[ids[-1]]
    assert "latest" in latest and "uploaded last by syncd" in latest
    for vid, data in zip(ids, ROUNDS, strict=True):
        assert f" {len(data)} " in by_id[vid]
        if vid != ids[-1]:
            assert "latest" not in by_id[vid] and "syncd" not in by_id[vid]

    assert versions(str(folder / "doc.txt")) == lines  # absolute
    (folder / "doc.txt").unlink()
    assert versions("data/doc.txt") == lines  # deleted locally (on_delete: keep): the versions remain

    missing = run_syncd(["versions", "-c", str(config), "data/never.txt"])
    assert missing.returncode == 1 and "no versions" in missing.stdout


@every_server
def test_restore_a_single_file_to_dest_in_place_and_by_version(
    tmp_path, bucket_name, make_config, start_daemon, run_syncd
):
    folder = tmp_path / "data"
    folder.mkdir()
    config = make_config(folder, bucket_name)
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    ids, mtimes = three_versions(folder, daemon)
    assert daemon.terminate() == 0  # in-place restores would otherwise be uploaded again
    doc = folder / "doc.txt"

    def restore(*args: str) -> Any:
        return run_syncd(["restore", "-c", str(config), *args])

    # --to a file path, and --to an existing directory: the latest version, its mtime restored.
    dest = tmp_path / "out" / "restored.txt"
    result = restore("data/doc.txt", "--to", str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == ROUNDS[-1] and mtime_ms(dest) == mtimes[-1]
    into = tmp_path / "outdir"
    into.mkdir()
    result = restore(str(doc), "--to", str(into))
    assert result.returncode == 0, result.stderr
    assert (into / "doc.txt").read_bytes() == ROUNDS[-1]

    # In place: refused over an existing file without --force, done with it.
    write(doc, b"a local edit")
    result = restore("data/doc.txt")
    assert result.returncode == 1
    assert "exists; not overwritten (use --force)" in result.stderr
    assert doc.read_bytes() == b"a local edit"
    result = restore("data/doc.txt", "--force")
    assert result.returncode == 0, result.stderr
    assert doc.read_bytes() == ROUNDS[-1] and mtime_ms(doc) == mtimes[-1]

    # --version: an older one, in place and elsewhere; an unknown ID is an error.
    result = restore("data/doc.txt", "--version", ids[0], "--force")
    assert result.returncode == 0, result.stderr
    assert doc.read_bytes() == ROUNDS[0] and mtime_ms(doc) == mtimes[0]
    second = tmp_path / "second.txt"
    result = restore("data/doc.txt", "--version", ids[1], "--to", str(second))
    assert result.returncode == 0, result.stderr
    assert second.read_bytes() == ROUNDS[1] and mtime_ms(second) == mtimes[1]
    result = restore("data/doc.txt", "--version", "no-such-version", "--to", str(tmp_path / "x"))
    assert result.returncode == 1 and "no version no-such-version" in result.stderr
    assert not (tmp_path / "x").exists()


@every_server
def test_restore_a_directory_as_it_was_at_a_time(
    tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd
):
    folder = tmp_path / "data"
    docs = folder / "docs"
    for name in ("a.txt", "b.txt", "c.txt"):
        write(docs / name, f"round 1: {name}\n".encode())
    write(folder / "outside.txt", b"not in docs/")
    config = make_config(folder, bucket_name, on_delete="delete")
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: len(daemon.uploaded()) == 4, timeout=30)
    round1 = tree(docs)
    round1_mtimes = {name: mtime_ms(docs / name) for name in round1}

    # S3 LastModified has whole seconds on many servers: keep T well clear of both rounds.
    time.sleep(1.5)
    at = dt.datetime.now().isoformat(timespec="seconds")  # local time, as an admin types it
    time.sleep(1.5)
    start = len(daemon.records())
    write(docs / "a.txt", b"round 2: a changed\n")
    (docs / "b.txt").unlink()
    write(docs / "d.txt", b"round 2: d is new\n")
    daemon.wait_for(lambda r: r.get("event") == "deleted" and r["path"] == "docs/b.txt", start=start)
    wait_until(lambda: {"docs/a.txt", "docs/d.txt"} <= {r["path"] for r in daemon.uploaded()[4:]})
    assert [m["Key"] for m in list_delete_markers(s3, bucket_name)] == ["docs/b.txt"]
    assert daemon.terminate() == 0

    dest = tmp_path / "restored"
    result = run_syncd(["restore", "-c", str(config), "data/docs", "--at", at, "--to", str(dest)])
    assert result.returncode == 0, result.stderr
    assert tree(dest) == round1
    assert {name: mtime_ms(dest / name) for name in round1} == round1_mtimes

    # The same moment in UTC with a Z, and an absolute path: the same files.
    at_utc = dt.datetime.fromisoformat(at).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    dest_utc = tmp_path / "restored-utc"
    result = run_syncd(["restore", "-c", str(config), str(docs), "--at", at_utc, "--to", str(dest_utc)])
    assert result.returncode == 0, result.stderr
    assert tree(dest_utc) == round1


# -- metrics ----------------------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """Sample name -> value from the endpoint (labelled samples are not used by syncd)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def assert_refused(port: int) -> None:
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))


def needs_prometheus() -> None:
    """prometheus-client is in the test extra: missing, it skips here and fails in CI."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        skip_or_fail("prometheus-client is not installed (pip install 'syncd[metrics]')")


def test_metrics_endpoint_counts_uploads(tmp_path, bucket_name, make_config, start_daemon, syncd_env):
    needs_prometheus()
    port = free_port()
    folder = tmp_path / "data"
    sizes = {"a.bin": 1000, "b.bin": 2345, "c.bin": 7}
    for name, size in sizes.items():
        write(folder / name, os.urandom(size))
    config = make_config(folder, bucket_name, metrics={"listen": f"127.0.0.1:{port}"})
    started = time.time()
    daemon = start_daemon(config, env=fast_heartbeat(syncd_env))  # the heartbeat sets the owed gauge
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: len(daemon.uploaded()) == 3, timeout=30)

    values = wait_until(
        lambda: first_if(
            scrape(port), lambda v: v.get("syncd_uploads_total") == 3 and v["syncd_owed_files"] == 0
        ),
        timeout=15,
        interval=0.2,
    )
    assert values["syncd_uploaded_bytes_total"] == sum(sizes.values())
    assert values["syncd_copies_total"] == 0
    assert values["syncd_upload_failures_total"] == 0
    assert values["syncd_retries_total"] == 0
    assert values["syncd_s3_up"] == 1
    assert started - 1 <= values["syncd_last_success_timestamp_seconds"] <= time.time() + 1

    # The same bytes under another name: a server-side copy, counted as such.
    write(folder / "copy-of-a.bin", (folder / "a.bin").read_bytes())
    daemon.wait_for(lambda r: r.get("event") == "copied")
    values = wait_until(lambda: first_if(scrape(port), lambda v: v["syncd_copies_total"] == 1), interval=0.2)
    assert values["syncd_uploads_total"] == 3

    # metrics.listen changed on reload: the endpoint moves.
    new_port = free_port()
    edit_config(config, metrics={"listen": f"127.0.0.1:{new_port}"})
    start = len(daemon.records())
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_for_event("reloaded", start=start, restarted=True)
    daemon.wait_for_event("ready", start=start)
    assert wait_until(lambda: scrape(new_port), interval=0.2)["syncd_s3_up"] == 1
    assert_refused(port)

    assert daemon.terminate() == 0
    assert_refused(new_port)  # the endpoint closed with the daemon


def test_metrics_count_retries_while_s3_is_unreachable(tmp_path, bucket_name, make_config, start_daemon):
    needs_prometheus()
    port, nothing_there = free_port(), free_port()
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    config = make_config(
        folder,
        bucket_name,
        s3={"endpoint_url": f"http://127.0.0.1:{nothing_there}"},
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    daemon = start_daemon(config)
    daemon.wait_for_event("s3_unreachable", timeout=30)
    values = wait_until(
        lambda: first_if(scrape(port), lambda v: v["syncd_retries_total"] >= 2), timeout=15, interval=0.2
    )
    assert values["syncd_s3_up"] == 0 and values["syncd_uploads_total"] == 0
    assert daemon.terminate() == 0


def test_metrics_objects_have_their_own_registries_and_free_the_port():
    needs_prometheus()
    port_a, port_b = free_port(), free_port()
    a, b = Metrics(), Metrics()
    a.start(f"127.0.0.1:{port_a}")
    b.start(f"127.0.0.1:{port_b}")
    try:
        a.uploaded(10)
        a.uploaded(5)
        a.failed()
        a.retried()
        a.set_owed(7)
        a.set_s3_up(True)
        a.set_last_success(1234.5)
        b.copied()
        va, vb = scrape(port_a), scrape(port_b)
        assert va["syncd_uploads_total"] == 2 and va["syncd_uploaded_bytes_total"] == 15
        assert va["syncd_upload_failures_total"] == 1 and va["syncd_retries_total"] == 1
        assert va["syncd_owed_files"] == 7 and va["syncd_s3_up"] == 1
        assert va["syncd_last_success_timestamp_seconds"] == 1234.5
        assert va["syncd_copies_total"] == 0
        assert vb["syncd_copies_total"] == 1 and vb["syncd_uploads_total"] == 0 and vb["syncd_s3_up"] == 0
        with pytest.raises(ConfigError, match=str(port_a)):
            Metrics().start(f"127.0.0.1:{port_a}")  # taken: a config error, not a traceback
    finally:
        a.stop()
        b.stop()
    assert_refused(port_a)
    a.stop()  # twice is fine


def test_metrics_off_or_unavailable(monkeypatch):
    null = metrics_for(None)
    assert isinstance(null, NullMetrics)
    for call in (null.copied, null.failed, null.retried, null.stop):
        call()
    null.uploaded(1)
    null.set_owed(1)
    null.set_last_success(1.0)
    null.set_s3_up(False)
    null.start("127.0.0.1:1")
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("localhost:80") == ("localhost", 80)
    for bad in ("9464", "host:", ":9464", "host:99999"):
        with pytest.raises(ConfigError):
            parse_listen(bad)

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'syncd\[metrics\]'"):
        metrics_for("127.0.0.1:9464")


# -- keep_versions_days -----------------------------------------------------------------------------------

OTHER_RULE = {"ID": "tmp-files", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled", "Expiration": {"Days": 7}}


def rules_by_id(s3: Any, bucket: str) -> dict[str, Record]:
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except s3.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchLifecycleConfiguration":
            return {}
        raise
    return {rule["ID"]: rule for rule in rules}


def test_keep_versions_days_sets_the_lifecycle_rule_beside_existing_ones(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    s3.create_bucket(Bucket=bucket_name)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket_name, LifecycleConfiguration={"Rules": [OTHER_RULE]})
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    config = make_config(folder, bucket_name, keep_versions_days=30)

    result = run_syncd(["once", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    rules = rules_by_id(s3, bucket_name)
    assert rules[RULE_ID]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rules[RULE_ID]["Status"] == "Enabled"
    assert rules["tmp-files"] == OTHER_RULE  # never delete a rule that is not ours
    assert '"event": "lifecycle_set"' in result.stderr

    result = run_syncd(["once", "-c", str(config)])  # already so: not written again
    assert result.returncode == 0, result.stderr
    assert "lifecycle_set" not in result.stderr

    result = run_syncd(["check", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    assert f"warning: lifecycle rule {RULE_ID} deletes old versions after 30 days" in result.stdout
    assert "warning: lifecycle rule tmp-files expires current objects" in result.stdout


def test_check_warns_about_rules_that_expire_history(tmp_path, s3, bucket_name, make_config, run_syncd):
    s3.create_bucket(Bucket=bucket_name)
    folder = tmp_path / "data"
    folder.mkdir()
    config = make_config(folder, bucket_name)
    result = run_syncd(["check", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    assert "lifecycle" not in result.stdout

    noncurrent = {
        "ID": "old-versions",
        "Filter": {"Prefix": ""},
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": 3},
    }
    disabled = dict(OTHER_RULE, ID="off", Status="Disabled")
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket_name, LifecycleConfiguration={"Rules": [noncurrent, OTHER_RULE, disabled]}
    )
    result = run_syncd(["check", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    assert "warning: lifecycle rule old-versions deletes old versions after 3 days" in result.stdout
    assert "warning: lifecycle rule tmp-files expires current objects" in result.stdout
    assert "rule off" not in result.stdout


def test_check_does_not_call_delete_marker_cleanup_an_expiry(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    """ExpiredObjectDeleteMarker removes delete markers with no versions left: no history is lost."""
    s3.create_bucket(Bucket=bucket_name)
    cleanup = {
        "ID": "markers",
        "Filter": {"Prefix": ""},
        "Status": "Enabled",
        "Expiration": {"ExpiredObjectDeleteMarker": True},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=bucket_name, LifecycleConfiguration={"Rules": [cleanup]})
    folder = tmp_path / "data"
    folder.mkdir()
    result = run_syncd(["check", "-c", str(make_config(folder, bucket_name))])
    assert result.returncode == 0, result.stderr
    assert "markers" not in result.stdout, result.stdout


def test_ensure_noncurrent_expiry_merges_and_is_idempotent(s3, s3_server, bucket_name, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.admin.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.admin.secret_key)
    s3.create_bucket(Bucket=bucket_name)
    settings = S3Settings(endpoint_url=s3_server.endpoint_url, region="us-east-1")

    async def ensure(days: int | None, prefix: str = "") -> str:
        async with open_client(settings, pool=2) as client:
            return await ensure_noncurrent_expiry(client, bucket_name, prefix, days)

    assert asyncio.run(ensure(None)) == "unchanged"
    assert rules_by_id(s3, bucket_name) == {}  # without keep_versions_days the bucket is left alone
    assert asyncio.run(ensure(30)) == "set"
    assert asyncio.run(ensure(30)) == "unchanged"
    assert set(rules_by_id(s3, bucket_name)) == {RULE_ID}

    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket_name,
        LifecycleConfiguration={"Rules": [OTHER_RULE, rules_by_id(s3, bucket_name)[RULE_ID]]},
    )
    assert asyncio.run(ensure(7)) == "set"  # a new number of days replaces our rule, only ours
    rules = rules_by_id(s3, bucket_name)
    assert rules["tmp-files"] == OTHER_RULE
    assert rules[RULE_ID]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}
    assert asyncio.run(ensure(None)) == "unchanged"
    assert set(rules_by_id(s3, bucket_name)) == {RULE_ID, "tmp-files"}

    # Another prefix has its own rule, limited to its keys; neither replaces the other.
    assert asyncio.run(ensure(3, "photos/")) == "set"
    assert asyncio.run(ensure(3, "photos/")) == "unchanged"
    rules = rules_by_id(s3, bucket_name)
    assert set(rules) == {RULE_ID, "tmp-files", "syncd-keep-versions:photos/"}
    assert rules["syncd-keep-versions:photos/"]["Filter"] == {"Prefix": "photos/"}
    assert rules["syncd-keep-versions:photos/"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 3}
    assert rules[RULE_ID]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}


def test_lifecycle_rule_ids_fit_whatever_the_prefix():
    assert rule_id("") == RULE_ID
    assert rule_id("host-a/") == "syncd-keep-versions:host-a/"
    long_or_odd = ["x/" * 150, "фото/", "tab\there/"]
    ids = [rule_id(p) for p in long_or_odd]
    assert all(i.startswith("syncd-keep-versions:") and len(i) <= 255 and i.isascii() for i in ids)
    assert len(set(ids)) == len(ids)


def test_keep_versions_days_per_prefix_leaves_the_rest_of_the_bucket_alone(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    host_a = make_config(folder, bucket_name, prefix="host-a/", keep_versions_days=30)
    assert run_syncd(["once", "-c", str(host_a)]).returncode == 0
    other = tmp_path / "other"
    write(other / "b.txt", b"b")
    host_b = make_config(
        other, bucket_name, prefix="host-b/", keep_versions_days=5, state_dir=str(tmp_path / "sb")
    )
    assert run_syncd(["once", "-c", str(host_b)]).returncode == 0

    rules = rules_by_id(s3, bucket_name)
    assert set(rules) == {"syncd-keep-versions:host-a/", "syncd-keep-versions:host-b/"}  # none bucket-wide
    assert rules["syncd-keep-versions:host-a/"]["Filter"] == {"Prefix": "host-a/"}
    assert rules["syncd-keep-versions:host-a/"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rules["syncd-keep-versions:host-b/"]["Filter"] == {"Prefix": "host-b/"}
    assert rules["syncd-keep-versions:host-b/"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 5}

    result = run_syncd(["check", "-c", str(host_a)])  # only the rule that reaches host-a/'s keys
    assert result.returncode == 0, result.stderr
    assert "lifecycle rule syncd-keep-versions:host-a/ deletes old versions after 30 days" in result.stdout
    assert "host-b/" not in result.stdout, result.stdout
