"""The one place transient S3 failures are retried: exponential backoff with jitter, one record per outage."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from syncd.errors import UnavailableError
from syncd.log import get_logger
from syncd.s3.client import ErrorKind, classify, describe

T = TypeVar("T")
log = get_logger()


class Outage:
    """Tracks whether the server is reachable, so an outage is one `s3_unreachable` and one `s3_recovered`."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.reason = ""
        self.retries = 0
        self.listeners: list[Callable[[bool, str], None]] = []
        self.retry_listeners: list[Callable[[], None]] = []  # called for every failed attempt

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException, since: float | None = None) -> None:
        """A request failed; `since`: when it was sent (a timeout is known only long after)."""
        self.retries += 1
        for retried in self.retry_listeners:
            retried()
        if self.down_since is None:
            self.down_since = time.monotonic() if since is None else since
            self.reason = describe(exc)
            log.warning("s3_unreachable", reason=self.reason)
            for listener in self.listeners:
                listener(True, self.reason)

    def succeeded(self) -> None:
        if self.down_since is not None:
            log.info("s3_recovered", down_s=round(time.monotonic() - self.down_since, 1))
            self.down_since = None
            for listener in self.listeners:
                listener(False, "")


class Retrier:
    """Runs S3 calls, retrying what the server or network may fix by itself.

    Transient errors and clock skew are retried with capped exponential backoff and full jitter; everything
    else (credentials, permissions, bad requests) is raised at once for the caller to sort.
    """

    def __init__(
        self, outage: Outage, *, base: float = 0.5, cap: float = 60.0, give_up_after: float | None = None
    ) -> None:
        self.outage = outage
        self.base = base
        self.cap = cap
        self.give_up_after = give_up_after
        self.started = time.monotonic()

    def delay(self, attempt: int) -> float:
        return random.uniform(self.base / 2, min(self.cap, self.base * 2**attempt))

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            sent = time.monotonic()
            try:
                result = await op()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = classify(exc)
                if kind not in (ErrorKind.TRANSIENT, ErrorKind.CLOCK):
                    raise
                if kind is ErrorKind.CLOCK and attempt == 0:
                    log.error("clock_skewed", reason=describe(exc), hint="fix this machine's clock (NTP)")
                self.outage.failed(exc, since=sent)
                down_for = time.monotonic() - (self.outage.down_since or sent)
                if self.give_up_after is not None and down_for > self.give_up_after:
                    if kind is ErrorKind.CLOCK:
                        raise UnavailableError(
                            f"the S3 server refuses this machine's clock ({describe(exc)}); fix it (NTP)"
                        ) from None
                    raise UnavailableError(f"the S3 server stayed unreachable: {describe(exc)}") from None
                await asyncio.sleep(self.delay(attempt))
                attempt = min(attempt + 1, 16)
                continue
            self.outage.succeeded()
            return result
