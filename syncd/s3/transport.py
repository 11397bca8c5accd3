"""The plain client's HTTP session: aiohttp that never follows a redirect and reads answers up to a cap.

aiobotocore's own session (AIOHTTPSession) lets aiohttp follow a 3xx, so the request (body and all, without
the Authorization header) goes on to the Location before botocore sees the answer, and it reads every body
that is not streamed to the caller whole (an error body of 1 GB in memory). NoRedirectSession is handed to
aiobotocore through its public `AioConfig(http_session_cls=...)` (aiobotocore 2.12.2 and later) and keeps
its contract: the constructor's arguments, `send(request)` returning an AioAWSResponse whose `raw` is the
aiohttp response (StreamingBody reads a GetObject body from it), the same botocore exceptions.

What it does not take: `proxies_config` (a proxy's own CA bundle or client certificate) and
`socket_options` (aiobotocore's session ignores those too); syncd never sets either.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
from collections.abc import Awaitable, Iterator
from typing import Any

import aiohttp
import botocore.exceptions
import botocore.session
from aiobotocore.awsrequest import AioAWSResponse
from botocore.httpsession import ProxyConfiguration, create_urllib3_context, get_cert_path, mask_proxy_url
from multidict import CIMultiDict
from yarl import URL

BODY_CAP = 1024 * 1024  # bytes of an error (or other unexpected) response body read; the rest is dropped
# Bytes of an answer that is not streamed (listings, XML results). A page of 1,000 versions with 1 KiB keys
# is about 1.2 MiB (3.2 MiB URL-encoded); more than this is not an S3 answer, and is refused rather than held:
# botocore parses an answer on the event loop, about a second per 16 MiB, while every upload waits.
ANSWER_CAP = 16 * 1024 * 1024
KEEPALIVE_TIMEOUT = 12.0  # aiobotocore's default: under S3's 20 s idle timeout


async def read_capped(content: Any, cap: int = BODY_CAP) -> bytes:
    """At most `cap` bytes of a response body (an aiohttp StreamReader); the rest is never read."""
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        chunk = await content.read(min(1 << 16, cap - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def uses_tls(url: str, proxy: str | None) -> bool:
    """Whether a request to url (through proxy) makes a TLS connection, to the server or to its proxy."""
    return url.startswith("https:") or (proxy or "").startswith("https:")


def ca_bundle(profile: str | None) -> str | None:
    """The CA bundle botocore verifies servers with for this profile: AWS_CA_BUNDLE, else the profile's
    `ca_bundle` in the AWS config file; None: its default (certifi's)."""
    value = botocore.session.Session(profile=profile).get_config_variable("ca_bundle")
    return str(value) if value else None


def trusted(profile: str | None) -> ssl.SSLContext | bool:
    """The TLS settings of syncd's own requests (the fast path, the anonymous privacy probe): the plain
    client's, so every request to one server trusts the same CAs."""
    return tls_context(ca_bundle(profile) or True)


@functools.cache
def tls_context(verify: bool | str) -> ssl.SSLContext | bool:
    """botocore's TLS context for `verify` (False: none; True: certifi's bundle; a path: that bundle).

    One per process and bundle: loading a bundle costs 40-60 ms of CPU.
    """
    return _new_tls_context(verify) if verify else False


def _new_tls_context(verify: bool | str) -> ssl.SSLContext:
    context: ssl.SSLContext = create_urllib3_context()
    bundle = get_cert_path(verify)
    if bundle:
        context.load_verify_locations(bundle)
    return context


@contextlib.contextmanager
def botocore_errors(url: str, proxy: str | None = None) -> Iterator[None]:
    """aiohttp's transport failures raised as the botocore exceptions the client raises for them, so one
    retry policy (client.classify) sorts every sender's failures alike."""
    try:
        yield
    except aiohttp.ClientSSLError as e:
        raise botocore.exceptions.SSLError(endpoint_url=url, error=e) from e
    except (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError) as e:
        masked = mask_proxy_url(proxy) if proxy else "(none)"
        raise botocore.exceptions.ProxyConnectionError(proxy_url=masked, error=e) from e
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as e:
        raise botocore.exceptions.ConnectionClosedError(endpoint_url=url, error=e) from e
    except aiohttp.ServerTimeoutError as e:
        if str(e).lower().startswith("connect"):
            raise botocore.exceptions.ConnectTimeoutError(endpoint_url=url, error=e) from e
        raise botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=e) from e
    except (aiohttp.ClientConnectorError, socket.gaierror) as e:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url=url, error=e) from e
    except TimeoutError as e:
        raise botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=e) from e
    except aiohttp.ClientConnectionError as e:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url=url, error=e) from e
    except aiohttp.ClientError as e:
        raise botocore.exceptions.HTTPClientError(error=e) from e


class ReadAnswer(AioAWSResponse):  # type: ignore[misc]
    """An answer whose body was read here (up to a cap), not left for botocore to read whole from `raw`."""

    def __init__(self, url: str, status: int, headers: dict[str, str], raw: Any, body: bytes) -> None:
        super().__init__(url, status, headers, raw)
        self.body = body

    @property
    def content(self) -> Awaitable[bytes]:
        return _ready(self.body)


