"""The settle stage alone: CPU, stats and the longest event-loop stall for N files dropped at once.

    python bench/settle_cpu.py --files 5000                       # this checkout
    PYTHONPATH=/path/to/old/checkout python bench/settle_cpu.py   # another checkout's syncd, same figures

No server: hard links to N small files appear in a temporary folder, each is reported to a Settler as the
watcher reports it (one batch), and the run ends when the last one is released. Printed per file: the
process's CPU (the loop and the stat threads), the stats taken, and the longest the loop went without
running a 1 ms ticker (what every upload in flight waits for meanwhile). Compare checkouts in one session.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import statistics
import tempfile
import time
from pathlib import Path


async def one_round(folder: Path, files: list[str], settle: float) -> tuple[float, float, int, float]:
    import syncd.sync.settle as settle_module

    stats = [0]
    original = settle_module.stat_path

    def counted(*args: object) -> os.stat_result:
        stats[0] += 1
        return original(*args)  # type: ignore[arg-type]

    settle_module.stat_path = counted  # type: ignore[assignment]
    released: list[str] = []
    settler = settle_module.Settler(
        folder,
        settle,
        600.0,
        release=lambda rel, *_released: released.append(rel),  # newer checkouts pass a Released too
        on_dir=lambda rel: None,
        on_gone=lambda rel: None,
    )
    watched = "quiet_since" in inspect.signature(settler.add).parameters
    stall = [0.0]

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall[0] = max(stall[0], now - last)
            last = now

    tasks = [asyncio.create_task(settler.run()), asyncio.create_task(ticker())]
    for name in files:
        os.unlink(folder / name)
    for name in files:
        os.link(folder.parent / "data" / name, folder / name)
    cpu, wall = time.process_time(), time.perf_counter()
    quiet_since = time.time()  # the last link was made just now: what the watcher hands over 50 ms later
    for name in files:
        if watched:
            settler.add(name, quiet_since=quiet_since)
        else:
            settler.add(name)
    while len(released) < len(files):
        await asyncio.sleep(0.005)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    settle_module.stat_path = original
    return cpu, wall, stats[0], stall[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import syncd
    from syncd.log import configure_logging

    configure_logging("json", "info")  # as the daemon runs: the debug records are dropped

    with tempfile.TemporaryDirectory(prefix="settle-cpu-") as tmp:
        data, folder = Path(tmp) / "data", Path(tmp) / "folder"
        data.mkdir()
        folder.mkdir()
        files = [f"f{i:06d}.bin" for i in range(args.files)]
        for name in files:
            (data / name).write_bytes(b"x" * 100)
            os.link(data / name, folder / name)
        rounds = [asyncio.run(one_round(folder, files, args.settle)) for _ in range(args.rounds)]
    n = args.files
    cpu = statistics.median(r[0] for r in rounds)
    wall = statistics.median(r[1] for r in rounds)
    print(
        f"{Path(syncd.__file__).parent.parent}: {n} files, median of {args.rounds}: "
        f"CPU {cpu / n * 1e6:.1f} us/file, stats {statistics.median(r[2] for r in rounds) / n:.2f}/file, "
        f"longest loop stall {statistics.median(r[3] for r in rounds) * 1000:.0f} ms, "
        f"add -> last release {wall:.2f} s"
    )


if __name__ == "__main__":
    main()
