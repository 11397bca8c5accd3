"""Nothing escapes the folder (issue 10): symlinks swapped in while syncd reads or restore writes, and files
coming back with the mode and owner they had. Each test plays the attack through the CLI."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from badserver import BadServer
from helpers import (
    bucket_objects,
    every_server,
    json_records,
    list_versions,
    settle_after,
    skip_or_fail,
    wait_until,
)

from syncd.seaweed import die_with_parent

SECRET = b"outside the folder: never in the bucket"
LONG_AGO = time.time() - 3600


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == name]


def no_secret(s3: Any, bucket: str) -> dict[str, bytes]:
    objects = bucket_objects(s3, bucket)
    leaked = sorted(key for key, data in objects.items() if data == SECRET)
    assert not leaked, f"bytes from outside the folder were uploaded as {leaked}"
    return objects


@pytest.fixture(params=["openat2", "walk"])
def resolver_env(request: pytest.FixtureRequest, syncd_env: dict[str, str]) -> dict[str, str]:
    """syncd's environment with openat2 (the kernel's) or the O_NOFOLLOW walk beneath the folder."""
    return {**syncd_env, "SYNCD_OPENAT2": "on" if request.param == "openat2" else "off"}


# -- reading: nothing outside the folder is uploaded -----------------------------------------------------


def test_directory_swapped_for_a_symlink_while_run_runs(
    tmp_path, s3, bucket_name, make_config, start_daemon, resolver_env
):
    """The issue's attack: mkdir dir; echo x > dir/shadow; mv dir dir.old; ln -s OUTSIDE dir."""
    folder, outside = tmp_path / "data", tmp_path / "outside"
    write(outside / "shadow", SECRET)
    write(folder / "keep.txt", b"keep")
    daemon = start_daemon(make_config(folder, bucket_name), env=resolver_env)
    daemon.wait_for_event("scan_done", timeout=60)

    write(folder / "dir" / "shadow", b"x")
    os.rename(folder / "dir", folder / "dir.old")
    os.symlink(outside, folder / "dir")  # before the watcher's event for dir/shadow arrives
    settle_after(daemon, folder)
    wait_until(lambda: "dir.old/shadow" in bucket_objects(s3, bucket_name), timeout=30)

    objects = no_secret(s3, bucket_name)
    assert not [key for key in objects if key.startswith("dir/")], sorted(objects)
    assert objects["dir.old/shadow"] == b"x"
    assert daemon.terminate() == 0


