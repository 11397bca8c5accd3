"""HTTP/1.1 to the endpoint for the fast path's PUTs whose body is in memory: a small keep-alive pool.

aiohttp's request machinery cost about half of syncd's client CPU per small PUT (bench/README.md); what a
signed S3 PUT needs of HTTP is little: one request head, the body, and an answer parsed by llhttp
(httptools, as uvicorn uses it). Failures are raised as the botocore exceptions the client raises for them
(connect -> EndpointConnectionError, ConnectTimeoutError, SSLError; silence or the deadline ->
ReadTimeoutError; a connection lost mid-answer -> ConnectionClosedError), so syncd's one retry policy
sorts them alike. Redirects are not followed (the caller gets the 3xx) and answer bodies are read up to
transport.BODY_CAP; a connection whose answer was cut there, or that says `Connection: close`, is closed.
A header section over HEAD_CAP fails the request (HTTPClientError); bytes after an answer are never read as
part of it and close the connection.

A kept-alive connection the server closed while idle is not an error: a request on a reused connection
that ends before any byte of its answer came is sent once more on a new connection, as urllib3 and aiohttp
do. Bodies that wait for "100 Continue" are not sent here (the caller keeps those on aiohttp).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import botocore.exceptions
import httptools

from syncd.s3.client import CONNECT_TIMEOUT, READ_TIMEOUT
from syncd.s3.transport import BODY_CAP, KEEPALIVE_TIMEOUT

# Bytes of an answer before its final header section ends (S3's are under 2 KiB): httptools keeps a
# header section whole until it ends, so a server sending one without end would grow memory without it.
HEAD_CAP = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """A final answer: its status, headers (names lower-case, values latin-1) and body up to BODY_CAP."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Unanswered(Exception):
    """The connection ended before any byte of the answer: the server may never have seen the request."""