async def _ready(body: bytes) -> bytes:
    return body


class NoRedirectSession:
    """aiobotocore's HTTP session contract (AioConfig.http_session_cls) on aiohttp: a 3xx comes back to
    botocore as the error it is (client.describe names its Location), error bodies are read up to BODY_CAP
    and other answers that are not streamed up to ANSWER_CAP."""

    def __init__(
        self,
        verify: bool | str = True,
        proxies: dict[str, str] | None = None,
        timeout: float | tuple[float, float] | list[float] | None = None,
        max_pool_connections: int = 10,
        socket_options: Any = None,
        client_cert: str | tuple[str, str] | None = None,
        proxies_config: dict[str, Any] | None = None,
        connector_args: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        connect, read = timeout if isinstance(timeout, list | tuple) else (timeout, timeout)
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect, sock_read=read)
        self._proxies = ProxyConfiguration(proxies=proxies, proxies_settings=proxies_config)
        self._verify = verify
        self._client_cert = client_cert
        self._pool = max_pool_connections
        self._connector_args = dict(connector_args or {})
        self._connector_args.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT)
        self._ssl: ssl.SSLContext | bool | None = self._connector_args.pop("ssl_context", None)
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> NoRedirectSession:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def _tls(self) -> ssl.SSLContext | bool:
        """botocore's TLS settings (tls_context) for `verify`, with the client certificate if one is given.

        Built at the first https request: an http endpoint (and every short command against one) need not
        load a CA bundle.
        """
        if self._ssl is None:
            if self._client_cert is None or not self._verify:
                self._ssl = tls_context(self._verify)
            else:
                self._ssl = _new_tls_context(self._verify)
                if isinstance(self._client_cert, str):
                    self._ssl.load_cert_chain(self._client_cert)
                else:
                    self._ssl.load_cert_chain(*self._client_cert)
        return self._ssl

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool, **self._connector_args),
                timeout=self._timeout,
                skip_auto_headers={"Content-Type"},
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._http

    async def send(self, request: Any) -> AioAWSResponse:
        """Send a prepared botocore request; the answer as aiobotocore's own session gives it, but never
        from anywhere the request was not sent to, and with its body read up to a cap."""
        url = str(request.url)
        headers: CIMultiDict[str] = CIMultiDict(
            (name, value.decode() if isinstance(value, bytes) else str(value))
            for name, value in request.headers.items()
        )
        headers["Accept-Encoding"] = "identity"  # bodies come back as the server wrote them
        chunked = headers.get("Transfer-Encoding", "").lower() == "chunked"
        if chunked:
            del headers["Transfer-Encoding"]  # aiohttp takes chunking as an argument, not a header
        proxy = self._proxies.proxy_url_for(url)
        try:
            with botocore_errors(url, proxy):
                response = await self._session().request(
                    request.method,
                    URL(url, encoded=True),
                    headers=headers,
                    data=request.body,
                    chunked=chunked or None,
                    allow_redirects=False,
                    proxy=proxy,
                    proxy_headers=self._proxies.proxy_headers_for(url) or None,
                    ssl=self._tls() if uses_tls(url, proxy) else True,  # True: aiohttp's default
                )
                answer_headers = {
                    name.decode("utf-8").lower(): value.decode("utf-8")
                    for name, value in response.raw_headers
                }
                if response.status < 300 and request.stream_output:
                    return AioAWSResponse(url, response.status, answer_headers, response)
                try:
                    body = await self._body(response)
                except BaseException:
                    response.close()  # cut off mid-body (its deadline, a reset): the connection goes too
                    raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            raise
        except Exception as exc:  # as aiobotocore's session: anything else on the way is a transport error
            raise botocore.exceptions.HTTPClientError(error=exc) from exc
        return ReadAnswer(url, response.status, answer_headers, response, body)

    @staticmethod
    async def _body(response: aiohttp.ClientResponse) -> bytes:
        """The answer's body: an error's up to BODY_CAP (the rest dropped with the connection: botocore
        then sorts it by its status), another's whole up to ANSWER_CAP, else refused (ValueError)."""
        if response.method == "HEAD":  # no body, whatever its Content-Length says (the object's size)
            response.release()
            return b""
        if response.status >= 300:
            body = await read_capped(response.content, BODY_CAP)
        else:
            cap, length = f"{ANSWER_CAP:,}", response.content_length
            if length is not None and length > ANSWER_CAP:
                raise ValueError(f"the server's answer is {length:,} bytes, over syncd's cap of {cap}")
            body = await read_capped(response.content, ANSWER_CAP + 1)
            if len(body) > ANSWER_CAP:
                raise ValueError(f"the server's answer is over syncd's cap of {cap} bytes")
        if response.content.at_eof():
            response.release()  # read to its end: the connection is kept for the next request
        else:
            response.close()
        return body