def test_directory_swapped_after_the_file_was_queued(
    tmp_path, s3, bucket_name, make_config, syncd_env, resolver_env
):
    """The swap lands between the walk and the open: only the uploader's open stands in the way.

    One worker, busy with a rate-limited file; dir/shadow waits behind it, already settled and queued.
    """
    folder, outside = tmp_path / "data", tmp_path / "outside"
    write(outside / "shadow", SECRET)
    write(folder / "big.bin", os.urandom(300_000))  # ~3 s at 100 KB/s: the swap comes right after the walk
    write(folder / "dir" / "shadow", b"x")
    for path in (folder / "big.bin", folder / "dir" / "shadow"):
        os.utime(path, (LONG_AGO, LONG_AGO))  # settled already: released to the queue by the walk
    config = make_config(folder, bucket_name, workers=1, bandwidth_limit="100KB")
    log = tmp_path / "once.log"
    with open(log, "wb") as err:
        once = subprocess.Popen(
            [sys.executable, "-m", "syncd", "once", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=resolver_env,
            cwd=tmp_path,
            preexec_fn=die_with_parent(),
        )
        try:
            wait_until(lambda: events(json_records(log.read_text()), "scan_done"), timeout=60)
            os.rename(folder / "dir", folder / "dir.old")
            os.symlink(outside, folder / "dir")
            assert once.wait(120) == 1  # one file not uploaded
        finally:
            once.kill()
            once.wait()

    objects = no_secret(s3, bucket_name)
    assert set(objects) == {"big.bin"}
    skipped = events(json_records(log.read_text()), "upload_skipped")
    assert [r["path"] for r in skipped] == ["dir/shadow"], skipped
    assert "symlink" in skipped[0]["reason"]


@pytest.mark.parametrize("follow", [False, True], ids=["links-off", "links-on"])
def test_symlink_to_an_outside_directory_present_at_start(
    tmp_path, s3, bucket_name, make_config, start_daemon, follow
):
    """The issue's second route: lnk -> OUTSIDE is there when run starts; a file is written in OUTSIDE."""
    folder, outside = tmp_path / "data", tmp_path / "outside"
    write(outside / "old.txt", SECRET)
    write(folder / "keep.txt", b"keep")
    os.symlink(outside, folder / "lnk")
    inside = write(folder / "sub" / "in.txt", b"inside")
    os.symlink(inside.parent, folder / "lnk-in")
    daemon = start_daemon(make_config(folder, bucket_name, follow_symlinks=follow))
    daemon.wait_for_event("scan_done", timeout=60)

    write(outside / "new.txt", SECRET)
    write(outside / "deeper" / "new.txt", SECRET)
    settle_after(daemon, folder)
    expected = {"keep.txt", "sub/in.txt", "zz-sentinel.txt"}
    if follow:  # a link that stays inside the folder is followed, as before
        expected.add("lnk-in/in.txt")
    wait_until(lambda: set(bucket_objects(s3, bucket_name)) >= expected, timeout=30)

    objects = no_secret(s3, bucket_name)
    assert set(objects) == expected
    assert not events(daemon.records(), "upload_failed")
    assert daemon.terminate() == 0


# -- restoring: nothing is written outside the target ----------------------------------------------------


def uploaded_tree(tmp_path: Path, bucket: str, make_config: Any, run_syncd: Any) -> tuple[Path, Path]:
    folder = tmp_path / "data"
    write(folder / "top.txt", b"top")
    write(folder / "docs" / "a.txt", b"a from the bucket")
    write(folder / "docs" / "b.txt", b"b from the bucket")
    config = make_config(folder, bucket)
    result = run_syncd(["once", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    return folder, config


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_restore_never_writes_through_a_symlinked_directory(
    tmp_path, bucket_name, make_config, run_syncd, force
):
    """The issue's attack: `docs` replaced by a link to another directory, then the folder restored."""
    folder, config = uploaded_tree(tmp_path, bucket_name, make_config, run_syncd)
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "b.txt", b"precious, not restore's to replace")
    for name in ("a.txt", "b.txt"):
        (folder / "docs" / name).unlink()
    (folder / "docs").rmdir()
    os.symlink(elsewhere, folder / "docs")
    (folder / "top.txt").unlink()

    result = run_syncd(["restore", "-c", str(config), str(folder), *(["--force"] if force else [])])

    assert result.returncode == 1, result.stdout + result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["b.txt"]
    assert (elsewhere / "b.txt").read_bytes() == b"precious, not restore's to replace"
    assert (folder / "top.txt").read_bytes() == b"top"  # the rest of the restore went on
    refused = sorted(line for line in result.stderr.splitlines() if "symlink" in line)
    assert len(refused) == 2, result.stderr
    for line, name in zip(refused, ("a.txt", "b.txt"), strict=True):
        assert line.startswith(f"{folder}/docs/{name}: {folder}/docs is a symlink"), line
    assert "restored 1 file, 2 not restored" in result.stdout


def test_directory_or_dangling_link_in_the_way_is_a_per_file_error(
    tmp_path, bucket_name, make_config, run_syncd
):
    """Both were internal errors that stopped the whole restore (exit 70)."""
    folder, config = uploaded_tree(tmp_path, bucket_name, make_config, run_syncd)
    (folder / "docs" / "a.txt").unlink()
    (folder / "docs" / "a.txt").mkdir()  # a directory where a file is to be restored
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(tmp_path / "nowhere", dest / "docs")  # a dangling symlink in the path

    in_place = run_syncd(["restore", "-c", str(config), str(folder), "--force"])
    to_dest = run_syncd(["restore", "-c", str(config), str(folder), "--to", str(dest)])

    for result in (in_place, to_dest):
        assert result.returncode == 1, result.stdout + result.stderr
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert f"{folder}/docs/a.txt is a directory" in in_place.stderr, in_place.stderr
    assert "restored 2 files, 1 not restored" in in_place.stdout, in_place.stdout
    refused = [line for line in to_dest.stderr.splitlines() if f"{dest}/docs is a symlink" in line]
    assert len(refused) == 2, to_dest.stderr
    assert "restored 1 file, 2 not restored" in to_dest.stdout, to_dest.stdout
    assert (dest / "top.txt").read_bytes() == b"top"
    assert not (tmp_path / "nowhere").exists()


# -- restoring: files come back as they were ---------------------------------------------------------------


def test_private_file_owned_by_nobody_comes_back_private_and_owned_by_nobody(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    """The issue's case: a 0600 file owned by nobody came back 0644 and owned by root."""
    if os.geteuid() != 0:
        skip_or_fail("restoring owners needs root")
    folder = tmp_path / "data"
    key = write(folder / "id_ed25519", b"-----BEGIN OPENSSH PRIVATE KEY-----\n", mode=0o600)
    os.chown(key, 65534, 65534)
    config = make_config(folder, bucket_name)
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    meta = s3.head_object(Bucket=bucket_name, Key="id_ed25519")["Metadata"]
    assert (meta["mode"], meta["uid"], meta["gid"]) == ("0100600", "65534", "65534")

    dest = tmp_path / "restored-key"
    result = run_syncd(["restore", "-c", str(config), str(key), "--to", str(dest)])

    assert result.returncode == 0, result.stderr
    st = dest.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 65534, 65534)
    key.unlink()
    result = run_syncd(["restore", "-c", str(config), str(key)])
    assert result.returncode == 0, result.stderr
    st = key.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 65534, 65534)


@every_server
def test_mode_is_recorded_by_every_upload_path(tmp_path, s3, bucket_name, make_config, run_syncd):
    """Single PUT through the helper process, streamed PUT, multipart, server-side copy."""
    folder = tmp_path / "data"
    small = write(folder / "small.txt", b"small", mode=0o640)
    write(folder / "medium.bin", os.urandom(300_000), mode=0o604)
    write(folder / "big.bin", os.urandom(6 * 1024 * 1024), mode=0o751)
    config = make_config(folder, bucket_name, upload_processes=2, multipart_threshold="5MiB")
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    write(folder / "copy.txt", small.read_bytes(), mode=0o444)
    result = run_syncd(["once", "-c", str(config)])
    assert result.returncode == 0 and events(json_records(result.stderr), "copied"), result.stderr

    uid, gid = str(os.getuid()), str(os.getgid())
    modes = {"small.txt": 0o640, "medium.bin": 0o604, "big.bin": 0o751, "copy.txt": 0o444}
    for key, mode in modes.items():
        meta = s3.head_object(Bucket=bucket_name, Key=key)["Metadata"]
        recorded = (meta.get("mode"), meta.get("uid"), meta.get("gid"))
        assert recorded == (f"0{0o100000 | mode:o}", uid, gid), key

    dest = tmp_path / "restored"
    assert run_syncd(["restore", "-c", str(config), str(folder), "--to", str(dest)]).returncode == 0
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir()} == modes


