"""The core interface, end to end: the CLI in a subprocess against a real SeaweedFS."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    bucket_matches,
    bucket_objects,
    every_server_always,
    json_records,
    list_versions,
    tree,
    wait_until,
    write,
)

from syncd.config import KEYS, Config, load_config
from syncd.s3 import metadata

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def anonymous_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def assert_versions_match_log(s3, bucket: str, records: list[dict]) -> None:
    """Every version in the bucket has an upload record, and every record names a version that exists."""
    in_bucket = {(v["Key"], v["VersionId"]) for v in list_versions(s3, bucket)}
    in_log = {(r["key"], r["version_id"]) for r in records if r.get("event") in ("uploaded", "copied")}
    assert in_bucket == in_log


@every_server_always
def test_once_uploads_every_file_byte_for_byte(tmp_path, s3, bucket_name, make_config, run_syncd):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"alpha\n")
    write(folder / "sub dir/b #1+%.bin", os.urandom(70_000))
    write(folder / "deep/er/ünï cödé.txt", "héllo".encode())
    write(folder / ".git/config", b"[core]\n")  # backed up: nothing is excluded silently
    write(folder / "empty", b"")
    config = make_config(folder, bucket_name)

    result = run_syncd(["once", "-c", str(config)])

    assert result.returncode == 0, result.stderr
    assert bucket_objects(s3, bucket_name) == tree(folder)
    records = json_records(result.stderr)
    uploads = [r for r in records if r["event"] == "uploaded"]
    assert {r["path"] for r in uploads} == set(tree(folder))
    for r in uploads:
        assert r["timestamp"].endswith("Z") and r["level"] == "info"
        assert r["size"] == len((folder / r["path"]).read_bytes())
        assert r["etag"] and '"' not in r["etag"]
        assert isinstance(r["duration_ms"], int)
    assert_versions_match_log(s3, bucket_name, records)
    ready = next(r for r in records if r["event"] == "bucket_ready")
    assert ready["created"] is True and ready["private"] is True and ready["versioning"] == "Enabled"
    assert "uploaded" in result.stdout  # the summary goes to stdout

    head = s3.head_object(Bucket=bucket_name, Key="sub dir/b #1+%.bin")
    data = (folder / "sub dir/b #1+%.bin").read_bytes()
    # As the server spells the names (RGW: src-last-modified-millis); restore reads them the same way.
    assert metadata.md5_hex(head["Metadata"]) == hashlib.md5(data).hexdigest()
    mtime_ms = (folder / "sub dir/b #1+%.bin").stat().st_mtime_ns // 1_000_000
    assert metadata.value(head["Metadata"], "src_last_modified_millis") == str(mtime_ms)
    assert s3.head_object(Bucket=bucket_name, Key="a.txt")["ContentType"] == "text/plain"


@every_server_always
def test_new_bucket_is_private_and_anonymous_reads_fail(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    folder = tmp_path / "data"
    write(folder / "secret.txt", b"top secret")
    result = run_syncd(["once", "-c", str(make_config(folder, bucket_name))])
    assert result.returncode == 0, result.stderr

    grants = s3.get_bucket_acl(Bucket=bucket_name)["Grants"]
    assert not [g for g in grants if g["Grantee"].get("URI") == ALL_USERS]
    assert anonymous_status(f"{s3_server.endpoint_url}/{bucket_name}") in (401, 403)
    assert anonymous_status(f"{s3_server.endpoint_url}/{bucket_name}/secret.txt") in (401, 403)


@every_server_always
def test_public_read_bucket_is_made_private(tmp_path, s3, s3_server, bucket_name, make_config, run_syncd):
    s3.create_bucket(Bucket=bucket_name, ACL="public-read")
    assert anonymous_status(f"{s3_server.endpoint_url}/{bucket_name}") == 200  # really public before
    folder = tmp_path / "data"
    write(folder / "x.txt", b"x")

    result = run_syncd(["once", "-c", str(make_config(folder, bucket_name))])

    assert result.returncode == 0, result.stderr
    grants = s3.get_bucket_acl(Bucket=bucket_name)["Grants"]
    assert not [g for g in grants if g["Grantee"].get("URI") == ALL_USERS]
    assert anonymous_status(f"{s3_server.endpoint_url}/{bucket_name}") in (401, 403)
    ready = next(r for r in json_records(result.stderr) if r["event"] == "bucket_ready")
    assert ready["made_private"] is True


@every_server_always
def test_daemon_uploads_changes_and_stops_cleanly(tmp_path, s3, bucket_name, make_config, start_daemon):
    folder = tmp_path / "data"
    write(folder / "before.txt", b"was here before start")
    daemon = start_daemon(make_config(folder, bucket_name))
    daemon.wait_for_event("ready", timeout=60)
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "before.txt")

    write(folder / "new.txt", b"new file")
    write(folder / "before.txt", b"changed after start")
    nested = folder / "made" / "at" / "once"
    nested.mkdir(parents=True)
    for i in range(20):
        write(nested / f"n{i}.txt", f"nested {i}".encode())
    # Files written quickly into a brand-new directory tree: the walk of new directories finds them.
    wait_until(lambda: bucket_matches(s3, bucket_name, folder), timeout=30)

    code = daemon.terminate()
    assert code == 0
    records = daemon.records()
    assert any(r["event"] == "stopped" for r in records)
    assert_versions_match_log(s3, bucket_name, records)


@every_server_always
def test_identical_bytes_again_make_a_new_version_with_the_same_etag(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = folder_with(tmp_path)
    daemon = start_daemon(make_config(folder, bucket_name))
    daemon.wait_for_event("ready", timeout=60)

    def doc_uploads() -> list[dict]:
        return [r for r in daemon.records() if r.get("event") == "uploaded" and r["path"] == "doc.txt"]

    for n, data in enumerate([b"version A", b"version B", b"version A"], start=1):
        write(folder / "doc.txt", data)
        wait_until(lambda n=n: len(doc_uploads()) >= n, timeout=30)
    assert daemon.terminate() == 0
    ups = doc_uploads()
    assert len(ups) == 3
    assert ups[0]["etag"] == ups[2]["etag"] != ups[1]["etag"]
    assert len({u["version_id"] for u in ups}) == 3
    versions = [v for v in list_versions(s3, bucket_name) if v["Key"] == "doc.txt"]
    assert {v["VersionId"] for v in versions} == {u["version_id"] for u in ups}
    assert s3.get_object(Bucket=bucket_name, Key="doc.txt")["Body"].read() == b"version A"


def folder_with(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    return folder


def test_sigterm_mid_burst_exits_0_and_leaves_nothing_half_done(
    tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd
):
    """SIGTERM while 4 workers are busy: what is in flight finishes and is recorded, nothing new starts."""
    folder = folder_with(tmp_path)
    # 150 x 20 kB at 200 kB/s: about 15 s of uploads, so the burst is surely still going at SIGTERM.
    config = make_config(folder, bucket_name, workers=4, bandwidth_limit="200KB")
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    for i in range(150):
        write(folder / f"burst/{i:03d}.bin", os.urandom(20_000))
    daemon.wait_for(lambda r: r.get("event") == "uploaded", timeout=30)
    assert daemon.terminate() == 0

    records = daemon.records()
    events = [r.get("event") for r in records]
    stopping = events.index("stopping")
    drained = [r["path"] for r in records[stopping:] if r.get("event") == "uploaded"]
    uploaded = {r["path"] for r in records if r.get("event") == "uploaded"}
    stopped = records[events.index("stopped")]
    assert len(uploaded) < 150 and stopped["owed"] >= 150 - len(uploaded), "the burst was still going"
    assert 1 <= len(drained) <= 4, drained  # the uploads in flight finished; no new one started
    assert stopped["uploaded"] == len(uploaded)
    # Every version in the bucket has its record (none cancelled between the server and the log) ...
    assert_versions_match_log(s3, bucket_name, records)
    local = tree(folder)
    for key, data in bucket_objects(s3, bucket_name).items():
        assert data == local[key]  # ... and is whole
    # ... and is in the state: the next run (at full speed) uploads exactly the rest.
    result = run_syncd(["once", "-c", str(make_config(folder, bucket_name))])
    assert result.returncode == 0, result.stderr
    again = {r["path"] for r in json_records(result.stderr) if r.get("event") == "uploaded"}
    assert again == {f"burst/{i:03d}.bin" for i in range(150)} - uploaded
    assert bucket_objects(s3, bucket_name) == local


@every_server_always
def test_check_on_a_public_acl_bucket_says_what_run_does(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """RGW's GetBucketPolicyStatus calls a public ACL a public policy: check must not say there is one."""
    s3.create_bucket(Bucket=bucket_name, ACL="public-read")
    folder = folder_with(tmp_path)
    write(folder / "a.txt", b"a")
    config = str(make_config(folder, bucket_name))

    result = run_syncd(["check", "-c", config])

    assert result.returncode == 0, result.stderr
    assert "public by ACL (AllUsers:READ); syncd run makes it private" in result.stdout
    assert "policy" not in result.stdout + result.stderr
    assert anonymous_status(f"{s3_server.endpoint_url}/{bucket_name}") == 200  # check changed nothing
    assert run_syncd(["once", "-c", config]).returncode == 0  # and run does what check said
    assert anonymous_status(f"{s3_server.endpoint_url}/{bucket_name}") in (401, 403)


