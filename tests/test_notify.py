"""sd_notify: the exact datagrams on a socket the test owns, the no-op case, and watchdog_interval()."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from syncd.notify import Notifier, watchdog_interval


class Receiver:
    """The service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def next(self) -> bytes:
        return self.sock.recv(65536)

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        try:
            extra = self.sock.recv(65536)
        except BlockingIOError:
            return
        finally:
            self.sock.settimeout(5)
        pytest.fail(f"unexpected datagram {extra!r}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, Receiver]]:
    path = str(tmp_path / "notify")
    receiver = Receiver(path)
    yield path, receiver
    receiver.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, Receiver]]:
    name = f"syncd-test-{uuid.uuid4().hex}"
    receiver = Receiver("\0" + name)
    yield "@" + name, receiver
    receiver.close()


@pytest.fixture
def debug_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog records at every level, whatever an earlier test configured."""
    old = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**old)


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_every_message_is_one_exact_datagram(
    kind: str, path_socket: tuple[str, Receiver], abstract_socket: tuple[str, Receiver]
) -> None:
    address, receiver = path_socket if kind == "path" else abstract_socket
    notifier = Notifier(address)
    assert notifier.enabled

    notifier.ready()
    assert receiver.next() == b"READY=1\n"
    notifier.ready("watching /srv/data: 0 owed")
    assert receiver.next() == b"READY=1\nSTATUS=watching /srv/data: 0 owed\n"
    notifier.status("waiting for S3 (EndpointConnectionError)")
    assert receiver.next() == b"STATUS=waiting for S3 (EndpointConnectionError)\n"
    notifier.watchdog()
    assert receiver.next() == b"WATCHDOG=1\n"
    notifier.stopping()
    assert receiver.next() == b"STOPPING=1\n"
    notifier.extend_timeout(120)
    assert receiver.next() == b"EXTEND_TIMEOUT_USEC=120000000\n"
    notifier.extend_timeout(1.5)
    assert receiver.next() == b"EXTEND_TIMEOUT_USEC=1500000\n"
    notifier.send(ERRNO=5, BUSERROR="org.example.Failed")
    assert receiver.next() == b"ERRNO=5\nBUSERROR=org.example.Failed\n"

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = receiver.next().decode().splitlines()
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].split("=", 1)[1]) <= after
    assert len(lines) == 2

    receiver.assert_empty()
    notifier.close()


def test_default_is_notify_socket(path_socket: tuple[str, Receiver], monkeypatch: pytest.MonkeyPatch) -> None:
    address, receiver = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    Notifier().ready()
    assert receiver.next() == b"READY=1\n"


def test_a_newline_cannot_start_another_field(path_socket: tuple[str, Receiver]) -> None:
    address, receiver = path_socket
    Notifier(address).status("two\nREADY=1")
    assert receiver.next() == b"STATUS=two READY=1\n"


def test_undecodable_path_in_status_stays_utf8(path_socket: tuple[str, Receiver]) -> None:
    address, receiver = path_socket
    name = os.fsdecode(b"/srv/caf\xe9")  # a surrogate escape, as os.listdir returns for non-UTF-8 names
    Notifier(address).status(f"watching {name}")
    message = receiver.next()
    message.decode("utf-8")  # systemd drops a STATUS that is not valid UTF-8
    assert message == b"STATUS=watching /srv/caf\\udce9\n"


def test_no_socket_means_no_op(monkeypatch: pytest.MonkeyPatch, path_socket: tuple[str, Receiver]) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("x")
    notifier.reloading()
    notifier.stopping()
    notifier.watchdog()
    notifier.extend_timeout(10)
    notifier.close()

    # "" turns it off even under systemd (syncd once must not claim to be the service).
    address, receiver = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    off = Notifier(socket_path="")
    assert not off.enabled
    off.ready()
    receiver.assert_empty()


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_unsupported_addresses_are_ignored(value: str) -> None:
    notifier = Notifier(value)
    assert not notifier.enabled
    notifier.ready()


def test_missing_socket_never_raises_and_logs_once(
    tmp_path: Path, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    path = str(tmp_path / "not-there")
    notifier = Notifier(path)
    for _ in range(3):
        notifier.watchdog()
    failures = [r for r in debug_logs if r["event"] == "notify_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "debug"
    assert failures[0]["socket"] == path

    # The socket appears (the manager came back): the next message gets through.
    receiver = Receiver(path)
    try:
        notifier.ready()
        assert receiver.next() == b"READY=1\n"
    finally:
        receiver.close()


def test_reconnects_when_the_manager_recreates_its_socket(path_socket: tuple[str, Receiver]) -> None:
    address, receiver = path_socket
    notifier = Notifier(address)
    notifier.status("one")
    assert receiver.next() == b"STATUS=one\n"

    # daemon-reexec: the old socket goes away and a new one is bound at the same path.
    receiver.close()
    os.unlink(address)
    again = Receiver(address)
    try:
        notifier.status("two")
        assert again.next() == b"STATUS=two\n"
        again.assert_empty()
    finally:
        again.close()


@pytest.mark.timeout(30)
def test_a_full_socket_never_blocks(
    path_socket: tuple[str, Receiver], debug_logs: list[MutableMapping[str, Any]]
) -> None:
    address, receiver = path_socket
    notifier = Notifier(address)
    started = time.monotonic()
    for _ in range(5000):  # nobody reads: the receive queue fills up after a few hundred
        notifier.status("x" * 200)
    assert time.monotonic() - started < 10
    assert len([r for r in debug_logs if r["event"] == "notify_failed"]) == 1
    assert receiver.next() == b"STATUS=" + b"x" * 200 + b"\n"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("60000000", None, 30.0),
        ("60000000", "self", 30.0),
        ("60000000", "other", None),
        ("60000000", "garbage", None),
        ("1000000", None, 0.5),
        ("0", None, None),
        ("-5", None, None),
        ("", None, None),
        ("60s", None, None),
    ],
)
def test_watchdog_interval(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        elif value == "self":
            monkeypatch.setenv(name, str(os.getpid()))
        elif value == "other":
            monkeypatch.setenv(name, str(os.getpid() + 1))
        else:
            monkeypatch.setenv(name, value)
    assert watchdog_interval() == expected
