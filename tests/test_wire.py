"""The fast path's own HTTP/1.1 (syncd/s3/wire.py), through `syncd once` against fronts of the real SeaweedFS
that change how its answers travel: kept-alive connections the server drops, `Connection: close`, chunked
answers and answers without a length, answers cut short. Elsewhere: error bodies over the cap, chunked too
(test_server_lies.py), TLS (test_hostile.py's test_https_endpoint_trusted_through_its_ca_bundle_...)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from badserver import Answer, BadServer, Request, from_the_fast_path
from helpers import bucket_objects, json_records, libfaketime, tree, wait_until, write

from syncd.s3 import fastpath


def small_files(folder: Path, count: int) -> dict[str, bytes]:
    for i in range(count):
        write(folder / f"d{i % 3}/f{i}.txt", f"file {i} ".encode() * (i + 1))
    return tree(folder)


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == name]


def object_put(request: Request, key: str) -> bool:
    """A fast-path PUT of the object `key` (not the probe)."""
    return (
        from_the_fast_path(request)
        and request.path.split("?")[0].endswith("/" + key)
        and request.query.get("uploadId") != fastpath.PROBE_UPLOAD_ID
    )


def chunked(body: bytes, size: int = 1000) -> Iterator[bytes]:
    """body in HTTP/1.1 chunked framing, a chunk of `size` bytes at a time."""
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def run_once(run_syncd: Any, make_config: Any, folder: Path, bucket: str, url: str, **env: str) -> Any:
    """`syncd once` through the front at url, fast path on, with debug records (s3_retried among them)."""
    config = make_config(folder, bucket, s3={"endpoint_url": url}, log={"format": "json", "level": "debug"})
    return run_syncd(["once", "-c", str(config)], env=env or None)


def uploaded_without_retries(result: Any, s3: Any, bucket: str, files: dict[str, bytes]) -> None:
    records = json_records(result.stderr)
    assert result.returncode == 0, result.stderr
    assert bucket_objects(s3, bucket) == files
    assert not events(records, "fastpath_off")
    assert not events(records, "s3_retried") and not events(records, "upload_failed")


def test_kept_alive_connections_the_server_dropped_cost_no_retry(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """A server that closes a kept-alive connection as the next request comes (its idle timeout firing then)
    on every connection: each such PUT is sent once more on a new connection, never a failure or a retry
    of syncd's (which would wait a backoff)."""
    files = small_files(tmp_path / "data", 40)
    with BadServer("proxy", upstream=s3_server.endpoint_url, drop_reused=from_the_fast_path) as front:
        result = run_once(run_syncd, make_config, tmp_path / "data", bucket_name, front.url)
    uploaded_without_retries(result, s3, bucket_name, files)
    assert front.dropped > 0  # connections were reused and dropped: the case was exercised


def test_idle_connections_are_reused_then_closed_after_the_keepalive_timeout(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon, syncd_env
):
    """`syncd run` sends its PUTs on the connection kept from the last answer, and closes a connection left
    idle for transport.KEEPALIVE_TIMEOUT (12 s: under S3's own idle timeout, so no PUT goes out on a
    connection the server is closing); the next PUT opens a new one. syncd's clocks run 5 times as fast
    (libfaketime), so the 12 s pass in about 2.4 s; the front sees each connection syncd closes."""
    folder = tmp_path / "data"
    folder.mkdir()
    reused: list[str] = []  # fast-path PUTs that came on a connection which had served a request before

    def note_reused(request: Request) -> bool:
        if from_the_fast_path(request):
            reused.append(request.path.split("?")[0].rsplit("/", 1)[-1])
        return False  # served as usual

    env = dict(syncd_env, LD_PRELOAD=libfaketime(), FAKETIME="+0 x5")
    with BadServer("proxy", upstream=s3_server.endpoint_url, drop_reused=note_reused) as front:
        config = make_config(folder, bucket_name, workers=1, s3={"endpoint_url": front.url})
        daemon = start_daemon(config, env=env)
        daemon.wait_for_event("ready", timeout=60)
        for name in ("a.txt", "b.txt", "c.txt"):
            write(folder / name, name.encode())
        wait_until(lambda: {r["path"] for r in daemon.uploaded()} == {"a.txt", "b.txt", "c.txt"}, timeout=60)
        assert {"b.txt", "c.txt"} & set(reused), f"one worker's PUTs share a connection: {reused}"
        # Idle now: every connection syncd holds (the fast path's and the client's) is closed by syncd.
        wait_until(lambda: front.closed == front.connections, timeout=60)
        before = (front.connections, len(reused))
        write(folder / "d.txt", b"d")
        daemon.wait_for_event("uploaded", timeout=60, path="d.txt")
        assert front.connections > before[0] and len(reused) == before[1], (reused, before)
        assert daemon.terminate() == 0
    assert not events(daemon.records(), "fastpath_off")
    assert bucket_objects(s3, bucket_name) == tree(folder)


