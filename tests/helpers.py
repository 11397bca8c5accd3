"""Helpers tests import directly (`from helpers import ...`): bucket contents, polling, a daemon handle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import boto3
import pytest
from botocore.config import Config
from rgw import RgwServer

from syncd.seaweed import Identity, SeaweedServer, die_with_parent

T = TypeVar("T")


def in_ci() -> bool:
    """CI=true (as .ci/run and most CI services set it): every tool the suite needs is installed there."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test whose tool or privilege is missing here; in CI, fail instead.

    A skip in CI would hide a failure behind a green run: CI installs everything, so a missing
    tool there is a broken CI setup, not a reason to stop checking.
    """
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def libfaketime() -> str:
    """libfaketime's path, for LD_PRELOAD (a process's clocks set back, or running faster); else a skip."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not found:
        skip_or_fail("libfaketime is not installed (Debian: apt-get install libfaketime)")
    return str(found[0])


every_server = pytest.mark.servers("seaweedfs", "rgw", slow=("rgw",))
"""Decorator: run the test once against each real S3 server the suite starts (ids [seaweedfs], [rgw]);
the RGW run is in `-m slow` (CI runs it), which keeps the default suite near its 12-minute budget.

For tests whose outcome depends on what the server answers (bucket checks, metadata, versions, copies,
multipart, restore). Tests of local behaviour (config, locks, signals, the watcher, bursts of small files)
stay on SeaweedFS: on RGW they would only add minutes (RGW takes ~1.7x as long per small PUT here)."""

every_server_always = pytest.mark.servers("seaweedfs", "rgw")
"""every_server with both runs in the default suite: the core command-line tests, so that the README's
test command alone proves syncd on a second real server."""


def fast_heartbeat(env: Mapping[str, str]) -> dict[str, str]:
    """env for a `syncd run` whose heartbeat runs every 0.5 s instead of every 5 s: as under systemd with
    WatchdogSec=1s (no NOTIFY_SOCKET: nothing is sent). The heartbeat is what looks at the folder when no
    rescan is due, writes the line `syncd status` prints and sets the gauges counted from the state; a test
    waiting on one of those waits up to 5 s per step without this."""
    return dict(env, WATCHDOG_USEC="1000000")


# Runs a command as nobody: root reads and writes everything, so permission cases need another user.
UNPRIVILEGED = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
NOBODY = 65534


def for_nobody(base: Path, env: Mapping[str, str]) -> dict[str, str]:
    """Hand base and all below it to nobody (base in /tmp: tmp_path is root-only), and return syncd's env
    for running there as nobody (its HOME, no AWS config or credentials files)."""
    for path in (base, *base.rglob("*")):
        os.chown(path, NOBODY, NOBODY)
    os.chmod(base, 0o755)
    absent = str(base / "absent")
    return dict(env, HOME=str(base), AWS_CONFIG_FILE=absent, AWS_SHARED_CREDENTIALS_FILE=absent)


def needs_setpriv() -> None:
    """Skip (fail in CI) unless this runs as root with setpriv, to act as another local user."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        skip_or_fail("needs root and setpriv (util-linux) to act as another local user")


TEST_STOP_GRACE = 4.0  # seconds a test's SeaweedFS may take to stop after SIGTERM (1-1.5 s when it does)


class S3TestServer(SeaweedServer):
    """The session's SeaweedFS with two users: `admin` (the one syncd runs as) and `other` (someone else)."""

    kind = "seaweedfs"

    def __init__(self, data_dir: Path) -> None:
        self.admin = Identity.generate("admin")
        self.other = Identity.generate("other")
        super().__init__(data_dir, [self.admin, self.other])

    def stop(self) -> None:
        """SeaweedServer.stop(), but a `weed mini` still running TEST_STOP_GRACE s after SIGTERM is killed
        then, not after seaweed.STOP_GRACE (10 s): now and then its master keeps retrying a volume growth
        after the filer and volume servers stopped, and never exits. What it stored is on disk by then
        (the filer stops first), so a test's restart finds it; the wait was 10 s lost, often at the end of
        the session."""
        pid = self.pid
        if pid is not None and self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + TEST_STOP_GRACE
            while self.running and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.running:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with open(self.log_path, "a") as log:
                    log.write(f"--- tests: still running {TEST_STOP_GRACE:.0f} s after SIGTERM: killed\n")
        super().stop()


class RgwTestServer(RgwServer):
    """The session's Ceph RGW with the same two users as S3TestServer: `admin` and `other`."""

    kind = "rgw"

    def __init__(self, data_dir: Path, settings: Mapping[str, str] | None = None) -> None:
        self.admin = Identity.generate("admin")
        self.other = Identity.generate("other")
        super().__init__(data_dir, [self.admin, self.other], settings)


TestServer = S3TestServer | RgwTestServer


def s3_client(server: SeaweedServer | RgwServer, identity: Identity) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=identity.access_key,
        aws_secret_access_key=identity.secret_key,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )


def put_of(name: str) -> Callable[[str, str], bool]:
    """An `only=` for BadServer: the PUT of the object whose key ends in /name (its single PUT, or its
    parts; path-style, any query)."""

    def matches(method: str, path: str) -> bool:
        return method == "PUT" and urllib.parse.urlsplit(path).path.endswith("/" + name)

    return matches


