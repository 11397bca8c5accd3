"""object_lock: every version syncd writes is locked, current versions stay locked, the bucket must lock.

The proofs run against Ceph RGW, which enforces Object Lock (and drops the lock of multipart uploads and
copies: syncd must set it afterwards), and against SeaweedFS 4.x, which stores and enforces it too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from badserver import BadServer
from helpers import fast_heartbeat, json_records, list_delete_markers, list_versions, wait_until, write

from syncd.s3 import fastpath

MiB = 1024 * 1024
RETAIN_LONG = 3600  # seconds: nothing in these tests waits for it


def lock_config(mode: str = "governance", retain: str | int = RETAIN_LONG) -> dict[str, Any]:
    return {"object_lock": {"mode": mode, "retain": retain}}


def retention(s3: Any, bucket: str, key: str, version_id: str) -> tuple[str, float]:
    held = s3.get_object_retention(Bucket=bucket, Key=key, VersionId=version_id)["Retention"]
    return held["Mode"], held["RetainUntilDate"].timestamp()


def rfc3339_ts(text: str) -> float:
    assert text.endswith("Z"), text
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


BOTH = pytest.mark.servers("seaweedfs", "rgw")


@BOTH
@pytest.mark.parametrize("sender", ["fast-path", "helper", "plain-client"])
def test_every_version_is_locked_on_every_sender(
    tmp_path: Path,
    s3: Any,
    bucket_name: str,
    make_config: Any,
    run_syncd: Any,
    start_daemon: Any,
    syncd_env: dict[str, str],
    sender: str,
) -> None:
    """syncd creates the bucket with Object Lock; small PUTs (fast path, helper), streamed PUTs, multipart
    uploads and server-side copies all get the mode and a retain-until >= their upload time + retain, and
    the `uploaded`/`copied` records say the retain-until the server holds."""
    folder = tmp_path / "data"
    write(folder / "small.txt", b"small file")
    write(folder / "streamed.bin", os.urandom(300 * 1024))
    big = os.urandom(6 * MiB + 123)
    write(folder / "big.bin", big)
    config = make_config(
        folder,
        bucket_name,
        multipart_threshold="5MiB",
        multipart_chunksize="5MiB",
        upload_processes=2 if sender == "helper" else 1,
        **lock_config(),
    )
    if sender != "helper":
        env = dict(syncd_env, SYNCD_FASTPATH="0" if sender == "plain-client" else "1")
        result = run_syncd(["once", "-c", str(config)], env=env)
        assert result.returncode == 0, result.stderr
        write(folder / "copy-of-big.bin", big)  # same bytes: a server-side copy
        result2 = run_syncd(["once", "-c", str(config)], env=env)
        assert result2.returncode == 0, result2.stderr
        logged = json_records(result.stderr) + json_records(result2.stderr)
    else:  # the helper process sends the small PUTs once it runs: write them after it started
        daemon = start_daemon(config)
        daemon.wait_for_event("helper_started", timeout=60)
        write(folder / "small.txt", b"small file, sent by the helper")
        for name in ("small.txt", "streamed.bin", "big.bin"):
            daemon.wait_for_event("uploaded", path=name)
        write(folder / "copy-of-big.bin", big)
        daemon.wait_for_event("copied", path="copy-of-big.bin")
        assert daemon.terminate() == 0
        logged = daemon.records()
        stopped = next(r for r in logged if r.get("event") == "helper_stopped")
        assert stopped["puts"] >= 1  # the helper's FastPut sent the small PUT, lock headers and all
    # The small and streamed PUTs went through the fast path, or (SYNCD_FASTPATH=0) the client's put_object.
    off = [r for r in logged if r.get("event") in ("fastpath_off", "helper_unavailable")]
    assert bool(off) == (sender == "plain-client"), off
    lock_conf = s3.get_object_lock_configuration(Bucket=bucket_name)["ObjectLockConfiguration"]
    assert lock_conf["ObjectLockEnabled"] == "Enabled"
    records = {r["path"]: r for r in logged if r.get("event") in ("uploaded", "copied")}
    by_version = {r["version_id"]: r for r in logged if r.get("event") in ("uploaded", "copied")}
    assert set(records) == {"small.txt", "streamed.bin", "big.bin", "copy-of-big.bin"}
    assert records["copy-of-big.bin"]["event"] == "copied"
    assert records["big.bin"]["parts"] == 2
    for version in list_versions(s3, bucket_name):
        record = by_version[version["VersionId"]]
        mode, until = retention(s3, bucket_name, version["Key"], version["VersionId"])
        assert mode == "GOVERNANCE", version["Key"]
        assert until >= version["LastModified"].timestamp() + RETAIN_LONG, version["Key"]
        assert rfc3339_ts(record["retain_until"]) == until, version["Key"]
        # syncd's own key cannot delete a locked version: the bytes stay.
        with pytest.raises(s3.exceptions.ClientError) as refused:
            s3.delete_object(Bucket=bucket_name, Key=version["Key"], VersionId=version["VersionId"])
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        body = s3.get_object(Bucket=bucket_name, Key=version["Key"], VersionId=version["VersionId"])["Body"]
        assert hashlib.md5(body.read()).hexdigest() == record["md5"]


@BOTH
def test_unlocked_existing_bucket_is_exit_3_for_check_once_and_run(
    tmp_path: Path, s3: Any, bucket_name: str, make_config: Any, run_syncd: Any
) -> None:
    s3.create_bucket(Bucket=bucket_name)
    s3.put_bucket_versioning(Bucket=bucket_name, VersioningConfiguration={"Status": "Enabled"})
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    config = make_config(folder, bucket_name, **lock_config())
    for command in ("check", "once", "run"):
        result = run_syncd([command, "-c", str(config)], timeout=60)
        assert result.returncode == 3, (command, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("syncd: error:")]
        assert len(errors) == 1, result.stderr
        assert "does not have Object Lock enabled" in errors[0]
        assert "put-object-lock-configuration" in errors[0]
    assert list_versions(s3, bucket_name) == []  # nothing was uploaded unlocked


@BOTH
def test_check_reports_the_lock_compliance_and_a_short_keep_versions(
    tmp_path: Path, s3: Any, bucket_name: str, make_config: Any, run_syncd: Any
) -> None:
    s3.create_bucket(Bucket=bucket_name, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=bucket_name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    folder = tmp_path / "data"
    folder.mkdir()
    config = make_config(folder, bucket_name, keep_versions_days=7, **lock_config("compliance", "30d"))
    result = run_syncd(["check", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "object lock: compliance, every version locked for 30d" in out
    assert "bucket default retention: governance 1 days" in out
    assert "no one, the root account included, can shorten or remove" in out
    assert "keep_versions_days (7) is shorter than object_lock.retain (30d)" in out
    # The admin key may delete versions; check says so (and probing deleted nothing: the bucket is empty).
    assert "this key can delete versions" in out
    assert "server: enforces Object Lock (it refused to delete a locked probe version" in out
    # The probes left nothing behind: the bucket has no version and no delete marker.
    assert list_versions(s3, bucket_name) == [] and list_delete_markers(s3, bucket_name) == []


def test_check_on_a_missing_bucket_says_it_will_be_created_locked(
    tmp_path: Path, s3: Any, bucket_name: str, make_config: Any, run_syncd: Any
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    result = run_syncd(["check", "-c", str(make_config(folder, bucket_name, **lock_config()))])
    assert result.returncode == 0, result.stderr
    assert "creates the bucket with Object Lock enabled" in result.stdout


# (retain, rewrite after, look after) in seconds: the scenario on RGW (a minute: -m slow), a
# shorter one on SeaweedFS (in the default run).
SCENARIO = {"rgw": (40, 5, 60), "seaweedfs": (12, 2, 14)}


@pytest.mark.servers("seaweedfs", "rgw", slow=("rgw",))
def test_current_version_is_extended_the_old_one_expires_and_a_restart_does_not_extend_it_again(
    tmp_path: Path,
    s3_server: Any,
    s3: Any,
    bucket_name: str,
    make_config: Any,
    run_syncd: Any,
    start_daemon: Any,
) -> None:
    """retain: 40s (RGW). A file rewritten after 5 s: after ~60 s its old version has kept its date and
    can be deleted, while its current version was extended (to now + retain) and is still locked.

    The state remembers each current version's retain-until: `once` right after the daemon's extension
    sends no PutObjectRetention; once the lock is within retain/2 of its end it does. (One run of the
    scenario for both: the restart's `once` runs while the old version's lock runs out.)"""
    retain, rewrite_after, look_after = SCENARIO[s3_server.kind]
    folder = tmp_path / "data"
    write(folder / "f.txt", b"one")
    config = make_config(folder, bucket_name, **lock_config(retain=f"{retain}s"))
    daemon = start_daemon(config)
    first = daemon.wait_for_event("uploaded", path="f.txt")
    uploaded_at = time.time()
    time.sleep(rewrite_after)  # the scenario itself: a rewrite a few seconds after the first upload
    write(folder / "f.txt", b"two")
    second = daemon.wait_for(
        lambda r: r.get("event") == "uploaded" and r.get("version_id") != first["version_id"]
    )
    # The current version comes due (less than retain/2 left) before the old one's lock ends.
    daemon.wait_for_event("locks_extended", timeout=retain + 30)
    assert daemon.terminate() == 0
    extended_until = retention(s3, bucket_name, "f.txt", second["version_id"])[1]
    assert extended_until > rfc3339_ts(second["retain_until"])

    again = run_syncd(["once", "-c", str(config)])
    assert again.returncode == 0, again.stderr
    assert not [r for r in json_records(again.stderr) if r.get("event") == "locks_extended"]
    assert retention(s3, bucket_name, "f.txt", second["version_id"])[1] == extended_until

    old_until = rfc3339_ts(first["retain_until"])
    wait_until(lambda: time.time() > max(old_until + 1, uploaded_at + look_after), timeout=look_after + 30)
    # The old version kept its date and can be deleted now; the current one was extended and is locked.
    assert retention(s3, bucket_name, "f.txt", first["version_id"])[1] == old_until
    mode, until = retention(s3, bucket_name, "f.txt", second["version_id"])
    assert mode == "GOVERNANCE"
    assert until > rfc3339_ts(second["retain_until"]) and until > time.time()
    s3.delete_object(Bucket=bucket_name, Key="f.txt", VersionId=first["version_id"])
    with pytest.raises(s3.exceptions.ClientError) as refused:
        s3.delete_object(Bucket=bucket_name, Key="f.txt", VersionId=second["version_id"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert s3.get_object(Bucket=bucket_name, Key="f.txt")["Body"].read() == b"two"

    wait_until(lambda: extended_until - time.time() < retain / 2, timeout=retain)  # due: retain/2 left
    due = run_syncd(["once", "-c", str(config)])
    assert [r for r in json_records(due.stderr) if r.get("event") == "locks_extended"], due.stderr
    assert retention(s3, bucket_name, "f.txt", second["version_id"])[1] > extended_until


@BOTH
def test_delete_under_a_lock_is_a_marker_and_the_file_restores(
    tmp_path: Path, s3: Any, bucket_name: str, make_config: Any, start_daemon: Any, run_syncd: Any
) -> None:
    folder = tmp_path / "data"
    write(folder / "gone.txt", b"keep me")
    write(folder / "stays.txt", b"stays")
    config = make_config(folder, bucket_name, on_delete="delete", **lock_config())
    daemon = start_daemon(config)
    daemon.wait_for_event("uploaded", path="gone.txt")
    daemon.wait_for_event("uploaded", path="stays.txt")
    (folder / "gone.txt").unlink()
    daemon.wait_for_event("deleted", path="gone.txt")
    assert daemon.terminate() == 0
    assert [m["Key"] for m in list_delete_markers(s3, bucket_name)] == ["gone.txt"]
    result = run_syncd(["restore", "-c", str(config), str(folder / "gone.txt")])
    assert result.returncode == 0, result.stderr
    assert (folder / "gone.txt").read_bytes() == b"keep me"


def test_versions_and_status_show_the_locks(
    tmp_path: Path, s3: Any, bucket_name: str, make_config: Any, run_syncd: Any
) -> None:
    folder = tmp_path / "data"
    write(folder / "f.txt", b"v1")
    config = make_config(folder, bucket_name, **lock_config())
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    write(folder / "f.txt", b"v2 longer")
    result = run_syncd(["once", "-c", str(config)])
    assert result.returncode == 0
    (record,) = [r for r in json_records(result.stderr) if r.get("event") == "uploaded"]

    versions = run_syncd(["versions", "-c", str(config), str(folder / "f.txt")])
    assert versions.returncode == 0, versions.stderr
    lines = [line for line in versions.stdout.splitlines() if "locked: governance until" in line]
    assert len(lines) == 2, versions.stdout
    assert any(record["version_id"] in line and record["retain_until"] in line for line in lines)

    status = run_syncd(["status", "-c", str(config)])
    assert status.returncode == 0, status.stderr
    assert "locked: 1 current versions (governance), earliest lock ends " in status.stdout
    assert record["retain_until"].replace("T", " ").replace("Z", " UTC") in status.stdout


def test_fast_path_put_carries_the_lock_headers_signed_as_botocore_signs_them(
    s3_server: Any, s3: Any, bucket_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastPut's PUT signs the Object Lock headers the client sends, with Content-MD5, as botocore's
    S3SigV4Auth and the client itself sign them, and the server locks the version it makes."""
    from test_fastpath import Clock, botocore_signs, client_and_fast, md5_b64, sent_headers, signed_part

    monkeypatch.delenv(fastpath.ENV_SWITCH, raising=False)
    s3.create_bucket(Bucket=bucket_name, ObjectLockEnabledForBucket=True)
    Clock(monkeypatch)
    until = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    lock = {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": until}
    body = b"locked body"
    seen: list[Any] = []

    async def both() -> tuple[dict[str, Any], dict[str, str], tuple[str, str, None]]:
        async with client_and_fast(s3_server, bucket_name) as (client, fast):
            client.meta.events.register("before-send.s3.PutObject", lambda request, **_: seen.append(request))
            await client.put_object(Bucket=bucket_name, Key="k", Body=body, ContentMD5=md5_b64(body), **lock)
            frozen = await fast._credentials.get_frozen_credentials()
            own = fast._own_signed(
                "k",
                "",
                md5_b64(body),
                hashlib.sha256(body).hexdigest(),
                None,
                None,
                frozen,
                False,
                fastpath._lock_headers("GOVERNANCE", until),
            )
            sent = await fast.put_object(Key="f", Body=body, ContentMD5=md5_b64(body), **lock)
            return sent, own, (frozen.access_key, frozen.secret_key, None)

    sent, own, creds = asyncio.run(both())
    (request,) = seen
    assert signed_part(own) == signed_part(sent_headers(request))
    assert {k: v for k, v in own.items() if k in ("X-Amz-Date", "Authorization")} == {
        k: v for k, v in botocore_signs(request.url, own, body, creds).items() if k != "X-Amz-Content-SHA256"
    }
    assert own["x-amz-object-lock-mode"] == "GOVERNANCE"
    assert own["Content-MD5"] == md5_b64(body)
    assert retention(s3, bucket_name, "f", sent["VersionId"]) == ("GOVERNANCE", until.timestamp())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"mode": "strict", "retain": "1d"}, "object_lock.mode: must be one of governance, compliance"),
        ({"retain": "1d"}, "object_lock.mode: missing required key"),
        ({"mode": "governance"}, "object_lock.retain: missing required key"),
        ({"mode": "governance", "retain": "5s"}, "object_lock.retain: at least 10s"),
        ({"mode": "governance", "retain": "30 parsecs"}, "object_lock.retain: unknown time unit"),
        ({"mode": "governance", "retain": "1d", "days": 3}, "unknown key object_lock.days"),
    ],
)
def test_bad_object_lock_config_is_exit_2_naming_the_key(
    tmp_path: Path, make_config: Any, run_syncd: Any, bucket_name: str, value: Any, message: str
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    result = run_syncd(["check", "-c", str(make_config(folder, bucket_name, object_lock=value))])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.servers("rgw")
def test_least_privilege_key_runs_syncd_and_cannot_erase_history(
    tmp_path: Path,
    s3_server: Any,
    bucket_name: str,
    make_config: Any,
    run_syncd: Any,
    start_daemon: Any,
    syncd_env: dict[str, str],
) -> None:
    """A user whose rights a bucket policy narrows as the README says (no s3:DeleteObjectVersion, no
    s3:BypassGovernanceRetention, no s3:PutBucketPolicy, no s3:PutLifecycleConfiguration) runs check,
    once and run (uploads, multipart, lock extension, delete markers); check says what the key cannot do,
    and the key cannot delete any version, locked or not."""
    from helpers import s3_client

    from syncd.seaweed import Identity

    user = Identity.generate(f"lp{bucket_name[-8:]}")
    s3_server.create_user(user)
    s3 = s3_client(s3_server, user)
    s3.create_bucket(Bucket=bucket_name, ObjectLockEnabledForBucket=True)
    denied = [
        "s3:DeleteObjectVersion",
        "s3:BypassGovernanceRetention",
        "s3:PutBucketPolicy",
        "s3:DeleteBucketPolicy",
        "s3:PutLifecycleConfiguration",
        "s3:DeleteBucket",
    ]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": {"AWS": [f"arn:aws:iam:::user/{user.name}"]},
                "Action": denied,
                "Resource": [f"arn:aws:s3:::{bucket_name}", f"arn:aws:s3:::{bucket_name}/*"],
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket_name, Policy=json.dumps(policy))
    env = dict(syncd_env, AWS_ACCESS_KEY_ID=user.access_key, AWS_SECRET_ACCESS_KEY=user.secret_key)
    folder = tmp_path / "data"
    write(folder / "small.txt", b"small")
    write(folder / "big.bin", os.urandom(6 * MiB))
    config = make_config(
        folder,
        bucket_name,
        on_delete="delete",
        multipart_threshold="5MiB",
        multipart_chunksize="5MiB",
        **lock_config(retain="10s"),  # the least object_lock.retain takes: the extension comes soonest
    )

    check = run_syncd(["check", "-c", str(config)], env=env)
    assert check.returncode == 0, check.stderr
    assert "key: cannot delete versions" in check.stdout
    assert "key: cannot bypass governance retention" in check.stdout
    assert "whether it enforces Object Lock cannot be told with a key that may not delete" in check.stdout

    daemon = start_daemon(config, env=env)
    small = daemon.wait_for_event("uploaded", path="small.txt")
    big = daemon.wait_for_event("uploaded", path="big.bin")
    (folder / "small.txt").unlink()  # its delete marker is made while big.bin's lock comes due
    daemon.wait_for_event("deleted", path="small.txt")
    daemon.wait_for_event("locks_extended", timeout=30)
    assert daemon.terminate() == 0
    assert not [r for r in daemon.records() if r.get("level") in ("error", "critical")], daemon.tail()
    for record in (small, big):
        assert retention(s3, bucket_name, record["key"], record["version_id"])[0] == "GOVERNANCE"
        with pytest.raises(s3.exceptions.ClientError) as refused:
            s3.delete_object(Bucket=bucket_name, Key=record["key"], VersionId=record["version_id"])
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
    unlocked = s3.put_object(Bucket=bucket_name, Key="unlocked.txt", Body=b"x")  # no lock at all
    with pytest.raises(s3.exceptions.ClientError) as refused:
        s3.delete_object(Bucket=bucket_name, Key="unlocked.txt", VersionId=unlocked["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


def test_prometheus_shows_the_locked_current_versions(
    tmp_path: Path, bucket_name: str, make_config: Any, start_daemon: Any, syncd_env: dict[str, str]
) -> None:
    pytest.importorskip("prometheus_client")
    from test_service import first_if, free_port, scrape

    port = free_port()
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    write(folder / "b.txt", b"b")
    config = make_config(folder, bucket_name, metrics={"listen": f"127.0.0.1:{port}"}, **lock_config())
    daemon = start_daemon(config, env=fast_heartbeat(syncd_env))  # the heartbeat counts the locks
    records = [daemon.wait_for_event("uploaded", path=name) for name in ("a.txt", "b.txt")]
    earliest = min(rfc3339_ts(r["retain_until"]) for r in records)
    values = wait_until(
        lambda: first_if(scrape(port), lambda v: v.get("syncd_locked_current_versions") == 2),
        timeout=15,
        interval=0.2,
    )
    assert values["syncd_lock_earliest_retain_until_timestamp_seconds"] == earliest
    assert daemon.terminate() == 0


@pytest.mark.parametrize("before", ["unlocked", "fresh-state"])
def test_current_versions_syncd_did_not_lock_get_locked(
    tmp_path: Path, s3: Any, bucket_name: str, make_config: Any, run_syncd: Any, before: str
) -> None:
    """object_lock turned on for files uploaded without it, or a fresh state over a bucket that holds the
    files already (adopted, not uploaded again): the extension pass locks their current versions."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    write(folder / "sub/b.txt", b"bb")
    s3.create_bucket(Bucket=bucket_name, ObjectLockEnabledForBucket=True)
    first = make_config(folder, bucket_name, **({} if before == "unlocked" else lock_config()))
    assert run_syncd(["once", "-c", str(first)]).returncode == 0
    held_before = {v["Key"]: v for v in list_versions(s3, bucket_name)}
    if before == "fresh-state":
        for path in (tmp_path / "state").iterdir():
            path.unlink()
    second = make_config(folder, bucket_name, **lock_config())
    started = time.time()
    result = run_syncd(["once", "-c", str(second)])
    assert result.returncode == 0, result.stderr
    assert "0 uploaded" in result.stdout  # adopted, not uploaded again
    (extended,) = [r for r in json_records(result.stderr) if r.get("event") == "locks_extended"]
    assert extended["versions"] == 2
    assert {v["VersionId"] for v in list_versions(s3, bucket_name)} == {
        v["VersionId"] for v in held_before.values()
    }
    for key, version in held_before.items():
        mode, until = retention(s3, bucket_name, key, version["VersionId"])
        # Unlocked before: locked now. Adopted: already locked for long enough, so left as it was.
        assert mode == "GOVERNANCE" and until >= started + (RETAIN_LONG if before == "unlocked" else 0)
    status = run_syncd(["status", "-c", str(second)])
    assert "locked: 2 current versions (governance)" in status.stdout, status.stdout


def test_one_version_the_server_keeps_failing_does_not_hold_the_extension_pass(
    tmp_path: Path, s3: Any, s3_server: Any, bucket_name: str, make_config: Any, run_syncd: Any
) -> None:
    """PutObjectRetention for one key answered 500 while the server answers the rest: that version fails
    alone after a few tries (lock_extend_failed, the server's reason, tried again at the next pass) and
    the others are locked; it is not an outage (the old pass retried it as one: exit 75 after
    --retry-for, nothing said about the key)."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    write(folder / "b.txt", b"bb")
    s3.create_bucket(Bucket=bucket_name, ObjectLockEnabledForBucket=True)
    assert run_syncd(["once", "-c", str(make_config(folder, bucket_name))]).returncode == 0

    def retention_of_a(method: str, path: str) -> bool:
        return method == "PUT" and path.startswith(f"/{bucket_name}/a.txt?") and "retention" in path

    with BadServer("500", upstream=s3_server.endpoint_url, only=retention_of_a) as front:
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url}, **lock_config())
        result = run_syncd(["once", "--retry-for", "20s", "-c", str(config)], timeout=120)
    assert result.returncode != 75, result.stderr
    records = json_records(result.stderr)
    assert not [r for r in records if r.get("event") == "s3_unreachable"], result.stderr
    (failed,) = [r for r in records if r.get("event") == "lock_extend_failed"]
    assert failed["path"] == "a.txt" and "InternalError" in failed["reason"], failed
    assert failed["hint"] == "retried at the next pass", failed  # not a missing permission
    (extended,) = [r for r in records if r.get("event") == "locks_extended"]
    assert (extended["versions"], extended["failed"]) == (1, 1), extended
    (b_version,) = [v["VersionId"] for v in list_versions(s3, bucket_name) if v["Key"] == "b.txt"]
    assert retention(s3, bucket_name, "b.txt", b_version)[0] == "GOVERNANCE"


@BOTH
def test_a_changed_mode_keeps_current_versions_locked_in_the_mode_they_have(
    tmp_path: Path, s3: Any, bucket_name: str, make_config: Any, run_syncd: Any
) -> None:
    """object_lock.mode changed from compliance to governance: the server refuses to change a compliance
    lock, so the extension pass extends it as compliance (it never leaves a current version to expire)."""
    retain = 12  # seconds; the lock is due for extension once less than retain/2 is left
    folder = tmp_path / "data"
    write(folder / "f.txt", b"compliance")
    first = run_syncd(
        ["once", "-c", str(make_config(folder, bucket_name, **lock_config("compliance", retain)))]
    )
    assert first.returncode == 0, first.stderr
    (uploaded,) = [r for r in json_records(first.stderr) if r.get("event") == "uploaded"]
    until = rfc3339_ts(uploaded["retain_until"])
    wait_until(lambda: until - time.time() < retain / 2, timeout=30)  # due: within retain/2 of its end
    second = run_syncd(
        ["once", "-c", str(make_config(folder, bucket_name, **lock_config("governance", retain)))]
    )
    assert second.returncode == 0, second.stderr
    (extended,) = [r for r in json_records(second.stderr) if r.get("event") == "locks_extended"]
    assert extended["versions"] == 1 and extended["failed"] == 0, second.stderr
    mode, new_until = retention(s3, bucket_name, "f.txt", uploaded["version_id"])
    assert mode == "COMPLIANCE" and new_until > until


def test_reload_that_adds_object_lock_on_an_unlocked_bucket_is_rejected(
    tmp_path: Path, s3: Any, bucket_name: str, make_config: Any, start_daemon: Any
) -> None:
    """SIGHUP with object_lock added while the bucket cannot lock: one reload_rejected record saying so,
    and the daemon goes on with the config it had."""
    import signal

    from test_service import edit_config

    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    config = make_config(folder, bucket_name)
    daemon = start_daemon(config)
    daemon.wait_for_event("uploaded", path="a.txt")
    edit_config(config, **lock_config())
    start = len(daemon.records())
    os.kill(daemon.pid, signal.SIGHUP)
    rejected = daemon.wait_for_event("reload_rejected", start=start)
    assert "does not have Object Lock enabled" in rejected["reason"]
    write(folder / "b.txt", b"b")
    daemon.wait_for_event("uploaded", path="b.txt")  # still running, on the old config
    assert daemon.terminate() == 0
