"""ensure_private_bucket against a real SeaweedFS: create, adopt, make private, refuse, and check-only."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import botocore.exceptions
import pytest
import structlog
from helpers import every_server

from syncd.errors import BucketError, CredentialsError
from syncd.s3.bucket import BucketStatus, _bucket_url, _probe_anonymous, ensure_private_bucket
from syncd.s3.client import ErrorKind, S3Settings, classify, open_client

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


@pytest.fixture
def use_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Point the standard AWS credential chain at one identity (optionally with a wrong secret)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def use(identity: Any, secret: str | None = None) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", identity.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret or identity.secret_key)

    return use


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure(s3_server: Any, bucket: str, *, check_only: bool = False) -> BucketStatus:
    async def run() -> BucketStatus:
        settings = S3Settings(endpoint_url=s3_server.endpoint_url, region="us-east-1")
        async with open_client(settings) as client:
            return await ensure_private_bucket(
                client, bucket, region="us-east-1", endpoint_url=s3_server.endpoint_url, check_only=check_only
            )

    return asyncio.run(run())


def anonymous_get(s3_server: Any, bucket: str) -> int:
    try:
        with urllib.request.urlopen(f"{s3_server.endpoint_url}/{bucket}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def public_grants(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return [g for g in s3.get_bucket_acl(Bucket=bucket)["Grants"] if g["Grantee"].get("URI") == ALL_USERS]


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [record["event"] for record in logs]


@every_server
def test_new_bucket_is_created_private_and_versioned(
    s3_server: Any, s3: Any, bucket_name: str, use_keys: Callable[..., None]
) -> None:
    use_keys(s3_server.admin)
    with structlog.testing.capture_logs() as logs:
        status = ensure(s3_server, bucket_name)
    assert status == BucketStatus(
        bucket_name, created=True, private=True, versioning="Enabled", made_private=False
    )
    assert "bucket_created" in events(logs)
    assert public_grants(s3, bucket_name) == []
    assert s3.get_bucket_versioning(Bucket=bucket_name)["Status"] == "Enabled"
    assert anonymous_get(s3_server, bucket_name) == 403

    again = ensure(s3_server, bucket_name)
    assert again == BucketStatus(
        bucket_name, created=False, private=True, versioning="Enabled", made_private=False
    )


@every_server
def test_public_read_bucket_is_made_private(
    s3_server: Any, s3: Any, bucket_name: str, use_keys: Callable[..., None]
) -> None:
    s3.create_bucket(Bucket=bucket_name, ACL="public-read")
    assert anonymous_get(s3_server, bucket_name) == 200
    use_keys(s3_server.admin)
    with structlog.testing.capture_logs() as logs:
        status = ensure(s3_server, bucket_name)
    assert status.made_private and status.private and not status.created
    assert status.versioning == "Enabled"
    assert {
        "event": "bucket_made_private",
        "log_level": "warning",
        "bucket": bucket_name,
        "removed": ["AllUsers:READ"],
    } in logs
    assert public_grants(s3, bucket_name) == []
    assert anonymous_get(s3_server, bucket_name) == 403


@every_server
def test_bucket_of_another_account_is_refused(
    s3_server: Any, s3_other: Any, bucket_name: str, use_keys: Callable[..., None]
) -> None:
    s3_other.create_bucket(Bucket=bucket_name, ACL="public-read")
    use_keys(s3_server.admin)
    with pytest.raises(BucketError, match="belongs to another account") as caught:
        ensure(s3_server, bucket_name)
    assert "\n" not in str(caught.value)
    # Refused before touching anything: the other account's ACL and versioning are as they were.
    assert public_grants(s3_other, bucket_name) != []
    assert "Status" not in s3_other.get_bucket_versioning(Bucket=bucket_name)


@every_server
@pytest.mark.parametrize("exists", [True, False], ids=["existing", "missing"])
def test_wrong_secret_is_a_credentials_error(
    s3_server: Any, s3: Any, bucket_name: str, use_keys: Callable[..., None], exists: bool
) -> None:
    if exists:
        s3.create_bucket(Bucket=bucket_name)
    use_keys(s3_server.admin, secret="not-the-secret")
    with pytest.raises(CredentialsError) as caught:
        ensure(s3_server, bucket_name)
    assert "not-the-secret" not in str(caught.value)
    assert s3_server.admin.secret_key not in str(caught.value)


@every_server
def test_check_only_on_missing_bucket_creates_nothing(
    s3_server: Any, s3: Any, bucket_name: str, use_keys: Callable[..., None]
) -> None:
    use_keys(s3_server.admin)
    status = ensure(s3_server, bucket_name, check_only=True)
    assert not status.exists and not status.created and not status.private
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        s3.head_bucket(Bucket=bucket_name)
    assert caught.value.response["Error"]["Code"] == "404"


@every_server
def test_check_only_on_public_bucket_changes_nothing(
    s3_server: Any, s3: Any, bucket_name: str, use_keys: Callable[..., None]
) -> None:
    s3.create_bucket(Bucket=bucket_name, ACL="public-read")
    use_keys(s3_server.admin)
    with structlog.testing.capture_logs() as logs:
        status = ensure(s3_server, bucket_name, check_only=True)
    assert status == BucketStatus(
        bucket_name,
        created=False,
        private=False,
        versioning="Disabled",
        made_private=False,
        public_acl=("AllUsers:READ",),
    )
    assert "bucket_public_acl" in events(logs) and "bucket_unversioned" in events(logs)
    assert len(public_grants(s3, bucket_name)) == 1
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket_name)
    assert anonymous_get(s3_server, bucket_name) == 200


@every_server
def test_public_policy_is_refused_and_left_alone(
    s3_server: Any, s3: Any, bucket_name: str, use_keys: Callable[..., None]
) -> None:
    s3.create_bucket(Bucket=bucket_name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket_name}/*",
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket_name, Policy=json.dumps(policy))
    use_keys(s3_server.admin)
    for check_only in (True, False):
        with pytest.raises(BucketError, match="public bucket policy"):
            ensure(s3_server, bucket_name, check_only=check_only)
    assert json.loads(s3.get_bucket_policy(Bucket=bucket_name)["Policy"])["Statement"][0]["Principal"] == "*"


def policy_for(bucket: str, principal: Any) -> str:
    statement = {
        "Effect": "Allow",
        "Principal": principal,
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


@every_server
def test_check_only_tells_a_public_policy_from_a_public_acl(
    s3_server: Any, s3: Any, bucket_name: str, use_keys: Callable[..., None]
) -> None:
    """RGW's policy status is IsPublic for a public ACL alone: only a policy that allows anyone is one."""
    s3.create_bucket(Bucket=bucket_name, ACL="public-read")
    use_keys(s3_server.admin)
    assert ensure(s3_server, bucket_name, check_only=True).public_acl == ("AllUsers:READ",)
    other = f"arn:aws:iam:::user/{s3_server.other.name}"
    s3.put_bucket_policy(Bucket=bucket_name, Policy=policy_for(bucket_name, {"AWS": [other]}))
    assert ensure(s3_server, bucket_name, check_only=True).public_acl == ("AllUsers:READ",)
    s3.put_bucket_policy(Bucket=bucket_name, Policy=policy_for(bucket_name, "*"))
    with pytest.raises(BucketError, match="public bucket policy"):
        ensure(s3_server, bucket_name, check_only=True)