@every_server_always
def test_check_creates_and_changes_nothing(tmp_path, s3, bucket_name, make_config, run_syncd):
    folder = folder_with(tmp_path)
    write(folder / "a.txt", b"a")
    result = run_syncd(["check", "-c", str(make_config(folder, bucket_name))])
    assert result.returncode == 0, result.stderr
    assert "does not exist yet" in result.stdout
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_bucket(Bucket=bucket_name)


@every_server_always
def test_dry_run_lists_and_uploads_nothing(tmp_path, s3, bucket_name, make_config, run_syncd):
    folder = folder_with(tmp_path)
    write(folder / "one.txt", b"1")
    write(folder / "two/three.txt", b"3")
    config = make_config(folder, bucket_name)
    s3.create_bucket(Bucket=bucket_name)
    result = run_syncd(["once", "--dry-run", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["one.txt", "two/three.txt"]
    assert bucket_objects(s3, bucket_name) == {}


# -- exit codes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("bucket: b-okay\n", "folder"),
        ("folder: {folder}\n", "bucket"),
        ("folder: {folder}\nbucket: b-okay\nworkerz: 4\n", "workerz"),
        ("folder: {folder}\nbucket: b-okay\nworkers: many\n", "workers"),
        ("folder: {folder}/absent\nbucket: b-okay\n", "does not exist"),
        ("folder: {folder}/file.txt\nbucket: b-okay\n", "not a directory"),
        ("folder: {folder}\nbucket: b-okay\nsettle: soon\n", "settle"),
        ("folder: {folder}\nbucket: b-okay\ns3: {{endpont_url: x}}\n", "s3.endpont_url"),
        # A misspelt required key is named as the typo, not as a missing key; all typos in one line.
        ("folder: {folder}\nbukcet: b-okay\n", "unknown key bukcet (did you mean bucket?)"),
        (
            "folder: {folder}\nbucket: b-okay\nworkrs: 3\ns3: {{endpoint: x}}\n",
            "unknown keys workrs (did you mean workers?), s3.endpoint (did you mean s3.endpoint_url?)",
        ),
        ("folder: [unclosed\n", "YAML"),
    ],
)
def test_config_errors_exit_2_with_one_line_naming_the_key(tmp_path, run_syncd, body, expected):
    folder = folder_with(tmp_path)
    write(folder / "file.txt", b"x")
    config = tmp_path / "config.yaml"
    config.write_text(body.format(folder=folder))
    for command in ("run", "once", "check"):
        result = run_syncd([command, "-c", str(config)])
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(config) in lines[0], lines
        assert "Traceback" not in result.stderr


