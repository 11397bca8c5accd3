"""Hostile and odd input: strange names, symlinks, special files, permissions, excludes, deletions, a folder
that goes away, the inotify watch limit, and servers that misbehave (tests/badserver.py in front of, or
instead of, the real SeaweedFS). Everything goes through the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from badserver import BadServer, free_port
from helpers import (
    UNPRIVILEGED,
    Daemon,
    bucket_matches,
    bucket_objects,
    error_line,
    every_server,
    fast_heartbeat,
    for_nobody,
    json_records,
    libfaketime,
    list_delete_markers,
    list_versions,
    needs_setpriv,
    settle_after,
    skip_or_fail,
    wait_until,
)

ESC = "\u201b"  # the escape character of syncd/keys.py


# -- helpers ---------------------------------------------------------------------------------------------


def write(path: Path | bytes, data: bytes) -> None:
    """Write a file at a str or bytes path (bytes: any name Linux allows), creating parents."""
    raw = os.fsencode(path)
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def tree(root: Path) -> dict[bytes, bytes]:
    """Relative path (bytes, as on disk) -> contents of every regular file below root."""
    out: dict[bytes, bytes] = {}
    base = os.fsencode(root)
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            full = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                with open(full, "rb") as f:
                    out[os.path.relpath(full, base)] = f.read()
    return out


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == name]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def keys_in(s3: Any, bucket: str) -> set[str]:
    return set(bucket_objects(s3, bucket))


def wait_for_new_watch(daemon: Daemon, start: int) -> None:
    """After a watcher restart (from record `start` on): the new watches are up and their rescan is done.

    A file written after this reaches syncd through the watcher; the one rescan that might have found it
    instead is over (no other is due: rescan_interval is 15 minutes in these tests).
    """
    restarted = daemon.wait_for_event("rescan_requested", reason="watcher restarted", start=start)
    after = daemon.records().index(restarted)
    daemon.wait_for_event("scan_done", start=after)


def found_by_the_watcher(daemon: Daemon, path: str, start: int) -> None:
    """`path` (written after record `start`) was uploaded with no rescan in between: the watcher saw it."""
    upload = daemon.wait_for(lambda r: r.get("event") == "uploaded" and r.get("path") == path, start=start)
    between = daemon.records()[start : daemon.records().index(upload)]
    assert not events(between, "scan_done"), between


class WrappedDaemon(Daemon):
    """helpers.Daemon, but `syncd run` started through a wrapper command (unshare, setpriv)."""

    def __init__(
        self, wrapper: list[str], config_path: Path, env: dict[str, str], workdir: Path, name: str
    ) -> None:
        super().__init__(config_path, env, workdir, name, wrapper=wrapper)


@pytest.fixture
def wrapped_daemon(syncd_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WrappedDaemon]]:
    started: list[WrappedDaemon] = []

    def start(wrapper: list[str], config_path: Path, workdir: Path | None = None) -> WrappedDaemon:
        daemon = WrappedDaemon(
            wrapper, config_path, syncd_env, workdir or tmp_path, name=f"wrapped-{len(started) + 1}"
        )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


# -- keys ------------------------------------------------------------------------------------------------

# Relative path on disk (bytes) -> the key syncd must write under prefix "host1/".
ODD_NAMES: dict[bytes, str] = {
    b"sp ace.txt": "sp ace.txt",
    b"100%.txt": "100%.txt",
    b"a+b=c&d.txt": "a+b=c&d.txt",
    b"#hash.txt": "#hash.txt",
    b"what?.txt": "what?.txt",
    b"%2F%41.txt": "%2F%41.txt",  # looks URL-encoded: must stay literal
    "caf\u00e9.txt".encode(): "caf\u00e9.txt",  # NFC
    "cafe\u0301.txt".encode(): "cafe\u0301.txt",  # NFD: a different file, a different key
    "sub dir/\u65e5\u672c \U0001f600.txt".encode(): "sub dir/\u65e5\u672c \U0001f600.txt",
    b"back\\slash.txt": f"back{ESC}5Cslash.txt",
    b"tab\tname.txt": f"tab{ESC}09name.txt",
    b"new\nline.txt": f"new{ESC}0Aline.txt",
    b"del\x7f.txt": f"del{ESC}7F.txt",
    b"bad\xff\xfe.bin": f"bad{ESC}FF{ESC}FE.bin",
    b"dir\xfe/inner.txt": f"dir{ESC}FE/inner.txt",
    f"quote{ESC}41.txt".encode(): f"quote{ESC}E2{ESC}80{ESC}9B41.txt",  # a literal escape is escaped
    b"-rf": "-rf",
    b".hidden": ".hidden",
}


TRICKY = [
    b"a+b=c&d.txt",
    b"%2F%41.txt",
    "cafe\u0301.txt".encode(),
    b"new\nline.txt",
    b"bad\xff\xfe.bin",
    f"quote{ESC}41.txt".encode(),
]


def odd_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    for rel in ODD_NAMES:
        write(os.path.join(os.fsencode(folder), rel), b"content of " + rel)
    return folder


def path_arg(folder: Path, rel: bytes) -> str:
    """A command-line argument for a file in folder (surrogate-escaped: subprocess passes the bytes)."""
    return os.fsdecode(os.path.join(os.fsencode(folder), rel))


def syncd_bytes(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """run_syncd with undecoded output: restore prints the raw bytes of odd names."""
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args], env=env, cwd=cwd, capture_output=True, timeout=120
    )


def test_odd_names_map_verbatim_or_escaped_and_list_their_versions(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    folder = odd_folder(tmp_path)
    config = make_config(folder, bucket_name, prefix="host1")

    result = run_syncd(["once", "-c", str(config)])

    assert result.returncode == 0, result.stderr
    objects = bucket_objects(s3, bucket_name)
    assert set(objects) == {"host1/" + key for key in ODD_NAMES.values()}  # nothing outside the prefix
    for rel, key in ODD_NAMES.items():
        assert objects["host1/" + key] == b"content of " + rel
    uploads = {os.fsencode(r["path"]): r for r in events(json_records(result.stderr), "uploaded")}
    assert set(uploads) == set(ODD_NAMES)
    for rel in TRICKY:
        listed = run_syncd(["versions", "-c", str(config), path_arg(folder, rel)])
        assert listed.returncode == 0, (rel, listed.stdout, listed.stderr)
        assert uploads[rel]["version_id"] in listed.stdout, (rel, listed.stdout)
        assert listed.stdout.count("latest") == 1, (rel, listed.stdout)  # NFD's listing lacks NFC's


@every_server
def test_odd_names_restore_byte_for_byte(tmp_path, s3, bucket_name, make_config, run_syncd, syncd_env):
    folder = odd_folder(tmp_path)
    config = make_config(folder, bucket_name, prefix="host1")
    assert run_syncd(["once", "-c", str(config)]).returncode == 0
    syncd_env = dict(syncd_env, PYTHONIOENCODING="utf-8:strict")  # stdout as under LANG=en_US.UTF-8

    dest = tmp_path / "restored-files"
    dest.mkdir()
    paths = [path_arg(folder, rel) for rel in TRICKY]
    restored = syncd_bytes(["restore", "-c", str(config), *paths, "--to", str(dest)], syncd_env, tmp_path)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tree(dest) == {os.path.basename(rel): b"content of " + rel for rel in TRICKY}

    whole = tmp_path / "restored-tree"
    restored = syncd_bytes(
        ["restore", "-c", str(config), str(folder), "--to", str(whole)], syncd_env, tmp_path
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tree(whole) == tree(folder)
    assert b"Traceback" not in restored.stderr


def test_keys_over_1024_bytes_are_skipped_with_a_record(tmp_path, s3, bucket_name, make_config, run_syncd):
    folder = tmp_path / "data"
    write(folder / "fine.txt", b"fine")
    long_plain = os.path.join(*["d" * 250] * 4, "f" * 30)  # 1,034 bytes as it stands
    long_escaped = os.path.join(b"x" * 10, b"\xff" * 250)  # 260 bytes on disk, 1,261 as a key
    fits_escaped = os.path.join(b"y" * 10, b"\xfe" * 150)  # 760 bytes as a key
    for rel in (os.fsencode(long_plain), long_escaped, fits_escaped):
        write(os.path.join(os.fsencode(folder), rel), rel[-20:])
    config = make_config(folder, bucket_name)

    result = run_syncd(["once", "-c", str(config)])

    assert result.returncode == 1, result.stderr
    no_traceback(result)
    skipped = {
        os.fsencode(r["path"]): r["reason"] for r in events(json_records(result.stderr), "upload_skipped")
    }
    assert set(skipped) == {os.fsencode(long_plain), long_escaped}
    assert all("1024" in reason for reason in skipped.values())
    assert keys_in(s3, bucket_name) == {"fine.txt", "y" * 10 + "/" + f"{ESC}FE" * 150}


# -- the watcher and non-UTF-8 names ---------------------------------------------------------------------


def test_non_utf8_name_does_not_stop_the_watcher(tmp_path, s3, bucket_name, make_config, start_daemon):
    from test_object_lock import rfc3339_ts

    folder = tmp_path / "data"
    folder.mkdir()
    daemon = start_daemon(make_config(folder, bucket_name))
    daemon.wait_for_event("ready", timeout=60)
    bad = os.path.join(os.fsencode(folder), b"bad\xff.txt")

    write(bad, b"undecodable name")
    for i in range(3):
        write(folder / f"n{i}.txt", b"normal")  # likely in the same event batch that kills awatch
    failed = daemon.wait_for_event("watcher_failed", timeout=30)
    assert "decode" in failed["reason"].lower(), failed  # the cause, not "unhandled errors in a TaskGroup"
    expected = {f"n{i}.txt" for i in range(3)} | {f"bad{ESC}FF.txt"}

    # A live file of an undecodable name fails each new watch, next to ordinary work: every restart waits
    # longer than the one before, as long as it said (backoff, not a hot loop), and whatever is written
    # meanwhile lands (a rescan once each new watch is up).
    start = daemon.records().index(failed) + 1
    began = time.monotonic()
    i = 0
    while len(events(daemon.records()[start:], "watcher_failed")) < 2:
        assert time.monotonic() - began < 60, daemon.tail()
        with open(bad, "ab") as f:
            f.write(b".")
        write(folder / f"m{i}.txt", b"during")
        expected.add(f"m{i}.txt")
        i += 1
        time.sleep(0.5)
    write(folder / "after.txt", b"after")
    expected.add("after.txt")
    wait_until(lambda: keys_in(s3, bucket_name) == expected, timeout=45)
    failures = [failed, *events(daemon.records()[start:], "watcher_failed")]
    for earlier, later in itertools.pairwise(failures):
        assert later["retry_in_s"] > earlier["retry_in_s"], failures
        assert rfc3339_ts(later["timestamp"]) - rfc3339_ts(earlier["timestamp"]) >= earlier["retry_in_s"]
    assert daemon.returncode is None
    assert daemon.terminate() == 0


# -- symlinks --------------------------------------------------------------------------------------------


def symlink_farm(tmp_path: Path) -> tuple[Path, Path]:
    """A folder with links inside, outside and in a loop, and a secret outside it."""
    folder = tmp_path / "data"
    outside = tmp_path / "outside"
    write(outside / "secret.txt", b"not for the bucket")
    write(folder / "real.txt", b"real")
    write(folder / "sub" / "inner.txt", b"inner")
    os.symlink(folder / "real.txt", folder / "link-in.txt")
    os.symlink("/etc/passwd", folder / "passwd")
    os.symlink(outside / "secret.txt", folder / "link-out.txt")
    os.symlink(outside, folder / "dirlink-out")
    os.symlink(folder / "sub", folder / "dirlink-in")
    os.symlink("..", folder / "sub" / "loop")  # sub/loop -> data: a cycle
    os.symlink(folder / "nowhere", folder / "dangling")
    return folder, outside


def test_symlinks_are_not_followed_by_default(tmp_path, s3, bucket_name, make_config, start_daemon):
    folder, outside = symlink_farm(tmp_path)
    daemon = start_daemon(make_config(folder, bucket_name))
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: keys_in(s3, bucket_name) == {"real.txt", "sub/inner.txt"}, timeout=30)

    # The same kinds of links made while it runs.
    os.symlink(outside / "secret.txt", folder / "late-out.txt")
    os.symlink(folder / "real.txt", folder / "late-in.txt")
    os.symlink(outside, folder / "late-dir")
    settle_after(daemon, folder)

    assert keys_in(s3, bucket_name) == {"real.txt", "sub/inner.txt", "zz-sentinel.txt"}
    records = daemon.records()
    assert not events(records, "upload_failed") and not events(records, "upload_skipped"), records
    assert daemon.terminate() == 0


def test_follow_symlinks_uploads_links_inside_refuses_outside_and_stops_at_loops(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    folder, _outside = symlink_farm(tmp_path)
    config = make_config(folder, bucket_name, follow_symlinks=True)

    result = run_syncd(["once", "-c", str(config)], timeout=60)

    assert result.returncode == 0, result.stderr
    objects = bucket_objects(s3, bucket_name)
    assert objects == {
        "real.txt": b"real",
        "sub/inner.txt": b"inner",
        "link-in.txt": b"real",
        "dirlink-in/inner.txt": b"inner",
    }
    records = json_records(result.stderr)
    refused = {r["path"] for r in events(records, "symlink_skipped")}
    assert {"passwd", "link-out.txt", "dirlink-out"} <= refused
    assert events(records, "symlink_loop")


def test_follow_symlinks_refuses_links_out_made_while_running(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    outside = tmp_path / "outside"
    write(outside / "secret.txt", b"not for the bucket")
    write(folder / "real.txt", b"real")
    daemon = start_daemon(make_config(folder, bucket_name, follow_symlinks=True))
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: "real.txt" in keys_in(s3, bucket_name), timeout=30)

    os.symlink(outside / "secret.txt", folder / "late-out.txt")
    os.symlink(outside, folder / "late-dir")
    os.symlink(folder / "real.txt", folder / "late-in.txt")
    settle_after(daemon, folder)

    # late-in.txt is copied concurrently with the sentinel's upload: wait for it, not for the order.
    wait_until(lambda: keys_in(s3, bucket_name) == {"real.txt", "late-in.txt", "zz-sentinel.txt"}, timeout=30)
    objects = bucket_objects(s3, bucket_name)
    assert b"not for the bucket" not in objects.values(), sorted(objects)
    assert set(objects) == {"real.txt", "late-in.txt", "zz-sentinel.txt"}
    assert daemon.terminate() == 0


# -- special files ---------------------------------------------------------------------------------------


def unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def test_fifo_and_socket_never_block(tmp_path, s3, bucket_name, make_config, run_syncd, start_daemon):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    os.mkfifo(folder / "pipe.txt")
    listener = unix_socket(folder / "sock.txt")
    try:
        config = make_config(folder, bucket_name)
        result = run_syncd(["once", "-c", str(config)], timeout=60)
        assert result.returncode == 0, result.stderr
        assert keys_in(s3, bucket_name) == {"a.txt"}

        daemon = start_daemon(config)
        daemon.wait_for_event("ready", timeout=60)
        os.mkfifo(folder / "late-pipe.log")  # a regular-looking name, made after the walk
        late = unix_socket(folder / "late.sock")
        write(folder / "after.txt", b"after")
        settle_after(daemon, folder)
        late.close()
        # after.txt and the sentinel are uploaded concurrently: wait for both, then nothing else is there.
        wait_until(lambda: keys_in(s3, bucket_name) >= {"after.txt", "zz-sentinel.txt"}, timeout=30)
        assert keys_in(s3, bucket_name) == {"a.txt", "after.txt", "zz-sentinel.txt"}
        assert daemon.terminate() == 0
    finally:
        listener.close()


def test_special_files_and_links_made_while_running_owe_nothing(
    tmp_path, bucket_name, make_config, run_syncd, start_daemon
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    config = make_config(folder, bucket_name)
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    os.mkfifo(folder / "pipe.log")
    os.symlink(folder / "a.txt", folder / "link.txt")
    settle_after(daemon, folder)

    def owes_nothing() -> bool:
        stdout = run_syncd(["status", "-c", str(config)]).stdout
        assert "owed: 0\n" in stdout and "failed: 0\n" in stdout, stdout
        return True

    # The rows are committed up to 0.2 s after the sentinel's record (the group commit): poll, don't peek.
    wait_until(owes_nothing, timeout=10)
    assert daemon.terminate() == 0


def test_files_swapped_for_a_fifo_or_deleted_while_queued(
    tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd
):
    """One worker, busy with a rate-limited file: the files queued behind it change before their turn."""
    folder = tmp_path / "data"
    write(folder / "big.bin", os.urandom(400_000))
    config = make_config(folder, bucket_name, workers=1, bandwidth_limit="100KB", log={"level": "debug"})
    daemon = start_daemon(config)
    daemon.wait_for_event("scan_done", timeout=60)  # big.bin is in the worker: ~4 s of rate limiting
    write(folder / "swap.txt", b"soon a fifo")
    write(folder / "vanish.txt", b"soon gone")
    for name in ("swap.txt", "vanish.txt"):  # watched, settled and queued behind big.bin
        daemon.wait_for_event("settled", path=name)
    assert not daemon.uploaded(), "big.bin was done before the others were queued: nothing waited"
    os.unlink(folder / "swap.txt")
    os.mkfifo(folder / "swap.txt")
    os.unlink(folder / "vanish.txt")
    write(folder / "after.txt", b"after")

    wait_until(lambda: keys_in(s3, bucket_name) == {"big.bin", "after.txt"}, timeout=60)
    settle_after(daemon, folder)
    records = daemon.records()
    assert not [r for r in events(records, "upload_failed") if r["path"] in ("swap.txt", "vanish.txt")]
    skipped = [r for r in events(records, "upload_skipped") if r["path"] in ("swap.txt", "vanish.txt")]
    assert len(skipped) <= 1 and all("regular file" in r["reason"] for r in skipped), skipped
    assert daemon.terminate() == 0
    status = run_syncd(["status", "-c", str(config)])
    assert "owed: 0" in status.stdout, status.stdout


# -- unreadable and vanishing files ----------------------------------------------------------------------


@pytest.mark.parametrize("unreadable_file", [True, False], ids=["and_a_file", "directories_only"])
def test_unreadable_files_and_dirs_as_an_unprivileged_user(
    s3, bucket_name, make_config, syncd_env, unreadable_file
):
    """Root reads everything, so `once` runs as nobody (setpriv) over a folder nobody owns. A directory it
    cannot look into is not backed up: `once` says so and exits 1 for it as for a file."""
    needs_setpriv()
    base = Path(tempfile.mkdtemp(prefix="syncd-hostile-", dir="/tmp"))  # tmp_path is root-only (0700)
    try:
        folder = base / "data"
        write(folder / "ok.txt", b"ok")
        if unreadable_file:
            write(folder / "secret.txt", b"mode 000")
        write(folder / "closed" / "inner.txt", b"in a mode 000 directory")
        write(folder / "listable" / "inner.txt", b"in a mode 444 directory: its names, not their files")
        write(folder / "logs" / "app.log", b"excluded, in a mode 444 directory: nothing to back up there")
        config = base / "config.yaml"
        made = make_config(folder, bucket_name, state_dir=str(base / "state"), exclude=["*.log"])
        shutil.copy(made, config)
        env = for_nobody(base, syncd_env)
        if unreadable_file:
            os.chmod(folder / "secret.txt", 0)
        os.chmod(folder / "closed", 0)
        os.chmod(folder / "listable", 0o444)
        os.chmod(folder / "logs", 0o444)
        result = subprocess.run(
            [*UNPRIVILEGED, sys.executable, "-m", "syncd", "once", "-c", str(config)],
            env=env,
            cwd=base,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)

    assert result.returncode == 1, result.stderr
    no_traceback(result)
    records = json_records(result.stderr)
    skipped = events(records, "upload_skipped")
    expected = [("secret.txt", "permission denied")] if unreadable_file else []
    assert [(r["path"], r["reason"]) for r in skipped] == expected
    scan_skipped = {r["path"]: r["reason"] for r in events(records, "scan_skipped")}
    assert scan_skipped.keys() == {"closed", "listable"}, scan_skipped
    assert "1 of its entries (first: listable/inner.txt)" in scan_skipped["listable"], scan_skipped
    assert f"{2 + unreadable_file} failed" in result.stdout, result.stdout
    assert "syncd once: failed: closed/: directory not backed up: Permission denied" in result.stderr
    assert "syncd once: failed: listable/: directory not backed up: Permission denied for 1" in result.stderr
    assert keys_in(s3, bucket_name) == {"ok.txt"}


def test_what_vanishes_or_leads_nowhere_during_once_is_not_a_failure(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    """Directories removed while `once` walks them, and a followed link that leads through a file, are
    nothing to back up: no failure, exit 0 (only what exists and cannot be read is one)."""
    folder = tmp_path / "data"
    for d in range(2000):
        write(folder / f"d{d:04}" / "f.txt", b"x")
    os.symlink("d0000/f.txt/nowhere", folder / "through-a-file")
    config = make_config(folder, bucket_name, follow_symlinks=True)
    doomed = sorted(folder.glob("d*"))[1:]
    stop = threading.Event()

    def remove_them() -> None:
        while doomed and not stop.is_set():
            shutil.rmtree(doomed.pop(), ignore_errors=True)

    remover = threading.Timer(0.5, remove_them)  # once the walk is under way
    remover.start()
    try:
        result = run_syncd(["once", "-c", str(config)])
    finally:
        stop.set()
        remover.join()
    no_traceback(result)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not events(json_records(result.stderr), "scan_skipped")
    assert "d0000/f.txt" in keys_in(s3, bucket_name)


# -- excludes --------------------------------------------------------------------------------------------

EXCLUDE_TREE = {
    "keep.txt": "kept",
    ".git/config": "kept: .git is data like any other",
    ".git/objects/ab/cdef": "kept",
    "sub/x.tmp": "kept: /*.tmp is anchored at the top",
    "top.tmp": "user",
    "logs/app.log": "user",
    "build/out.o": "user",
    "src/build/gen.c": "user: build/ matches at any depth",
    "notes.swp": "default",
    ".notes.txt.swp": "default",
    "x.swx": "default",
    "backup~": "default",
    ".#lock": "default",
    "big.iso.part": "default",
    "dl.crdownload": "default",
    "~$report.docx": "default",
    "docs/.syncd-restore-4242-0123456789ab": "default",
}


@pytest.mark.parametrize(
    ("overrides", "excluded_kinds"),
    [
        ({}, {"user", "default"}),
        ({"default_excludes": False}, {"user"}),
        ({"exclude": [".git"]}, {"default", ".git"}),
    ],
    ids=["user-and-defaults", "no-defaults", "git-excluded"],
)
def test_excludes(tmp_path, s3, bucket_name, make_config, run_syncd, overrides, excluded_kinds):
    folder = tmp_path / "data"
    for rel, kind in EXCLUDE_TREE.items():
        write(folder / rel, kind.encode())
    settings = {"exclude": ["*.log", "build/", "/*.tmp"], **overrides}
    result = run_syncd(["once", "-c", str(make_config(folder, bucket_name, **settings))])
    assert result.returncode == 0, result.stderr

    def kind_of(rel: str) -> str:
        return (
            ".git"
            if rel.startswith(".git/") and ".git" in excluded_kinds
            else EXCLUDE_TREE[rel].split(":")[0]
        )

    assert keys_in(s3, bucket_name) == {rel for rel in EXCLUDE_TREE if kind_of(rel) not in excluded_kinds}


# -- deletions -------------------------------------------------------------------------------------------


def test_on_delete_keep_leaves_the_object(tmp_path, s3, bucket_name, make_config, start_daemon):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    daemon = start_daemon(make_config(folder, bucket_name, log={"level": "debug"}))
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: "a.txt" in keys_in(s3, bucket_name))
    os.unlink(folder / "a.txt")
    write(folder / "draft.swp", b"excluded by default, also when it appears later")
    write(folder / ".git" / "HEAD", b"ref: refs/heads/main\n")
    daemon.wait_for_event("gone", path="a.txt", action="kept")  # seen, and nothing more will happen
    daemon.wait_for_event("uploaded", path=".git/HEAD")
    settle_after(daemon, folder)  # written after draft.swp: its events have been handled too
    assert daemon.terminate() == 0
    assert bucket_objects(s3, bucket_name) == {
        "a.txt": b"a",
        ".git/HEAD": b"ref: refs/heads/main\n",
        "zz-sentinel.txt": (folder / "zz-sentinel.txt").read_bytes(),
    }
    assert not list_delete_markers(s3, bucket_name)
    assert not events(daemon.records(), "deleted")


def test_on_delete_delete_makes_a_delete_marker_and_keeps_old_versions(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"version 1")
    write(folder / "b.txt", b"stays")
    daemon = start_daemon(make_config(folder, bucket_name, on_delete="delete"))
    daemon.wait_for_event("ready", timeout=60)
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "a.txt")
    start = len(daemon.records())
    write(folder / "a.txt", b"version 2")
    daemon.wait_for(lambda r: r.get("event") == "uploaded" and r["path"] == "a.txt", start=start)

    os.unlink(folder / "a.txt")
    deleted = daemon.wait_for_event("deleted", path="a.txt", timeout=30)

    assert deleted["key"] == "a.txt" and deleted["version_id"]
    markers = list_delete_markers(s3, bucket_name)
    assert [(m["Key"], m["VersionId"]) for m in markers] == [("a.txt", deleted["version_id"])]
    old = sorted(
        s3.get_object(Bucket=bucket_name, Key="a.txt", VersionId=v["VersionId"])["Body"].read()
        for v in list_versions(s3, bucket_name, "a.txt")
    )
    assert old == [b"version 1", b"version 2"]
    assert keys_in(s3, bucket_name) == {"b.txt"}
    assert daemon.terminate() == 0


def test_on_delete_delete_is_refused_on_an_unversioned_bucket(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")

    def versioning_refused(method: str, path: str) -> bool:
        return method == "PUT" and path.endswith("?versioning")

    # A key without s3:PutBucketVersioning: syncd cannot turn versioning on.
    with BadServer("proxy", upstream=s3_server.endpoint_url, refuse=versioning_refused) as proxy:
        config = make_config(folder, bucket_name, on_delete="delete", s3={"endpoint_url": proxy.url})
        for command in ("run", "once"):
            result = run_syncd([command, "-c", str(config)], timeout=60)
            assert result.returncode == 2, (command, result.stderr)
            assert "on_delete: delete needs a versioned bucket" in result.stderr.splitlines()[-1]
            assert events(json_records(result.stderr), "bucket_versioning_refused")
            no_traceback(result)
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket_name)
    assert keys_in(s3, bucket_name) == set()

    # Suspended by hand on a bucket syncd may manage: syncd turns versioning back on.
    s3.put_bucket_versioning(Bucket=bucket_name, VersioningConfiguration={"Status": "Suspended"})
    result = run_syncd(["once", "-c", str(make_config(folder, bucket_name, on_delete="delete"))])
    assert result.returncode == 0, result.stderr
    assert s3.get_bucket_versioning(Bucket=bucket_name)["Status"] == "Enabled"


def test_delete_guard_refuses_a_mass_deletion_and_allows_a_small_one(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    for i in range(20):
        write(folder / f"f{i:02d}.txt", f"file {i}".encode())
    daemon = start_daemon(make_config(folder, bucket_name, on_delete="delete", delete_guard="50%"))
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: len(daemon.uploaded()) == 20, timeout=30)

    for i in range(15):
        os.unlink(folder / f"f{i:02d}.txt")
    tripped = daemon.wait_for_event("delete_guard_tripped", timeout=30)
    assert tripped["level"] == "critical" and tripped["count"] == 15 and tripped["tracked"] == 20
    assert not list_delete_markers(s3, bucket_name)

    start = len(daemon.records())
    for i in (15, 16):
        os.unlink(folder / f"f{i:02d}.txt")
    wait_until(lambda: len(events(daemon.records()[start:], "deleted")) == 2, timeout=30)
    assert sorted(m["Key"] for m in list_delete_markers(s3, bucket_name)) == ["f15.txt", "f16.txt"]
    assert not events(daemon.records()[start:], "delete_guard_tripped")
    assert daemon.terminate() == 0


def test_delete_guard_adds_up_deletions_spaced_out_over_its_window(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    """4, 3, 1, 1 of 10 files deleted in separate batches: each batch alone is within 50% of what is left.

    Judged per batch, all nine went (9 of 10 files). In a window, at most half of the 10 files may go.
    """
    folder = tmp_path / "data"
    for i in range(10):
        write(folder / f"f{i}.txt", f"file {i}".encode())
    config = make_config(
        folder, bucket_name, on_delete="delete", delete_guard={"limit": "50%", "window": "1h"}
    )
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: len(daemon.uploaded()) == 10, timeout=30)

    def delete_batch(names: range) -> int:
        """Delete these files and wait until their batch was judged; the record index after it."""
        start = len(daemon.records())
        for i in names:
            os.unlink(folder / f"f{i}.txt")
        wait_until(
            lambda: (
                events(daemon.records()[start:], "delete_guard_tripped")
                or len(events(daemon.records()[start:], "deleted")) == len(names)
            ),
            timeout=30,
        )
        return start

    delete_batch(range(4))  # 4 of 10: allowed
    start = delete_batch(range(4, 7))  # 4 + 3 > 5: refused
    tripped = events(daemon.records()[start:], "delete_guard_tripped")
    assert tripped and tripped[0]["deleted_recently"] == 4 and tripped[0]["tracked"] == 10, tripped
    delete_batch(range(7, 8))  # 4 + 1 = 5 of 10: allowed
    start = delete_batch(range(8, 9))  # 5 + 1 > 5: refused
    tripped = events(daemon.records()[start:], "delete_guard_tripped")
    assert tripped and tripped[0]["deleted_recently"] == 5, tripped

    deleted = sorted(m["Key"] for m in list_delete_markers(s3, bucket_name))
    assert deleted == ["f0.txt", "f1.txt", "f2.txt", "f3.txt", "f7.txt"]
    assert daemon.terminate() == 0

    # A restart does not start a fresh window: the deletions done are in the state.
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    start = len(daemon.records())
    os.unlink(folder / "f9.txt")
    tripped = daemon.wait_for_event("delete_guard_tripped", start=start, timeout=30)
    assert tripped["deleted_recently"] == 5
    assert len(list_delete_markers(s3, bucket_name)) == 5
    assert daemon.terminate() == 0


def test_delete_guard_short_form_still_works(tmp_path, make_config, run_syncd):
    folder = tmp_path / "data"
    folder.mkdir()
    for guard in ("50%", 200, {"limit": 3}, {"window": "10m"}):
        result = run_syncd(["check", "-c", str(make_config(folder, "any-bucket", delete_guard=guard))])
        assert "delete_guard" not in result.stderr, (guard, result.stderr)
    result = run_syncd(["check", "-c", str(make_config(folder, "any-bucket", delete_guard={"windw": "1h"}))])
    assert (
        result.returncode == 2 and "delete_guard.windw (did you mean delete_guard.window?)" in result.stderr
    )


# -- the folder goes away --------------------------------------------------------------------------------


def held_back(daemon: Daemon, start: int) -> None:
    """While the folder is away, rescans (rescan_interval 1 s) hold back and no deletion goes ahead.

    Files the watcher reports gone (an unmount reports them all) may be batched; the batch is judged
    2 s after the last one, with a fresh look at the folder, and must be held back, never deleted.
    """
    wait_until(lambda: len(events(daemon.records()[start:], "scan_paused")) >= 2, timeout=30)
    batched = [r for r in events(daemon.records()[start:], "gone") if r["action"] == "batched"]
    if batched:
        last = daemon.records().index(batched[-1])
        daemon.wait_for_event("deletions_held", start=last, timeout=30)
    records = daemon.records()[start:]
    assert not events(records, "deleted") and not events(records, "delete_guard_tripped"), records


def test_folder_moved_away_pauses_and_resumes_when_it_is_back(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    away = tmp_path / "elsewhere"
    write(folder / "a.txt", b"a")
    write(folder / "b.txt", b"b")
    config = make_config(folder, bucket_name, on_delete="delete", rescan_interval=1, log={"level": "debug"})
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt"})

    start = len(daemon.records())
    os.rename(folder, away)
    daemon.wait_for_event("folder_unavailable", start=start, timeout=20)
    write(away / "while-away.txt", b"written while away")
    held_back(daemon, start)
    assert keys_in(s3, bucket_name) == {"a.txt", "b.txt"}

    start = len(daemon.records())
    os.rename(away, folder)
    daemon.wait_for_event("folder_available", start=start, timeout=20)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt", "while-away.txt"}, timeout=20)
    write(folder / "after.txt", b"after")
    wait_until(lambda: "after.txt" in keys_in(s3, bucket_name), timeout=30)
    assert not list_delete_markers(s3, bucket_name)
    assert not events(daemon.records(), "deleted")
    assert daemon.terminate() == 0


def test_folder_replaced_by_a_new_directory_is_watched_afresh(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    write(folder / "b.txt", b"b")
    daemon = start_daemon(make_config(folder, bucket_name, on_delete="delete"))
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt"})

    start = len(daemon.records())
    os.rename(folder, tmp_path / "data.old")
    folder.mkdir()
    daemon.wait_for_event("folder_replaced", start=start)
    wait_for_new_watch(daemon, start)
    start = len(daemon.records())
    write(folder / "new.txt", b"in the new folder")
    found_by_the_watcher(daemon, "new.txt", start)
    assert "new.txt" in keys_in(s3, bucket_name)
    daemon.wait_for_event("delete_guard_tripped", timeout=30)  # all tracked files "gone" at once
    assert not list_delete_markers(s3, bucket_name)
    assert daemon.terminate() == 0


def open_files_below(pid: int, folder: Path) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(f"{folder}/"):
                out.append(target)
    return out


def test_uploaded_files_are_closed(tmp_path, s3, bucket_name, make_config, start_daemon):
    folder = tmp_path / "data"
    for i in range(30):
        write(folder / f"f{i:02d}.txt", b"x" * i)
    daemon = start_daemon(make_config(folder, bucket_name))
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: len(daemon.uploaded()) == 30, timeout=30)
    leaked = open_files_below(daemon.pid, folder)
    assert daemon.terminate() == 0
    assert not leaked, leaked


class LoopDisk:
    """A small ext4 "disk" on a loop device: every mount has the same st_dev and the same files."""

    def __init__(self, image: Path) -> None:
        self.image = image
        with open(image, "wb") as f:
            f.truncate(16 * 1024 * 1024)
        for command in (["mkfs.ext4", "-q", "-F", str(image)], ["losetup", "--find", "--show", str(image)]):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                self.close()
                skip_or_fail(f"cannot make a loop disk here: {command[0]}: {result.stderr.strip()}")
        self.device = result.stdout.strip()
        self.mounted: list[Path] = []

    def mount(self, target: Path) -> None:
        subprocess.run(["mount", self.device, str(target)], check=True, capture_output=True)
        self.mounted.append(target)

    def umount(self, target: Path) -> None:
        """Unmount, retrying while it is busy (a scan or an upload may hold it for a moment)."""
        for _ in range(50):
            result = subprocess.run(["umount", str(target)], capture_output=True, text=True)
            if result.returncode == 0:
                self.mounted.remove(target)
                return
            time.sleep(0.1)
        raise AssertionError(f"cannot unmount {target}: {result.stderr.strip()}")

    def replug(self) -> None:
        """The same disk on another loop device: a disk plugged in again gets another device number."""
        result = subprocess.run(
            ["losetup", "--find", "--show", str(self.image)], check=True, capture_output=True, text=True
        )
        subprocess.run(["losetup", "-d", self.device], check=True, capture_output=True)
        self.device = result.stdout.strip()

    def close(self) -> None:
        for target in getattr(self, "mounted", []):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
        if getattr(self, "device", None):
            subprocess.run(["losetup", "-d", self.device], capture_output=True)


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[LoopDisk]:
    if os.geteuid() != 0 or not all(map(shutil.which, ("mount", "losetup", "mkfs.ext4"))):
        skip_or_fail("needs root, mount, losetup (Debian: mount) and mkfs.ext4 (e2fsprogs)")
    disk = LoopDisk(tmp_path / "disk.img")
    yield disk
    disk.close()


def folder_on(disk: LoopDisk, tmp_path: Path) -> Path:
    """The folder: a mountpoint with the disk (holding a.txt and b.txt) mounted on it."""
    folder = tmp_path / "data"
    folder.mkdir()
    disk.mount(folder)
    write(folder / "a.txt", b"a")
    write(folder / "b.txt", b"b")
    return folder


def test_unmounted_folder_pauses_and_resumes_on_remount(
    tmp_path, s3, bucket_name, make_config, start_daemon, loop_disk
):
    folder = folder_on(loop_disk, tmp_path)
    config = make_config(folder, bucket_name, on_delete="delete", rescan_interval=1, log={"level": "debug"})
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt"})

    start = len(daemon.records())
    loop_disk.umount(folder)  # the folder is an empty directory on another device now
    daemon.wait_for_event("folder_unavailable", start=start, timeout=20)
    write(folder / "in-the-bare-mountpoint.txt", b"not on the disk")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loop_disk.mount(elsewhere)
    write(elsewhere / "while-away.txt", b"written on the disk while it was mounted elsewhere")
    loop_disk.umount(elsewhere)
    held_back(daemon, start)
    assert keys_in(s3, bucket_name) == {"a.txt", "b.txt"}

    start = len(daemon.records())
    loop_disk.mount(folder)
    daemon.wait_for_event("folder_available", start=start, timeout=20)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt", "while-away.txt"}, timeout=20)
    assert not list_delete_markers(s3, bucket_name)
    assert not events(daemon.records(), "deleted")
    assert daemon.terminate() == 0


def test_changes_after_a_remount_are_watched(
    tmp_path, s3, bucket_name, make_config, start_daemon, loop_disk, syncd_env
):
    folder = folder_on(loop_disk, tmp_path)
    # No rescan is due (rescan_interval 15 min): the heartbeat's look at the folder sees the (un)mount.
    daemon = start_daemon(make_config(folder, bucket_name), env=fast_heartbeat(syncd_env))
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt"})
    start = len(daemon.records())
    loop_disk.umount(folder)
    daemon.wait_for_event("folder_unavailable", start=start, timeout=20)
    loop_disk.mount(folder)
    available = daemon.wait_for_event("folder_available", start=start, timeout=20)
    wait_for_new_watch(daemon, daemon.records().index(available))
    start = len(daemon.records())
    write(folder / "after-remount.txt", b"after")
    found_by_the_watcher(daemon, "after-remount.txt", start)
    assert "after-remount.txt" in keys_in(s3, bucket_name)
    assert daemon.terminate() == 0


def test_started_before_its_disk_is_mounted_waits_paused_and_resumes(
    tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd, loop_disk, syncd_env
):
    """Boot order: syncd ran on the disk before, and starts again while the mountpoint is still bare."""
    folder = folder_on(loop_disk, tmp_path)
    config = make_config(
        folder, bucket_name, on_delete="delete", rescan_interval=1, folder_grace=1, log={"level": "debug"}
    )
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt"})
    assert daemon.terminate() == 0
    loop_disk.umount(folder)
    write(folder / "in-the-bare-mountpoint.txt", b"not on the disk")

    once = run_syncd(["once", "-c", str(config)])
    assert once.returncode == 1, once.stderr
    assert f"error: folder not mounted: {folder}" in once.stderr.splitlines()[-1], once.stderr
    assert keys_in(s3, bucket_name) == {"a.txt", "b.txt"}

    daemon = start_daemon(config, env=fast_heartbeat(syncd_env))  # the status line is the heartbeat's
    unavailable = daemon.wait_for_event("folder_unavailable", timeout=60)
    assert unavailable["reason"] == "folder not mounted" and unavailable["mount"] == str(folder)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: "paused: folder not mounted" in run_syncd(["status", "-c", str(config)]).stdout)
    alert = daemon.wait_for_event("folder_still_unavailable", timeout=30)  # folder_grace: 1s
    assert alert["level"] == "error" and "mount" in alert["hint"]
    held_back(daemon, 0)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loop_disk.mount(elsewhere)
    write(elsewhere / "while-away.txt", b"written on the disk before it was mounted at the folder")
    loop_disk.umount(elsewhere)
    start = len(daemon.records())
    loop_disk.mount(folder)
    daemon.wait_for_event("folder_available", start=start, timeout=30)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt", "while-away.txt"}, timeout=30)
    write(folder / "after.txt", b"after the mount")
    wait_until(lambda: "after.txt" in keys_in(s3, bucket_name), timeout=30)
    wait_until(lambda: "watching" in run_syncd(["status", "-c", str(config)]).stdout)
    assert "in-the-bare-mountpoint.txt" not in keys_in(s3, bucket_name)
    assert not list_delete_markers(s3, bucket_name)
    assert not events(daemon.records(), "deleted") and not events(daemon.records(), "delete_guard_tripped")
    assert daemon.terminate() == 0


def test_reload_takes_a_folder_whose_disk_is_gone_for_good_as_it_is(
    tmp_path, s3, bucket_name, make_config, start_daemon, loop_disk
):
    """What folder_still_unavailable's hint says: SIGHUP forgets the mount, and the folder is synced as is."""
    folder = folder_on(loop_disk, tmp_path)
    config = make_config(folder, bucket_name)
    daemon = start_daemon(config)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt"}, timeout=60)
    assert daemon.terminate() == 0
    loop_disk.umount(folder)
    write(folder / "now-a-plain-directory.txt", b"the folder is on the root file system from now on")

    daemon = start_daemon(config)
    daemon.wait_for_event("folder_unavailable", timeout=60)
    daemon.wait_for_event("ready", timeout=60)
    assert keys_in(s3, bucket_name) == {"a.txt", "b.txt"}
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_for_event("folder_mount_forgotten", timeout=20)
    daemon.wait_for_event("folder_available", timeout=20)
    wait_until(lambda: "now-a-plain-directory.txt" in keys_in(s3, bucket_name), timeout=30)
    assert daemon.terminate() == 0


