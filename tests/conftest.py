"""Fixtures the whole suite shares: real S3 servers (SeaweedFS, Ceph RGW) per session, S3 clients, configs,
syncd processes.

`s3_server` is SeaweedFS unless a test (or its module) is marked `@pytest.mark.servers("seaweedfs", "rgw")`:
then it runs once per named server, and `s3`, `s3_other`, `syncd_env`, `make_config`, `run_syncd` and
`start_daemon` all follow that server.
"""

from __future__ import annotations

import compileall
import importlib.util
import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Daemon, RgwTestServer, S3TestServer, TestServer, s3_client, skip_or_fail
from hypothesis import HealthCheck, settings
from rgw import RgwUnavailable

# Property tests check results, not speed: a loaded CI machine must not fail them on a slow example.
settings.register_profile("syncd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("syncd")

# A background job without job control (a CI runner, `cmd &` in a script) starts with SIGINT ignored, and
# every process the tests start inherits that: Ctrl-C sent to syncd would be ignored and
# test_ctrl_c_in_once_exits_130 fails (the once runs to its end and exits 0). Give the tests the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# syncd byte-compiled once, as an installed package is: an editable checkout under PYTHONDONTWRITEBYTECODE
# (set on some machines and CI runners) recompiled every module in each of the suite's syncd processes.
for _location in getattr(importlib.util.find_spec("syncd"), "submodule_search_locations", None) or []:
    compileall.compile_dir(_location, quiet=2)  # a read-only checkout just runs slower

# Environment that would make the tests depend on the developer's machine rather than on the fixtures.
FOREIGN_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "SYNCD_CONFIG",
)


@pytest.fixture(scope="session", autouse=True)
def hermetic_aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No ~/.aws, no instance metadata, no AWS_* from the shell: every credential comes from a fixture."""
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as patch:
        for name in FOREIGN_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", str(home / "no-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-credentials"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


SERVER_FIXTURES = {"seaweedfs": "seaweedfs_server", "rgw": "rgw_server"}
STARTUP_SECONDS: dict[str, float] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`@pytest.mark.servers("seaweedfs", "rgw")`: run the test once per named server (ids like [rgw]).

    `servers("seaweedfs", "rgw", slow=("rgw",))`: the runs on the servers named in `slow` are marked slow
    (`pytest -m slow`, which CI runs too), for a proof that takes long there and adds nothing the default
    run on the other server does not show.
    """
    marker = metafunc.definition.get_closest_marker("servers")
    if marker is None or "s3_server" not in metafunc.fixturenames:
        return
    slow = set(marker.kwargs.get("slow", ()))
    unknown = set(marker.args) - set(SERVER_FIXTURES)
    if unknown or not marker.args or not slow <= set(marker.args) or set(marker.kwargs) - {"slow"}:
        raise pytest.UsageError(
            f"servers(...) takes some of {sorted(SERVER_FIXTURES)} and slow=(some of those), "
            f"not {marker.args} {marker.kwargs}"
        )
    runs = [pytest.param(kind, marks=pytest.mark.slow) if kind in slow else kind for kind in marker.args]
    metafunc.parametrize("s3_server", runs, indirect=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for kind, seconds in STARTUP_SECONDS.items():
        terminalreporter.write_line(f"{kind} started in {seconds:.1f} s")


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3TestServer]:
    """The session's SeaweedFS (`weed mini`), users `admin` and `other`."""
    server = S3TestServer(tmp_path_factory.mktemp("seaweed"))
    began = time.monotonic()
    with server:
        STARTUP_SECONDS["seaweedfs"] = time.monotonic() - began
        yield server


@pytest.fixture(scope="session")
def rgw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RgwTestServer]:
    """The session's Ceph RGW (one mon, one memstore OSD, radosgw) with users `admin` and `other`.

    On both servers: mark the test `@every_server` (helpers) and use `s3_server`, `s3`, `make_config`...
    RGW only: `s3_client(rgw_server, rgw_server.admin)` is a boto3 client; `rgw_server.create_user(
    Identity.generate("name"))` adds an account; `rgw_server.create_subuser(rgw_server.admin, identity,
    "read")` gives keys with narrowed rights on admin's buckets (read, write, readwrite, full);
    `rgw_server.admin_command(...)` runs radosgw-admin. Started at first use (1-3 s), stopped at the end
    of the session. Where Ceph is not installed the tests that use it skip with the reason; with CI=true
    they fail instead.
    """
    server = RgwTestServer(tmp_path_factory.mktemp("rgw"))
    try:
        server.start()
    except RgwUnavailable as exc:
        skip_or_fail(f"Ceph RGW unavailable: {exc}")
    STARTUP_SECONDS["rgw"] = server.startup_seconds
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server(request: pytest.FixtureRequest) -> TestServer:
    """The server this test runs against: SeaweedFS, or each of those named by @pytest.mark.servers."""
    kind = getattr(request, "param", "seaweedfs")
    server: TestServer = request.getfixturevalue(SERVER_FIXTURES[kind])
    return server


@pytest.fixture
def s3(s3_server: TestServer) -> Any:
    return s3_client(s3_server, s3_server.admin)


@pytest.fixture
def s3_other(s3_server: TestServer) -> Any:
    return s3_client(s3_server, s3_server.other)


@pytest.fixture
def bucket_name() -> str:
    return f"syncd-test-{secrets.token_hex(4)}"


@pytest.fixture
def syncd_env(s3_server: TestServer, tmp_path: Path) -> dict[str, str]:
    """The environment for a syncd subprocess: admin's keys, nothing from the developer's AWS setup."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env.update(
        AWS_ACCESS_KEY_ID=s3_server.admin.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.admin.secret_key,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp_path / "aws-config-absent"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials-absent"),
    )
    return env


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """base with overrides applied: nested dicts merge, None removes a key."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def yaml_ready(value: Any) -> Any:
    """Paths (anywhere in the structure) as strings, tuples as lists: what safe_dump accepts."""
    if isinstance(value, dict):
        return {k: yaml_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [yaml_ready(v) for v in value]
    return str(value) if isinstance(value, Path) else value


@pytest.fixture
def make_config(s3_server: TestServer, tmp_path: Path) -> Callable[..., Path]:
    """make_config(folder, bucket, **overrides) -> path of a YAML config for this server (settle 0.2 s)."""
    counter = itertools.count(1)

    def make(folder: Path, bucket: str, **overrides: Any) -> Path:
        base = {
            "folder": str(folder),
            "bucket": bucket,
            "prefix": "",
            "s3": {"endpoint_url": s3_server.endpoint_url, "region": "us-east-1"},
            "workers": 4,
            "settle": 0.2,
            "stop_timeout": 10,
            "state_dir": str(tmp_path / "state"),
            "log": {"format": "json", "level": "info"},
        }
        path = tmp_path / f"config-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(yaml_ready(merged(base, overrides)), sort_keys=False))
        return path

    return make


@pytest.fixture
def run_syncd(syncd_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_syncd(args, env=None, timeout=120, input=None): `python -m syncd *args`, output as text."""

    def run(
        args: list[str], env: dict[str, str] | None = None, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "syncd", *args],
            env=env if env is not None else syncd_env,
            cwd=tmp_path,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def start_daemon(syncd_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """start_daemon(config_path, env=None) -> Daemon; daemons still running at teardown are SIGKILLed."""
    daemons: list[Daemon] = []

    def start(config_path: Path, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(
            config_path, env if env is not None else syncd_env, tmp_path, name=f"daemon-{len(daemons) + 1}"
        )
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.kill()
