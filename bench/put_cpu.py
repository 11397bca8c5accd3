"""Client CPU per small PUT: plain client.put_object vs syncd.s3.fastpath.FastPut, in one process.

Starts its own SeaweedFS on free loopback ports (syncd.seaweed.SeaweedServer when it exists, else `weed mini`
by hand), PUTs N x 16 KiB objects with 64 concurrent tasks through each path in turn (plain, fast, plain,
fast, ...) and prints wall seconds, client CPU per PUT (user+sys of this process) and server CPU per PUT,
then each mode's range over the rounds and ratios of the medians. The machine may be shared: run a few rounds.
`--before FILE` adds the FastPut of another version of syncd/s3/fastpath.py as a third mode (one made as
`FastPut.create(...)`, or `FastPut(client, bucket)` as before December 2026), e.g.
`git show main:syncd/s3/fastpath.py > /tmp/b.py`.

    /work/venv/bin/python bench/put_cpu.py -n 5000 --rounds 3 [--uvloop] [--only fast] [--before FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.s3.client import S3Settings, credentials_of, open_client
from syncd.s3.fastpath import FastPut

BODY_SIZE = 16 * 1024
ACCESS_KEY = "BENCHADMINKEY"
SECRET_KEY = "bench-secret-key-0123456789"
BUCKET = "putcpu"
Put = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Result:
    mode: str
    n: int
    wall_s: float
    cpu_ms: float  # this process, per PUT
    server_cpu_ms: float | None  # the SeaweedFS process, per PUT


def process_cpu_s(pid: int | None) -> float | None:
    """user+sys seconds of another process (Linux /proc), None when unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free(port: int) -> bool:
    for p in (port, port + 10000):  # each weed port has its gRPC port at +10000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    candidate = 20000 + os.getpid() % 9000
    while len(ports) < n:
        candidate = 20000 + (candidate - 20000 + 7) % 10000
        if candidate not in ports and _free(candidate):
            ports.append(candidate)
    return ports


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/", timeout=1)
            return
        except urllib.error.HTTPError:
            return  # 403 without credentials: the S3 gateway is up
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not answer on {url} within {timeout:.0f} s") from None
            time.sleep(0.3)


