"""The Object Lock extension pass (syncd.sync.locks.LockExtender) on N locked versions, against SeaweedFS.

    python bench/lock_extend.py                 # 10,000 versions; about 3 minutes, most of it the capped pass
    python bench/lock_extend.py --files 2000 --no-capped

It starts its own SeaweedFS on free loopback ports, PUTs N small locked objects into a fresh Object Lock
bucket, records them in a fresh state as due, and times, in this one process:

  raw       N PutObjectRetention calls on the same client, 16 in flight: the server's own pace (reference)
  pass      LockExtender.extend_due() with no rate cap: state reads, requests, state writes
  capped    the same pass at syncd's cap (locks.RATE requests/s): what a daemon does

Figures are printed as ratios: pass / raw (wall and CPU of this process), and capped / (N / RATE).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from aiobotocore.session import AioSession
from botocore.config import Config as BotoConfig

from syncd.config import ObjectLockSettings
from syncd.s3.lock import LockPolicy
from syncd.s3.retry import Outage, Retrier
from syncd.seaweed import Identity, SeaweedServer
from syncd.sync import locks
from syncd.sync.locks import LockExtender
from syncd.sync.state import StateStore

BUCKET = "bench-locks"
CONCURRENCY = 16


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def timed(coro: object) -> tuple[float, float]:
    wall, used = time.monotonic(), cpu()
    await coro  # type: ignore[misc]
    return time.monotonic() - wall, cpu() - used


async def bench(server: SeaweedServer, identity: Identity, files: int, capped: bool, workdir: Path) -> None:
    session = AioSession()
    session.set_credentials(identity.access_key, identity.secret_key)
    config = BotoConfig(
        region_name="us-east-1",
        max_pool_connections=64,
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
    )
    async with session.create_client("s3", endpoint_url=server.endpoint_url, config=config) as client:
        await client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        policy = LockPolicy.of(ObjectLockSettings("governance", 3600))
        assert policy is not None
        until = dt.datetime.fromtimestamp(policy.until(), dt.UTC)
        gate = asyncio.Semaphore(64)
        versions: list[tuple[str, str]] = []

        async def put(i: int) -> None:
            async with gate:
                key = f"f/{i:06d}"
                response = await client.put_object(
                    Bucket=BUCKET,
                    Key=key,
                    Body=b"x",
                    ObjectLockMode="GOVERNANCE",
                    ObjectLockRetainUntilDate=until,
                )
                versions.append((key, response["VersionId"]))

        began = time.monotonic()
        await asyncio.gather(*(put(i) for i in range(files)))
        print(f"setup: {files:,} locked versions in {time.monotonic() - began:.1f} s")

        state = StateStore(workdir / "state.db", "bench")

        def all_due() -> None:
            for key, version_id in versions:
                state.record_lock(key, key, version_id, 0.0)
            state.flush()

        async def raw() -> None:
            sem = asyncio.Semaphore(CONCURRENCY)
            later = dt.datetime.fromtimestamp(policy.until(), dt.UTC)

            async def one(key: str, version_id: str) -> None:
                async with sem:
                    await client.put_object_retention(
                        Bucket=BUCKET,
                        Key=key,
                        VersionId=version_id,
                        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later},
                    )

            await asyncio.gather(*(one(k, v) for k, v in versions))

        retrier = Retrier(Outage())
        raw_wall, raw_cpu = await timed(raw())
        all_due()
        uncapped = LockExtender(client, BUCKET, state, policy, retrier, rate=10**9)
        pass_wall, pass_cpu = await timed(uncapped.extend_due())
        assert uncapped.extended == files, uncapped.extended
        print(
            f"raw PutObjectRetention x{files:,}, {CONCURRENCY} in flight: "
            f"{raw_wall:.2f} s wall, {raw_cpu:.2f} s CPU"
        )
        print(
            f"extension pass, no cap: {pass_wall:.2f} s wall ({pass_wall / raw_wall:.2f}x raw), "
            f"{pass_cpu:.2f} s CPU ({pass_cpu / raw_cpu:.2f}x raw), {files / pass_wall:,.0f} versions/s"
        )
        if capped:
            all_due()
            extender = LockExtender(client, BUCKET, state, policy, retrier)
            cap_wall, _ = await timed(extender.extend_due())
            assert extender.extended == files
            floor = files / locks.RATE
            print(
                f"extension pass at the {locks.RATE}/s cap: {cap_wall:.1f} s wall "
                f"({cap_wall / floor:.2f}x the cap's {floor:.0f} s)"
            )
        state.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--no-capped", dest="capped", action="store_false", help="skip the capped pass")
    args = parser.parse_args()
    identity = Identity.generate("bench")
    with tempfile.TemporaryDirectory(prefix="syncd-lockbench-") as tmp:
        workdir = Path(tmp)
        with SeaweedServer(workdir / "seaweed", [identity], isolate=False) as server:
            asyncio.run(bench(server, identity, args.files, args.capped, workdir))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    sys.exit(main())
