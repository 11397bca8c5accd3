"""A fault-injecting front for the bad-server tests: a thread on 127.0.0.1 in front of a real S3 server.

It is not an S3 server. With an `upstream` (the session's SeaweedFS), every request it does not attack is
passed through unchanged, so the answers syncd sees come from the real server except the one a test fakes:
a 500, a 503 SlowDown, an AccessDenied (`refuse`), a held request ("hang"), a flipped byte ("corrupt"),
or a documented answer of a server we cannot reach (`answer`, tests/s3front.py). Two modes have no server
behind them on purpose: "html" stands for a web server that is not S3 at all, and "blackhole" for an
address where nothing answers.

Modes (`BadServer.mode` may be changed while it runs, e.g. from "500" to "proxy" to end an outage):

- "proxy": forward every request unchanged (Host header included, so SigV4 still verifies) to `upstream`.
- "hang": hold each request for `delay` seconds (None: until the mode changes) and then proxy it (or
  drop the connection when there is no upstream).
- "blackhole": listen but never accept; the one-slot backlog is filled, so connecting times out.
- "500": answer every request 500 InternalError.
- "slowdown": answer the first `times` requests 503 SlowDown, then proxy.
- "html": answer 200 with an HTML page (a web server, not S3).
- "corrupt": proxy, then flip one byte of the response body (length kept) of matching requests: bytes
  damaged on the way from the server.

`answer(request)` is asked first about every request (a `Request`): an `Answer` it returns is sent instead
of what the mode would do (tests/s3front.py builds servers' documented answers on it). It may start from
the real server's answer (`front.forward(request)`) and change one thing in it; an Answer's body may be an
iterable of chunks, sent as they come (a server that drips, or one that never stops); `sent` counts the
bytes of such bodies that the client took.

`drop_reused(request)`: a matching request that comes on a connection which has served one already is read
and then the connection closed unanswered, as by a server whose keep-alive timeout fired as the request
came (`dropped` counts them; `connections` counts the connections accepted, `closed` those that ended,
closed by either side).

`only(method, path_and_query)` limits the misbehaviour to matching requests (the rest are proxied, and only
matching requests count towards `times`); `refuse(method, path_and_query)` names requests to answer 403
AccessDenied whatever the mode (a key without a permission); `tls=True` serves HTTPS with a fresh
self-signed certificate.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
    }
)
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Welcome</title></head><body><h1>It works!</h1></body></html>\n"
)
ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "refused": (403, "AccessDenied", "Access Denied"),
}


def error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>badserver</RequestId></Error>"
    ).encode()


def self_signed_context(workdir: Path) -> tuple[ssl.SSLContext, bytes]:
    """A server TLS context with a throwaway self-signed certificate for 127.0.0.1 (openssl CLI), and the
    certificate (PEM), which a client trusts through AWS_CA_BUNDLE."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert.read_bytes()


@dataclass(frozen=True)
class Request:
    """One request as the front received it (header names lower-case)."""

    method: str
    path: str  # path and query, as sent
    headers: dict[str, str]
    body: bytes

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query, keep_blank_values=True))

    @property
    def signed(self) -> bool:
        return "authorization" in self.headers or "X-Amz-Signature" in self.path


def from_the_fast_path(request: Request) -> bool:
    """A PUT the fast path sent: the client's requests carry amz-sdk-invocation-id, the fast path's never."""
    return request.method == "PUT" and "amz-sdk-invocation-id" not in request.headers


@dataclass(frozen=True)
class Answer:
    """status, body, headers; raw=True: the body is the whole answer (status line and headers too), sent as
    it is before the connection is closed: an answer cut short or malformed."""

    status: int
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    raw: bool = False


