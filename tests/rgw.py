"""A throwaway one-node Ceph RGW (Debian's radosgw 16.2) for the tests: the suite's second real S3 server.

One monitor, one memstore OSD and one radosgw, all on 127.0.0.1 with free ports, every file (config,
data, logs, sockets) in one temp dir, cephx off. Nothing is written outside that dir and every daemon is
stopped by its PID. Data lives in the OSD's memory: a stop loses it, so there is no restart.

Start-up takes 1-3 s. With Ceph's defaults it took ~10 s: each pool radosgw creates waited for a 1 s Paxos
proposal interval, and a client op that met a PG not yet active waited for the Objecter's 5 s tick;
SETTINGS shortens both. The OSD and the first osdmap are made offline (no `ceph osd create`).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from syncd.seaweed import HOST, Identity, _signed_list_buckets, die_with_parent

# What a one-node cluster needs in ceph.conf besides its paths and ports (see issue 11 for the why of each).
SETTINGS = {
    "auth_cluster_required": "none",
    "auth_service_required": "none",
    "auth_client_required": "none",
    # with cephx off, msgr2's default "secure" mode makes radosgw loop on get_initial_auth_request -13
    "ms_mon_client_mode": "crc",
    "ms_client_mode": "crc",
    "ms_service_mode": "crc",
    "ms_cluster_mode": "crc",
    "ms_mon_service_mode": "crc",
    "ms_mon_cluster_mode": "crc",
    "public_addr": HOST,
    "cluster_addr": HOST,
    "osd_objectstore": "memstore",
    "memstore_device_bytes": str(4 << 30),  # accounting only: memory is used by what is stored
    "osd_pool_default_size": "1",
    "osd_pool_default_min_size": "1",
    "mon_allow_pool_size_one": "true",
    "osd_pool_default_pg_num": "8",
    "osd_pool_default_pgp_num": "8",
    "osd_pool_default_pg_autoscale_mode": "off",
    "osd_crush_chooseleaf_type": "0",
    "mon_warn_on_pool_no_redundancy": "false",
    "mon_data_avail_crit": "1",  # the monitor would stop below 5% free disk (a full CI runner)
    # every pool radosgw creates is a Paxos round, each waiting up to this long (1 s by default)
    "paxos_propose_interval": "0.01",
    "paxos_min_wait": "0.001",
    "mon_tick_interval": "1",
    # a client op that found no active PG waits for the Objecter's next tick (5 s) before it retries
    "objecter_tick_interval": "0.1",
    "osd_pool_default_flag_hashpspool": "true",
    "rgw_dynamic_resharding": "false",
    "rgw_enable_usage_log": "false",
    "debug_rgw": "1/5",  # one log line per request
}
BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "osdmaptool", "radosgw", "radosgw-admin")
STOP_GRACE = 5.0


class RgwUnavailable(Exception):
    """RGW cannot run here (binaries missing, a daemon died while starting); the message says which."""


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class RgwServer:
    """One-node Ceph RGW on 127.0.0.1 with the given identities (RGW users with full rights on their buckets).

    Same shape as SeaweedServer where the tests meet it: `endpoint_url`, `identities`, `start()`/`stop()`,
    a context manager. `create_user` adds a user later; `admin_command` runs any radosgw-admin command.
    `settings` add to or override SETTINGS, e.g. {"osd_max_object_name_len": "460"} for a server that
    answers 500 to long keys.
    """

    def __init__(
        self,
        data_dir: Path,
        identities: tuple[Identity, ...] | list[Identity],
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.identities = tuple(identities)
        self.settings = {**SETTINGS, **(settings or {})}
        self.conf_path = self.data_dir / "ceph.conf"
        self.log_dir = self.data_dir / "log"
        self.rgw_port = 0
        self.mon_port = 0
        self.startup_seconds = 0.0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.rgw_port}"

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    def start(self, timeout: float = 90) -> None:
        """Make the cluster, start mon, OSD and radosgw, create the users; return once RGW answers them."""
        missing = missing_binaries()
        if missing:
            raise RgwUnavailable(
                f"Ceph RGW is not installed (missing {', '.join(missing)}); "
                "apt-get install -y ceph-mon ceph-osd radosgw"
            )
        began = time.monotonic()
        deadline = began + timeout
        try:
            self._make_cluster()
            self._spawn("mon", ["ceph-mon", "-f", "-i", "a"])
            self._spawn("osd", ["ceph-osd", "-f", "-i", "0"])
            self._spawn("rgw", ["radosgw", "-f", "-n", "client.rgw"])
            users = [self._user_create_command(identity) for identity in self.identities]
            self._run_parallel(users, deadline)
            self._wait_answering(deadline)
        except (OSError, subprocess.SubprocessError) as exc:
            self.stop()
            raise RgwUnavailable(f"Ceph RGW did not start (logs in {self.log_dir}): {exc}") from exc
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop radosgw, the OSD and the monitor, each by PID; SIGKILL what outlives STOP_GRACE."""
        # SIGKILL for the OSD: on SIGTERM memstore writes every object it holds to disk, for nothing.
        for name, signum in (("rgw", signal.SIGTERM), ("osd", signal.SIGKILL), ("mon", signal.SIGTERM)):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signum)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> RgwServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def ceph(self, *args: str, timeout: float = 60) -> None:
        """`ceph ARGS` against this cluster (e.g. `config set osd NAME VALUE`); raises when it fails."""
        subprocess.run(
            self._ceph_command(["ceph", *args]),
            check=True,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def admin_command(self, *args: str, timeout: float = 60) -> str:
        """`radosgw-admin ARGS` against this cluster; its stdout (JSON for most commands)."""
        result = subprocess.run(
            self._ceph_command(["radosgw-admin", "-n", "client.rgw", *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RgwUnavailable(f"radosgw-admin {' '.join(args[:2])} failed: {result.stderr.strip()[-500:]}")
        return result.stdout

    def create_user(self, identity: Identity) -> None:
        """Another RGW user (its own account: it owns its buckets and sees nobody else's)."""
        self.admin_command(*self._user_create_command(identity)[3:])

    def create_subuser(self, parent: Identity, identity: Identity, access: str) -> None:
        """S3 keys acting as `parent` with narrowed rights: access is read, write, readwrite or full.

        A `read` subuser may list and get parent's objects; PUTs and bucket changes answer AccessDenied.
        """
        self.admin_command(
            "subuser",
            "create",
            "--uid",
            parent.name,
            "--subuser",
            f"{parent.name}:{identity.name}",
            "--access",
            access,
            "--key-type",
            "s3",
            "--access-key",
            identity.access_key,
            "--secret-key",
            identity.secret_key,
        )

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.out"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- setting up

    def _make_cluster(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("run", "log", "mon/ceph-a", "osd/ceph-0"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self.mon_port, self.rgw_port = _free_port(), _free_port()
        fsid = str(uuid.uuid4())
        self._write_conf(fsid)
        monmap, osdmap = self.data_dir / "monmap", self.data_dir / "osdmap"
        self._run(
            [
                "monmaptool",
                "--create",
                "--clobber",
                "--fsid",
                fsid,
                "--addv",
                "a",
                f"[v2:{HOST}:{self.mon_port}]",
                str(monmap),
            ]
        )
        # The OSD goes into the first osdmap, so no `ceph osd create` round trip (a Python CLI) is needed.
        self._run(["osdmaptool", "--createsimple", "1", "--clobber", str(osdmap)])
        self._run(["ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap), "--osdmap", str(osdmap)])
        self._run(["ceph-osd", "-i", "0", "--mkfs", "--no-mon-config"])

    def _write_conf(self, fsid: str) -> None:
        root = self.data_dir
        lines = [
            "[global]",
            f"fsid = {fsid}",
            f"mon_host = v2:{HOST}:{self.mon_port}",
            f"run_dir = {root}/run",
            f"admin_socket = {root}/run/$name.$pid.asok",  # radosgw-admin runs beside radosgw
            f"log_file = {root}/log/$name.log",
            f"mon_data = {root}/mon/$cluster-$id",
            f"osd_data = {root}/osd/$cluster-$id",
            f"keyring = {root}/keyring",
            f"rgw_data = {root}/rgw",
            *(f"{key} = {value}" for key, value in self.settings.items()),
            "[client.rgw]",
            f"rgw_frontends = beast endpoint={HOST}:{self.rgw_port}",
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _ceph_command(self, command: list[str]) -> list[str]:
        return [command[0], "-c", str(self.conf_path), *command[1:]]

    def _user_create_command(self, identity: Identity) -> list[str]:
        return [
            "radosgw-admin",
            "-n",
            "client.rgw",
            "user",
            "create",
            "--uid",
            identity.name,
            "--display-name",
            identity.name,
            "--access-key",
            identity.access_key,
            "--secret-key",
            identity.secret_key,
        ]

    def _run(self, command: list[str], timeout: float = 60) -> None:
        result = subprocess.run(
            self._ceph_command(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.data_dir,
        )
        if result.returncode != 0:
            raise RgwUnavailable(
                f"{command[0]} exited {result.returncode} while making the cluster: "
                f"{(result.stderr or result.stdout).strip()[-500:]}"
            )

    def _run_parallel(self, commands: list[list[str]], deadline: float) -> None:
        procs = [
            subprocess.Popen(
                self._ceph_command(c),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.data_dir,
            )
            for c in commands
        ]
        failures = []
        for command, proc in zip(commands, procs, strict=True):
            try:
                _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"{' '.join(command[:5])}: {err.decode(errors='replace').strip()[-300:]}")
        if failures:
            raise RgwUnavailable("; ".join(failures))

    def _spawn(self, name: str, command: list[str]) -> None:
        with open(self.log_dir / f"{name}.out", "ab") as out:
            self._procs[name] = subprocess.Popen(
                self._ceph_command(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )

    def _wait_answering(self, deadline: float) -> None:
        """Up means: a ListBuckets signed by the first identity gets 200 (so its user exists, too)."""
        identity = self.identities[0]
        status = 0
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RgwUnavailable(
                        f"{name} exited with code {proc.returncode} while starting "
                        f"(logs in {self.log_dir}): {self.log_tail(name, 3)}"
                    )
            status = _signed_list_buckets(self.rgw_port, identity)
            if status == 200:
                return
            time.sleep(0.05)
        raise RgwUnavailable(
            f"RGW did not answer on {self.endpoint_url} in time (last status {status or 'none'})"
        )