@every_server
def test_anonymous_probe_refuses_a_public_bucket(s3_server: Any, s3: Any, bucket_name: str) -> None:
    s3.create_bucket(Bucket=bucket_name, ACL="public-read")
    url = _bucket_url(None, bucket_name, "us-east-1", s3_server.endpoint_url)
    with pytest.raises(BucketError, match="lists its objects to anonymous requests"):
        asyncio.run(_probe_anonymous(bucket_name, url, None))


def test_anonymous_probe_unreachable_is_transient(unused_port: int) -> None:
    with pytest.raises(aiohttp.ClientError) as caught:
        asyncio.run(_probe_anonymous("some-bucket", f"http://127.0.0.1:{unused_port}/some-bucket", None))
    assert classify(caught.value) is ErrorKind.TRANSIENT


def test_bucket_url_styles() -> None:
    client = SimpleNamespace(meta=SimpleNamespace(region_name="eu-west-1"))
    assert _bucket_url(client, "b1", None, "http://127.0.0.1:9000/") == "http://127.0.0.1:9000/b1"
    assert _bucket_url(client, "b1", None, None) == "https://b1.s3.eu-west-1.amazonaws.com"
    assert _bucket_url(client, "b1", "us-east-1", None) == "https://b1.s3.us-east-1.amazonaws.com"
    assert _bucket_url(client, "a.b", "us-east-2", None) == "https://s3.us-east-2.amazonaws.com/a.b"