def error_answer(status: int, code: str, message: str, **headers: str) -> Answer:
    return Answer(status, error_xml(code, message), {"Content-Type": "application/xml", **headers})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read syncd's log, not this one

    def setup(self) -> None:
        super().setup()
        self.served = 0  # requests answered on this connection
        self.server.owner.note_connection()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner.note_closed()

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _serve(self) -> None:
        owner = self.server.owner
        body = self._read_body()
        self.served += 1
        if owner.drop_reused is not None and self.served > 1:
            request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            if owner.drop_reused(request):
                owner.note_dropped()
                self.close_connection = True
                return
        if owner.answer is not None:
            request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            answer = owner.answer(request)
            if answer is not None:
                owner.count(self.command, self.path, False)
                owner.answered.append((request, answer))
                if answer.raw:
                    assert isinstance(answer.body, bytes)
                    self.wfile.write(answer.body)
                    self.close_connection = True
                else:
                    self._send(answer.status, answer.headers, answer.body)
                return
        matched = owner.only is None or owner.only(self.command, self.path)
        number = owner.count(self.command, self.path, matched)
        mode = owner.mode if matched else "proxy"
        if owner.refuse is not None and owner.refuse(self.command, self.path):
            self._error("refused")
        elif mode == "hang":
            deadline = None if owner.delay is None else time.monotonic() + owner.delay
            while owner.mode == "hang" and (deadline is None or time.monotonic() < deadline):
                if owner.stopped.wait(0.1):
                    self.close_connection = True
                    return
            if owner.upstream:
                self._proxy(body)
            else:
                self.close_connection = True
        elif mode == "slowdown":
            if number <= owner.times:
                self._error("slowdown")
            else:
                self._proxy(body)
        elif mode in ERRORS:
            self._error(mode)
        elif mode == "html":
            self._send(200, {"Content-Type": "text/html; charset=utf-8"}, HTML_PAGE)
        else:
            self._proxy(body, corrupt=mode == "corrupt")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _error(self, name: str) -> None:
        status, code, message = ERRORS[name]
        self._send(status, {"Content-Type": "application/xml"}, error_xml(code, message))

    def _send(self, status: int, headers: dict[str, str], body: bytes | Iterable[bytes]) -> None:
        if not isinstance(body, bytes):
            self._stream(status, headers, body)
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, status: int, headers: dict[str, str], chunks: Iterable[bytes]) -> None:
        """Send chunks as they come, until they end or the client hangs up (a capped or timed-out reader)."""
        owner = self.server.owner
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True  # no length, or one the body may not keep to
        try:
            for chunk in chunks:
                if owner.stopped.is_set():
                    return
                self.wfile.write(chunk)
                self.wfile.flush()
                owner.note_sent(len(chunk))
        except OSError:
            pass

    def _proxy(self, body: bytes, corrupt: bool = False) -> None:
        owner = self.server.owner
        assert owner.upstream, "proxy mode needs an upstream"
        target = urllib.parse.urlsplit(owner.upstream)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if corrupt and data:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: BadServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up (timeouts, TLS refusals) is what these tests provoke


class BadServer:
    """`with BadServer("500") as bad:` serves on `bad.url` until the block ends."""

    def __init__(
        self,
        mode: str,
        *,
        upstream: str | None = None,
        delay: float | None = None,
        times: int = 0,
        tls: bool = False,
        only: Callable[[str, str], bool] | None = None,
        refuse: Callable[[str, str], bool] | None = None,
        answer: Callable[[Request], Answer | None] | None = None,
        drop_reused: Callable[[Request], bool] | None = None,
        port: int = 0,
    ) -> None:
        self.mode = mode
        self.upstream = upstream
        self.delay = delay
        self.times = times
        self.tls = tls
        self.only = only
        self.refuse = refuse
        self.answer = answer
        self.drop_reused = drop_reused
        self.dropped = 0  # requests read and left unanswered by drop_reused
        self.connections = 0  # connections accepted
        self.closed = 0  # connections that ended (closed by the client, or by this front)
        self.certificate = b""  # with tls=True: the self-signed certificate (PEM) it serves
        self.sent = 0  # bytes of streamed Answer bodies the client took
        self.answered: list[tuple[Request, Answer]] = []  # what answer() answered, in order
        self.requests: list[tuple[str, str]] = []
        self.matched = 0
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sockets: list[socket.socket] = []
        self.port = port  # 0: any free port; a given one: the same endpoint (and state) as an earlier front

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def note_sent(self, size: int) -> None:
        with self._lock:
            self.sent += size

    def note_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def note_closed(self) -> None:
        with self._lock:
            self.closed += 1

    def note_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def forward(self, request: Request) -> Answer:
        """The upstream server's own answer to this request (Host kept, so SigV4 still verifies)."""
        assert self.upstream, "forward() needs an upstream"
        target = urllib.parse.urlsplit(self.upstream)
        headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
        if request.body or request.method in ("PUT", "POST"):
            headers["content-length"] = str(len(request.body))
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
        try:
            conn.request(request.method, request.path, body=request.body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            kept = {
                name: value
                for name, value in response.getheaders()
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"
            }
            return Answer(response.status, data, kept)
        finally:
            conn.close()

    def count(self, method: str, path: str, matched: bool) -> int:
        """Record one request; the number (1-based) of matching requests so far."""
        with self._lock:
            self.requests.append((method, path))
            self.matched += matched
            return self.matched

    def start(self) -> BadServer:
        if self.mode == "blackhole":
            self._start_blackhole()
            return self
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.owner = self
        if self.tls:
            with tempfile.TemporaryDirectory() as tmp:
                context, self.certificate = self_signed_context(Path(tmp))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def _start_blackhole(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # one pending connection fits, and we take that slot ourselves
        self.port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self._sockets = [listener, filler]

    def close(self) -> None:
        self.stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> BadServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def free_port() -> int:
    """A port nothing listens on (for the dead-endpoint test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