@contextlib.contextmanager
def weed_by_hand(workdir: Path) -> Iterator[tuple[str, int | None]]:
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    s3, master, filer, volume, admin = _ports(5)
    local = Path(sys.executable).with_name("weed")
    cmd = [
        str(local) if local.exists() else "weed", "mini", f"-dir={workdir}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", f"-s3.port={s3}", f"-master.port={master}", f"-filer.port={filer}",
        f"-volume.port={volume}", f"-admin.port={admin}", "-master.telemetry=false", "-s3.port.iceberg=0",
        "-s3.port.lance=0", f"-s3.config={workdir / 's3.json'}", "-webdav=false", "-admin.ui=false",
    ]  # fmt: skip
    with (workdir / "weed.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{s3}"
            _wait_ready(url, proc)
            yield url, proc.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def seaweed() -> Iterator[tuple[str, int | None]]:
    """A throwaway SeaweedFS; yields its S3 endpoint URL and server pid, and stops it on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="putcpu-"))
    try:
        try:
            from syncd.seaweed import Identity, SeaweedServer
        except ImportError:
            with weed_by_hand(workdir) as found:
                yield found
            return
        with SeaweedServer(workdir, [Identity("admin", ACCESS_KEY, SECRET_KEY)], isolate=False) as server:
            yield server.endpoint_url, server.pid
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _bodies(count: int = 64) -> list[tuple[bytes, str]]:
    out = []
    for i in range(count):
        body = hashlib.sha256(str(i).encode()).digest() * (BODY_SIZE // 32)
        out.append((body, base64.b64encode(hashlib.md5(body).digest()).decode()))
    return out


async def run(mode: str, put: Put, n: int, concurrency: int, tag: str, server_pid: int | None) -> Result:
    """n PUTs through `put` from `concurrency` tasks, as syncd's uploader calls it."""
    bodies = _bodies()
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            body, md5 = bodies[i % len(bodies)]
            await put(
                Bucket=BUCKET, Key=f"bench/{tag}/{i:06d} file.bin", Body=body, ContentMD5=md5,
                ContentType="application/octet-stream", Metadata={"syncd-mtime": "1700000000.5"},
            )  # fmt: skip

    server_before = process_cpu_s(server_pid)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(worker())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    server_after = process_cpu_s(server_pid)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    server = None
    if server_before is not None and server_after is not None:
        server = (server_after - server_before) * 1000 / n
    return Result(mode, n, wall, cpu * 1000 / n, server)


async def bench(url: str, server_pid: int | None, args: argparse.Namespace) -> list[Result]:
    settings = S3Settings(endpoint_url=url, region="us-east-1")
    async with open_client(settings, pool=args.concurrency) as client:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            await client.create_bucket(Bucket=BUCKET)
        await client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        fast = await FastPut.create(client, settings, BUCKET, credentials_of(client), pool=args.concurrency)
        if isinstance(fast, str):
            raise SystemExit(f"FastPut unavailable: {fast}")
        modes: dict[str, Put] = {"plain": client.put_object}
        before: Any = None
        if args.before:
            cls = _load_fast_put(args.before)
            if hasattr(cls, "create"):  # since December 2026: built and probed from syncd's config
                before = await cls.create(
                    client, settings, BUCKET, credentials_of(client), pool=args.concurrency
                )
            else:
                before = cls(client, BUCKET)
            modes["before"] = before.put_object
        modes["fast"] = fast.put_object
        if args.only:
            modes = {args.only: modes[args.only]}
        for mode, put in modes.items():
            await run(mode, put, args.warmup, args.concurrency, f"warm-{mode}", server_pid)
        results = []
        for r in range(args.rounds):
            for mode, put in modes.items():
                res = await run(mode, put, args.n, args.concurrency, f"{mode}-{r}", server_pid)
                server = "" if res.server_cpu_ms is None else f", server {res.server_cpu_ms:.3f} ms CPU/PUT"
                print(
                    f"{mode:6s} round {r}: {res.wall_s:6.2f} s wall, {res.n / res.wall_s:5.0f} PUT/s, "
                    f"client {res.cpu_ms:.3f} ms CPU/PUT{server}",
                    flush=True,
                )
                results.append(res)
        await fast.close()
        if before is not None and hasattr(before, "close"):
            await before.close()
        return results


def _load_fast_put(path: str) -> Any:
    """The FastPut class of another copy of syncd/fastpath.py, imported under a name of its own."""
    spec = importlib.util.spec_from_file_location("fastpath_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.FastPut


def summary(results: list[Result]) -> None:
    cpu: dict[str, list[float]] = {}
    for res in results:
        cpu.setdefault(res.mode, []).append(res.cpu_ms)
    median = {mode: statistics.median(values) for mode, values in cpu.items()}
    for mode, values in cpu.items():
        print(
            f"{mode:6s}: client {min(values):.3f}-{max(values):.3f} ms CPU/PUT over {len(values)} runs, "
            f"median {median[mode]:.3f}"
        )
    for mode, reference in (("fast", "plain"), ("fast", "before"), ("before", "plain")):
        if mode in median and reference in median:
            print(f"{mode}/{reference}: client CPU {median[mode] / median[reference]:.2f}x (medians)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="PUTs per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternating")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent PUT tasks")
    parser.add_argument("--warmup", type=int, default=300, help="PUTs per mode before measuring")
    parser.add_argument("--only", choices=["plain", "before", "fast"], help="run one mode (for profiling)")
    parser.add_argument("--before", metavar="FILE", help="also run the FastPut of this copy of fastpath.py")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (pip install uvloop)")
    args = parser.parse_args()
    if args.only == "before" and not args.before:
        parser.error("--only before needs --before FILE")
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)
    os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    with seaweed() as (url, pid), asyncio.Runner(loop_factory=loop_factory) as runner:
        results = runner.run(bench(url, pid, args))
    summary(results)


if __name__ == "__main__":
    main()
