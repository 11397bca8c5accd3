"""An optional Prometheus endpoint (`metrics.listen`): what was uploaded, what is owed, whether S3 answers.

prometheus-client is an optional dependency (`pip install 'syncd[metrics]'`). Each Metrics has its own
registry, so several can live in one process (tests), and nothing from other libraries leaks into it. The
endpoint is prometheus-client's HTTP server in a daemon thread: a scrape never waits for the event loop.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from syncd.errors import ConfigError
from syncd.log import get_logger

log = get_logger()
INSTALL_HINT = "metrics.listen needs prometheus-client: pip install 'syncd[metrics]'"


class MetricsSink(Protocol):
    """What the daemon reports; Metrics exports it, NullMetrics drops it."""

    def uploaded(self, size: int) -> None: ...
    def copied(self) -> None: ...
    def failed(self) -> None: ...
    def retried(self) -> None: ...
    def set_owed(self, n: int) -> None: ...
    def set_last_success(self, ts: float) -> None: ...
    def set_s3_up(self, up: bool) -> None: ...
    def set_locks(self, locked: int, earliest: float | None) -> None: ...
    def start(self, listen: str) -> None: ...
    def stop(self) -> None: ...


class NullMetrics:
    """Metrics off: every call does nothing."""

    def uploaded(self, size: int) -> None:
        pass

    def copied(self) -> None:
        pass

    def failed(self) -> None:
        pass

    def retried(self) -> None:
        pass

    def set_owed(self, n: int) -> None:
        pass

    def set_last_success(self, ts: float) -> None:
        pass

    def set_s3_up(self, up: bool) -> None:
        pass

    def set_locks(self, locked: int, earliest: float | None) -> None:
        pass

    def start(self, listen: str) -> None:
        pass

    def stop(self) -> None:
        pass


class Metrics:
    """The syncd_* metrics in a registry of their own, served on HOST:PORT by start()."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError(INSTALL_HINT) from None
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self._uploads = prom.Counter("syncd_uploads", "Files uploaded as a new version", registry=r)
        self._bytes = prom.Counter("syncd_uploaded_bytes", "Bytes uploaded", registry=r)
        self._copies = prom.Counter(
            "syncd_copies", "New versions made by a server-side copy of identical bytes", registry=r
        )
        self._failures = prom.Counter(
            "syncd_upload_failures", "Files that could not be uploaded (failed or skipped)", registry=r
        )
        self._retries = prom.Counter(
            "syncd_retries", "S3 requests retried after a transient error", registry=r
        )
        self._owed = prom.Gauge("syncd_owed_files", "Files changed locally and not uploaded yet", registry=r)
        self._last_success = prom.Gauge(
            "syncd_last_success_timestamp_seconds",
            "Unix time a file was last brought up to date in the bucket",
            registry=r,
        )
        self._s3_up = prom.Gauge("syncd_s3_up", "1 while the S3 server answers, else 0", registry=r)
        self._locked = prom.Gauge(
            "syncd_locked_current_versions", "Current versions under an Object Lock (object_lock)", registry=r
        )
        self._lock_earliest = prom.Gauge(
            "syncd_lock_earliest_retain_until_timestamp_seconds",
            "Unix time the earliest Object Lock of a current version ends (0: none locked)",
            registry=r,
        )
        prom.ProcessCollector(registry=r)  # memory, CPU and open files of the daemon
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def uploaded(self, size: int) -> None:
        self._uploads.inc()
        self._bytes.inc(size)

    def copied(self) -> None:
        self._copies.inc()

    def failed(self) -> None:
        self._failures.inc()

    def retried(self) -> None:
        self._retries.inc()

    def set_owed(self, n: int) -> None:
        self._owed.set(n)

    def set_last_success(self, ts: float) -> None:
        self._last_success.set(ts)

    def set_s3_up(self, up: bool) -> None:
        self._s3_up.set(1 if up else 0)

    def set_locks(self, locked: int, earliest: float | None) -> None:
        self._locked.set(locked)
        self._lock_earliest.set(earliest or 0)

    def start(self, listen: str) -> None:
        """Serve /metrics on HOST:PORT ("[::1]:9464" for IPv6); ConfigError when it cannot listen."""
        from prometheus_client import start_http_server

        self.stop()
        host, port = parse_listen(listen)
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"metrics.listen {listen}: cannot listen there: {exc.strerror or exc}"
            ) from None
        log.info("metrics_listening", listen=listen)

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port); brackets around an IPv6 host are dropped."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"metrics.listen: expected HOST:PORT like 127.0.0.1:9464, got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def metrics_for(listen: str | None) -> MetricsSink:
    """A started Metrics when `listen` is set (ConfigError without prometheus-client), else NullMetrics."""
    if not listen:
        return NullMetrics()
    metrics = Metrics()
    metrics.start(listen)
    return metrics


__all__ = ["Metrics", "MetricsSink", "NullMetrics", "metrics_for", "parse_listen"]
