"""Ensure the bucket before the first upload: it exists, is ours, is provably private, and is versioned."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import aiohttp
import botocore.exceptions

from syncd.errors import BucketError, ConfigError
from syncd.log import get_logger
from syncd.s3.client import ErrorKind, classify, credentials_error, describe, error_code, http_status
from syncd.s3.transport import trusted, uses_tls

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from syncd.config import S3Settings
    from syncd.s3.retry import Retrier

log = get_logger()
T = TypeVar("T")

PUBLIC_GROUPS = {
    "http://acs.amazonaws.com/groups/global/AllUsers": "AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers": "AuthenticatedUsers",
}
ACCESS_DENIED = frozenset({"AccessDenied", "Forbidden", "403", "AllAccessDisabled"})
NOT_FOUND = frozenset({"404", "NoSuchBucket", "NotFound"})
ALREADY_EXISTS = frozenset({"BucketAlreadyExists", "BucketAlreadyOwnedByYou"})
UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "501", "405"})
ACL_REFUSED = frozenset({"AccessControlListNotSupported", "InvalidBucketAclWithObjectOwnership"})
WRONG_REGION = frozenset(
    {"301", "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=10)


@dataclass(frozen=True)
class BucketStatus:
    """What ensure_private_bucket found (and did); the lead's `bucket_ready` record is built from it."""

    bucket: str
    created: bool  # we created it just now
    private: bool  # proven: no public grants, no public policy, anonymous probe refused
    versioning: str  # "Enabled" | "Suspended" | "Disabled" (never enabled)
    made_private: bool  # we removed a public grant
    exists: bool = True  # False only in check mode: `syncd run` would create it
    owner_proven: bool = True  # False: accepted on weaker evidence (see ensure_private_bucket)
    acls_ignored: bool = False  # the ACL lists public grants the server ignores (BucketOwnerEnforced)
    public_acl: tuple[str, ...] = ()  # check mode: the public grants `syncd run` would remove


async def ensure_private_bucket(
    client: S3Client,
    bucket: str,
    *,
    region: str | None,
    endpoint_url: str | None,
    check_only: bool = False,
    object_lock: bool = False,
    profile: str | None = None,
) -> BucketStatus:
    """Create or adopt `bucket`, make it private and versioned, and prove the privacy from outside.

    Raises BucketError for what the user must fix (someone else's bucket, a missing permission, a public
    policy), CredentialsError for rejected keys, and re-raises transient errors unchanged for the caller's
    retry; the whole function is idempotent, so retrying it from the top is safe.

    Ownership: the ACL's Owner ID must equal the caller's ID from ListBuckets. When ListBuckets is denied
    or names no owner (a key restricted to one bucket, common on B2), a bucket whose HeadBucket and
    GetBucketAcl both succeed is accepted with owner_proven=False. That is sound against the likely accident,
    a name someone else already owns: by default only the owner may read a bucket's ACL, and a B2 key only
    reaches its own account's buckets. It cannot catch an owner who deliberately grants us access.

    PutPublicAccessBlock is not attempted: what it would block (public grants and policies) is already
    removed or refused here and proven by the anonymous probe, it needs one more permission, and B2 and
    SeaweedFS answer NotImplemented.

    object_lock: a bucket created here gets Object Lock enabled (and with it versioning). profile: the
    config's s3.profile, whose CA bundle the anonymous probe trusts as the client does.

    check_only changes nothing: a missing bucket is reported with exists=False, a public ACL that `run`
    would remove is reported with private=False and its grants in public_acl (the anonymous probe is
    skipped then); only what `run` could not fix itself raises.
    """
    ahead = _Ahead()
    try:
        return await _ensure(
            ahead,
            client,
            bucket,
            region,
            endpoint_url,
            check_only=check_only,
            object_lock=object_lock,
            profile=profile,
        )
    finally:
        await ahead.close()


