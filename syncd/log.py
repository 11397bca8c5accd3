"""structlog, set up once: JSON lines (journald, tests) or a console view, always on stderr."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_METHOD_LEVELS = {**LEVELS, "warn": logging.WARNING, "exception": logging.ERROR, "critical": logging.CRITICAL}
# The processor chain, changed in place by configure_logging: loggers are cached at first use (a fresh
# bind per call cost a few percent of the CPU of a small upload), so a reload must reach them this way.
_chain: list[Any] = []
_threshold = [logging.INFO]
_SECRET_KEYS = frozenset({"aws_secret_access_key", "secret_key", "secret", "password", "authorization"})


def _drop_secrets(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Belt and braces: no field that looks like a credential ever reaches a log line."""
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "***"
    return event_dict


def _below_threshold(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    if _METHOD_LEVELS.get(method, logging.INFO) < _threshold[0]:
        raise structlog.DropEvent
    return event_dict


def resolve_format(fmt: str) -> str:
    if fmt == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return fmt


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """(Re)configure the process's structlog; safe to call again on reload."""
    fmt = resolve_format(fmt)
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    _threshold[0] = LEVELS[level]
    _chain[:] = [
        _below_threshold,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _drop_secrets,
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=_chain,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context) if context else structlog.get_logger()
