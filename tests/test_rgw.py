"""The Ceph RGW fixture itself, and what RGW answers differently from SeaweedFS that syncd must handle."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from helpers import RgwTestServer, s3_client

from syncd.s3 import metadata
from syncd.seaweed import Identity


def anonymous_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_users_are_separate_accounts_and_versioning_gives_version_ids(
    rgw_server: RgwTestServer, bucket_name: str
) -> None:
    admin = s3_client(rgw_server, rgw_server.admin)
    other = s3_client(rgw_server, rgw_server.other)
    admin.create_bucket(Bucket=bucket_name)
    admin.put_bucket_versioning(Bucket=bucket_name, VersioningConfiguration={"Status": "Enabled"})
    first = admin.put_object(Bucket=bucket_name, Key="k", Body=b"one")["VersionId"]
    second = admin.put_object(Bucket=bucket_name, Key="k", Body=b"two")["VersionId"]
    assert first and second and first != second
    assert admin.list_buckets()["Owner"]["ID"] != other.list_buckets()["Owner"]["ID"]
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        other.get_object(Bucket=bucket_name, Key="k")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    assert anonymous_status(f"{rgw_server.endpoint_url}/{bucket_name}") == 403


def test_wrong_secret_is_refused(rgw_server: RgwTestServer) -> None:
    wrong = Identity(rgw_server.admin.name, rgw_server.admin.access_key, "not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        s3_client(rgw_server, wrong).list_buckets()
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_a_read_only_subuser_reads_but_cannot_write(rgw_server: RgwTestServer, bucket_name: str) -> None:
    admin = s3_client(rgw_server, rgw_server.admin)
    admin.create_bucket(Bucket=bucket_name)
    admin.put_object(Bucket=bucket_name, Key="k", Body=b"bytes")
    reader = Identity.generate("reader")
    rgw_server.create_subuser(rgw_server.admin, reader, "read")
    readonly: Any = s3_client(rgw_server, reader)
    assert readonly.get_object(Bucket=bucket_name, Key="k")["Body"].read() == b"bytes"
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        readonly.put_object(Bucket=bucket_name, Key="k", Body=b"other bytes")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"


def test_our_metadata_is_read_in_every_spelling_a_server_returns() -> None:
    """AWS and SeaweedFS return names as sent; RGW turns `_` into `-`; HTTP makes the case anyone's."""
    for meta in (
        {"src_last_modified_millis": "1700000000123", "md5chksum": "XrY7u+Ae7tCTyyK7j1rNww=="},
        {"src-last-modified-millis": "1700000000123", "md5chksum": "XrY7u+Ae7tCTyyK7j1rNww=="},
        {"Src-Last-Modified-Millis": "1700000000123", "MD5CHKSUM": "XrY7u+Ae7tCTyyK7j1rNww=="},
    ):
        assert metadata.mtime_ns(meta) == 1_700_000_000_123_000_000
        assert metadata.md5_hex(meta) == "5eb63bbbe01eeed093cb22bb8f5acdc3"  # md5(b"hello world")
    assert metadata.mtime_ns({"src-last-modified-millis": "soon"}) is None
    assert metadata.md5_hex({"md5chksum": "not base64!"}) is None


def test_an_rgw_of_its_own_takes_settings(tmp_path: Path) -> None:
    """RgwTestServer(dir, settings): here the object name limit that makes RGW answer 500 to long keys."""
    with RgwTestServer(tmp_path / "rgw", {"osd_max_object_name_len": "460"}) as server:
        s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=server.admin.access_key,
            aws_secret_access_key=server.admin.secret_key,
            config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket="long-keys")
        s3.put_object(Bucket="long-keys", Key="k" * 100, Body=b"fits")
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            s3.put_object(Bucket="long-keys", Key="k" * 440, Body=b"too long for the OSD")
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert server.pids == {}
