"""Where the time of a small-file upload goes: a timeline of `syncd once` and `s5cmd cp`, sampled every 50 ms.

    python bench/timeline.py --files 5000 --size 16384                 # syncd once, then s5cmd cp
    python bench/timeline.py --files 20000 --size 4096 --per-dir 200 --tools 'syncd;syncd:{"workers": 256}'
    python bench/timeline.py --files 5000 --tools 'syncd-run;s5cmd'   # the daemon's steady rate

It starts a throwaway SeaweedFS on loopback (no namespace: the bench measures the tools, not a gate), writes
the files, and uploads them into a fresh versioned bucket per tool. Sampled every 50 ms: the client's and
the server's CPU (psutil, both processes' trees), and for syncd its queue depth (waiting), uploads in
flight, files still settling and files done (read by a thread inside the syncd process, which runs
`syncd once` exactly as the command does). Printed: one row per --row seconds, and a summary of where the
wall time went (start-up before the first upload, the upload phase, the tail after the last one) and how
much of the two cores sat idle in each.

`syncd-run` measures the daemon instead: `syncd run` on an empty folder; after its `ready` record the bench
hard-links every file into the folder in one loop (a cheap drop, about 20 us a file, that leaves the data for
the other tools), and stops syncd with SIGTERM once the last `uploaded` record is out. Its steady rate is
files / (last upload - first upload), and from the drop to the last upload (which adds the settle time):
start-up is not in it, the watcher, settle stage and scheduler are. s5cmd cp's rate is over its whole run.
Each syncd run is compared with the s5cmd run after it (else before): 'syncd-run;s5cmd;syncd-run;s5cmd' pairs.

`--pace N` drops the files as a stream instead, N files a second in slices every 50 ms: with N above what
the daemon uploads, the files arrive for most of the upload and the watcher works beside it. The rate then
reported is the middle half's (from the upload of 25% of the files to that of 75%), a steady state with no
start and no end in it; it is flagged when the pace, not syncd, set it.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench import REGION, compile_syncd, find_s5cmd, write_random

EVERY = 0.05

# Runs inside the syncd process: `syncd once` as the command runs it, plus a thread that writes the
# pipeline's queue figures every 50 ms (the pipeline object is caught as it is built).
CHILD = r"""
import json, os, sys, threading, time
out_path, argv = sys.argv[1], sys.argv[2:]
EVERY = float(os.environ["TIMELINE_EVERY"])
try:
    import syncd.sync.pipeline as pipeline_module
except ImportError:  # syncd before its restructure (syncd@DIR of an old checkout)
    import syncd.daemon as pipeline_module
caught = []
original_init = pipeline_module.Pipeline.__init__
def init(self, *a, **k):
    original_init(self, *a, **k)
    caught.append(self)
pipeline_module.Pipeline.__init__ = init
stop = threading.Event()
def done(s):
    return getattr(s, "done", None) or s.uploaded + s.copied + s.unchanged + s.failed + s.skipped
def sample():
    with open(out_path, "w") as out:
        while not stop.is_set():
            row = {"t": time.time()}
            if caught:
                p = caught[0]
                queue = getattr(p, "scheduler", None) or p.queue
                row.update(waiting=len(queue.waiting), inflight=len(queue.inflight),
                           settling=len(p.settler), done=done(p.stats))
            out.write(json.dumps(row) + "\n")
            stop.wait(EVERY)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
from syncd.cli import main
code = main(argv)
stop.set()
sampler.join()  # its last row written; no sleep here, which would count as syncd's time
os._exit(code)
"""


def cpu_of(proc: Any) -> float | None:
    """CPU seconds of proc and its children; None once proc is gone (reaped by the bench's wait4: a 0 then
    would read as the client's CPU falling to nothing in the run's last row)."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
        t = proc.cpu_times()
    except psutil.Error:
        return None
    total = t.user + t.system
    for p in procs[1:]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def sample_cpu(client_pid: int, server: Any, rows: list[dict[str, float]], stop: threading.Event) -> None:
    import psutil

    try:
        client = psutil.Process(client_pid)
    except psutil.Error:
        return
    while not stop.is_set():
        now, used, served = time.time(), cpu_of(client), cpu_of(server)
        if used is None or served is None:
            return
        rows.append({"t": now, "client": used, "server": served})
        stop.wait(EVERY)