def test_a_folder_below_its_mount_point_pauses_as_not_mounted(
    tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd, loop_disk, syncd_env
):
    """folder: /mnt/disk/photos: unmounting the disk takes the folder itself away, which is not 'missing'."""
    mountpoint = folder_on(loop_disk, tmp_path)
    folder = mountpoint / "photos"
    write(folder / "p.jpg", b"a photo")
    config = make_config(folder, bucket_name, on_delete="delete", rescan_interval=1, log={"level": "debug"})
    daemon = start_daemon(config, env=fast_heartbeat(syncd_env))  # the status line is the heartbeat's
    wait_until(lambda: keys_in(s3, bucket_name) == {"p.jpg"}, timeout=60)
    start = len(daemon.records())
    loop_disk.umount(mountpoint)
    unavailable = daemon.wait_for_event("folder_unavailable", start=start, timeout=20)
    assert unavailable["reason"] == "folder not mounted" and unavailable["mount"] == str(mountpoint)
    wait_until(lambda: "paused: folder not mounted" in run_syncd(["status", "-c", str(config)]).stdout)
    loop_disk.mount(mountpoint)
    daemon.wait_for_event("folder_available", start=start, timeout=20)
    write(folder / "q.jpg", b"another")
    wait_until(lambda: keys_in(s3, bucket_name) == {"p.jpg", "q.jpg"}, timeout=30)
    assert not list_delete_markers(s3, bucket_name)
    assert daemon.terminate() == 0


