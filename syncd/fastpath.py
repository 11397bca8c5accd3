"""A cheaper put_object for small files: the client's signer and connection pool, without its pipeline.

Stock aiobotocore spends 1.5-3 ms of CPU per small PUT, most of it on work that is the same for every PUT to
one bucket: the endpoint ruleset (re-run for every new key), the user-agent string, event hooks, request
preparation and its HTTP wrapper. FastPut does that work once per bucket; per PUT it only signs (with
botocore's own S3SigV4Auth, so the Authorization header is the one botocore computes) and sends on the
client's own aiohttp session: about 0.45 ms (bench/put_cpu.py).

It reaches into library internals, so it only runs against the versions it was checked with
(TESTED_VERSIONS); `create()` returns None otherwise and the caller keeps using client.put_object.
SYNCD_FASTPATH=0 turns it off, SYNCD_FASTPATH=force skips the version check.

Integrity: Content-MD5 is sent on every PUT (computed here when the caller gives none), so the server rejects
damaged bytes with BadDigest. Over http the payload SHA-256 is signed as well, as botocore does; over https
the payload is UNSIGNED-PAYLOAD with Content-MD5, as botocore does for streaming S3 uploads on TLS.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import botocore.auth
import botocore.exceptions
import botocore.handlers
import botocore.parsers
from aiobotocore.httpsession import AIOHTTPSession
from botocore.compat import HTTPHeaders
from botocore.httpsession import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from botocore.regions import EndpointResolverBuiltins as Builtins
from yarl import URL

TESTED_VERSIONS = {"botocore": "1.40.61", "aiobotocore": "2.25.1", "aiohttp": "3.14.5"}
ENV_SWITCH = "SYNCD_FASTPATH"
# Below this size waiting for "100 Continue" costs a round trip and a loop wake-up for nothing: a rejected
# small body is cheap to have sent. At and above it we ask first, as botocore does for every PUT.
EXPECT_CONTINUE_MIN = 1024 * 1024


def installed_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in TESTED_VERSIONS}


def why_not(client: Any, bucket: str) -> str | None:
    """Why FastPut cannot stand in for this client's put_object on this bucket (None: it can)."""
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    if switch in ("0", "off", "false", "no"):
        return f"{ENV_SWITCH}={switch}"
    if switch != "force" and (found := installed_versions()) != TESTED_VERSIONS:
        return f"library versions {found} differ from the tested {TESTED_VERSIONS}"
    try:
        return _config_problem(client, bucket)
    except AttributeError as exc:  # a client shaped differently from the one this was written against
        return f"unexpected client internals: {exc}"


def _config_problem(client: Any, bucket: str) -> str | None:
    meta = client.meta
    config = meta.config
    signer = client._request_signer
    builtins = client._ruleset_resolver._builtins
    endpoint = builtins.get(Builtins.SDK_ENDPOINT)
    if meta.service_model.service_name != "s3":
        return "not an S3 client"
    if not isinstance(client._endpoint.http_session, AIOHTTPSession):
        return "the client does not use aiohttp"
    if not endpoint:
        return "no endpoint_url (AWS endpoints: virtual hosts, region redirects, S3 Express)"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query:
        return f"endpoint_url {endpoint!r} is not a bare http(s)://host[:port]"
    if not builtins.get(Builtins.AWS_S3_FORCE_PATH_STYLE):
        return "addressing_style is not 'path'"
    if builtins.get(Builtins.AWS_S3_ACCELERATE) or builtins.get(Builtins.AWS_USE_FIPS):
        return "accelerate or FIPS endpoints"
    if builtins.get(Builtins.AWS_USE_DUALSTACK):
        return "dualstack endpoints"
    if signer._signature_version != "s3v4" or signer._signing_name != "s3":
        return f"signature version {signer._signature_version!r} is not s3v4"
    if not signer._region_name or signer._region_name != builtins.get(Builtins.AWS_REGION):
        return "the signing region is not the client's region"
    if signer._credentials is None:
        return "no credentials (unsigned requests)"
    if config.request_checksum_calculation != "when_required":
        return "request_checksum_calculation is not 'when_required' (the client would add CRC32 headers)"
    if client._endpoint.http_session._proxy_config.proxy_url_for(endpoint):
        return "a proxy is configured for the endpoint"
    try:
        botocore.handlers.validate_bucket_name({"Bucket": bucket})
    except botocore.exceptions.ParamValidationError as exc:
        return str(exc)
    return None


