"""The one place transient S3 failures are retried: exponential backoff with jitter, one record per outage.

An outage is the server as a whole failing, not one request: when a request fails, the retrier asks
whether the server answered anything since it was sent (another request, or a HeadBucket probe). If it
did, the failure is that request's own (one object's, or one listing page's) and is given up after
KEY_ATTEMPTS tries: an object's as the server's error, for the caller to report as that file's; one
about no object as RequestFailedError, naming it. Throttling (SlowDown) is neither, and shrinks the
window of requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions

from syncd.errors import RequestFailedError, UnavailableError
from syncd.log import get_logger
from syncd.s3.client import REQUEST_TIMEOUT, ErrorKind, FastPathOff, classify, describe, request_deadline
from syncd.s3.throttle import Throttle, retry_after, throttled

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")
log = get_logger()
KEY_ATTEMPTS = 4  # tries of one request while the server answers others, before it fails
OTHER_KEYS_FAILING = 2  # other keys failing with nothing served since: the server is failing, not a key
FAILING_WINDOW = 60.0  # seconds a key's failure counts towards that
PROBE_TIMEOUT = 10.0  # seconds for the HeadBucket that tells a failing key from a failing server
RECOVERED_SPREAD = 0.5  # seconds over which the requests that waited out an outage go again


class Outage:
    """Tracks whether the server is reachable, so an outage is one `s3_unreachable` and one `s3_recovered`.

    `probe` (HeadBucket) tells whether the server as a whole answers when nothing else has lately.
    """

    def __init__(self, probe: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.down_since: float | None = None
        self.reason = ""
        self.retries = 0
        self.listeners: list[Callable[[bool, str], None]] = []
        self.retry_listeners: list[Callable[[], None]] = []  # called for every failed attempt
        self.probe = probe
        self.answered_at = -1.0  # monotonic time the server last answered a request (the probe included)
        self.served_at = -1.0  # monotonic time a request last succeeded (not the probe)
        self.failing: dict[str, float] = {}  # key -> when a request about it last failed
        self.probes = 0  # probes that ended, with an answer or without
        self._probing: asyncio.Event | None = None  # set when the probe running now ends
        self._back: asyncio.Event | None = None  # set when the outage under way ends

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def retried(self, wait: float | None = None) -> None:
        """One failed attempt; `wait`: seconds until the request goes again (at most)."""
        self.retries += 1
        # Tests wait on it: still trying, still up (and when the next try is due).
        due = {} if wait is None else {"retry_in_s": round(wait, 3)}
        log.debug("s3_retried", retries=self.retries, **due)
        for retried in self.retry_listeners:
            retried()

    def failed(self, exc: BaseException, since: float | None = None, wait: float | None = None) -> None:
        """A request failed; `since`: when it was sent (a timeout is known only long after); `wait`: as
        for retried()."""
        self.retried(wait)
        if self.down_since is None:
            # Silent since the later of the two: a request sent before the server's last answer does not
            # date the outage back past that answer (down_for is how long it has really not answered).
            self.down_since = time.monotonic() if since is None else max(since, self.answered_at)
            self.reason = describe(exc)
            self._back = asyncio.Event()
            log.warning("s3_unreachable", reason=self.reason)
            for listener in self.listeners:
                listener(True, self.reason)

    def succeeded(self, *, probe: bool = False, sent: float | None = None) -> None:
        """An answer. It ends an outage only if its request was sent after the outage began (or `sent` is
        not known): a server going down still answers what it took before, after refusing newer requests."""
        self.answered_at = time.monotonic()
        if not probe:
            self.served_at = self.answered_at
        if self.down_since is not None and (sent is None or sent >= self.down_since):
            log.info("s3_recovered", down_s=round(time.monotonic() - self.down_since, 1))
            self.down_since = None
            if self._back is not None:
                self._back.set()
                self._back = None
            for listener in self.listeners:
                listener(False, "")

    async def wait_out(self, seconds: float) -> None:
        """Sleep `seconds` before the next try, or less: every request waiting out an outage goes again as
        soon as one of them gets an answer (a backoff grown to a minute would otherwise hold it that long)."""
        back = self._back
        if back is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await back.wait()
                await asyncio.sleep(random.uniform(0, RECOVERED_SPREAD))  # spread, on a server just back

    async def only_this_request(self, key: str | None, since: float, *, connected: bool = True) -> bool:
        """A request sent at `since` about `key` (None: about no one object: a listing page, a bucket
        check) failed: is that failure its own? Yes when another request succeeded since; no when keys
        fail too and nothing succeeded; else the probe says (a timeout is known only long after `since`,
        so the probe's answer after it shows the server answering while this request did not).

        connected=False: the request never reached the server (no connection): for a keyless one that
        is the server unreachable, without a probe that would only wait on the same connect.
        """
        now = time.monotonic()
        self.failing = {k: t for k, t in self.failing.items() if now - t < FAILING_WINDOW}
        if key is not None:
            self.failing[key] = now
        if self.served_at >= since:
            return True
        if key is None and (self.down or not connected):
            return False  # waits the outage out with the rest; a success or a keyed probe ends it
        if self._others_failing(key) >= OTHER_KEYS_FAILING or not await self.server_answers(since):
            return False
        others = self._others_failing(key)  # again: more may have failed while the probe was out
        if others >= OTHER_KEYS_FAILING:
            return False
        if self.down and others == 0:
            self.succeeded(probe=True)  # it answers, and no other key fails: the outage is over
        return True

    def _others_failing(self, key: str | None) -> int:
        """Keys other than `key` that failed since the last request that succeeded."""
        return sum(1 for k, t in self.failing.items() if k != key and t > self.served_at)

    async def server_answers(self, since: float) -> bool:
        """Has the server answered anything since `since`? Without a later answer, probe it: one probe at
        a time for every caller, run in the task of the caller that found none running (no task of its
        own to outlive the run); the others wait for it, and probe themselves if it was cancelled."""
        while self.answered_at < since and self.probe is not None:
            if self._probing is None:
                self._probing = asyncio.Event()
                try:
                    await self._probe()
                finally:
                    self._probing.set()
                    self._probing = None
                break
            probing, probes = self._probing, self.probes
            await probing.wait()
            if self.probes != probes:
                break  # it ended with or without an answer (else it was cancelled: probe again)
        return self.answered_at >= since

    async def _probe(self) -> None:
        assert self.probe is not None
        try:
            await asyncio.wait_for(self.probe(), PROBE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if classify(exc) is ErrorKind.TRANSIENT:
                self.probes += 1
                return
            # Any other answer (403 for a key without s3:ListBucket included) is the server answering.
        self.probes += 1
        self.answered_at = time.monotonic()


def backoff(attempt: int, base: float, cap: float) -> float:
    """The n-th wait (from 0) of a capped exponential backoff: base, 2*base, 4*base, ... cap.

    The one backoff of syncd: the Retrier draws its jittered waits below it, the watcher waits it between
    restarts, and a file the server failed is tried again after it (recorder.py).
    """
    return min(cap, base * (1 << min(attempt, 62)))


class Retrier:
    """Runs S3 calls, retrying what the server or network may fix by itself.

    Transient errors and clock skew are retried with capped exponential backoff and full jitter; everything
    else (credentials, permissions, bad requests) is raised at once for the caller to sort. Every attempt
    holds a place in the shared Throttle, so all senders (client, fast path, helper) share one window.
    """

    def __init__(
        self,
        outage: Outage,
        bucket: str,
        *,
        base: float = 0.5,
        cap: float = 60.0,
        give_up_after: float | None = None,
        throttle: Throttle | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.outage = outage
        self.bucket = bucket  # where its requests go: named when one about no object kept failing
        self.request_timeout = request_timeout
        self.base = base
        self.cap = cap
        self.give_up_after = give_up_after
        self.throttle = throttle or Throttle(64)
        self.started = time.monotonic()

    @classmethod
    def for_bucket(
        cls,
        client: S3Client,
        bucket: str,
        *,
        give_up_after: float | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        throttle: Throttle | None = None,
    ) -> Retrier:
        """The retrier of a pipeline or a one-shot command (versions, restore, verify, check) on `bucket`.

        Its outage probe is a HeadBucket of that bucket, so that a request failing while the server
        answers (a listing page, a bucket check, a download that never ends) is given up after
        KEY_ATTEMPTS tries instead of waited out as an outage. give_up_after: how long an outage is
        waited out (None: for ever, as the daemon does); request_timeout: s3.request_timeout.
        """
        outage = Outage(probe=lambda: client.head_bucket(Bucket=bucket))
        return cls(
            outage, bucket, give_up_after=give_up_after, throttle=throttle, request_timeout=request_timeout
        )

    def delay(self, attempt: int) -> float:
        # Jittered so that many workers retrying at once do not all come back at the same moment.
        return random.uniform(self.base / 2, backoff(attempt, self.base, self.cap))

    async def call(
        self,
        op: Callable[[], Awaitable[T]],
        *,
        key: str | None = None,
        what: str = "a request",
        size: int = 0,
    ) -> T:
        """op() until it succeeds; `key`: the object the request is about, if any; `what`: the request,
        named in the error when it kept failing and the server's error names no operation (a timeout).

        A failure while the server answers others (Outage.only_this_request) is this request's own: it is
        tried KEY_ATTEMPTS times in all, then raised; the server is up, so waiting for it to "come back"
        would wait forever. A keyed request's error is raised as is, for the caller to report as that
        object's; a request about no object (a listing page, a bucket check) is one the caller cannot go
        on without: RequestFailedError, which names it. Only a failure with nothing answered since it was
        sent is an outage, waited out up to give_up_after.

        Each attempt has a deadline (request_deadline: s3.request_timeout plus a second per 16 KiB of
        `size`, the bytes it moves): a server that answers a byte at a time becomes a retry, not a hang.
        """
        deadline = request_deadline(size, self.request_timeout)
        attempt = 0
        own_failures = 0
        throttled_since: float | None = None
        while True:
            exc: Exception | None
            async with self.throttle.slot() as sent:
                try:
                    async with asyncio.timeout(deadline):
                        result = await op()
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    exc = botocore.exceptions.ReadTimeoutError(
                        endpoint_url=f"(no answer within {deadline:.0f}s)", error="request deadline"
                    )
                except Exception as caught:
                    exc = caught
                else:
                    exc = None
            if exc is None:
                self.throttle.answered()
                self.outage.succeeded(sent=sent)
                return result
            if isinstance(exc, FastPathOff):
                continue  # sent again at once, by the plain client: not an outage
            kind = classify(exc)
            if kind not in (ErrorKind.TRANSIENT, ErrorKind.CLOCK):
                raise exc
            if throttled(exc):
                wait = max(retry_after(exc) or 0.0, self.delay(attempt))
                self.outage.answered_at = max(self.outage.answered_at, time.monotonic())
                self.outage.retried(wait)
                self.throttle.slow_down(sent, describe(exc))
                throttled_since = throttled_since or sent
                if self.give_up_after is not None and time.monotonic() - throttled_since > self.give_up_after:
                    raise UnavailableError(
                        f"the S3 server kept asking to slow down: {describe(exc)}"
                    ) from None
                await asyncio.sleep(wait)
                attempt = min(attempt + 1, 16)
                continue
            if kind is ErrorKind.CLOCK and attempt == 0:
                log.error("clock_skewed", reason=describe(exc), hint="fix this machine's clock (NTP)")
            connected = not isinstance(exc, botocore.exceptions.ConnectionError)
            if kind is ErrorKind.TRANSIENT and await self.outage.only_this_request(
                key, sent, connected=connected
            ):
                own_failures += 1
                wait = self.delay(own_failures - 1)
                self.outage.retried(None if own_failures >= KEY_ATTEMPTS else wait)
                if own_failures >= KEY_ATTEMPTS:
                    if key is None:
                        raise self._kept_failing(exc, what) from exc
                    raise exc
                await asyncio.sleep(wait)
                continue
            wait = self.delay(attempt)
            self.outage.failed(exc, since=sent, wait=wait)
            down_for = time.monotonic() - (self.outage.down_since or sent)
            if self.give_up_after is not None and down_for > self.give_up_after:
                if kind is ErrorKind.CLOCK:
                    raise UnavailableError(
                        f"the S3 server refuses this machine's clock ({describe(exc)}); fix it (NTP)"
                    ) from None
                raise UnavailableError(f"the S3 server stayed unreachable: {describe(exc)}") from None
            await self.outage.wait_out(wait)
            attempt = min(attempt + 1, 16)

    def _kept_failing(self, exc: Exception, what: str) -> RequestFailedError:
        """The one-line error for a request about no object that failed KEY_ATTEMPTS times while the server
        answered others."""
        operation = getattr(exc, "operation_name", None) or what
        return RequestFailedError(
            f"the S3 server kept failing {operation} on bucket {self.bucket} while it answered other "
            f"requests ({KEY_ATTEMPTS} tries): {describe(exc)}"
        )