def test_a_disk_plugged_in_again_as_another_device_is_synced_again(
    tmp_path, s3, bucket_name, make_config, start_daemon, loop_disk
):
    folder = folder_on(loop_disk, tmp_path)
    config = make_config(folder, bucket_name, on_delete="delete", rescan_interval=1, log={"level": "debug"})
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt", "b.txt"})
    before = folder.stat().st_dev

    start = len(daemon.records())
    loop_disk.umount(folder)
    daemon.wait_for_event("folder_unavailable", start=start, timeout=20)
    loop_disk.replug()
    loop_disk.mount(folder)
    assert folder.stat().st_dev != before
    changed = daemon.wait_for_event("folder_device_changed", start=start, timeout=20)
    daemon.wait_for_event("folder_available", start=daemon.records().index(changed), timeout=20)
    write(folder / "after-replug.txt", b"on the disk, plugged in again")
    wait_until(lambda: "after-replug.txt" in keys_in(s3, bucket_name), timeout=30)
    assert not list_delete_markers(s3, bucket_name)
    assert not events(daemon.records(), "delete_guard_tripped")
    assert daemon.terminate() == 0


# -- the inotify watch limit -----------------------------------------------------------------------------


def limited_watches(limit: int) -> list[str]:
    """A wrapper that runs syncd in a user namespace of its own with `limit` inotify watches.

    /proc/sys/user/max_inotify_watches is per user namespace: lowering it there leaves the rest of the
    machine (and the other tests running on it) alone.
    """
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", "echo 5 > /proc/sys/user/max_inotify_watches"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        skip_or_fail(f"cannot lower the inotify watch limit in a user namespace: {probe.stderr.strip()}")
    script = f'echo {limit} > /proc/sys/user/max_inotify_watches && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh"]


