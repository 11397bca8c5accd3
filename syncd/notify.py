"""sd_notify without libsystemd: READY, STATUS, RELOADING, STOPPING, WATCHDOG, EXTEND_TIMEOUT_USEC.

The protocol is one datagram of "KEY=value" lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or
"@name" for the abstract namespace). Notification is a courtesy to the service manager, so nothing here ever
raises, and it never blocks the event loop: the socket is non-blocking and a datagram the manager cannot take
right now is dropped (STATUS and WATCHDOG are sent again on the next heartbeat anyway).
"""

from __future__ import annotations

import os
import socket
import time

from syncd.log import get_logger

log = get_logger()


def _address(path: str) -> str | None:
    """The connect() address for $NOTIFY_SOCKET: '@name' is in the abstract namespace."""
    if path.startswith("@") and len(path) > 1:
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None  # e.g. "vsock:..." (systemd >= 254 in VMs): not for a service on this host


def _clean(value: str | int) -> str:
    """One value per line: a newline inside STATUS would start a bogus field."""
    return str(value).replace("\n", " ").replace("\r", " ")


class Notifier:
    """Talks to the service manager through $NOTIFY_SOCKET; every method is a no-op when it is unset."""

    def __init__(self, socket_path: str | None = None) -> None:
        """socket_path: defaults to $NOTIFY_SOCKET; "" turns notification off."""
        path = os.environ.get("NOTIFY_SOCKET", "") if socket_path is None else socket_path
        self._address = _address(path) if path else None
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> None:
        """Send fields as one datagram ("KEY=value" lines); one reconnect on error, then give up quietly."""
        if self._address is None or not fields:
            return
        text = "".join(f"{key}={_clean(value)}\n" for key, value in fields.items())
        message = text.encode("utf-8", "backslashreplace")  # a path with undecodable bytes stays valid UTF-8
        for attempt in (1, 2):
            try:
                self._socket(self._address).send(message)
            except OSError as exc:
                self._close()  # the manager may have re-created its socket (daemon-reexec): connect again
                if attempt == 2:
                    if not self._failing:
                        log.debug("notify_failed", socket=self._printable(), reason=str(exc))
                    self._failing = True
            else:
                self._failing = False
                return

    def ready(self, status: str | None = None) -> None:
        if status is None:
            self.send(READY=1)
        else:
            self.send(READY=1, STATUS=status)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def reloading(self) -> None:
        """Reload started; READY=1 ends it. Type=notify-reload (systemd >= 253) requires MONOTONIC_USEC."""
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.send(STOPPING=1)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more (counted from now) before the start, stop or reload job times out."""
        self.send(EXTEND_TIMEOUT_USEC=max(1, int(seconds * 1_000_000)))

    def close(self) -> None:
        self._close()

    def _socket(self, address: str) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _printable(self) -> str:
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when no watchdog is meant for us."""
    raw = os.environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # the variable was inherited from a parent that is the watched process
        except ValueError:
            return None
    return usec / 2 / 1_000_000


__all__ = ["Notifier", "watchdog_interval"]
