"""How many S3 requests may be in flight: one limit shared by every sender, lowered when the server says
SlowDown and raised again slowly (AIMD), so syncd runs at the server's limit instead of storming it."""

from __future__ import annotations

import asyncio
import collections
import email.utils
import time

import botocore.exceptions

from syncd.log import get_logger
from syncd.s3.client import error_code, http_status

log = get_logger()
THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "SlowDownRead",
        "SlowDownWrite",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
    }
)
DECREASE = 0.8  # the window kept after a SlowDown: halving wastes a quarter of the server's rate
GROWTH = 0.5  # requests added to the window per window of answers: each SlowDown episode costs retries,
# so a slower climb back means fewer of them for the same average
START = 8  # requests in flight at first; doubled every round trip until the first SlowDown (slow start)
MAX_RETRY_AFTER = 300.0  # seconds: a larger Retry-After is a server's mistake, not a plan
LOG_EVERY = 60.0  # seconds between two `s3_throttled` records


def throttled(exc: BaseException) -> bool:
    """The server is up but asks for fewer requests (503 SlowDown, 429, Throttling)."""
    return error_code(exc) in THROTTLE_CODES or http_status(exc) == 429


def retry_after(exc: BaseException) -> float | None:
    """The Retry-After of a failed response in seconds (delta or HTTP date), None when there is none."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    value = str(headers.get("retry-after") or headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class Throttle:
    """A window of requests in flight, at most `limit` (the config's `workers`).

    It starts at START and grows by one per answer (doubling every round trip) until the first SlowDown
    halves it: a server that allows only part of `workers` sees a few extra requests, not a storm. From
    then on a SlowDown shrinks it to DECREASE of itself, once per round trip (answers to requests sent
    before the last decrease do not count again), and each answer grows it by GROWTH/window: one request
    per two windows of answers (additive increase). It grows only while it is full: a window syncd does
    not use proves nothing about the server.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.window = float(min(START, self.limit))
        self.slow_start = True
        self.inflight = 0
        self.decreased_at = 0.0
        self.throttles = 0
        self.logged_at = -LOG_EVERY
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def set_limit(self, limit: int) -> None:
        """`workers` changed on reload."""
        self.limit = max(1, limit)
        self.window = min(self.window, float(self.limit))
        self._wake()

    def slot(self) -> _Slot:
        """`async with throttle.slot() as sent`: one request's place in the window for the block;
        `sent` is the time the request is sent."""
        return _Slot(self)

    async def _enter(self) -> None:
        if self.inflight < int(self.window) and not self._waiters:
            self.inflight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # granted by _wake, which counts it in flight
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.inflight -= 1  # granted just as it was cancelled: hand the place on
                self._wake()
            else:
                self._waiters.remove(waiter)
            raise

    def _leave(self) -> None:
        self.inflight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.inflight < int(self.window):
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.inflight += 1

    def answered(self) -> None:
        """A request that held a place was answered (its place is given back already)."""
        if self.window < self.limit and self.inflight + 1 >= int(self.window):
            step = 1.0 if self.slow_start else GROWTH / self.window
            self.window = min(float(self.limit), self.window + step)
            self._wake()

    def slow_down(self, sent: float, reason: str) -> None:
        """A request sent at `sent` was throttled."""
        self.throttles += 1
        if sent < self.decreased_at:
            return  # in flight before the last decrease: that decrease already answered it
        self.decreased_at = time.monotonic()
        self.window = max(1.0, self.window * (0.5 if self.slow_start else DECREASE))
        self.slow_start = False
        if self.decreased_at - self.logged_at >= LOG_EVERY:
            self.logged_at = self.decreased_at
            log.warning("s3_throttled", reason=reason, in_flight=int(self.window), throttled=self.throttles)


class _Slot:
    """Throttle.slot's context manager: a plain class, cheaper per request than an asynccontextmanager."""

    __slots__ = ("throttle",)

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle

    async def __aenter__(self) -> float:
        await self.throttle._enter()
        return time.monotonic()

    async def __aexit__(self, *_exc: object) -> None:
        self.throttle._leave()