def run_tool(
    tool: str, folder: Path, bucket: str, env: dict[str, str], root: Path, server: Any, pace: float = 0.0
) -> dict[str, Any]:
    import psutil
    import yaml

    inside = root / f"{tool}-{bucket}.jsonl"
    daemon = tool == "syncd-run"
    watched = root / f"watched-{bucket}" if daemon else folder
    if tool in ("syncd", "syncd-run"):
        watched.mkdir(exist_ok=True)
        config = root / f"{bucket}.yaml"
        document = {
            "folder": str(watched),
            "bucket": bucket,
            "s3": {"endpoint_url": env["S3_URL"], "region": REGION},
            "state_dir": str(root / f"state-{bucket}"),
            "log": {"format": "json", "level": "info"},
            **json.loads(env.get("SYNCD_SET", "{}")),
        }
        config.write_text(yaml.safe_dump(document))
        cmd = [sys.executable, "-c", CHILD, str(inside), "run" if daemon else "once", "-c", str(config)]
        if env.get("PY_SPY_OUT"):  # profiling: py-spy's own cost lands in the figures
            spy = [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-r",
                "200",
                "--threads",
                "--format",
                "raw",
            ]
            cmd = [*spy, "-o", env["PY_SPY_OUT"], "--", *cmd]
    else:
        cmd = [
            find_s5cmd() or "s5cmd",
            "--endpoint-url",
            env["S3_URL"],
            "cp",
            f"{folder}/*",
            f"s3://{bucket}/",
        ]
    rows: list[dict[str, float]] = []
    stop = threading.Event()
    began = time.time()
    err_path = root / f"{tool}-{bucket}.err"
    with open(err_path, "wb") as err:
        # cwd: not the checkout the bench runs from, whose syncd/ would come before PYTHONPATH's (syncd@DIR)
        proc = subprocess.Popen(
            cmd, env={**env, "TIMELINE_EVERY": str(EVERY)}, stdout=subprocess.DEVNULL, stderr=err, cwd=root
        )
    sampler = threading.Thread(target=sample_cpu, args=(proc.pid, psutil.Process(server.pid), rows, stop))
    sampler.start()
    spied = bool(env.get("PY_SPY_OUT"))
    dropped, drop_cpu = drop_and_stop(proc, folder, watched, err_path, spied, pace) if daemon else (None, 0.0)
    _, status, usage = os.wait4(proc.pid, 0)
    ended = time.time()
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    pipeline = []
    if inside.exists():
        pipeline = [json.loads(line) for line in inside.read_text().splitlines() if line.strip()]
    return {
        "tool": tool,
        "began": began,
        "dropped": dropped,
        "drop_cpu": drop_cpu,
        "err": str(err_path),
        "ended": ended,
        "rc": proc.returncode,
        "cpu": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "rows": rows,
        "pipeline": pipeline,
    }


def drop_and_stop(
    proc: Any, data: Path, watched: Path, err: Path, spied: bool, pace: float
) -> tuple[float, float]:
    """For `syncd run`: after `ready`, hard-link every file of data into the watched folder (all in one loop,
    or `pace` files a second in slices every 50 ms); SIGTERM once as many `uploaded` records are out as
    files were linked. Returns when the drop began, and the CPU the drop took (its links and the kernel's
    inotify work for them: on the 2 cores beside syncd and the server, but neither's)."""
    records = RecordReader(err)
    deadline = time.time() + 120
    while not any(r.get("event") == "ready" for r in records.new()):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"syncd run never became ready: {err.read_text()[-2000:]}")
        time.sleep(0.01)
    paths = sorted(data.rglob("*"))
    for path in paths:  # the directories first, so a slice holds files only
        if path.is_dir():
            (watched / path.relative_to(data)).mkdir(exist_ok=True)
    files = [path for path in paths if not path.is_dir()]
    slice_size = max(1, round(pace * EVERY)) if pace else len(files)
    dropped, cpu_before = time.time(), thread_cpu()
    for start in range(0, len(files), slice_size):
        if pace:  # slice n is due n x 50 ms after the drop began: a late slice does not shift the rest
            time.sleep(max(0.0, dropped + start / pace - time.time()))
        for path in files[start : start + slice_size]:
            os.link(path, watched / path.relative_to(data))
    drop_cpu = thread_cpu() - cpu_before
    uploaded = 0
    deadline = time.time() + 600
    while uploaded < len(files) and proc.poll() is None and time.time() < deadline:
        uploaded += sum(r.get("event") == "uploaded" for r in records.new())
        time.sleep(0.01)
    import psutil

    # Under py-spy the syncd process is its child: stop syncd, and py-spy writes its profile as syncd ends.
    children = psutil.Process(proc.pid).children() if spied else []
    for target in children or [proc]:
        target.send_signal(signal.SIGTERM)
    return dropped, drop_cpu


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


class RecordReader:
    """The JSON records appended to a log file since the last call of new()."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def new(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = self.partial + f.read()
        self.offset += len(data) - len(self.partial)
        *lines, self.partial = data.split(b"\n")
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):  # a line that is not a record (a traceback)
                out.append(json.loads(line))
        return out


def uploaded_times(err: Path) -> list[float]:
    """The timestamps of syncd's `uploaded` records, as epoch seconds."""
    import datetime as dt

    times = []
    for record in RecordReader(err).new():
        if record.get("event") == "uploaded":
            times.append(dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp())
    return sorted(times)


