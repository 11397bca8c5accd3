"""Large files through the CLI against a real SeaweedFS: multipart uploads, their VersionIds, leftovers."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from helpers import bucket_objects, every_server, json_records, list_versions, tree, wait_until, write

MiB = 1024 * 1024


def composite_etag(data: bytes, part_size: int) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' MD5s, then the part count."""
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


@every_server
@pytest.mark.parametrize("fast_path", ["on", "off"])
def test_multipart_upload_lands_whole_with_its_version_logged(
    tmp_path, s3, bucket_name, make_config, run_syncd, syncd_env, fast_path
):
    """Streamed parts (fast path) and parts sent from memory (plain client) give the same object."""
    folder = tmp_path / "data"
    data = os.urandom(23 * MiB + 12345)
    write(folder / "big.bin", data)
    write(folder / "small.txt", b"small")
    config = make_config(folder, bucket_name, multipart_threshold="5MiB", multipart_chunksize="5MiB")
    env = dict(syncd_env, SYNCD_FASTPATH="1" if fast_path == "on" else "0")

    result = run_syncd(["once", "-c", str(config)], env=env)

    assert result.returncode == 0, result.stderr
    (record,) = [
        r for r in json_records(result.stderr) if r.get("event") == "uploaded" and r["key"] == "big.bin"
    ]
    assert record["parts"] == 5 and record["size"] == len(data)
    assert record["etag"] == composite_etag(data, 5 * MiB)  # 5 parts, each with the bytes we hashed
    stored = s3.get_object(Bucket=bucket_name, Key="big.bin")
    assert stored["Body"].read() == data
    assert stored["VersionId"] == record["version_id"]  # from CompleteMultipartUpload
    assert [v["VersionId"] for v in list_versions(s3, bucket_name, "big.bin")] == [record["version_id"]]
    assert stored["Metadata"]["md5chksum"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert record["md5"] == hashlib.md5(data).hexdigest()
    assert s3.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []) == []
    assert any(r.get("event") == "fastpath_off" for r in json_records(result.stderr)) == (fast_path == "off")


