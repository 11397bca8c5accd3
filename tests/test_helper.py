"""upload_processes: 2: small PUTs sent by a helper process, which lives and dies with the daemon."""

from __future__ import annotations

import os
import signal

import botocore.exceptions
import pytest
from badserver import Answer, BadServer, Request, error_answer
from helpers import bucket_matches, json_records, list_versions, wait_until, write

from syncd.s3.client import ErrorKind, classify, error_code, http_status
from syncd.s3.helper import error_fields, rebuild_error


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def helper_pid(records: list[dict]) -> int:
    (started,) = [r for r in records if r.get("event") == "helper_started"]
    return int(started["pid"])


def test_once_with_a_helper_uploads_everything_and_leaves_no_process(
    tmp_path, s3, bucket_name, make_config, run_syncd
):
    folder = tmp_path / "data"
    for i in range(450):
        write(folder / f"d{i % 7}/f{i}.bin", os.urandom(1000 + i))
    # 550 KB at 160 KB/s: about 3.4 s, twice the helper's start-up seen on a loaded machine (1.5 s; 0.5 s
    # here); how many PUTs it gets depends on that, so only "some" is asserted.
    config = make_config(folder, bucket_name, upload_processes=2, workers=16, bandwidth_limit="160KB")

    result = run_syncd(["once", "-c", str(config)])

    assert result.returncode == 0, result.stderr
    assert bucket_matches(s3, bucket_name, folder)
    records = json_records(result.stderr)
    logged = {(r["key"], r["version_id"]) for r in records if r.get("event") == "uploaded"}
    assert logged == {(v["Key"], v["VersionId"]) for v in list_versions(s3, bucket_name)}
    pid = helper_pid(records)
    (stopped,) = [r for r in records if r.get("event") == "helper_stopped"]
    print(f"the helper sent {stopped['puts']} of 450 PUTs")
    assert stopped["puts"] > 0 and stopped["exit_code"] == 0  # it sent PUTs, then exited cleanly
    assert not running(pid)


def test_daemon_helper_killed_uploads_go_on_and_sigterm_stops_both(
    tmp_path, s3, bucket_name, make_config, start_daemon
):
    folder = tmp_path / "data"
    folder.mkdir()
    daemon = start_daemon(make_config(folder, bucket_name, upload_processes=2))
    daemon.wait_for_event("helper_started", timeout=60)
    pid = helper_pid(daemon.records())
    for i in range(40):
        write(folder / f"a{i}.txt", b"before %d" % i)
    wait_until(lambda: len(daemon.uploaded()) == 40, timeout=60)

    os.kill(pid, signal.SIGKILL)
    daemon.wait_for_event("helper_exited", timeout=30)
    for i in range(40):
        write(folder / f"b{i}.txt", b"after %d" % i)
    wait_until(lambda: len(daemon.uploaded()) == 80, timeout=60)
    assert bucket_matches(s3, bucket_name, folder)

    restarted = wait_until(
        lambda: [r for r in daemon.records() if r.get("event") == "helper_started"][1:], timeout=30
    )  # the next heartbeat starts a new one
    new_pid = int(restarted[0]["pid"])
    write(folder / "c.txt", b"with the new helper")
    wait_until(lambda: len(daemon.uploaded()) == 81, timeout=60)
    assert daemon.terminate() == 0
    assert not running(new_pid)


def test_helper_ends_when_the_daemon_is_killed(tmp_path, bucket_name, make_config, start_daemon):
    folder = tmp_path / "data"
    folder.mkdir()
    daemon = start_daemon(make_config(folder, bucket_name, upload_processes=2))
    daemon.wait_for_event("helper_started", timeout=60)
    pid = helper_pid(daemon.records())
    daemon.kill()  # SIGKILL: no clean stop; the helper sees its pipe close
    wait_until(lambda: not running(pid), timeout=15)


def _client_error(error: dict[str, str], status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_client_error({"Code": "SlowDown", "Message": "slow"}, 503), ErrorKind.TRANSIENT),
        (_client_error({"Code": "InvalidAccessKeyId", "Message": "no"}, 403), ErrorKind.CREDENTIALS),
        (_client_error({"Code": "RequestTimeTooSkewed"}, 403), ErrorKind.CLOCK),
        (_client_error({}, 500), ErrorKind.TRANSIENT),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), ErrorKind.TRANSIENT),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x", error="slow"), ErrorKind.TRANSIENT),
        (botocore.exceptions.SSLError(endpoint_url="http://x", error="bad cert"), ErrorKind.PERMANENT),
        (botocore.exceptions.ParamValidationError(report="bad key"), ErrorKind.PERMANENT),
        (ValueError("something else"), ErrorKind.PERMANENT),
    ],
    ids=lambda v: (
        type(v).__name__ + ":" + (error_code(v) or str(http_status(v)))
        if isinstance(v, Exception)
        else v.value
    ),
)
def test_errors_from_the_helper_sort_as_they_would_here(exc: Exception, kind: ErrorKind) -> None:
    """Rebuilt on this side of the pipe, an error keeps its kind: a retry, a credentials stop, a skip."""
    rebuilt = rebuild_error(error_fields(exc))
    assert classify(exc) is kind
    assert classify(rebuilt) is kind
    assert (error_code(rebuilt), http_status(rebuilt)) == (error_code(exc), http_status(exc))


def children(pid: int) -> list[int]:
    """The live processes whose parent is pid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
            except (FileNotFoundError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def test_no_helper_is_kept_when_the_fast_path_is_off(
    tmp_path, s3, s3_server, bucket_name, make_config, start_daemon
):
    """The sender is chosen once at start: when the server refuses the fast path's probe, the helper (which
    would sign with a fast path of its own) is stopped before the daemon is ready, not kept idle all along;
    the plain client uploads."""

    def answer(request: Request) -> Answer | None:
        if request.method == "PUT" and "amz-sdk-invocation-id" not in request.headers:  # the fast path's
            return error_answer(403, "SignatureDoesNotMatch", "The request signature we calculated ...")
        return None

    folder = tmp_path / "data"
    folder.mkdir()
    with BadServer("proxy", upstream=s3_server.endpoint_url, answer=answer) as front:
        config = make_config(folder, bucket_name, upload_processes=2, s3={"endpoint_url": front.url})
        daemon = start_daemon(config)
        daemon.wait_for_event("ready", timeout=60)
        assert any(r.get("event") == "fastpath_off" for r in daemon.records())
        assert children(daemon.pid) == []
        write(folder / "a.txt", b"sent by the plain client")
        daemon.wait_for_event("uploaded", path="a.txt")
        assert daemon.terminate() == 0
    assert bucket_matches(s3, bucket_name, folder)