async def _ensure(
    ahead: _Ahead,
    client: S3Client,
    bucket: str,
    region: str | None,
    endpoint_url: str | None,
    *,
    check_only: bool,
    object_lock: bool,
    profile: str | None,
) -> BucketStatus:
    """ensure_private_bucket's steps, in their order; reads that do not depend on an earlier step's answer
    are sent ahead (see _Ahead)."""
    if not await _exists(client, bucket):
        if check_only:
            return BucketStatus(
                bucket,
                created=False,
                private=False,
                versioning="Disabled",
                made_private=False,
                exists=False,
                owner_proven=False,
            )
        created = await _create(client, bucket, region, object_lock=object_lock)
    else:
        created = False
        ahead.send("owner", client.list_buckets())
        ahead.send("versioning", _read_versioning(client, bucket))
    acl = await _get_acl(client, bucket)
    owner_proven = created or await _owner_proven(client, bucket, acl, ahead)
    made_private = False
    public = _public_grants(acl)
    url = _bucket_url(client, bucket, region, endpoint_url)
    if not public:  # what a public ACL would change (or explain) is not there: both reads are final now
        ahead.send("policy", client.get_bucket_policy_status(Bucket=bucket))
        ahead.send("anonymous", _probe_anonymous(bucket, url, profile))
    acls_ignored = False
    if public and check_only:
        # What run would find: grants it cannot remove that the server ignores (anonymous refused anyway).
        acls_ignored = await _acls_disabled(client, bucket) and await _anonymous_refused(bucket, url, profile)
        if not acls_ignored:
            log.warning(
                "bucket_public_acl", bucket=bucket, grants=public, hint="syncd run will make it private"
            )
    elif public:
        acls_ignored = not await _make_private(client, bucket, public)
        if not acls_ignored:
            made_private = True
            log.warning("bucket_made_private", bucket=bucket, removed=public)
    if acls_ignored:
        # The anonymous probe below still decides: a server that says so and serves anyway fails it.
        log.warning(
            "bucket_acl_ignored",
            bucket=bucket,
            grants=public,
            reason="the ACL cannot be changed and Object Ownership is BucketOwnerEnforced: the server "
            "ignores ACLs",
        )
        public = []
    still_public = tuple(public) if check_only else ()
    await _check_policy(client, bucket, public_acl=bool(still_public), ahead=ahead)
    if not still_public:
        await ahead.take("anonymous", lambda: _probe_anonymous(bucket, url, profile))
    versioning = await _versioning(client, bucket, enable=not check_only, ahead=ahead)
    return BucketStatus(
        bucket,
        created,
        not still_public,
        versioning,
        made_private,
        owner_proven=owner_proven,
        acls_ignored=acls_ignored,
        public_acl=still_public,
    )


class _Ahead:
    """Requests sent before the step that reads their answers: the checks of an existing bucket waited one
    round trip each for seven requests, several of them independent of the others' answers (ListBuckets
    and GetBucketVersioning beside GetBucketAcl; GetBucketPolicyStatus beside the anonymous probe). Each
    step takes its answer, or its error, in the usual order, so the same step fails with the same message;
    what no step took (an earlier one failed) is cancelled."""

    def __init__(self) -> None:
        self._sent: dict[str, asyncio.Task[Any]] = {}

    def send(self, name: str, request: Coroutine[Any, Any, Any]) -> None:
        self._sent[name] = asyncio.ensure_future(request)

    async def take(self, name: str, request: Callable[[], Awaitable[T]]) -> T:
        """The answer sent ahead under `name`, else `request()` sent now."""
        sent = self._sent.pop(name, None)
        return await sent if sent is not None else await request()

    async def close(self) -> None:
        sent, self._sent = list(self._sent.values()), {}
        for task in sent:
            task.cancel()
        await asyncio.gather(*sent, return_exceptions=True)


async def ensure_bucket(
    client: S3Client,
    s3: S3Settings,
    bucket: str,
    *,
    check_only: bool,
    retrier: Retrier | None = None,
    object_lock: bool = False,
) -> BucketStatus:
    """ensure_private_bucket for a config (the daemon's start, `check`, a reload to a new bucket).

    With a retrier it waits while the server is unreachable; without, the first failure is the answer.
    """

    def attempt() -> Awaitable[BucketStatus]:
        return ensure_private_bucket(
            client,
            bucket,
            region=s3.region,
            endpoint_url=s3.endpoint_url,
            check_only=check_only,
            object_lock=object_lock,
            profile=s3.profile,
        )

    return await (retrier.call(attempt, what="a bucket check") if retrier is not None else attempt())