@every_server
def test_files_between_small_and_multipart_are_streamed_whole(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    """Above 256 KiB and below multipart_threshold: hashed first, then sent from disk in one PUT."""
    folder = tmp_path / "data"
    sizes = {"a.bin": 256 * 1024 + 1, "b.bin": MiB, "c.bin": 3 * MiB + 7}
    for name, size in sizes.items():
        write(folder / name, os.urandom(size))
    config = make_config(folder, bucket_name, max_inflight="4MiB")

    result = run_syncd(["once", "-c", str(config)])

    assert result.returncode == 0, result.stderr
    assert bucket_objects(s3, bucket_name) == tree(folder)
    for name in sizes:
        data = (folder / name).read_bytes()
        head = s3.head_object(Bucket=bucket_name, Key=name)
        assert head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'  # one PUT, not multipart
        assert head["Metadata"]["md5chksum"] == base64.b64encode(hashlib.md5(data).digest()).decode()


def test_files_not_in_the_page_cache_are_read_in_threads_and_land_whole(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    """Cold files (evicted from the page cache) take the thread path instead of the loop's RWF_NOWAIT read."""
    folder = tmp_path / "data"
    cold_sizes = {4096 * (i + 1) for i in range(40)}
    for size in cold_sizes:
        path = write(folder / f"cold{size}.bin", os.urandom(size))
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    write(folder / "warm.bin", os.urandom(1000))  # just written: in the page cache, read on the loop
    config = make_config(folder, bucket_name, log={"level": "debug"})

    result = run_syncd(["once", "-c", str(config)])

    assert result.returncode == 0, result.stderr
    assert bucket_objects(s3, bucket_name) == tree(folder)
    threaded = [r["size"] for r in json_records(result.stderr) if r.get("event") == "read_in_thread"]
    # Cold files only, each at most once, the warm one never. Not necessarily all of them: the RWF_NOWAIT
    # attempt starts readahead, and on a fast disk the bytes can be cached by the time it looks.
    assert threaded and len(set(threaded)) == len(threaded) and set(threaded) <= cold_sizes, threaded


def test_part_size_grows_so_no_file_needs_more_than_10000_parts() -> None:
    """A sparse 60 GiB file would need 12,288 parts of 5 MiB: syncd picks 7 MiB parts instead."""
    from syncd.sync.uploader import part_size_for

    assert part_size_for(60 * 1024 * MiB, 5 * MiB) == 7 * MiB
    assert -(-60 * 1024 * MiB // (7 * MiB)) <= 10_000
    assert part_size_for(20 * MiB, 16 * MiB) == 16 * MiB


@every_server
def test_leftover_multipart_is_aborted_at_start_but_not_another_clients(
    tmp_path, s3, bucket_name, make_config, start_daemon, run_syncd
):
    folder = tmp_path / "data"
    data = os.urandom(30 * MiB)
    write(folder / "big.bin", data)
    slow = make_config(
        folder, bucket_name, multipart_threshold="5MiB", multipart_chunksize="5MiB", bandwidth_limit="2MB"
    )
    daemon = start_daemon(slow)
    uploads = wait_until(
        lambda: (
            s3.list_multipart_uploads(Bucket=bucket_name).get("Uploads") if daemon.returncode is None else []
        ),
        timeout=60,
    )
    assert daemon.returncode is None, daemon.tail()
    (ours,) = uploads
    # The server lists the upload as soon as it made it, before syncd has its answer and stored the
    # UploadId; syncd sends parts only after storing it, so a part on the server proves it is stored.
    wait_until(
        lambda: s3.list_parts(Bucket=bucket_name, Key="big.bin", UploadId=ours["UploadId"]).get("Parts"),
        timeout=60,
    )
    daemon.kill()  # mid-upload: its parts stay on the server, its UploadId in syncd's state
    foreign = s3.create_multipart_upload(Bucket=bucket_name, Key="big.bin")["UploadId"]  # same key, even

    fast = make_config(folder, bucket_name, multipart_threshold="5MiB", multipart_chunksize="5MiB")
    result = run_syncd(["once", "-c", str(fast)])

    assert result.returncode == 0, result.stderr
    aborted = [r for r in json_records(result.stderr) if r.get("event") == "multipart_aborted"]
    assert [r["upload_id"] for r in aborted] == [ours["UploadId"]]
    left = {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket_name).get("Uploads", [])}
    assert left == {foreign}
    assert s3.get_object(Bucket=bucket_name, Key="big.bin")["Body"].read() == data
    s3.abort_multipart_upload(Bucket=bucket_name, Key="big.bin", UploadId=foreign)


def test_file_shrinking_during_multipart_is_never_stored_torn(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    """Truncated while its parts are sent: the upload is aborted and the final bytes land afterwards."""
    folder = tmp_path / "data"
    folder.mkdir()
    config = make_config(
        folder, bucket_name, multipart_threshold="5MiB", multipart_chunksize="5MiB", bandwidth_limit="4MB"
    )
    daemon = start_daemon(config)
    daemon.wait_for_event("ready", timeout=60)
    big = folder / "big.bin"
    write(big, os.urandom(12 * MiB))  # three parts, ~3 s at 4 MB/s: shrunk to 7 MiB while they are sent
    wait_until(lambda: s3.list_multipart_uploads(Bucket=bucket_name).get("Uploads"), timeout=30)
    final = os.urandom(7 * MiB)
    with open(big, "r+b") as f:  # shrunk in place, as a log rotation would
        f.write(final)
        f.truncate(len(final))
    wait_until(
        lambda: s3.get_object(Bucket=bucket_name, Key="big.bin")["Body"].read() == final,
        timeout=60,
        interval=0.5,
    )
    assert daemon.terminate() == 0
    for version in list_versions(s3, bucket_name, "big.bin"):  # no torn version ever stored
        body = s3.get_object(Bucket=bucket_name, Key="big.bin", VersionId=version["VersionId"])["Body"].read()
        assert body == final
    assert s3.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []) == []
