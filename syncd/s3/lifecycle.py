"""keep_versions_days: one lifecycle rule that expires old versions, merged into the bucket's own rules.

The rule covers syncd's prefix only (other data in the bucket keeps its history), and its ID names the
prefix, so syncd instances backing up to different prefixes of one bucket each keep their own rule.
PutBucketLifecycleConfiguration replaces the whole configuration, so the current rules are read first and
written back unchanged next to ours; when they cannot be read, nothing is written. Without
keep_versions_days the bucket is left alone (a rule set earlier stays until the admin removes it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from syncd.log import get_logger
from syncd.s3.client import ErrorKind, classify, credentials_error, describe, error_code

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = get_logger()
RULE_ID = "syncd-keep-versions"  # the rule of an empty prefix (the whole bucket)
NO_CONFIGURATION = frozenset({"NoSuchLifecycleConfiguration"})
UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "501", "405"})


def rule_id(prefix: str) -> str:
    """Our rule's ID for `prefix`: readable when the prefix is short and plain, else a hash (IDs hold 255)."""
    if not prefix:
        return RULE_ID
    if len(prefix) <= 200 and prefix.isascii() and prefix.isprintable():
        return f"{RULE_ID}:{prefix}"
    return f"{RULE_ID}:{hashlib.sha256(prefix.encode()).hexdigest()[:16]}"


def noncurrent_rule(days: int, prefix: str) -> dict[str, Any]:
    return {
        "ID": rule_id(prefix),
        "Filter": {"Prefix": prefix},
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": days},
    }


async def ensure_noncurrent_expiry(client: S3Client, bucket: str, prefix: str, days: int | None) -> str:
    """Make old versions expire `days` after they stop being current; other rules are kept as they are.

    Returns "set" (written now), "unchanged" (already so, or days is None), "unsupported" (the server has
    no lifecycle API) or "refused" (no permission, or the server rejected the rule); the last two only log
    a warning, since the backup works without the rule. Transient errors are raised for the caller's
    retry (the function is idempotent); rejected credentials raise CredentialsError.
    """
    if days is None:
        return "unchanged"
    wanted = noncurrent_rule(days, prefix)
    name = wanted["ID"]
    try:
        current = await _current(client, bucket)
        rules = [r for r in current.get("Rules", []) if r.get("ID") != name]
        ours = [r for r in current.get("Rules", []) if r.get("ID") == name]
        if len(ours) == 1 and _is_wanted(ours[0], wanted):
            log.debug("lifecycle_unchanged", bucket=bucket, rule=name, noncurrent_days=days)
            return "unchanged"
        request: dict[str, Any] = {
            "Bucket": bucket,
            "LifecycleConfiguration": {"Rules": [*rules, wanted]},
        }
        if "TransitionDefaultMinimumObjectSize" in current:  # AWS: part of the configuration, keep it
            request["TransitionDefaultMinimumObjectSize"] = current["TransitionDefaultMinimumObjectSize"]
        await client.put_bucket_lifecycle_configuration(**request)
    except botocore.exceptions.ClientError as exc:
        return _not_set(exc, bucket)
    except Exception as exc:
        if classify(exc) is ErrorKind.CREDENTIALS:
            raise credentials_error(exc) from exc
        raise
    log.info(
        "lifecycle_set", bucket=bucket, rule=name, prefix=prefix, noncurrent_days=days, other_rules=len(rules)
    )
    return "set"


async def _current(client: S3Client, bucket: str) -> Mapping[str, Any]:
    try:
        response = await client.get_bucket_lifecycle_configuration(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in NO_CONFIGURATION:
            return {}
        raise
    return response


def _is_wanted(rule: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """The rule as we would write it (servers may echo an empty Filter back in either form)."""
    prefix = wanted["Filter"]["Prefix"]
    filter_ = rule.get("Filter", {})
    return (
        rule.get("ID") == wanted["ID"]
        and rule.get("Status") == "Enabled"
        and (filter_ == {"Prefix": prefix} or (not prefix and filter_ == {}))
        and not rule.get("Prefix")
        and rule.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays")
        == wanted["NoncurrentVersionExpiration"]["NoncurrentDays"]
        and set(rule) <= {"ID", "Filter", "Status", "NoncurrentVersionExpiration", "Prefix"}
    )


def _not_set(exc: botocore.exceptions.ClientError, bucket: str) -> str:
    """Sort a failed read or write: raise what a retry or the user must fix, warn about the rest."""
    kind = classify(exc)
    if kind is ErrorKind.CREDENTIALS:
        raise credentials_error(exc) from exc
    if kind in (ErrorKind.TRANSIENT, ErrorKind.CLOCK):
        raise exc
    if error_code(exc) in UNSUPPORTED:
        log.warning(
            "lifecycle_unsupported",
            bucket=bucket,
            reason=describe(exc),
            hint="this server has no lifecycle rules: old versions are kept until you delete them",
        )
        return "unsupported"
    log.warning(
        "lifecycle_refused",
        bucket=bucket,
        reason=describe(exc),
        hint=(
            f"keep_versions_days is not applied; grant s3:GetLifecycleConfiguration and "
            f"s3:PutLifecycleConfiguration on arn:aws:s3:::{bucket}, or set the rule yourself"
        ),
    )
    return "refused"


__all__ = ["RULE_ID", "ensure_noncurrent_expiry", "noncurrent_rule", "rule_id"]