def test_connection_close_on_every_answer_is_honoured(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """Every answer to the fast path says `Connection: close` (and the server closes): each PUT goes out on
    a connection of its own, none is sent into a closed one."""
    files = small_files(tmp_path / "data", 30)
    front: BadServer

    def closing(request: Request) -> Answer | None:
        if not from_the_fast_path(request):
            return None
        real = front.forward(request)
        return Answer(real.status, real.body, {**real.headers, "Connection": "close"})

    with BadServer("proxy", upstream=s3_server.endpoint_url, answer=closing) as front:
        result = run_once(run_syncd, make_config, tmp_path / "data", bucket_name, front.url)
    uploaded_without_retries(result, s3, bucket_name, files)
    assert front.connections >= len(files)


def test_chunked_answers_and_answers_ending_with_the_connection(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """The server's own answers to the fast path, re-sent chunked (every other PUT) or without any length
    (read until the server closes): each is taken whole, ETag and version id and all."""
    files = small_files(tmp_path / "data", 20)
    front: BadServer
    turn = 0

    def reframed(request: Request) -> Answer | None:
        nonlocal turn
        if not from_the_fast_path(request):
            return None
        real = front.forward(request)
        assert isinstance(real.body, bytes)
        turn += 1
        if turn % 2:
            return Answer(real.status, chunked(real.body), {**real.headers, "Transfer-Encoding": "chunked"})
        return Answer(real.status, iter([real.body]), real.headers)  # no length: ends when the server closes

    with BadServer("proxy", upstream=s3_server.endpoint_url, answer=reframed) as front:
        result = run_once(run_syncd, make_config, tmp_path / "data", bucket_name, front.url)
    uploaded_without_retries(result, s3, bucket_name, files)
    records = json_records(result.stderr)
    versions = {r["key"]: r["version_id"] for r in events(records, "uploaded")}
    assert versions.keys() == files.keys()
    stored = {v["Key"]: v["VersionId"] for v in s3.list_object_versions(Bucket=bucket_name)["Versions"]}
    assert versions == stored


def test_an_answer_cut_short_is_never_sent_again_by_the_sender(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """The first answer to one PUT stops after its status line and the connection closes: some of the
    answer came, so the server saw the request and the sender must not send it again itself. It is
    syncd's retry (logged) that sends it again, and the file lands."""
    files = small_files(tmp_path / "data", 4)
    cut = 0

    def cut_once(request: Request) -> Answer | None:
        nonlocal cut
        if object_put(request, "f1.txt") and not cut:
            cut += 1
            return Answer(200, b"HTTP/1.1 200 OK\r\nETag: ", raw=True)
        return None

    with BadServer("proxy", upstream=s3_server.endpoint_url, answer=cut_once) as front:
        result = run_once(run_syncd, make_config, tmp_path / "data", bucket_name, front.url)
    records = json_records(result.stderr)
    assert result.returncode == 0, result.stderr
    assert bucket_objects(s3, bucket_name) == files
    puts = [r for r in front.requests if r[0] == "PUT" and r[1].split("?")[0].endswith("/f1.txt")]
    retried = events(records, "s3_retried")
    assert cut == 1 and len(retried) >= 1
    assert len(puts) == len(retried) + 1  # every send of it was one of syncd's attempts


def raw_answer(answer: Answer, **replaced: str) -> bytes:
    """answer as its bytes on the wire (with a Content-Length), headers named in `replaced` set to those
    values (underscores as dashes)."""
    assert isinstance(answer.body, bytes)
    headers = {name.lower(): value for name, value in answer.headers.items()}
    headers.update({name.replace("_", "-"): value for name, value in replaced.items()})
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = f"HTTP/1.1 {answer.status} OK\r\n{lines}content-length: {len(answer.body)}\r\n\r\n"
    return head.encode("latin-1") + answer.body


def once_with_one_answer_changed(
    run_syncd: Any, make_config: Any, folder: Path, bucket: str, upstream: str, change: Any
) -> tuple[Any, BadServer]:
    """`syncd once` through a front whose answer to the first fast-path PUT of f1.txt is change(the server's
    own answer to it)."""
    front: BadServer

    def changed(request: Request) -> Answer | None:
        if not object_put(request, "f1.txt") or front.answered:
            return None
        answer: Answer = change(front.forward(request))
        return answer

    with BadServer("proxy", upstream=upstream, answer=changed) as front:
        result = run_once(run_syncd, make_config, folder, bucket, front.url)
    assert len(front.answered) == 1
    return result, front


def test_bytes_after_an_answer_are_not_taken_for_part_of_it(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """The server's real answer to one PUT comes with, in the same write, a second answer naming another
    version id (pipelining garbage, or an answer meant for someone else): the PUT's answer is the first,
    and its version id is the one recorded, never the one in the bytes that followed."""
    files = small_files(tmp_path / "data", 4)
    result, _ = once_with_one_answer_changed(
        run_syncd,
        make_config,
        tmp_path / "data",
        bucket_name,
        s3_server.endpoint_url,
        lambda real: Answer(200, raw_answer(real) + raw_answer(real, x_amz_version_id="forged"), raw=True),
    )
    uploaded_without_retries(result, s3, bucket_name, files)
    records = json_records(result.stderr)
    versions = {r["key"]: r["version_id"] for r in events(records, "uploaded")}
    stored = {v["Key"]: v["VersionId"] for v in s3.list_object_versions(Bucket=bucket_name)["Versions"]}
    assert versions == stored


def test_an_answer_with_a_header_section_over_the_cap_is_refused(
    tmp_path, s3, s3_server, bucket_name, make_config, run_syncd
):
    """The server's answer to one PUT carries 4 MiB of headers (a server could send them without end, and
    httptools keeps every byte of a header section until it ends): the sender stops reading at its cap
    and that attempt fails as a transport error, which syncd retries; the file lands."""
    files = small_files(tmp_path / "data", 4)
    result, front = once_with_one_answer_changed(
        run_syncd,
        make_config,
        tmp_path / "data",
        bucket_name,
        s3_server.endpoint_url,
        lambda real: Answer(real.status, real.body, {**real.headers, "X-Pad": "a" * (4 << 20)}),
    )
    records = json_records(result.stderr)
    assert result.returncode == 0, result.stderr
    assert bucket_objects(s3, bucket_name) == files
    puts = [r for r in front.requests if r[0] == "PUT" and r[1].split("?")[0].endswith("/f1.txt")]
    assert len(events(records, "s3_retried")) == 1 and len(puts) == 2