def test_config_example_is_valid_and_shows_every_key(tmp_path):
    example = (Path(__file__).parent.parent / "config.example.yaml").read_text()
    folder = folder_with(tmp_path)
    config = load_config_text(example.replace("folder: /srv/data", f"folder: {folder}"), tmp_path)
    assert config.folder == folder and config.bucket
    for section, keys in KEYS.items():  # commented-out keys count: the example documents them all
        for key in keys:
            assert re.search(rf"^ *#? *{key}:", example, re.M), f"{section}{key} missing from the example"


def load_config_text(text: str, tmp_path: Path) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path)


def test_missing_config_file_exits_2(tmp_path, run_syncd):
    result = run_syncd(["once", "-c", str(tmp_path / "nope.yaml")])
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


@every_server_always
def test_someone_elses_bucket_exits_3(tmp_path, s3_other, bucket_name, make_config, run_syncd):
    s3_other.create_bucket(Bucket=bucket_name)
    folder = folder_with(tmp_path)
    write(folder / "a.txt", b"a")
    config = make_config(folder, bucket_name)
    for command in ("once", "check", "run"):
        result = run_syncd([command, "-c", str(config)], timeout=60)
        assert result.returncode == 3, (command, result.stderr)
        assert bucket_name in result.stderr and "Traceback" not in result.stderr
    assert s3_other.list_objects_v2(Bucket=bucket_name).get("KeyCount", 0) == 0


