"""The systemd units: systemd-analyze accepts them, and they say what the daemon relies on."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import skip_or_fail

from syncd.config import DEFAULT_CONFIG, Config
from syncd.errors import EXIT_BUCKET, EXIT_CONFIG, EXIT_CREDENTIALS, EXIT_LOCKED

UNITS = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED_SYNCD = "/opt/syncd/bin/syncd"
STATE_DIRECTORY = "/var/lib/syncd"  # StateDirectory=syncd


def tool(name: str, package: str) -> str:
    """The path of a systemd tool; without it, skip here and fail in CI (.ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed (Debian: apt-get install {package})")
    return path


def directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; keys may repeat, as in systemd."""
    found: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not an assignment: {raw!r}"
        found.append((section, key.strip(), value.strip()))
    return found


def values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in directives(path) if s == section and k == key]


def one(path: Path, key: str, section: str = "Service") -> str:
    found = values(path, key, section)
    assert len(found) == 1, f"{path.name}: expected one {key}=, found {found}"
    return found[0]


def seconds(value: str) -> float:
    """systemd time spans used here: '45', '45s', '5min', '1min 30s'."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


@pytest.fixture(params=["syncd.service", "syncd@.service"])
def unit(request: pytest.FixtureRequest) -> Path:
    return UNITS / str(request.param)


def test_type_notify_with_watchdog_and_reload(unit: Path) -> None:
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert seconds(one(unit, "WatchdogSec")) == 60
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_restarts_only_what_a_restart_can_fix(unit: Path) -> None:
    assert one(unit, "Restart") == "on-failure"
    assert seconds(one(unit, "RestartSec")) == 5
    prevented = {int(code) for v in values(unit, "RestartPreventExitStatus") for code in v.split()}
    assert prevented == {EXIT_CONFIG, EXIT_BUCKET, EXIT_CREDENTIALS, EXIT_LOCKED}


def test_stop_timeout_leaves_room_for_the_drain(unit: Path) -> None:
    default_drain = {f.name: f.default for f in dataclasses.fields(Config)}["stop_timeout"]
    assert isinstance(default_drain, float)
    assert seconds(one(unit, "TimeoutStopSec")) >= default_drain + 15
    assert seconds(one(unit, "TimeoutStartSec")) >= 60


def test_credentials_come_only_from_load_credential(unit: Path) -> None:
    assert values(unit, "LoadCredential") == ["aws-credentials:/etc/syncd/aws-credentials"]
    env = dict(assignment.split("=", 1) for v in values(unit, "Environment") for assignment in v.split())
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == "%d/aws-credentials"
    assert env["AWS_CONFIG_FILE"] == "/dev/null"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert not {k for k in env if k.startswith("AWS_") and ("KEY" in k or "TOKEN" in k)}
    assert not values(unit, "EnvironmentFile")


def test_runs_as_syncd_with_only_dac_read_search(unit: Path) -> None:
    assert one(unit, "User") == "syncd"
    assert one(unit, "Group") == "syncd"
    assert one(unit, "AmbientCapabilities") == "CAP_DAC_READ_SEARCH"
    assert one(unit, "CapabilityBoundingSet") == "CAP_DAC_READ_SEARCH"
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "UMask") == "0077"