def many_dirs(folder: Path, count: int) -> set[str]:
    for i in range(count):
        write(folder / f"d{i:02d}" / "early.txt", b"early")
    return {f"d{i:02d}/early.txt" for i in range(count)}


def test_watch_limit_is_reported_with_the_sysctl_hint(tmp_path, s3, bucket_name, make_config, wrapped_daemon):
    folder = tmp_path / "data"
    expected = many_dirs(folder, 40)
    daemon = wrapped_daemon(limited_watches(25), make_config(folder, bucket_name, log={"level": "debug"}))

    record = daemon.wait_for_event("watch_limit_reached", timeout=60)
    assert "fs.inotify.max_user_watches" in record["hint"] and "rescan" in record["hint"]
    wait_until(lambda: keys_in(s3, bucket_name) == expected, timeout=30)
    reported = daemon.records().index(record)
    # A later probe (every 5 s) found the limit still reached: it is reported once, not on every probe.
    wait_until(lambda: events(daemon.records()[reported:], "watch_probed"), timeout=30)
    assert events(daemon.records()[reported:], "watch_probed")[0]["exhausted"] is True
    assert daemon.returncode is None
    assert daemon.terminate() == 0
    assert len(events(daemon.records(), "watch_limit_reached")) == 1  # the whole log, written by now


