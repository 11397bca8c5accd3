"""The outage probe (the HeadBucket that tells a failing key from a failing server) has no task of its own."""

from __future__ import annotations

import asyncio
import contextlib
import time

from syncd.s3.retry import Outage


def test_a_probe_ends_with_its_caller_and_a_waiter_probes_itself() -> None:
    """Cancelling the caller that probes (a stopping run) leaves no probe running; a caller that waited
    for that probe sends its own and gets its answer."""

    async def main() -> None:
        answers: list[asyncio.Event] = []
        running = 0

        async def probe() -> None:
            nonlocal running
            running += 1
            answer = asyncio.Event()
            answers.append(answer)
            try:
                await answer.wait()
            finally:
                running -= 1

        async def probes_sent(n: int) -> None:
            async with asyncio.timeout(5):
                while len(answers) < n:
                    await asyncio.sleep(0.01)

        outage = Outage(probe=probe)
        since = time.monotonic()
        first = asyncio.create_task(outage.server_answers(since))
        await probes_sent(1)
        second = asyncio.create_task(outage.server_answers(since))
        await asyncio.sleep(0)  # one turn of the loop: the second caller runs up to its wait
        assert len(answers) == 1  # one probe at a time
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await probes_sent(2)  # the waiter's own
        assert running == 1
        answers[1].set()
        assert await asyncio.wait_for(second, 5)

        third = asyncio.create_task(outage.server_answers(time.monotonic()))
        await probes_sent(3)
        third.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await third
        assert running == 0

    asyncio.run(main())


def test_an_outage_is_dated_no_earlier_than_the_last_answer() -> None:
    """A request sent before the server's last answer fails (a timeout, known only a deadline after it was
    sent): the outage it declares starts at that answer, so `--retry-for` counts the time the server has
    really been silent, not the whole request time (was: dated from the request's sending)."""
    outage = Outage()
    sent = time.monotonic() - 5.0  # a request sent 5 s ago
    outage.succeeded()  # another request answered after `sent`
    outage.failed(TimeoutError("no answer"), since=sent)
    assert outage.down and outage.down_since == outage.answered_at > sent


def test_a_late_answer_to_a_request_sent_before_the_outage_does_not_end_it() -> None:
    """A server shutting down refuses a new connection, then still answers a PUT it took before: that
    answer does not end the outage (was: s3_recovered after 0.0 s, then a second s3_unreachable); an answer
    to a request sent after the outage began does."""
    outage = Outage()
    before = time.monotonic()
    outage.failed(ConnectionRefusedError("refused"))
    outage.succeeded(sent=before)
    assert outage.down
    outage.succeeded(sent=time.monotonic())
    assert not outage.down
