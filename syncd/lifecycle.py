"""keep_versions_days: one lifecycle rule that expires old versions, merged into the bucket's own rules.

PutBucketLifecycleConfiguration replaces the whole configuration, so the current rules are read first and
written back unchanged next to ours; when they cannot be read, nothing is written. Without
keep_versions_days the bucket is left alone (a rule set earlier stays until the admin removes it).
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions

from syncd.log import get_logger
from syncd.s3 import ErrorKind, classify, credentials_error, describe, error_code

log = get_logger()
RULE_ID = "syncd-keep-versions"
NO_CONFIGURATION = frozenset({"NoSuchLifecycleConfiguration"})
UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "501", "405"})


def noncurrent_rule(days: int) -> dict[str, Any]:
    return {
        "ID": RULE_ID,
        "Filter": {"Prefix": ""},
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": days},
    }


async def ensure_noncurrent_expiry(client: Any, bucket: str, days: int | None) -> str:
    """Make old versions expire `days` after they stop being current; other rules are kept as they are.

    Returns "set" (written now), "unchanged" (already so, or days is None), "unsupported" (the server has
    no lifecycle API) or "refused" (no permission, or the server rejected the rule); the last two only log
    a warning, since the backup works without the rule. Transient errors are raised for the caller's
    retry (the function is idempotent); rejected credentials raise CredentialsError.
    """
    if days is None:
        return "unchanged"
    try:
        current = await _current(client, bucket)
        rules = [r for r in current.get("Rules", []) if r.get("ID") != RULE_ID]
        ours = [r for r in current.get("Rules", []) if r.get("ID") == RULE_ID]
        if len(ours) == 1 and _is_wanted(ours[0], days):
            log.debug("lifecycle_unchanged", bucket=bucket, rule=RULE_ID, noncurrent_days=days)
            return "unchanged"
        request: dict[str, Any] = {
            "Bucket": bucket,
            "LifecycleConfiguration": {"Rules": [*rules, noncurrent_rule(days)]},
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
    log.info("lifecycle_set", bucket=bucket, rule=RULE_ID, noncurrent_days=days, other_rules=len(rules))
    return "set"


async def _current(client: Any, bucket: str) -> dict[str, Any]:
    try:
        response: dict[str, Any] = await client.get_bucket_lifecycle_configuration(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in NO_CONFIGURATION:
            return {}
        raise
    return response


def _is_wanted(rule: dict[str, Any], days: int) -> bool:
    """Our rule as we would write it (servers may echo an empty Filter back in either form)."""
    filter_ = rule.get("Filter", {})
    return (
        rule.get("ID") == RULE_ID
        and rule.get("Status") == "Enabled"
        and filter_ in ({}, {"Prefix": ""})
        and not rule.get("Prefix")
        and rule.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays") == days
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


__all__ = ["RULE_ID", "ensure_noncurrent_expiry", "noncurrent_rule"]