def test_watch_limit_falls_back_to_rescans(tmp_path, s3, bucket_name, make_config, wrapped_daemon):
    folder = tmp_path / "data"
    expected = many_dirs(folder, 40)
    daemon = wrapped_daemon(limited_watches(25), make_config(folder, bucket_name, rescan_interval="3s"))
    daemon.wait_for_event("watch_limit_reached", timeout=60)
    wait_until(lambda: keys_in(s3, bucket_name) == expected, timeout=30)

    for i in range(40):
        write(folder / f"d{i:02d}" / "late.txt", b"late")  # about half of these dirs are not watched
    expected |= {f"d{i:02d}/late.txt" for i in range(40)}
    wait_until(lambda: keys_in(s3, bucket_name) == expected, timeout=30)
    assert daemon.terminate() == 0


# -- servers that misbehave ------------------------------------------------------------------------------


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr line syncd ends with (after any JSON records), checked to be its one human line."""
    no_traceback(result)
    return error_line(result)


@pytest.mark.parametrize("server", ["dead", "blackhole"])
def test_unreachable_endpoint_once_exits_75(tmp_path, bucket_name, make_config, run_syncd, server):
    """dead: nothing listens (refused at once); blackhole: connecting hangs until connect_timeout (10 s)."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with BadServer("blackhole") if server == "blackhole" else contextlib.nullcontext() as bad:
        url = bad.url if bad is not None else f"http://127.0.0.1:{free_port()}"
        config = make_config(folder, bucket_name, s3={"endpoint_url": url})
        started = time.monotonic()
        result = run_syncd(["once", "--retry-for", "2s", "-c", str(config)], timeout=60)
    assert result.returncode == 75, result.stderr
    assert "unreachable" in one_line_error(result)
    assert len(events(json_records(result.stderr), "s3_unreachable")) == 1
    assert time.monotonic() - started < 30