def daemon_rates(times: list[float], dropped: float) -> dict[str, float]:
    """Files a second of a `syncd run` drop: over its middle half (uploads of 25% to 75% of the files, the
    steady state), from its first upload to its last, and from the drop to the last (settle included)."""
    low, high = len(times) // 4, len(times) * 3 // 4
    return {
        "middle half": (high - low) / max(times[high] - times[low], 1e-9),
        "first -> last upload": (len(times) - 1) / max(times[-1] - times[0], 1e-9),
        "from the drop": len(times) / max(times[-1] - dropped, 1e-9),
    }


def show(result: dict[str, Any], row_s: float) -> None:
    rows, pipeline, t0 = result["rows"], result["pipeline"], result["began"]
    wall = result["ended"] - t0
    print(
        f"\n{result['tool']}: {wall:.2f} s wall, {result['cpu']:.2f} s CPU, rc {result['rc']}, "
        f"max RSS {result['maxrss_mb']:.0f} MB"
    )
    first_done = next((r["t"] for r in pipeline if r.get("done", 0) > 0), None)
    most = max((r.get("done", 0) for r in pipeline), default=0)
    last_done = next((r["t"] for r in pipeline if most and r.get("done", 0) >= most), None)
    print("   t(s)  client%  server%  idle%  waiting inflight settling    done")
    step = max(1, round(row_s / EVERY))
    for i in range(step, len(rows), step):
        a, b = rows[i - step], rows[i]
        dt = b["t"] - a["t"]
        client, server = (b["client"] - a["client"]) / dt, (b["server"] - a["server"]) / dt
        idle = max(0.0, 2 - client - server) / 2
        near = min(pipeline, key=lambda r: abs(r["t"] - b["t"])) if pipeline else {}
        print(
            f"{b['t'] - t0:7.2f} {client * 100:7.0f} {server * 100:8.0f} {idle * 100:6.0f} "
            f"{near.get('waiting', ''):>8} {near.get('inflight', ''):>8} {near.get('settling', ''):>8} "
            f"{near.get('done', ''):>7}"
        )

    def phase(name: str, start: float, end: float) -> None:
        inside = [r for r in rows if start <= r["t"] <= end]
        if len(inside) < 2 or end <= start:
            print(f"  {name:28s} {end - start:6.2f} s")
            return
        client = inside[-1]["client"] - inside[0]["client"]
        server = inside[-1]["server"] - inside[0]["server"]
        span = inside[-1]["t"] - inside[0]["t"]
        idle = max(0.0, 2 * span - client - server)
        flying = [r["inflight"] for r in pipeline if start <= r["t"] <= end and "inflight" in r]
        mean_inflight = f", {sum(flying) / len(flying):5.1f} in flight" if flying else ""
        print(
            f"  {name:28s} {end - start:6.2f} s: client {client:5.2f} s CPU, server {server:5.2f} s, "
            f"idle {idle:5.2f} core-s ({idle / (2 * span) * 100:3.0f}%){mean_inflight}"
        )

    print("  where the wall time went:")
    if result.get("dropped") is not None and first_done is not None and last_done is not None:
        drop_cpu = result["drop_cpu"]
        print(f"  the drop itself (the bench's links): {drop_cpu:.2f} s CPU, outside syncd and the server")
        phase("start -> ready, files dropped", t0, result["dropped"])
        phase("drop -> first upload done", result["dropped"], first_done)
        phase("uploads (first -> last)", first_done, last_done)
        phase("last upload -> exit (SIGTERM)", last_done, result["ended"])
    elif first_done is not None and last_done is not None:
        phase("start -> first upload done", t0, first_done)
        phase("uploads (first -> last)", first_done, last_done)
        phase("last upload -> exit", last_done, result["ended"])
    phase("whole run", t0, result["ended"])


