"""Start-up per command: each `syncd COMMAND` timed as a whole process on a folder that is already synced.

    python bench/startup.py                              # this checkout: once, status, check, 15 runs each
    python bench/startup.py --runs 20 OLD:OLD_PYTHON .   # two checkouts, interleaved, ratios to the first

One throwaway SeaweedFS on loopback (no namespace, as bench/run), a folder of one 16 KiB file synced once
first, then every command of every checkout in turn, `--runs` times. A checkout is a directory holding a
`syncd` package, run as `PYTHON -m syncd` from that directory (PYTHON: the one after the colon, else this
interpreter), so one environment can time several checkouts. Printed: median wall and CPU (user+sys of the
process) per command and checkout, and each checkout's ratio to the first.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from syncd.seaweed import Identity, SeaweedServer


def timed(python: str, checkout: str, command: str, config: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `syncd COMMAND -c config`, which must exit 0."""
    began, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [python, "-m", "syncd", command, "-c", str(config)]
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    wall, after = time.monotonic() - began, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: syncd {command} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", default=["."], metavar="CHECKOUT[:PYTHON]")
    parser.add_argument("--runs", type=int, default=15, help="times each command runs per checkout")
    parser.add_argument("--commands", default="once,status,check", help="comma-separated subcommands")
    args = parser.parse_args()
    pairs = [(c.partition(":")[0], c.partition(":")[2] or sys.executable) for c in args.checkouts]
    commands = args.commands.split(",")
    work = Path(tempfile.mkdtemp(prefix="syncd-startup-"))
    try:
        runs = measure(pairs, commands, args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"median of {args.runs} runs: wall s (CPU s); ratio of wall to the first checkout")
    for command in commands:
        first = statistics.median(w for w, _ in runs[(pairs[0][0], command)])
        for checkout, _ in pairs:
            wall = statistics.median(w for w, _ in runs[(checkout, command)])
            cpu = statistics.median(c for _, c in runs[(checkout, command)])
            print(f"  {command:8} {checkout:40} {wall:6.3f} ({cpu:.3f})  {wall / first:.2f}x")
    return 0


def measure(
    pairs: list[tuple[str, str]], commands: list[str], times: int, work: Path
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(wall, CPU) of every run, by (checkout, command)."""
    identity = Identity.generate("admin")
    with SeaweedServer(work / "weed", [identity], isolate=False) as server:
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID=identity.access_key,
            AWS_SECRET_ACCESS_KEY=identity.secret_key,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(work / "aws-config-absent"),
            AWS_SHARED_CREDENTIALS_FILE=str(work / "aws-credentials-absent"),
        )
        folder = work / "folder"
        folder.mkdir()
        (folder / "one.bin").write_bytes(os.urandom(16384))
        config = work / "config.yaml"
        settings = {
            "folder": str(folder),
            "bucket": "startup",
            "s3": {"endpoint_url": server.endpoint_url, "region": "us-east-1"},
            "state_dir": str(work / "state"),
            "log": {"format": "json", "level": "info"},
        }
        config.write_text(yaml.safe_dump(settings))
        timed(pairs[0][1], pairs[0][0], "once", config, env)  # the bucket and the state exist from here on
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(times):
            for checkout, python in pairs:
                for command in commands:
                    run = timed(python, checkout, command, config, env)
                    runs.setdefault((checkout, command), []).append(run)
    return runs


if __name__ == "__main__":
    sys.exit(main())