@contextlib.contextmanager
def _step(bucket: str, action: str, permission: str) -> Iterator[None]:
    """Sort any failure of one S3 step into what ensure_private_bucket raises."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        _raise_for(exc, bucket, action, permission)
    except Exception as exc:
        if classify(exc) is ErrorKind.CREDENTIALS:
            raise credentials_error(exc) from exc
        if isinstance(exc, botocore.exceptions.SSLError):
            raise ConfigError(
                f"s3.endpoint_url: the TLS certificate of the server does not verify ({describe(exc)}); "
                "fix the server's certificate, or point AWS_CA_BUNDLE at the CA that signed it"
            ) from exc
        raise


def _raise_for(exc: botocore.exceptions.ClientError, bucket: str, action: str, permission: str) -> NoReturn:
    """Keys -> CredentialsError; transient or clock -> unchanged, for the caller's retry; else BucketError."""
    kind = classify(exc)
    code = error_code(exc)
    if kind is ErrorKind.CREDENTIALS:
        raise credentials_error(exc) from exc
    if kind in (ErrorKind.TRANSIENT, ErrorKind.CLOCK):
        raise exc
    if code in ACCESS_DENIED or http_status(exc) == 403:
        raise BucketError(
            f"the credentials may not {action} (bucket {bucket!r}, {code or 'HTTP 403'}); "
            f"grant {permission} on arn:aws:s3:::{bucket} to this key"
        ) from exc
    if code in WRONG_REGION:
        where = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        fix = f"set s3.region to {where!r}" if where else "set s3.region to the bucket's region"
        raise BucketError(
            f"bucket {bucket!r} is not in the configured region ({describe(exc)}); {fix}"
        ) from exc
    raise BucketError(
        f"could not {action} (bucket {bucket!r}): {describe(exc)}; check the bucket name, s3.region and "
        "s3.endpoint_url"
    ) from exc


async def _exists(client: S3Client, bucket: str) -> bool:
    with _step(bucket, "look up the bucket (HeadBucket)", "s3:ListBucket"):
        try:
            await client.head_bucket(Bucket=bucket)
            return True
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return False
            if http_status(exc) != 403:
                raise
    # A HEAD answer has no body, so its 403 cannot tell bad keys from a missing permission: ask with a GET.
    with _step(bucket, "list the bucket", "s3:ListBucket"):
        try:
            await client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in ACCESS_DENIED:
                raise
            raise BucketError(
                f"access to bucket {bucket!r} is denied ({error_code(exc)}): it may be someone else's bucket "
                f"(choose another name), or grant s3:ListBucket on arn:aws:s3:::{bucket} to this key"
            ) from exc
    return True


async def _create(client: S3Client, bucket: str, region: str | None, *, object_lock: bool = False) -> bool:
    """Create the bucket private; False when it turned out to exist (ownership is checked next)."""
    args: dict[str, Any] = {"Bucket": bucket, "ACL": "private"}
    if object_lock:
        args["ObjectLockEnabledForBucket"] = True
    if region and region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    with _step(bucket, "create the bucket", "s3:CreateBucket"):
        try:
            try:
                await client.create_bucket(**args)
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) not in ACL_REFUSED | UNSUPPORTED:
                    raise
                # Servers without bucket ACLs create buckets private anyway; the checks below prove it.
                del args["ACL"]
                await client.create_bucket(**args)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in ALREADY_EXISTS:
                return False
            if error_code(exc) == "InvalidBucketName":
                raise BucketError(
                    f"{bucket!r} is not a valid bucket name ({describe(exc)}); use 3-63 lowercase letters, "
                    "digits, dots and hyphens"
                ) from exc
            raise
    log.info("bucket_created", bucket=bucket, region=region, object_lock=object_lock)
    return True


