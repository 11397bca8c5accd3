"""Throttling: syncd against a server that allows N requests/s and answers 503 SlowDown above it.

A front on 127.0.0.1 (aiohttp, in this process) passes requests through to a throwaway SeaweedFS while a
token bucket (N/s, holding `--burst` seconds of requests) has a token, and answers 503 SlowDown otherwise,
as AWS (3,500 PUT/s per prefix) and B2 (500 requests/s for a new account) do. Every answer waits
`--latency` first, the round trip to a real provider: against a server 1 ms away, a window of requests
in flight cannot be what limits the rate. `syncd once` uploads `--files` small files through it.

Figures: the achieved rate of successful object PUTs (first to last) as a ratio of N, and the share of
all requests that were answered SlowDown (each one is a retried request). Goal: >= 0.90 and < 5%.

    python bench/throttle.py [--rate 100] [--files 5000] [--latency 0.2] [--burst 0.5] [--retry-after 1]
                             [--repeat 2]

N must stay well below what syncd, the front and SeaweedFS manage together on this machine unthrottled
(about 140-230 PUT/s on the shared 2-core machine): otherwise the machine, not the server's limit, is
what the figure measures. A first run through the same front without a limit shows that ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "expect"}
)
SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>bench</RequestId></Error>"
)


@dataclass
class Counts:
    requests: int = 0
    throttled: int = 0
    put_times: list[float] = field(default_factory=list)  # successful object PUTs, monotonic


class RateFront:
    """Pass-through to `upstream` at most `rate` requests/s (token bucket); 503 SlowDown above it."""

    def __init__(
        self, upstream: str, rate: float, latency: float, retry_after: int | None, burst: float
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.burst = max(1.0, rate * burst)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.latency = latency
        self.retry_after = retry_after
        self.counts = Counts()
        self.session: aiohttp.ClientSession | None = None

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.counts.requests += 1
        allowed = self.take()
        body = await request.read()
        await asyncio.sleep(self.latency)
        if not allowed:
            self.counts.throttled += 1
            headers = {"Content-Type": "application/xml"}
            if self.retry_after is not None:
                headers["Retry-After"] = str(self.retry_after)
            return web.Response(status=503, body=SLOWDOWN, headers=headers)
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self.session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body if body or request.method in ("PUT", "POST") else None,
            skip_auto_headers={"Content-Type", "User-Agent", "Accept", "Accept-Encoding"},
            allow_redirects=False,
        ) as answer:
            data = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        is_object = request.path.strip("/").count("/") >= 1
        if request.method == "PUT" and answer.status == 200 and is_object and not request.query:
            self.counts.put_times.append(time.monotonic())
        return web.Response(
            status=answer.status, body=data if request.method != "HEAD" else None, headers=out
        )


async def serve(front: RateFront) -> tuple[web.AppRunner, int]:
    front.session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256), auto_decompress=False, timeout=aiohttp.ClientTimeout(120)
    )
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", front.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def one_run(
    args: argparse.Namespace, server: object, identity: object, root: Path, n: int, rate: float
) -> tuple[str, float]:
    """One `syncd once` through a front allowing `rate` requests/s: its line and the achieved rate."""
    upstream: str = server.endpoint_url  # type: ignore[attr-defined]
    front = RateFront(upstream, rate, args.latency, args.retry_after, args.burst)
    runner, port = await serve(front)
    try:
        folder = root / f"data-{n}"
        folder.mkdir()
        for i in range(args.files):
            (folder / f"f{i:05d}.txt").write_bytes(os.urandom(args.size))
        config = root / f"config-{n}.yaml"
        config.write_text(
            f"folder: {folder}\nbucket: throttle-{secrets.token_hex(4)}\nprefix: ''\n"
            f"workers: {args.workers}\nstate_dir: {root / f'state-{n}'}\n"
            f"s3:\n  endpoint_url: http://127.0.0.1:{port}\n  region: us-east-1\n"
            "log:\n  format: json\n  level: warning\n"
        )
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": identity.access_key,  # type: ignore[attr-defined]
            "AWS_SECRET_ACCESS_KEY": identity.secret_key,  # type: ignore[attr-defined]
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "syncd", "once", "-c", str(config),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"syncd once exited {proc.returncode}:\n{err.decode()[-3000:]}")
        c = front.counts
        puts = c.put_times
        achieved = (len(puts) - 1) / (puts[-1] - puts[0]) if len(puts) > 1 else 0.0
        throttled_records = err.decode().count('"s3_throttled"')
        label = f"run {n}" if rate == args.rate else "reference (no limit)"
        return (
            f"{label}: {len(puts)} PUTs in {wall:.1f} s; achieved {achieved:.0f}/s = "
            f"{achieved / args.rate:.2f} of N={args.rate:g}/s; "
            f"{c.throttled} of {c.requests} requests answered SlowDown "
            f"({100 * c.throttled / max(c.requests, 1):.1f}% retried); {throttled_records} s3_throttled "
            f"records; {out.decode().strip()}"
        ), achieved
    finally:
        assert front.session is not None
        await front.session.close()
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0, help="N: requests/s the front allows")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per file")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds every answer waits (round trip)")
    parser.add_argument("--retry-after", type=int, default=None, help="Retry-After (s) on SlowDown, as B2")
    parser.add_argument("--burst", type=float, default=0.5, help="seconds of requests the bucket holds")
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false", help="skip the unlimited run first"
    )
    args = parser.parse_args()

    from syncd.seaweed import Identity, SeaweedServer

    with tempfile.TemporaryDirectory(prefix="syncd-throttle-") as tmp:
        root = Path(tmp)
        identity = Identity.generate("bench")
        server = SeaweedServer(root / "seaweed", [identity], isolate=False)
        server.start()
        try:
            print(
                f"front: N={args.rate:g} requests/s (burst {max(1, args.rate * args.burst):g}), latency "
                f"{args.latency * 1000:g} ms, Retry-After {args.retry_after}; {args.files} files of "
                f"{args.size} B, workers {args.workers}",
                flush=True,
            )
            if args.reference:
                line, ceiling = asyncio.run(one_run(args, server, identity, root, 0, float("inf")))
                print(line, flush=True)
                if ceiling < 1.5 * args.rate:
                    print(
                        f"warning: this machine manages {ceiling:.0f}/s unthrottled: lower --rate", flush=True
                    )
            for n in range(1, args.repeat + 1):
                print(asyncio.run(one_run(args, server, identity, root, n, args.rate))[0], flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
