"""The embedded SeaweedFS: signed S3 works, outages keep the data, and no server outlives its owner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import yaml
from helpers import S3TestServer, s3_client, wait_until

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