async def _get_acl(client: S3Client, bucket: str) -> Mapping[str, Any]:
    with _step(bucket, "read the bucket ACL", "s3:GetBucketAcl"):
        try:
            acl = await client.get_bucket_acl(Bucket=bucket)
            _check_is_s3(client, acl)
        except botocore.exceptions.ClientError as exc:
            # Only the owner may read a bucket's ACL (AWS, RGW): denied on a bucket that is not among ours
            # is someone else's bucket, not a permission this key lacks.
            if error_code(exc) in ACCESS_DENIED and await _listed_elsewhere(client, bucket):
                raise BucketError(
                    f"bucket {bucket!r} belongs to another account (it is not among this key's buckets "
                    "and its ACL is not readable); choose another bucket name"
                ) from exc
            if error_code(exc) in UNSUPPORTED:
                # No ACLs on this server (R2): nothing they could grant; the anonymous probe proves privacy.
                log.info("bucket_acl_unsupported", bucket=bucket, reason=describe(exc))
                return {}
            if error_code(exc) not in NOT_FOUND:
                raise
            # HeadBucket said 404 and CreateBucket said it exists: the name is taken where we cannot see it.
            raise BucketError(
                f"bucket name {bucket!r} is taken but the bucket is not visible to these credentials; "
                "choose another bucket name"
            ) from exc
    return acl


async def _listed_elsewhere(client: S3Client, bucket: str) -> bool:
    """True when ListBuckets answers and does not name the bucket; False when it does or is refused."""
    try:
        listed = await client.list_buckets()
    except botocore.exceptions.ClientError:
        return False
    return bucket not in {entry.get("Name") for entry in listed.get("Buckets", [])}


def _check_is_s3(client: S3Client, acl: Mapping[str, Any]) -> None:
    """An S3 server answers GetBucketAcl with an Owner and Grants; a web page parses into neither."""
    if "Owner" in acl or "Grants" in acl:
        return
    headers = acl.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    raise ConfigError(
        f"s3.endpoint_url {client.meta.endpoint_url} does not answer like an S3 server (GetBucketAcl "
        f"returned {headers.get('content-type') or 'no ACL'}); use the S3 API endpoint of your provider"
    )


async def _owner_proven(client: S3Client, bucket: str, acl: Mapping[str, Any], ahead: _Ahead) -> bool:
    """True when the ACL owner is the caller; raises when it is someone else; False when we cannot tell."""
    owner = str(acl.get("Owner", {}).get("ID", ""))
    try:
        me = str((await ahead.take("owner", client.list_buckets)).get("Owner", {}).get("ID", ""))
    except botocore.exceptions.ClientError as exc:
        if classify(exc) is not ErrorKind.PERMANENT:
            _raise_for(exc, bucket, "list buckets", "s3:ListAllMyBuckets")
        me, reason = "", describe(exc)
    else:
        reason = "GetBucketAcl names no owner" if not owner else "ListBuckets names no owner"
    if owner and me and owner != me:
        name = acl.get("Owner", {}).get("DisplayName") or owner
        raise BucketError(
            f"bucket {bucket!r} belongs to another account (owner {name}); choose another bucket name"
        )
    if owner and me:
        return True
    log.warning(
        "bucket_owner_unproven",
        bucket=bucket,
        reason=reason,
        hint="accepted because HeadBucket and GetBucketAcl succeed; grant s3:ListAllMyBuckets to prove it",
    )
    return False


def _public_grants(acl: Mapping[str, Any]) -> list[str]:
    grants = acl.get("Grants", [])
    return sorted(
        f"{PUBLIC_GROUPS[uri]}:{grant.get('Permission', '?')}"
        for grant in grants
        if (uri := grant.get("Grantee", {}).get("URI")) in PUBLIC_GROUPS
    )