def bucket_objects(s3: Any, bucket: str) -> dict[str, bytes]:
    """Key -> bytes of the latest version of every object in the bucket."""
    objects: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


def list_versions(s3: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    """Every object version (not delete markers) under prefix, as list_object_versions gives them."""
    versions: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        versions.extend(page.get("Versions", []))
    return versions


def list_delete_markers(s3: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    markers: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        markers.extend(page.get("DeleteMarkers", []))
    return markers


def error_line(result: Any) -> str:
    """The one line a failing command prints besides its JSON records: `syncd: error: ...`."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("syncd: error: "), result.stderr
    return str(lines[0])


def json_records(text: str) -> list[dict[str, Any]]:
    """The JSON log records in a syncd process's stderr."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def write(path: Path, data: bytes) -> Path:
    """Write a file, creating its directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Relative POSIX path -> bytes of every file below root: what the bucket should hold."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def bucket_matches(s3: Any, bucket: str, root: Path) -> bool:
    """Whether the latest objects in the bucket are exactly the files below root, byte for byte.

    Cheap enough to poll on a big tree (reading back 550 objects takes ~9 s here): a single PUT's ETag is
    the MD5 the server computed over the bytes it stored, so the listing proves those; only multipart
    objects (whose ETag is no MD5) are read back.
    """
    local = tree(root)
    listed: dict[str, tuple[int, str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            listed[item["Key"]] = (item["Size"], item["ETag"].strip('"'))
    if listed.keys() != local.keys():
        return False
    for key, (size, etag) in listed.items():
        data = local[key]
        if size != len(data):
            return False
        if "-" in etag:
            if s3.get_object(Bucket=bucket, Key=key)["Body"].read() != data:
                return False
        elif etag != hashlib.md5(data).hexdigest():
            return False
    return True


def wait_until(fn: Callable[[], T], timeout: float = 30, interval: float = 0.05) -> T:
    """Poll fn until it returns something truthy and return that.

    Exceptions count as "not yet" (a bucket that does not exist yet, an assert inside fn); the last one
    is chained to the AssertionError raised on timeout.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    error: BaseException | None = None
    while True:
        try:
            last = fn()
            error = None
            if last:
                return last
        except Exception as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"condition not met within {timeout}s; last value {last!r:.500}"
                + (f", last error {error!r:.500}" if error else "")
            ) from error
        time.sleep(interval)


class Daemon:
    """A `python -m syncd run -c CONFIG` subprocess whose JSON log (stderr) tests read and wait on.

    `wrapper`: a command that runs syncd (unshare, setpriv...), or none.
    """

    def __init__(
        self, config_path: Path, env: Mapping[str, str], workdir: Path, name: str, wrapper: Sequence[str] = ()
    ) -> None:
        self.config_path = Path(config_path)
        self.log_path = workdir / f"{name}.stderr.log"
        self.stdout_path = workdir / f"{name}.stdout.log"
        self._records: list[dict[str, Any]] = []  # parsed so far, up to byte _read_to of the log
        self._read_to = 0
        with open(self.log_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self._proc = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "syncd", "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env),
                cwd=workdir,
                preexec_fn=die_with_parent(),
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def records(self) -> list[dict[str, Any]]:
        """The complete JSON lines of the log so far (other lines, and a half-written last one, skipped).

        Only what was written since the last call is read and parsed: tests poll this many times a
        second, and parsing a debug log of thousands of records each time took a core from syncd.
        """
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._read_to)
                new = log.read()
        except FileNotFoundError:
            new = b""
        complete = new[: new.rfind(b"\n") + 1]
        self._read_to += len(complete)
        for line in complete.decode(errors="replace").split("\n"):
            if not line.lstrip().startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self._records.append(record)
        return list(self._records)

    def uploaded(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == "uploaded"]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30, start: int = 0
    ) -> dict[str, Any]:
        """The first record (from index `start` of records()) that satisfies predicate.

        Pass start=len(daemon.records()) to wait for something that happens after now. Fails early
        when the daemon exits without having logged a match.
        """
        deadline = time.monotonic() + timeout
        while True:
            exited = self._proc.poll() is not None  # read before the log: its last lines are in it then
            for record in self.records()[start:]:
                if predicate(record):
                    return record
            if exited:
                raise AssertionError(
                    f"syncd exited with code {self._proc.returncode} before the awaited record\n{self.tail()}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"no matching log record within {timeout}s\n{self.tail()}")
            time.sleep(0.05)

    def wait_for_event(
        self, event: str, timeout: float = 30, start: int = 0, **fields: Any
    ) -> dict[str, Any]:
        """The first record with this event and these field values."""
        return self.wait_for(
            lambda r: r.get("event") == event and all(r.get(k) == v for k, v in fields.items()),
            timeout=timeout,
            start=start,
        )

    def tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.log_path}:\n" + "\n".join(text)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit code; a daemon that does not stop in time is killed (test fails)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"syncd did not stop within {timeout}s of SIGTERM\n{self.tail()}") from None

    def kill(self) -> None:
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.wait()


def settle_after(daemon: Daemon, folder: Path, name: str = "zz-sentinel.txt") -> None:
    """Write a sentinel file and wait for its upload: the events written before it have been handled."""
    start = len(daemon.records())
    write(folder / name, name.encode() + str(time.time()).encode())
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r.get("path") == name, start=start)