def test_server_error_500_is_retried_and_the_daemon_recovers(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with BadServer("500", upstream=s3_server.endpoint_url) as bad:
        daemon = start_daemon(make_config(folder, bucket_name, s3={"endpoint_url": bad.url}))
        down = daemon.wait_for_event("s3_unreachable", timeout=30)
        assert "500" in down["reason"]
        wait_until(lambda: len(bad.requests) >= 3, timeout=20)  # retried, with backoff
        assert daemon.returncode is None
        bad.mode = "proxy"
        daemon.wait_for_event("s3_recovered", timeout=30)
        daemon.wait_for_event("ready", timeout=30)
        wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt"}, timeout=30)
        assert daemon.terminate() == 0
    records = daemon.records()
    assert len(events(records, "s3_unreachable")) == 1
    assert not [r for r in records if r.get("level") in ("error", "critical")], records


def test_slowdown_then_success(tmp_path, s3, s3_server, bucket_name, make_config, run_syncd):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with BadServer("slowdown", times=3, upstream=s3_server.endpoint_url) as bad:
        config = make_config(folder, bucket_name, s3={"endpoint_url": bad.url})
        result = run_syncd(["once", "-c", str(config)], timeout=60)
    assert result.returncode == 0, result.stderr
    records = json_records(result.stderr)
    assert len(events(records, "s3_unreachable")) == 1 and len(events(records, "s3_recovered")) == 1
    assert "503" in events(records, "s3_unreachable")[0]["reason"]
    assert keys_in(s3, bucket_name) == {"a.txt"}


def test_a_short_outage_late_in_a_long_once_is_retried(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    folder = tmp_path / "data"
    write(folder / "big.bin", os.urandom(200_000))
    with BadServer(
        "slowdown",
        times=1,
        upstream=s3_server.endpoint_url,
        only=lambda method, path: method == "PUT" and "big.bin" in path,
    ) as bad:
        # About 3-4 s of bandwidth limit before the PUT (past --retry-for), which is answered SlowDown once.
        config = make_config(folder, bucket_name, bandwidth_limit="50KB", s3={"endpoint_url": bad.url})
        result = run_syncd(["once", "--retry-for", "2s", "-c", str(config)], timeout=60)
    assert result.returncode == 0, result.stderr
    assert keys_in(s3, bucket_name) == {"big.bin"}


def test_slow_answers_are_waited_for(tmp_path, s3, s3_server, bucket_name, make_config, run_syncd):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with BadServer(
        "hang",
        delay=2,
        upstream=s3_server.endpoint_url,
        only=lambda method, path: method == "PUT" and path.endswith("/a.txt"),
    ) as bad:
        result = run_syncd(
            ["once", "-c", str(make_config(folder, bucket_name, s3={"endpoint_url": bad.url}))]
        )
    assert result.returncode == 0, result.stderr
    assert not events(json_records(result.stderr), "s3_unreachable")
    assert keys_in(s3, bucket_name) == {"a.txt"}


@pytest.fixture
def skewed_env(syncd_env: dict[str, str]) -> dict[str, str]:
    """syncd's environment with its clock two hours slow (libfaketime): the real server refuses it."""
    return dict(syncd_env, LD_PRELOAD=libfaketime(), FAKETIME="-2h", FAKETIME_DONT_FAKE_MONOTONIC="1")


def test_clock_skew_says_fix_the_clock(tmp_path, s3, bucket_name, make_config, run_syncd, skewed_env):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    s3.create_bucket(Bucket=bucket_name)
    config = make_config(folder, bucket_name)
    result = run_syncd(["once", "--retry-for", "2s", "-c", str(config)], env=skewed_env, timeout=60)
    assert result.returncode == 75, result.stderr
    assert "clock" in one_line_error(result), result.stderr
    skewed = events(json_records(result.stderr), "clock_skewed")
    assert len(skewed) == 1 and "clock" in skewed[0]["hint"] and "RequestTimeTooSkewed" in skewed[0]["reason"]
    assert keys_in(s3, bucket_name) == set()


@pytest.mark.parametrize("command", ["check", "once"])
def test_endpoint_that_is_not_s3_is_one_clear_line(tmp_path, bucket_name, make_config, run_syncd, command):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with BadServer("html") as bad:
        config = make_config(folder, bucket_name, s3={"endpoint_url": bad.url})
        result = run_syncd([command, "-c", str(config)], timeout=60)
    line = one_line_error(result)
    assert result.returncode == 2, result.stderr
    assert "endpoint_url" in line and "S3" in line, line


@pytest.mark.parametrize("command", ["check", "run"])
def test_tls_certificate_failure_is_one_clear_line(
    tmp_path, s3_server, bucket_name, make_config, run_syncd, command
):
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with BadServer("proxy", upstream=s3_server.endpoint_url, tls=True) as bad:  # a real server behind
        config = make_config(folder, bucket_name, s3={"endpoint_url": bad.url})
        result = run_syncd([command, "-c", str(config)], timeout=60)
    line = one_line_error(result)
    assert result.returncode == 2, result.stderr
    assert "certificate" in line and bad.url in line, line


@pytest.mark.parametrize(
    ("sender", "trust"), [("fast", "AWS_CA_BUNDLE"), ("plain", "AWS_CA_BUNDLE"), ("fast", "ca_bundle")]
)
def test_https_endpoint_trusted_through_its_ca_bundle_takes_every_upload(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd, syncd_env, sender, trust
):
    """TLS that works: a server whose CA is in AWS_CA_BUNDLE (or the profile's ca_bundle) gets small PUTs
    and a multipart upload, through the fast path and through the plain client; the anonymous privacy
    probe trusts the same bundle."""
    folder = tmp_path / "data"
    write(folder / "small.txt", b"small over https")
    write(folder / "big.bin", os.urandom(6 * 1024 * 1024))
    with BadServer("proxy", upstream=s3_server.endpoint_url, tls=True) as front:
        bundle = tmp_path / "ca.pem"
        bundle.write_bytes(front.certificate)
        env = dict(syncd_env, SYNCD_FASTPATH="1" if sender == "fast" else "0")
        if trust == "AWS_CA_BUNDLE":
            env["AWS_CA_BUNDLE"] = str(bundle)
        else:
            Path(env["AWS_CONFIG_FILE"]).write_text(f"[default]\nca_bundle = {bundle}\n")
        config = make_config(folder, bucket_name, s3={"endpoint_url": front.url}, multipart_threshold="5MiB")
        result = run_syncd(["once", "-c", str(config)], env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    off = events(json_records(result.stderr), "fastpath_off")
    assert (sender == "plain") == bool(off), off
    assert bucket_matches(s3, bucket_name, folder)


# -- slow: hanging servers and a big tree (pytest -m slow) -----------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_hanging_server_times_out_is_retried_and_recovers(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd, start_daemon
):
    """A server that accepts and never answers: each attempt ends at botocore's read_timeout (120 s)."""
    folder = tmp_path / "data"
    write(folder / "a.txt", b"a")
    with BadServer("hang", upstream=s3_server.endpoint_url) as bad:
        config = make_config(folder, bucket_name, s3={"endpoint_url": bad.url})
        started = time.monotonic()
        result = run_syncd(["once", "--retry-for", "5s", "-c", str(config)], timeout=400)
        once_s = time.monotonic() - started
        assert result.returncode == 75, result.stderr
        assert "unreachable" in one_line_error(result)
        down = events(json_records(result.stderr), "s3_unreachable")
        assert len(down) == 1 and "timeout" in down[0]["reason"].lower(), down

        daemon = start_daemon(config)
        daemon.wait_for_event("s3_unreachable", timeout=300)
        assert daemon.returncode is None
        bad.mode = "proxy"
        daemon.wait_for_event("s3_recovered", timeout=300)
        daemon.wait_for_event("ready", timeout=60)
        wait_until(lambda: keys_in(s3, bucket_name) == {"a.txt"}, timeout=60)
        assert daemon.terminate() == 0
    assert len(events(daemon.records(), "s3_unreachable")) == 1
    print(f"\nhanging server: once --retry-for 5s gave up after {once_s:.0f} s")


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a running process, in KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, float, int, str]:
    """Run syncd; exit code, seconds, peak RSS (KiB, polled), stderr."""
    started = time.monotonic()
    with open(cwd / "measured.stderr", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err
        )
        peak = 0
        while proc.poll() is None:
            peak = max(peak, peak_rss_kib(proc.pid))
            time.sleep(0.2)
        err.seek(0)
        return proc.returncode, time.monotonic() - started, peak, err.read()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_100k_files_in_5000_dirs(tmp_path, s3, bucket_name, make_config, syncd_env, record_property):
    folder = tmp_path / "data"
    for d in range(5000):
        directory = folder / f"d{d // 100:02d}" / f"e{d % 100:02d}"
        directory.mkdir(parents=True)
        for i in range(20):
            (directory / f"f{i:02d}.txt").write_bytes(f"{d}/{i}\n".encode())
    config = make_config(folder, bucket_name, workers=16, log={"level": "warning"})

    code, first_s, first_rss, stderr = run_measured(
        ["once", "--no-progress", "-c", str(config)], syncd_env, tmp_path
    )
    assert code == 0, stderr[-3000:]
    count = sum(
        page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket_name)
    )
    assert count == 100_000
    code, again_s, again_rss, stderr = run_measured(
        ["once", "--no-progress", "-c", str(config)], syncd_env, tmp_path
    )
    assert code == 0, stderr[-3000:]

    figures = {
        "first_once_s": round(first_s, 1),
        "first_once_peak_rss_mib": round(first_rss / 1024, 1),
        "files_per_s": round(100_000 / first_s),
        "second_once_s": round(again_s, 1),
        "second_once_peak_rss_mib": round(again_rss / 1024, 1),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"\n100k files in 5,000 dirs: {figures}")