async def _acls_disabled(client: S3Client, bucket: str) -> bool:
    """Object Ownership is BucketOwnerEnforced (AWS's default since 2023): ACLs grant nothing there, and
    PutBucketAcl answers AccessControlListNotSupported. Servers without the setting answer an error: False."""
    try:
        response = await client.get_bucket_ownership_controls(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        if classify(exc) is not ErrorKind.PERMANENT:
            _raise_for(exc, bucket, "read the Object Ownership setting", "s3:GetBucketOwnershipControls")
        return False
    rules = response.get("OwnershipControls", {}).get("Rules", [])
    return any(rule.get("ObjectOwnership") == "BucketOwnerEnforced" for rule in rules)


async def _make_private(client: S3Client, bucket: str, public: list[str]) -> bool:
    """Replace the ACL with `private` and read it back: the grant must be gone. False when the server
    refuses ACLs and enforces bucket-owner ownership: the grants it lists grant nothing."""
    with _step(bucket, f"remove the public grant ({', '.join(public)})", "s3:PutBucketAcl"):
        try:
            await client.put_bucket_acl(Bucket=bucket, ACL="private")
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in ACL_REFUSED:
                raise
            if await _acls_disabled(client, bucket):
                return False
            # Refused without ownership controls that say so: the read-back decides.
    left = _public_grants(await _get_acl(client, bucket))
    if left:
        raise BucketError(
            f"bucket {bucket!r} still grants {', '.join(left)} after setting ACL private; remove the grant "
            "with your provider's console or `aws s3api put-bucket-acl --acl private` and retry"
        )
    return True


async def _check_policy(client: S3Client, bucket: str, *, public_acl: bool, ahead: _Ahead) -> None:
    """Refuse a public bucket policy; syncd never deletes a policy, the user decides what it was for.

    GetBucketPolicyStatus is not enough on its own: Ceph RGW says IsPublic for a public ACL too. So a
    policy is reported only when GetBucketPolicy shows one, and while a public ACL (public_acl, check
    mode) could explain the flag, only when that policy allows anyone.
    """
    with _step(bucket, "read the bucket policy status", "s3:GetBucketPolicyStatus"):
        try:
            status = await ahead.take("policy", lambda: client.get_bucket_policy_status(Bucket=bucket))
        except botocore.exceptions.ClientError as exc:
            code = error_code(exc)
            if code == "NoSuchBucketPolicy":
                return
            if code not in UNSUPPORTED:
                raise
            status = None
    if status is None:
        public = _allows_anyone(await _read_policy(client, bucket))
    elif status.get("PolicyStatus", {}).get("IsPublic", False):
        policy = await _read_policy(client, bucket)
        public = policy is not None and (not public_acl or _allows_anyone(policy))
    else:
        public = False
    if public:
        raise BucketError(
            f"bucket {bucket!r} has a public bucket policy; syncd does not delete policies: remove it with "
            f"`aws s3api delete-bucket-policy --bucket {bucket}` (or `mc anonymous set none`) and retry"
        )


async def _read_policy(client: S3Client, bucket: str) -> str | None:
    """The bucket policy document; None when there is none (or the server has no bucket policies)."""
    with _step(bucket, "read the bucket policy", "s3:GetBucketPolicy"):
        try:
            return str((await client.get_bucket_policy(Bucket=bucket))["Policy"])
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in UNSUPPORTED | {"NoSuchBucketPolicy"}:
                raise
            return None


def _allows_anyone(text: str | None) -> bool:
    """Judged from the document (MinIO, B2 have no GetBucketPolicyStatus): any Allow to Principal "*" is
    public, conditions or not."""
    if text is None:
        return False
    try:
        statements = json.loads(text).get("Statement", [])
    except (ValueError, AttributeError):
        return True  # unreadable: do not claim privacy we cannot show
    if isinstance(statements, dict):
        statements = [statements]
    return any(
        isinstance(s, dict) and s.get("Effect") == "Allow" and _anyone(s.get("Principal")) for s in statements
    )


def _anyone(principal: Any) -> bool:
    if isinstance(principal, dict):
        return any(_anyone(value) for value in principal.values())
    if isinstance(principal, list):
        return "*" in principal
    return bool(principal == "*")


def _bucket_url(client: S3Client, bucket: str, region: str | None, endpoint_url: str | None) -> str:
    """Path style for custom endpoints; AWS virtual-host style (path style when a dot would break TLS)."""
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}"
    region = region or client.meta.region_name or "us-east-1"
    if "." in bucket:
        return f"https://s3.{region}.amazonaws.com/{bucket}"
    return f"https://{bucket}.s3.{region}.amazonaws.com"


def _env_proxy(url: str) -> str | None:
    """The proxy botocore would use for `url` (HTTPS_PROXY, NO_PROXY).

    Not aiohttp's trust_env: that would also send ~/.netrc credentials and spoil the anonymous request.
    """
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