class _Connection(asyncio.Protocol):
    """One connection; one request at a time. Its answer's outcome goes to the waiter future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str) -> None:
        self.loop = loop
        self.url = url  # for the errors raised while it serves a request
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Answer] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._last_read = 0.0
        self._answered = False  # some byte of the current answer came
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0  # bytes received before the final answer's header section ended
        self._delimited = False  # the answer has a Content-Length or is chunked: its end is in the bytes
        self._reusable = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: what the connection carries next is unknown
            return
        self._answered = True
        self._last_read = self.loop.time()
        assert self._parser is not None
        heading = self._status < 200
        if heading:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._fail(botocore.exceptions.HTTPClientError(error=exc))
        except httptools.HttpParserError as exc:
            self._fail(botocore.exceptions.HTTPClientError(error=exc))
        if heading and self._status < 200 and self._head_size > HEAD_CAP:
            error = f"the answer's header section is over {HEAD_CAP} bytes"
            self._fail(botocore.exceptions.HTTPClientError(error=error))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._status >= 200 and not self._delimited and exc is None:
            self._finish(False)  # an answer without a length ends where the connection does
        elif not self._answered:
            self._fail(_Unanswered(exc or "the server closed the connection"))
        else:
            error = exc or ConnectionResetError("the server closed the connection mid-answer")
            self._fail(botocore.exceptions.ConnectionClosedError(endpoint_url=self.url, error=error))

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        waiter = self._waiter
        if waiter is not None and waiter.done():  # bytes after the answer: never read as part of it
            raise httptools.HttpParserError("bytes after the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._status = self._parser.get_status_code()
        headers = self._headers
        self._delimited = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")

    def on_body(self, body: bytes) -> None:
        room = BODY_CAP - self._size
        if len(body) < room:
            self._body.append(body)
            self._size += len(body)
            return
        self._body.append(body[:room])  # the cap: the rest is never read, the connection goes
        self._size = BODY_CAP
        self._finish(False)

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if 100 <= self._status < 200:  # an interim answer (a 100 nobody asked for): the final one follows
            self._status, self._headers, self._delimited = 0, {}, False
            return
        self._finish(self._parser.should_keep_alive())

    # -- one exchange --

    def send(self, head: bytes, body: bytes, deadline: float) -> asyncio.Future[Answer]:
        """Write the request; the future is the answer (or the error that ended it)."""
        assert self.transport is not None
        loop = self.loop
        waiter = self._waiter = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._answered = self._reusable = self._delimited = False
        self._status, self._headers, self._body, self._size, self._head_size = 0, {}, [], 0, 0
        self._deadline = deadline
        self._last_read = now = loop.time()
        self._timer = loop.call_at(min(deadline, now + READ_TIMEOUT), self._on_timer)
        self.transport.write(head + body)
        return waiter

    def done(self) -> bool:
        """Ends the exchange; whether the connection may carry another request."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiter = None
        self._parser = None
        reusable = self._reusable and not self.closed
        if not reusable:
            self.close()
        return reusable

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _on_timer(self) -> None:
        now = self.loop.time()
        if now >= self._deadline:
            self._fail(botocore.exceptions.ReadTimeoutError(endpoint_url=self.url, error="deadline"))
        elif now >= self._last_read + READ_TIMEOUT:
            self._fail(botocore.exceptions.ReadTimeoutError(endpoint_url=self.url, error="read timeout"))
        else:
            self._timer = self.loop.call_at(
                min(self._deadline, self._last_read + READ_TIMEOUT), self._on_timer
            )

    def _finish(self, reusable: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._reusable = reusable
            waiter.set_result(Answer(self._status, self._headers, b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()


class Wire:
    """At most `pool` connections to one http(s)://host[:port]; idle ones reused last-in first-out and
    dropped after KEEPALIVE_TIMEOUT. `host` is the Host header as the caller signed it; `tls` gives the TLS
    settings, asked at the first https connection (an http endpoint never loads a CA bundle)."""

    def __init__(self, endpoint: str, host: str, pool: int, tls: Callable[[], ssl.SSLContext | bool]) -> None:
        parts = urlsplit(endpoint)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._hostname = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._https = parts.scheme == "https"
        self._tls = tls
        self._tls_settings: ssl.SSLContext | bool | None = None
        self._host_line = f"Host: {host}\r\n"
        self._slots = asyncio.Semaphore(pool)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Answer:
        """Send `method url` (under this endpoint; its path and query go out as they are) with these headers
        and a Content-Length; the final answer, or a botocore exception. `timeout`: seconds for it all."""
        if self._closed:
            raise RuntimeError("FastPut is closed")
        if not url.startswith(self._origin):
            raise ValueError(f"{url} is not under {self._origin}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        head = self._head(method, url[len(self._origin) :] or "/", headers, len(body))
        if self._slots.locked():
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=exc) from exc
        else:
            await self._slots.acquire()
        try:
            connection = self._take(loop.time())
            if connection is not None:
                try:
                    return await self._exchange(connection, head, body, deadline)
                except _Unanswered:
                    pass  # closed by the server while idle: once more, on a new connection
            connection = await self._connect(loop, url, deadline)
            try:
                return await self._exchange(connection, head, body, deadline)
            except _Unanswered as exc:
                raise botocore.exceptions.ConnectionClosedError(endpoint_url=url, error=exc) from exc
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Close every connection, idle or busy (a request in flight ends with ConnectionClosedError)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # the transports' connection_lost (which closes the sockets) runs now

    def _head(self, method: str, target: str, headers: dict[str, str], length: int) -> bytes:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = f"{method} {target} HTTP/1.1\r\n{self._host_line}{lines}Content-Length: {length}\r\n\r\n"
        if head.count("\n") != len(headers) + 4 or head.count("\r") != len(headers) + 4:
            raise ValueError("a header name or value holds a line break")  # as aiohttp refuses them
        return head.encode("latin-1")

    async def _exchange(self, connection: _Connection, head: bytes, body: bytes, deadline: float) -> Answer:
        """One request on `connection`, which goes back to the idle list only after a whole answer that
        allows it."""
        reusable = False
        try:
            answer = await connection.send(head, body, deadline)
            reusable = True
        finally:
            # Cancelled or failed half-way: never reused. Else kept when the answer allows it.
            if connection.done() and reusable and not self._closed:
                connection.idle_since = connection.loop.time()
                self._idle.append(connection)
                if self._sweeper is None:
                    self._sweeper = connection.loop.call_later(KEEPALIVE_TIMEOUT, self._sweep)
            else:
                connection.close()
                self._open.discard(connection)
        return answer

    def _take(self, now: float) -> _Connection | None:
        """The idle connection used last, if the server may still hold it open."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_TIMEOUT:
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    def _sweep(self) -> None:
        """Close the connections idle for KEEPALIVE_TIMEOUT (the oldest are first in the list)."""
        self._sweeper = None
        idle = self._idle
        if not idle:
            return
        loop = idle[0].loop
        now = loop.time()
        expired = 0
        while expired < len(idle) and (
            idle[expired].closed or now - idle[expired].idle_since >= KEEPALIVE_TIMEOUT
        ):
            idle[expired].close()
            self._open.discard(idle[expired])
            expired += 1
        del idle[:expired]
        if idle:
            self._sweeper = loop.call_at(idle[0].idle_since + KEEPALIVE_TIMEOUT, self._sweep)

    async def _connect(self, loop: asyncio.AbstractEventLoop, url: str, deadline: float) -> _Connection:
        """A new connection, within CONNECT_TIMEOUT and the request's deadline."""
        if self._closed:  # closed while this request was on its way: nothing may open another
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=url, error="FastPut closed")
        connection = _Connection(loop, url)
        limit = min(CONNECT_TIMEOUT, deadline - loop.time())
        try:
            if self._https and self._tls_settings is None:
                self._tls_settings = self._tls()
            async with asyncio.timeout(limit):
                await loop.create_connection(
                    lambda: connection,
                    self._hostname,
                    self._port,
                    ssl=self._tls_settings if self._https else None,
                    server_hostname=self._hostname if self._https else None,
                )
        except TimeoutError as exc:
            if limit < CONNECT_TIMEOUT:  # the request's deadline came first
                raise botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=exc) from exc
            raise botocore.exceptions.ConnectTimeoutError(endpoint_url=url, error=exc) from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise botocore.exceptions.SSLError(endpoint_url=url, error=exc) from exc
        except OSError as exc:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=url, error=exc) from exc
        self._open.add(connection)
        return connection