def test_sandbox_keeps_what_the_daemon_needs(unit: Path) -> None:
    assert one(unit, "ProtectSystem") == "strict"
    assert one(unit, "ProtectHome") == "read-only"  # a folder under /home stays readable
    assert one(unit, "MemoryDenyWriteExecute") == "yes"
    assert "PrivateUsers" not in {k for _, k, _ in directives(unit)}  # would defeat CAP_DAC_READ_SEARCH
    families = set(one(unit, "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}  # AF_UNIX: NOTIFY_SOCKET and the journal
    assert values(unit, "SystemCallFilter")[0] == "@system-service"  # includes inotify


def test_plain_unit_paths() -> None:
    unit = UNITS / "syncd.service"
    assert one(unit, "ExecStart") == f"{INSTALLED_SYNCD} run -c {DEFAULT_CONFIG}"
    assert one(unit, "StateDirectory") == "syncd"
    assert one(unit, "RuntimeDirectory") == "syncd"
    assert one(unit, "WantedBy", "Install") == "multi-user.target"


def test_template_paths_are_per_instance() -> None:
    unit = UNITS / "syncd@.service"
    assert one(unit, "ExecStart") == f"{INSTALLED_SYNCD} run -c /etc/syncd/%i.yaml"
    assert one(unit, "StateDirectory") == "syncd"  # shared: one database per config inside
    assert one(unit, "RuntimeDirectory") == "syncd/%i"


def test_template_is_the_plain_unit_per_instance() -> None:
    """Hardening must not drift between the two: they differ only where the instance name goes."""
    expected_differences = {"Description", "ExecStart", "RuntimeDirectory"}
    plain = [d for d in directives(UNITS / "syncd.service") if d[1] not in expected_differences]
    template = [d for d in directives(UNITS / "syncd@.service") if d[1] not in expected_differences]
    assert plain == template


def test_requires_mounts_for_config_and_state_and_says_how_to_add_the_folder(unit: Path) -> None:
    required = {path for v in values(unit, "RequiresMountsFor", "Unit") for path in v.split()}
    assert required == {str(Path(DEFAULT_CONFIG).parent), STATE_DIRECTORY}
    assert "#   RequiresMountsFor=/srv/data" in unit.read_text(encoding="utf-8")  # the drop-in for the folder


def hidden_paths(unit: Path) -> list[str]:
    """InaccessiblePaths= entries without their '-' (ignore if missing) prefix; every entry has one."""
    entries = [path for v in values(unit, "InaccessiblePaths") for path in v.split()]
    assert all(path.startswith("-/") for path in entries), entries  # a missing path must not stop the start
    return [path[1:] for path in entries]


def covers(hidden: str, path: str) -> bool:
    return path == hidden or path.startswith(hidden.rstrip("/") + "/")


def test_inaccessible_paths_hide_secrets_syncd_never_needs(unit: Path) -> None:
    hidden = hidden_paths(unit)
    credentials = one(unit, "LoadCredential").split(":", 1)[1]
    for secret in ("/root", "/etc/shadow", "/etc/gshadow", "/etc/ssh/ssh_host_ed25519_key", credentials):
        assert any(covers(h, secret) for h in hidden), f"{unit.name}: {secret} is not in InaccessiblePaths="
    needed = [
        DEFAULT_CONFIG,  # and every /etc/syncd/NAME.yaml
        "/etc/syncd/photos.yaml",
        f"{STATE_DIRECTORY}/state.db",
        INSTALLED_SYNCD,
        "/run/credentials/syncd.service/aws-credentials",  # %d, the copy syncd reads
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/resolv.conf",
        "/etc/hosts",
        "/etc/passwd",
        "/etc/localtime",
        "/usr/lib/python3/dist-packages",
        "/home/alice/photos",
        "/srv/data",
        "/mnt/disk",
        "/media/usb",
        sys.prefix,
    ]
    for path in needed:
        assert not [h for h in hidden if covers(h, path)], f"{unit.name}: InaccessiblePaths= hides {path}"


def test_once_works_with_the_inaccessible_paths_hidden(
    tmp_path, s3, bucket_name, make_config, syncd_env
) -> None:
    """The unit's InaccessiblePaths= applied as systemd applies them (an empty mode-000 node mounted over
    each, in a mount namespace of its own): syncd still checks, uploads and lists, and /etc/shadow is gone.
    """
    unshare = tool("unshare", "util-linux")
    if os.geteuid() != 0:
        skip_or_fail("needs root to make a mount namespace")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"backed up behind the sandbox")
    config = make_config(folder, bucket_name)
    # Python itself must stay: here it may live under /root (pyenv); an installed syncd's must not.
    interpreter = os.path.realpath(sys.executable)
    hidden = [p for p in hidden_paths(UNITS / "syncd.service") if not covers(p, interpreter)]
    hide = "; ".join(
        f"if [ -d {p} ]; then mount -t tmpfs -o ro,mode=000 inaccessible {p}; "
        f"elif [ -e {p} ]; then mount --bind {tmp_path}/inaccessible {p}; fi"
        for p in hidden
    )
    (tmp_path / "inaccessible").write_bytes(b"")
    (tmp_path / "inaccessible").chmod(0)
    syncd = f"{sys.executable} -m syncd"
    script = (
        f"set -e; {hide or 'true'}; "
        "if [ -s /etc/shadow ]; then echo /etc/shadow is readable; exit 9; fi; "
        f"{syncd} check -c {config}; {syncd} once -c {config}; {syncd} versions -c {config} {folder}/a.txt"
    )
    result = subprocess.run(
        [unshare, "--mount", "--propagation=private", "sh", "-c", script],
        env=syncd_env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert s3.get_object(Bucket=bucket_name, Key="a.txt")["Body"].read() == b"backed up behind the sandbox"
    assert "/etc/shadow" in hidden


def _runnable_copy(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at an executable that exists here (verify checks it)."""
    venv_syncd = Path(sys.executable).parent / "syncd"
    stand_in = str(venv_syncd) if venv_syncd.exists() else (shutil.which("true") or "/bin/true")
    for name in ("syncd.service", "syncd@.service"):
        text = (UNITS / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace(INSTALLED_SYNCD, stand_in), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("name", ["syncd.service", "syncd@example.service"])
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    directory = _runnable_copy(tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(directory / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Only our units are judged: other units on the host may have their own complaints.
    ours = [line for line in result.stderr.splitlines() if str(directory) in line or "syncd" in line]
    assert not ours, "\n".join(ours)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["syncd.service", "syncd@example.service"])
def test_systemd_analyze_security_exposure(name: str, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    directory = _runnable_copy(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(directory / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    if match is None:
        reason = result.stderr.strip()[:200]
        skip_or_fail(f"this systemd-analyze has no offline security analysis (systemd >= 250): {reason}")
    assert float(match.group(1)) <= 1.6, result.stdout  # as in README.md; CAP_DAC_READ_SEARCH costs 0.3


def test_sysusers_entry() -> None:
    fields = [line.split() for line in (UNITS / "syncd.sysusers.conf").read_text().splitlines()]
    entries = [f for f in fields if f and not f[0].startswith("#")]
    assert len(entries) == 1
    kind, name, uid = entries[0][:3]
    assert (kind, name, uid) == ("u", "syncd", "-")
    assert entries[0][-2:] == ["/var/lib/syncd", "/usr/sbin/nologin"]


def test_sysusers_creates_the_user(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers", "systemd")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(UNITS / "syncd.sysusers.conf")],
        capture_output=True,
        timeout=60,
        check=True,
    )
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^syncd:x:\d+:\d+:[^:]*:/var/lib/syncd:/usr/sbin/nologin$", passwd, re.MULTILINE)
