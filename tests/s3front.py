"""The documented answers of S3 servers we cannot reach from here, in front of the real SeaweedFS.

Each emulation is an `answer` function for BadServer (tests/badserver.py): it returns the server's own
answer for the requests where that server differs, and None for the rest, which go through to SeaweedFS
unchanged (the signature still verifies: the front keeps the Host header). Sources are the providers'
documentation (AWS S3 API reference: Object Ownership, GetBucketOwnershipControls, Block Public Access;
Backblaze B2 "S3 Compatible API" page: unsupported features and checksum headers).
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable

from badserver import Answer, BadServer, Request, error_answer

XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


def xml_answer(body: str) -> Answer:
    return Answer(
        200, f'<?xml version="1.0" encoding="UTF-8"?>\n{body}'.encode(), {"Content-Type": "application/xml"}
    )


def _is_bucket(request: Request) -> bool:
    """The request names a bucket and no key (path style: /bucket or /bucket/)."""
    path = urllib.parse.urlsplit(request.path).path.strip("/")
    return bool(path) and "/" not in path


class AwsAclsDisabled:
    """AWS S3 with Object Ownership `BucketOwnerEnforced` (the default for new buckets since April 2023)
    and Block Public Access on (also the default):

    - setting an ACL (PutBucketAcl, PutObjectAcl, an x-amz-acl or x-amz-grant-* header other than the
      canned `private` / `bucket-owner-full-control`) -> 400 AccessControlListNotSupported;
    - GetBucketOwnershipControls -> BucketOwnerEnforced; GetPublicAccessBlock -> all four on;
    - ACLs grant nothing: an unsigned request is refused 403 AccessDenied whatever the ACL says.
    """

    def __call__(self, request: Request) -> Answer | None:
        query = request.query
        if not request.signed:
            return error_answer(403, "AccessDenied", "Access Denied")
        if request.method == "GET" and "ownershipControls" in query:
            return xml_answer(
                f'<OwnershipControls xmlns="{XMLNS}"><Rule><ObjectOwnership>BucketOwnerEnforced'
                "</ObjectOwnership></Rule></OwnershipControls>"
            )
        if request.method == "GET" and "publicAccessBlock" in query:
            return xml_answer(
                f'<PublicAccessBlockConfiguration xmlns="{XMLNS}"><BlockPublicAcls>true</BlockPublicAcls>'
                "<IgnorePublicAcls>true</IgnorePublicAcls><BlockPublicPolicy>true</BlockPublicPolicy>"
                "<RestrictPublicBuckets>true</RestrictPublicBuckets></PublicAccessBlockConfiguration>"
            )
        if request.method == "PUT" and "acl" in query:
            return error_answer(400, "AccessControlListNotSupported", "The bucket does not allow ACLs")
        acl = request.headers.get("x-amz-acl")
        grants = [name for name in request.headers if name.startswith("x-amz-grant-")]
        if request.method in ("PUT", "POST") and (
            grants or acl not in (None, "private", "bucket-owner-full-control")
        ):
            if _is_bucket(request):
                return error_answer(
                    400,
                    "InvalidBucketAclWithObjectOwnership",
                    "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting",
                )
            return error_answer(400, "AccessControlListNotSupported", "The bucket does not allow ACLs")
        return None


class B2:
    """Backblaze B2's S3-compatible API:

    - any x-amz-checksum-* or x-amz-sdk-checksum-algorithm header -> 400 InvalidArgument (B2 does not take
      the flexible checksums boto3 sends since 1.36);
    - PutBucketAcl takes only the canned `private` and `public-read`;
    - GetBucketPolicyStatus, GetBucketPolicy -> 501 NotImplemented;
    - buckets are always versioned: GetBucketVersioning says Enabled, PutBucketVersioning -> 501;
    - `slowdown(n, retry_after)`: the next n PutObject requests are answered 503 SlowDown with Retry-After.
    """

    def __init__(self) -> None:
        self.slowdowns = 0
        self.retry_after = 1
        self.lock = threading.Lock()

    def slowdown(self, n: int, retry_after: int) -> None:
        with self.lock:
            self.slowdowns, self.retry_after = n, retry_after

    def __call__(self, request: Request) -> Answer | None:
        query = request.query
        for name in request.headers:
            if name.startswith("x-amz-checksum-") or name == "x-amz-sdk-checksum-algorithm":
                return error_answer(
                    400, "InvalidArgument", f"Unsupported header '{name}' received for this API call."
                )
        if "policyStatus" in query or "policy" in query:
            return error_answer(501, "NotImplemented", "This API call is not supported.")
        if "versioning" in query:
            if request.method == "GET":
                return xml_answer(
                    f'<VersioningConfiguration xmlns="{XMLNS}"><Status>Enabled</Status>'
                    "</VersioningConfiguration>"
                )
            return error_answer(501, "NotImplemented", "B2 buckets are always versioned.")
        if request.method == "PUT" and "acl" in query:
            canned = request.headers.get("x-amz-acl")
            if canned not in ("private", "public-read") or request.body:
                return error_answer(
                    400, "InvalidArgument", "Only the canned ACLs private and public-read are supported."
                )
        if request.method == "PUT" and not _is_bucket(request) and not query:
            with self.lock:
                if self.slowdowns > 0:
                    self.slowdowns -= 1
                    return error_answer(
                        503,
                        "SlowDown",
                        "Please reduce your request rate.",
                        **{"Retry-After": str(self.retry_after)},
                    )
        return None


class R2:
    """Cloudflare R2's S3 API ("S3 API compatibility" page): no ACLs, no versioning, no bucket policies.

    - GetBucketAcl, PutBucketAcl, GetBucketVersioning, PutBucketVersioning, GetBucketPolicyStatus,
      GetBucketPolicy -> 501 NotImplemented;
    - CreateBucket takes no x-amz-acl -> 501 NotImplemented when it carries one;
    - an unsigned request is refused 403 (buckets are reached in public only through r2.dev or a domain).
    """

    UNIMPLEMENTED = ("acl", "versioning", "policyStatus", "policy")

    def __call__(self, request: Request) -> Answer | None:
        if not request.signed:
            return error_answer(403, "AccessDenied", "Access Denied")
        query = request.query
        if any(name in query for name in self.UNIMPLEMENTED) or (
            request.method == "PUT" and _is_bucket(request) and not query and "x-amz-acl" in request.headers
        ):
            return error_answer(501, "NotImplemented", "Not Implemented")
        return None


def front(upstream: str, answer: Callable[[Request], Answer | None]) -> BadServer:
    """A pass-through front on 127.0.0.1 that answers with `answer` where it returns an Answer."""
    return BadServer("proxy", upstream=upstream, answer=answer)