@dataclass(slots=True)
class _SigningRequest:
    """The parts of botocore's AWSRequest that S3SigV4Auth reads, without its per-read prepare() step.

    AWSRequest.body re-prepares the whole request on every read (twice per signature); the signer only
    needs the bytes. The equivalence test checks the Authorization header against the client's own.
    """

    url: str
    headers: HTTPHeaders
    body: bytes
    context: dict[str, Any]
    method: str = "PUT"
    params: dict[str, str] = field(default_factory=dict)


class FastPut:
    """A drop-in for client.put_object(...) for one bucket on a path-style endpoint_url.

    Create one per bucket after the client is open (`FastPut.create(client, bucket)`, None means use
    client.put_object), close it before the client. It shares the client's credentials (refreshed per
    request), signer settings and aiohttp connection pool, so it adds no sockets of its own. It does not
    retry: syncd retries in one place.
    """

    def __init__(self, client: Any, bucket: str) -> None:
        signer = client._request_signer
        endpoint = client._ruleset_resolver._builtins[Builtins.SDK_ENDPOINT].rstrip("/")
        self.bucket = bucket
        self._client = client
        self._signer = signer
        self._region = signer._region_name
        self._http: AIOHTTPSession = client._endpoint.http_session
        self._session: aiohttp.ClientSession | None = None
        self._base = f"{endpoint}/{quote(bucket.encode(), safe='-_.~')}/"
        self._user_agent = client._user_agent_creator.to_string()
        # What S3SigV4Auth reads to choose a signed or UNSIGNED-PAYLOAD body, as the client's request has.
        self._context = {"client_config": client.meta.config, "has_streaming_input": True}
        operation = client.meta.service_model.operation_model("PutObject")
        self._output_shape = operation.output_shape
        self._header_members = {
            shape.serialization.get("name", name).lower(): (name, shape.type_name)
            for name, shape in operation.output_shape.members.items()
            if shape.serialization.get("location") == "header"
        }
        self._closed = False

    @classmethod
    def create(cls, client: Any, bucket: str) -> FastPut | None:
        """A FastPut for `bucket`, or None when this client or these library versions are not supported."""
        if why_not(client, bucket) is not None:
            return None
        return cls(client, bucket)

    async def close(self) -> None:
        """Stop using the client's pool; the pool itself closes with the client."""
        self._closed = True
        self._session = None

    async def put_object(
        self,
        *,
        Key: str,
        Body: bytes,
        ContentMD5: str | None = None,
        ContentType: str | None = None,
        Metadata: dict[str, str] | None = None,
        Bucket: str | None = None,
    ) -> dict[str, Any]:
        """PUT one object; returns and raises what client.put_object would for these arguments."""
        if Bucket is not None and Bucket != self.bucket:
            raise ValueError(f"this FastPut is for bucket {self.bucket!r}, not {Bucket!r}")
        url, headers = await self._signed(Key, Body, ContentMD5, ContentType, Metadata)
        return await self._send(url, headers, Body)

    async def _signed(
        self,
        key: str,
        body: bytes,
        content_md5: str | None,
        content_type: str | None,
        metadata: dict[str, str] | None,
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of the PUT, in botocore's order, signed by botocore's S3SigV4Auth."""
        if not isinstance(key, str) or not key:
            raise botocore.exceptions.ParamValidationError(report=f"Invalid Key {key!r}: a non-empty string")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise botocore.exceptions.ParamValidationError(report=f"Invalid Body type {type(body).__name__}")
        if metadata:
            botocore.handlers.validate_ascii_metadata({"Metadata": metadata})
        url = self._base + quote(key.encode(), safe="/~")
        headers = HTTPHeaders()
        # Always sent: the server checks the bytes it received against it (BadDigest), on http and https.
        headers["Content-MD5"] = content_md5 or base64.b64encode(hashlib.md5(body).digest()).decode()
        if content_type is not None:
            headers["Content-Type"] = content_type
        if metadata:
            for name, value in metadata.items():
                headers["x-amz-meta-" + name] = value
        headers["User-Agent"] = self._user_agent
        if len(body) >= EXPECT_CONTINUE_MIN:
            headers["Expect"] = "100-continue"
        # Asked per request: refreshable credentials renew themselves inside get_frozen_credentials().
        credentials = await self._signer._credentials.get_frozen_credentials()
        request = _SigningRequest(url, headers, bytes(body), dict(self._context))
        botocore.auth.S3SigV4Auth(credentials, "s3", self._region).add_auth(request)
        sent = dict(headers.items())
        sent["Accept-Encoding"] = "identity"  # as aiobotocore sends it (botocore issue 1255)
        return url, sent

    async def _send(self, url: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """Send on the client's pool; transport failures become the botocore exceptions aiobotocore raises."""
        if self._closed:
            raise RuntimeError("FastPut is closed")
        if self._session is None:
            self._session = await self._http._get_session(None)
        try:
            async with self._session.put(URL(url, encoded=True), headers=headers, data=body) as response:
                payload = await response.read()
                status = response.status
                raw = {k.decode().lower(): v.decode() for k, v in response.raw_headers}
        except aiohttp.ClientSSLError as e:
            raise SSLError(endpoint_url=url, error=e) from e
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.http_exceptions.BadStatusLine,
        ) as e:
            raise ConnectionClosedError(error=e, endpoint_url=url) from e
        except aiohttp.ServerTimeoutError as e:
            if str(e).lower().startswith("connect"):
                raise ConnectTimeoutError(endpoint_url=url, error=e) from e
            raise ReadTimeoutError(endpoint_url=url, error=e) from e
        except (aiohttp.ClientConnectorError, aiohttp.ClientConnectionError, socket.gaierror) as e:
            raise EndpointConnectionError(endpoint_url=url, error=e) from e
        except TimeoutError as e:
            raise ReadTimeoutError(endpoint_url=url, error=e) from e
        except Exception as e:
            raise HTTPClientError(error=e) from e
        if status >= 300:
            raise self._client_error(status, raw, payload)
        return self._parse_ok(status, raw)

    def _parse_ok(self, status: int, headers: dict[str, str]) -> dict[str, Any]:
        """What client.put_object returns: ResponseMetadata as botocore fills it, the header members."""
        meta: dict[str, Any] = {}
        if "x-amzn-requestid" in headers:
            meta["RequestId"] = headers["x-amzn-requestid"]
        elif "x-amz-request-id" in headers:
            meta["RequestId"] = headers["x-amz-request-id"]
            meta["HostId"] = headers.get("x-amz-id-2", "")
        meta.update(HTTPStatusCode=status, HTTPHeaders=headers, RetryAttempts=0)
        parsed: dict[str, Any] = {"ResponseMetadata": meta}
        members = self._header_members
        for header, value in headers.items():
            member = members.get(header)
            if member is None:
                continue
            name, type_name = member
            if type_name == "boolean":
                parsed[name] = value.lower() == "true"
            elif type_name in ("integer", "long"):
                parsed[name] = int(value)
            else:
                parsed[name] = value
        return parsed

    def _client_error(self, status: int, headers: dict[str, str], body: bytes) -> Exception:
        """The exception client.put_object raises for this response, parsed by botocore's own parser."""
        parser = botocore.parsers.create_parser("rest-xml")
        parsed = parser.parse({"status_code": status, "headers": headers, "body": body}, self._output_shape)
        parsed.setdefault("ResponseMetadata", {})["RetryAttempts"] = 0
        code = parsed.get("Error", {}).get("Code")
        error_class: type[Exception] = self._client.exceptions.from_code(code)
        return error_class(parsed, "PutObject")