@every_server
def test_chmod_alone_makes_no_version_and_restore_gives_the_uploaded_mode(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    folder = tmp_path / "data"
    doc = write(folder / "doc.txt", b"shared document\n", mode=0o640)
    config = make_config(folder, bucket_name)
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    doc.chmod(0o600)
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    assert len(list_versions(s3, bucket_name)) == 1

    dest = tmp_path / "restored.txt"
    result = run_syncd(["restore", "-c", str(config), str(doc), "--to", str(dest)])
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert "mode 0640" in result.stdout
    # --force over the file gives it the uploaded mode too, not the mode of the file it replaces.
    result = run_syncd(["restore", "-c", str(config), str(doc), "--force"])
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(doc.stat().st_mode) == 0o640


def test_object_without_a_recorded_mode_restores_0600_and_says_so(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    folder = tmp_path / "data"
    write(folder / "new.txt", b"new")
    config = make_config(folder, bucket_name)
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    s3.put_object(Bucket=bucket_name, Key="old.txt", Body=b"uploaded before modes were recorded")

    dest = tmp_path / "restored"
    result = run_syncd(["restore", "-c", str(config), str(folder), "--to", str(dest)])

    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((dest / "old.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "new.txt").stat().st_mode) == 0o644
    said = [line for line in result.stdout.splitlines() if "old.txt" in line]
    assert len(said) == 1 and "no mode recorded: made 0600" in said[0], result.stdout


# -- restore's temp files --------------------------------------------------------------------------------


def test_a_killed_restore_leaves_no_temp_file_after_the_next_run(
    tmp_path, s3_server, bucket_name, make_config, run_syncd, syncd_env
):
    folder = tmp_path / "data"
    write(folder / "docs" / "a.txt", b"a" * 100_000)
    config = make_config(folder, bucket_name)
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    dest = tmp_path / "dest"

    def object_get(method: str, path: str) -> bool:
        return method == "GET" and "/docs/a.txt" in path and "versions" not in path

    with BadServer("hang", upstream=s3_server.endpoint_url, only=object_get) as proxy:
        through_proxy = make_config(folder, bucket_name, s3={"endpoint_url": proxy.url})
        restore = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "syncd",
                "restore",
                "-c",
                str(through_proxy),
                str(folder),
                "--to",
                str(dest),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=syncd_env,
            cwd=tmp_path,
            preexec_fn=die_with_parent(),
        )
        try:
            temps = wait_until(lambda: list((dest / "docs").glob(".syncd-restore-*")), timeout=60)
        finally:
            restore.send_signal(signal.SIGKILL)
            restore.wait()
        proxy.mode = "proxy"
    assert temps and all(p.exists() for p in temps)

    result = run_syncd(["restore", "-c", str(config), str(folder), "--to", str(dest)])

    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (dest / "docs").iterdir()) == ["a.txt"]


def test_restore_temp_files_are_never_uploaded(tmp_path, s3, bucket_name, make_config, run_syncd):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    write(folder / "docs" / ".syncd-restore-4242-0123456789ab", b"half a restored file")
    result = run_syncd(["once", "-c", str(make_config(folder, bucket_name))])
    assert result.returncode == 0, result.stderr
    assert set(bucket_objects(s3, bucket_name)) == {"a.txt"}


def test_a_file_behind_a_symlinked_directory_counts_as_gone(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    """Whether docs/a.txt is still there is judged without following docs: never by what lies outside."""
    folder, outside = tmp_path / "data", tmp_path / "outside"
    for n in range(4):
        write(folder / f"f{n}.txt", b"kept")
    write(folder / "docs" / "a.txt", b"a")
    write(outside / "a.txt", SECRET)
    config = make_config(folder, bucket_name, on_delete="delete")
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    (folder / "docs" / "a.txt").unlink()
    (folder / "docs").rmdir()
    os.symlink(outside, folder / "docs")

    result = run_syncd(["once", "-c", str(config)])

    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in events(json_records(result.stderr), "deleted")] == ["docs/a.txt"]
    assert "docs/a.txt" not in no_secret(s3, bucket_name)