def nearest_s5cmd(results: list[dict[str, Any]], i: int) -> dict[str, Any] | None:
    """The s5cmd run right after results[i], else the one right before: the machine drifts within a run,
    so each syncd run is compared with its neighbour ('syncd-run;s5cmd;syncd-run;s5cmd' gives pairs)."""
    after = next((r for r in results[i + 1 :] if r["tool"] == "s5cmd"), None)
    before = next((r for r in reversed(results[:i]) if r["tool"] == "s5cmd"), None)
    return after or before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=16 * 1024)
    parser.add_argument("--per-dir", type=int, default=100_000, help="files per directory (default: flat)")
    parser.add_argument(
        "--tools",
        default="syncd;s5cmd",
        help='";"-separated: syncd, syncd-run, s5cmd; syncd:{"workers": 256} sets keys; syncd@DIR: a '
        "checkout's",
    )
    parser.add_argument("--row", type=float, default=0.25, help="seconds per printed row")
    parser.add_argument("--json", help="write every sample here")
    parser.add_argument("--syncd-set", default="{}", help='extra config keys as JSON, e.g. {"workers": 256}')
    parser.add_argument("--py-spy", help="profile syncd with py-spy into this file (raw, for flamegraphs)")
    parser.add_argument(
        "--pace", type=float, default=0.0, help="syncd-run: drop N files a second (default: at once)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the data, the server's volumes and the logs"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="syncd-timeline-"))
    try:
        measure(args, root)
    finally:  # the server keeps every tool's copy: 0.5-1 GB a run
        if args.keep:
            print(f"kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def measure(args: argparse.Namespace, root: Path) -> None:
    import boto3
    from botocore.config import Config

    from syncd.seaweed import Identity, SeaweedServer

    identity = Identity.generate("bench")
    with SeaweedServer(root / "seaweed", [identity], isolate=False) as server:
        s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name=REGION,
            aws_access_key_id=identity.access_key,
            aws_secret_access_key=identity.secret_key,
            config=Config(request_checksum_calculation="when_required", s3={"addressing_style": "path"}),
        )
        folder = root / "data"
        for i in range(args.files):
            sub = folder / f"d{i // args.per_dir:03d}" if args.files > args.per_dir else folder
            sub.mkdir(parents=True, exist_ok=True)
            write_random(sub / f"f{i:06d}.bin", args.size)
        compile_syncd()
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": identity.access_key,
            "AWS_SECRET_ACCESS_KEY": identity.secret_key,
            "AWS_REGION": REGION,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "S3_URL": server.endpoint_url,
            **({"PY_SPY_OUT": args.py_spy} if args.py_spy else {}),
            "SYNCD_SET": args.syncd_set,
        }
        time.sleep(1.0)  # files older than syncd's settle time, as in bench/
        results = []
        for label in args.tools.split(";"):
            tool, env["SYNCD_SET"] = label, args.syncd_set
            env.pop("PYTHONPATH", None)
            if tool.startswith(("syncd@", "syncd-run@")):  # syncd@DIR: another checkout's (a git worktree)
                name, _, rest = tool.partition("@")
                checkout, colon, keys = rest.partition(":")
                tool = name + colon + keys
                env["PYTHONPATH"] = checkout
                compileall.compile_dir(str(Path(checkout) / "syncd"), quiet=1)
            if tool.startswith(("syncd:", "syncd-run:")):  # syncd:{"workers": 256}: syncd with these keys
                tool, env["SYNCD_SET"] = tool.split(":", 1)
            bucket = f"t-{tool}-{secrets.token_hex(3)}"
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            result = run_tool(tool, folder, bucket, env, root, server, args.pace)
            count = sum(
                page.get("KeyCount", 0)
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            )
            result["objects"] = count
            result["label"] = label
            show(result, args.row)
            print(f"  bucket holds {count} of {args.files} objects")
            results.append(result)
        ratios: dict[str, list[float]] = {}
        for i, r in enumerate(results):
            peer = nearest_s5cmd(results, i)
            if r.get("dropped") is not None:
                times = uploaded_times(Path(r["err"]))
                if len(times) < 4:
                    print(f"{r['label']}: {len(times)} uploads, no rate")
                    continue
                rates = daemon_rates(times, r["dropped"])
                line = ", ".join(f"{rate:.0f} files/s {name}" for name, rate in rates.items())
                if args.pace and rates["middle half"] >= 0.95 * args.pace:
                    line += f" (the pace, {args.pace:.0f} files/s, set the rate: raise --pace)"
                if peer is not None:
                    peer_rate = args.files / (peer["ended"] - peer["began"])
                    line += f"; the neighbouring s5cmd cp {peer_rate:.0f} files/s start to exit:"
                    for name, rate in rates.items():
                        line += f" {rate / peer_rate:.2f}x {name},"
                        ratios.setdefault(f"{r['label']} {name}", []).append(rate / peer_rate)
                print(line.rstrip(","))
                continue
            if peer is not None and r["tool"] != "s5cmd":
                wall = (r["ended"] - r["began"]) / (peer["ended"] - peer["began"])
                print(f"{r['label']} / s5cmd cp: wall {wall:.2f}x, CPU {r['cpu'] / peer['cpu']:.2f}x")
                ratios.setdefault(f"{r['label']} wall", []).append(wall)
        for name, values in ratios.items():
            if len(values) > 1:
                pairs = ", ".join(f"{v:.2f}" for v in values)
                median = statistics.median(values)
                print(f"median of {len(values)} pairs, {name} / s5cmd cp: {median:.2f}x ({pairs})")
        if args.json:
            Path(args.json).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