@every_server_always
def test_wrong_secret_exits_4_without_leaking_it(
    tmp_path, s3_server, bucket_name, make_config, run_syncd, syncd_env
):
    folder = folder_with(tmp_path)
    env = dict(syncd_env, AWS_SECRET_ACCESS_KEY="definitely-wrong-secret")
    config = make_config(folder, bucket_name)
    for command in ("once", "check", "run"):
        result = run_syncd([command, "-c", str(config)], env=env, timeout=60)
        assert result.returncode == 4, (command, result.stderr)
        assert "definitely-wrong-secret" not in result.stderr + result.stdout
        assert s3_server.admin.secret_key not in result.stderr + result.stdout


def test_no_credentials_exits_4_naming_what_to_set(tmp_path, bucket_name, make_config, run_syncd, syncd_env):
    folder = folder_with(tmp_path)
    env = {k: v for k, v in syncd_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    config = make_config(folder, bucket_name)
    for command in (["once"], ["check"], ["run"], ["versions", str(folder / "a.txt")], ["verify"]):
        result = run_syncd([*command, "-c", str(config)], env=env, timeout=60)
        assert result.returncode == 4, (command, result.stderr)
        assert (
            result.stderr.strip().splitlines()[-1].startswith("syncd: error: no AWS credentials found: set")
        ), (
            command,
            result.stderr,
        )


def test_second_writer_exits_5_naming_the_pid(tmp_path, bucket_name, make_config, start_daemon, run_syncd):
    folder = folder_with(tmp_path)
    config = make_config(folder, bucket_name)
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    for command in ("once", "run"):
        result = run_syncd([command, "-c", str(config)])
        assert result.returncode == 5, result.stderr
        assert f"PID {daemon.pid}" in result.stderr
    assert daemon.terminate() == 0


def test_once_exits_1_when_a_file_cannot_be_uploaded(tmp_path, s3, bucket_name, make_config, run_syncd):
    folder = folder_with(tmp_path)
    write(folder / "fine.txt", b"fine")
    long_dir = folder.joinpath(*["d" * 250] * 4)
    write(long_dir / ("f" * 100), b"key too long")
    result = run_syncd(["once", "-c", str(make_config(folder, bucket_name))])
    assert result.returncode == 1, result.stderr
    assert "1024" in result.stderr
    assert bucket_objects(s3, bucket_name) == {"fine.txt": b"fine"}


def test_ctrl_c_while_the_aws_libraries_load_exits_130(
    tmp_path, bucket_name, make_config, syncd_env, run_syncd
):
    # The AWS libraries take a few hundred milliseconds to import: a Ctrl-C then is as likely as any.
    # A stand-in aiobotocore on PYTHONPATH raises KeyboardInterrupt exactly there.
    fake = tmp_path / "fake-modules" / "aiobotocore"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = dict(syncd_env, PYTHONPATH=os.pathsep.join([str(fake.parent), syncd_env.get("PYTHONPATH", "")]))
    config = make_config(folder_with(tmp_path), bucket_name)

    result = run_syncd(["once", "-c", str(config)], env=env)

    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "syncd: interrupted"


def test_status_imports_no_s3_library(tmp_path, bucket_name, make_config, syncd_env, run_syncd):
    # status only reads the state: it must not pay the S3 libraries' ~0.5 s of imports (nor need them).
    fake = tmp_path / "fake-modules"
    for name in ("aiobotocore", "aiohttp", "aioboto3"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('status imported {name}')\n")
    env = dict(syncd_env, PYTHONPATH=os.pathsep.join([str(fake), syncd_env.get("PYTHONPATH", "")]))
    config = make_config(folder_with(tmp_path), bucket_name)

    result = run_syncd(["status", "-c", str(config)], env=env)

    assert result.returncode == 0, result.stderr
    assert "daemon: not running" in result.stdout
    assert "uploaded: 0 files" in result.stdout


def test_s3_profile_gives_the_keys_and_a_missing_one_exits_4(
    tmp_path, s3_server, bucket_name, make_config, syncd_env, run_syncd
):
    # The session is built from s3.profile (aiobotocore's, client.make_session): its keys sign the
    # requests, and a profile in neither file is the user's error, said in one line before any request.
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[backup]\naws_access_key_id = {s3_server.admin.access_key}\n"
        f"aws_secret_access_key = {s3_server.admin.secret_key}\n"
    )
    env = {k: v for k, v in syncd_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(credentials)
    folder = folder_with(tmp_path)
    write(folder / "a.txt", b"a")

    with_profile = make_config(folder, bucket_name, s3={"profile": "backup"})
    without = make_config(folder, bucket_name, s3={"profile": "other"})

    found = run_syncd(["once", "-c", str(with_profile)], env=env)
    missing = run_syncd(["check", "-c", str(without)], env=env)

    assert found.returncode == 0, found.stderr
    assert missing.returncode == 4, missing.stderr
    assert missing.stderr.strip() == (
        "syncd: error: the AWS profile 'other' (s3.profile) is not in the shared config or credentials "
        "file; add it or remove s3.profile"
    )


def test_ctrl_c_in_once_exits_130(tmp_path, bucket_name, make_config, syncd_env):
    folder = folder_with(tmp_path)
    write(folder / "big.bin", os.urandom(3_000_000))
    config = make_config(folder, bucket_name, bandwidth_limit="200KB")
    log = tmp_path / "once.stderr"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "once", "--no-progress", "-c", str(config)],
            env=syncd_env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    try:
        # Started and uploading (held back by the bandwidth limit), however slow the machine is.
        wait_until(lambda: '"bucket_ready"' in log.read_text() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    err = log.read_text()
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def run_with_open_files(args: list[str], env: dict[str, str], cwd: Path, soft: int, hard: int):
    """`python -m syncd *args` with its open-file limit set to soft/hard, as systemd sets a service's."""
    import resource

    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )


def test_a_low_open_file_limit_is_raised_for_the_workers(tmp_path, s3, bucket_name, make_config, syncd_env):
    """systemd gives a service 1024 open files (soft); 256 workers can need more. Scaled down: a soft limit
    of 128 under a hard one of 4096, and 256 workers: every file is uploaded, none fails for want of one."""
    folder = folder_with(tmp_path)
    for i in range(600):
        write(folder / f"f{i:04d}.bin", os.urandom(1024))
    config = make_config(folder, bucket_name, workers=256)
    result = run_with_open_files(["once", "-c", str(config)], syncd_env, tmp_path, 128, 4096)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Too many open files" not in result.stderr
    assert bucket_matches(s3, bucket_name, folder)


def test_a_hard_open_file_limit_below_the_workers_warns_and_loses_nothing(
    tmp_path, s3, bucket_name, make_config, syncd_env
):
    """A hard limit syncd cannot raise: `open_files_limited` names the fix; files that found no descriptor
    stay owed (never recorded as uploaded), and a run with fewer workers uploads them."""
    folder = folder_with(tmp_path)
    for i in range(600):
        write(folder / f"f{i:04d}.bin", os.urandom(1024))
    many = make_config(folder, bucket_name, workers=256)
    first = run_with_open_files(["once", "-c", str(many)], syncd_env, tmp_path, 128, 128)
    records = json_records(first.stderr)
    warning = next(r for r in records if r["event"] == "open_files_limited")
    assert "LimitNOFILE=" in warning["hint"] and "workers: 256" in warning["reason"]
    in_bucket = bucket_objects(s3, bucket_name)
    for record in (r for r in records if r["event"] == "uploaded"):
        assert in_bucket[record["key"]] == (folder / record["path"]).read_bytes()
    few = make_config(folder, bucket_name, workers=4)
    second = run_with_open_files(["once", "-c", str(few)], syncd_env, tmp_path, 128, 128)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "open_files_limited" not in second.stderr
    assert bucket_matches(s3, bucket_name, folder)