async def _anonymous_refused(bucket: str, url: str, profile: str | None) -> bool:
    """_probe_anonymous as a question: are unsigned requests refused?"""
    try:
        await _probe_anonymous(bucket, url, profile)
    except BucketError:
        return False
    return True


async def _probe_anonymous(bucket: str, url: str, profile: str | None) -> None:
    """The proof of privacy: unsigned requests to list the bucket and to read a key must be refused.

    A HEAD of a random missing key catches a policy or ACL that opens objects but not the listing (answered
    404 instead of 403). 5xx and network failures are raised as aiohttp errors: the caller retries them.
    """
    key_url = f"{url.rstrip('/')}/syncd-probe-{secrets.token_hex(8)}"
    proxy = _env_proxy(url)  # both targets are under url: one scheme and host, so one proxy and trust
    tls = trusted(profile) if uses_tls(url, proxy) else True  # True: aiohttp's default
    async with aiohttp.ClientSession(timeout=PROBE_TIMEOUT) as session:
        for method, target in (("GET", f"{url.rstrip('/')}/?max-keys=1"), ("HEAD", key_url)):
            try:
                request = session.request(method, target, allow_redirects=False, proxy=proxy, ssl=tls)
                async with request as response:
                    status = response.status
                    if status >= 500:
                        response.raise_for_status()
            except aiohttp.ClientConnectorCertificateError as exc:
                raise BucketError(
                    f"the anonymous privacy check of bucket {bucket!r} could not verify the TLS certificate "
                    f"of {url}: {exc.certificate_error}; fix the server certificate, or point AWS_CA_BUNDLE "
                    "at the CA that signed it"
                ) from exc
            if status in (401, 403):
                continue
            # 404 for the missing key means the request was authorized: objects are readable by anyone.
            if status == 200 or (method == "HEAD" and status == 404):
                what = "lists its objects" if method == "GET" else "serves its objects"
                raise BucketError(
                    f"bucket {bucket!r} {what} to anonymous requests (HTTP {status} for unsigned {method} "
                    f"{target}); remove the public access (ACL, bucket policy, or server-side anonymous "
                    "identity) and retry"
                )
            raise BucketError(
                f"cannot prove bucket {bucket!r} is private: unsigned {method} {target} answered HTTP "
                f"{status} instead of 403; check s3.endpoint_url and s3.region"
            )


async def _versioning(client: S3Client, bucket: str, *, enable: bool, ahead: _Ahead) -> str:
    """Turn versioning on where the server lets us, then report what it says; never fatal when refused.

    PutBucketVersioning is only sent when the bucket is not versioned yet, so a least-privilege key
    (no s3:PutBucketVersioning, e.g. on B2 where buckets are always versioned) starts without warnings.
    """
    status = await ahead.take("versioning", lambda: _read_versioning(client, bucket))
    if enable and status not in ("Enabled", "Unsupported"):
        try:
            await client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        except botocore.exceptions.ClientError as exc:
            kind = classify(exc)
            if kind is not ErrorKind.PERMANENT:
                _raise_for(exc, bucket, "enable versioning", "s3:PutBucketVersioning")
            if error_code(exc) not in UNSUPPORTED:  # B2 is always versioned and may answer NotImplemented
                log.warning(
                    "bucket_versioning_refused",
                    bucket=bucket,
                    reason=describe(exc),
                    hint=f"grant s3:PutBucketVersioning on arn:aws:s3:::{bucket} or enable it yourself",
                )
        status = await _read_versioning(client, bucket)
    if status != "Enabled":
        log.warning(
            "bucket_unversioned",
            bucket=bucket,
            versioning=status,
            hint=f"bucket {bucket} is not versioned: overwrites destroy history; enable versioning",
        )
    return status


async def _read_versioning(client: S3Client, bucket: str) -> str:
    """The bucket's versioning status; "Unsupported" where the server has no versioning (R2)."""
    with _step(bucket, "read the versioning status", "s3:GetBucketVersioning"):
        try:
            return str((await client.get_bucket_versioning(Bucket=bucket)).get("Status") or "Disabled")
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in UNSUPPORTED:
                raise
            return "Unsupported"
