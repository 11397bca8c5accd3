"""structlog, set up once: JSON lines (journald, tests) or a console view, always on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
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
_PLAIN_KEYS: set[str] = set()  # field names seen and found harmless (the code's own, a bounded set)


def _drop_secrets(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Belt and braces: no field that looks like a credential ever reaches a log line."""
    if _PLAIN_KEYS.issuperset(event_dict):
        return event_dict  # the usual case: one set operation, not a lower() per field per record
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "***"
        elif len(_PLAIN_KEYS) < 4096:
            _PLAIN_KEYS.add(key)
    return event_dict


_second: list[tuple[int, str]] = [(-1, "")]  # the last whole second stamped and its text, swapped as one


def _timestamp(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """`timestamp` as structlog's TimeStamper(fmt="iso", utc=True) writes it (2026-12-03T15:49:12.123456Z,
    no fraction at .000000), formatting the date and time once per second instead of once per record."""
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    stamped, text = _second[0]
    if second != stamped:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second[0] = (second, text)
    event_dict["timestamp"] = f"{text}.{micro:06d}Z" if micro else f"{text}Z"
    return event_dict


def _below_threshold(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    if _METHOD_LEVELS.get(method, logging.INFO) < _threshold[0]:
        raise structlog.DropEvent
    return event_dict


def _fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer writes for a value JSON has no type for: __structlog__(), or repr."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


_JSON = json.JSONEncoder(default=_fallback)  # json.dumps's settings, built once instead of per record


def _render_json(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    """structlog's JSONRenderer(sort_keys=False) without json.dumps building an encoder per record."""
    return _JSON.encode(event_dict)


def resolve_format(fmt: str) -> str:
    if fmt == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return fmt


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """(Re)configure the process's structlog; safe to call again on reload."""
    fmt = resolve_format(fmt)
    console = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()) if fmt != "json" else None
    renderer: Any = console or _render_json
    _threshold[0] = LEVELS[level]
    _chain[:] = [
        _below_threshold,
        structlog.processors.add_log_level,
        _timestamp,
        _drop_secrets,
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=_chain,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context) if context else structlog.get_logger()
