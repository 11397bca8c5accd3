"""YAML -> one frozen, validated Config. Every error names the file and the key, and says how to fix it."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from syncd.errors import ConfigError
from syncd.excludes import Excludes
from syncd.keys import normalize_prefix

DEFAULT_CONFIG = "/etc/syncd/config.yaml"
MiB = 1024 * 1024  # the one definition (files.py, uploader.py and the size defaults use it)

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class S3Settings:
    """How to reach the server; credentials come only from the standard AWS chain.

    Here rather than in s3.py so that reading the config (and starting the CLI) imports no AWS library.
    """

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    checksum: str = "when_required"
    # Seconds one request may take in all, plus one per MIN_BANDWIDTH bytes of its body (client.py).
    request_timeout: float = 130.0


@dataclass(frozen=True)
class LogSettings:
    format: str  # "json" | "console"
    level: str  # "debug" | "info" | "warning" | "error"


@dataclass(frozen=True)
class MetricsSettings:
    listen: str | None = None  # "127.0.0.1:9464"; None = no endpoint


@dataclass(frozen=True)
class ObjectLockSettings:
    """`object_lock`: every version syncd writes is locked in `mode` until at least now + `retain`."""

    mode: str  # "governance" | "compliance"
    retain: float  # seconds


@dataclass(frozen=True)
class Config:
    """Everything syncd needs, validated once; the rest of the code gets the parts it uses."""

    path: Path
    folder: Path
    bucket: str
    prefix: str
    s3: S3Settings
    workers: int = 256
    upload_processes: int = 1
    settle: float = 0.5
    stop_timeout: float = 20.0
    state_dir: Path = Path("/var/lib/syncd")
    log: LogSettings = field(default_factory=lambda: LogSettings("json", "info"))
    rescan_interval: float = 900.0
    max_delay: float = 600.0
    ignore_inode: bool = False
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    max_inflight: int = 64 * MiB
    bandwidth_limit: int | None = None
    follow_symlinks: bool = False
    exclude: tuple[str, ...] = ()
    default_excludes: bool = True
    on_delete: str = "keep"
    delete_guard_percent: float = 50.0
    delete_guard_files: int = 1000
    delete_guard_window: float = 3600.0  # seconds over which deletions add up against the guard
    folder_grace: float = 600.0  # seconds the folder may be unavailable before an error record (hourly)
    keep_versions_days: int | None = None
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    object_lock: ObjectLockSettings | None = None

    @property
    def identity(self) -> str:
        """What one state belongs to: another server, bucket, prefix or folder must not reuse it."""
        return "\n".join([self.s3.endpoint_url or "aws", self.bucket, self.prefix, str(self.folder)])

    @property
    def state_file(self) -> Path:
        digest = hashlib.sha256(self.identity.encode()).hexdigest()[:16]
        return self.state_dir / f"state-{digest}.db"

    def excludes(self) -> Excludes:
        return Excludes(self.exclude, use_defaults=self.default_excludes)


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a string with a unit ("500ms", "15m", "2h")."""
    return _parse_quantity(value, where, _DURATION, float)


def parse_size(value: Any, where: str) -> int:
    """Bytes from a number or a string with a unit ("64MiB", "100MB", "1.5GiB")."""
    return int(_parse_quantity(value, where, _SIZE, int))


@dataclass(frozen=True)
class _Quantity:
    name: str
    units: Mapping[str, float]
    bare_unit: str  # what a number without a unit means
    example: str
    unit_names: str


_DURATION = _Quantity(
    "time", _DURATION_UNITS, "s", "a duration like 30, '500ms' or '15m'", "ms, s, m, h or d"
)
_SIZE = _Quantity(
    "size", _SIZE_UNITS, "", "a size like 1048576, '64MiB' or '100MB'", "KiB, MiB, GiB, KB, MB or GB"
)


def _parse_quantity(value: Any, where: str, kind: _Quantity, number: type[int] | type[float]) -> float:
    """A number, or a number and a unit; the ConfigError names `where` and what would be accepted."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected {kind.example}, got {value!r}")
    if isinstance(value, int | float):
        amount = number(value)
    elif isinstance(value, str) and (match := _NUMBER_UNIT.match(value)):
        unit = match.group(2).lower() or kind.bare_unit
        if unit not in kind.units:
            raise ConfigError(
                f"{where}: unknown {kind.name} unit {match.group(2)!r} in {value!r}; use {kind.unit_names}"
            )
        amount = number(float(match.group(1)) * kind.units[unit])
    else:
        raise ConfigError(f"{where}: expected {kind.example}, got {value!r}")
    if amount < 0:
        raise ConfigError(f"{where}: must not be negative, got {value!r}")
    return amount


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd), /var/lib/syncd for root, else the XDG state home."""
    from_systemd = os.environ.get("STATE_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/syncd")
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "syncd"


# Every key the config may hold, per section: unknown keys (typos) are reported before anything else,
# since a misspelt key otherwise shows up as a confusing "missing required key" or as a silent default.
KEYS: dict[str, frozenset[str]] = {
    "": frozenset(
        {
            "folder", "bucket", "prefix", "s3", "workers", "upload_processes", "settle", "max_delay",
            "stop_timeout", "state_dir", "rescan_interval", "ignore_inode", "multipart_threshold",
            "multipart_chunksize", "max_inflight", "bandwidth_limit", "follow_symlinks", "exclude",
            "default_excludes", "on_delete", "delete_guard", "keep_versions_days", "log", "metrics",
            "object_lock", "folder_grace",
        }
    ),
    "delete_guard.": frozenset({"limit", "window"}),
    "s3.": frozenset({"endpoint_url", "region", "profile", "checksum", "request_timeout"}),
    "log.": frozenset({"format", "level"}),
    "metrics.": frozenset({"listen"}),
    "object_lock.": frozenset({"mode", "retain"}),
}  # fmt: skip


def _check_keys(data: Mapping[str, Any], file: Path) -> None:
    """All unknown keys in one line, each with the valid key it most looks like."""
    unknown = []
    for section, known in KEYS.items():
        mapping = data.get(section[:-1]) if section else data
        if not isinstance(mapping, Mapping):
            continue  # a section that is no mapping is reported when it is read
        for key in sorted(str(k) for k in mapping if k not in known):
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            unknown.append(f"{section}{key}" + (f" (did you mean {section}{close[0]}?)" if close else ""))
    if unknown:
        noun = "unknown key" if len(unknown) == 1 else "unknown keys"
        raise ConfigError(f"{file}: {noun} {', '.join(unknown)}; see config.example.yaml for the valid keys")


class _Reader:
    """Reads one mapping of the config; each message names the file and the key."""

    def __init__(self, data: Mapping[str, Any], file: Path, section: str = "") -> None:
        self.data = data
        self.file = file
        self.section = section

    def where(self, key: str) -> str:
        return f"{self.file}: {self.section}{key}"

    def get(self, key: str, default: Any = None) -> Any:
        assert key in KEYS[self.section], f"{self.section}{key} is missing from config.KEYS"
        value = self.data.get(key, default)
        return default if value is None else value

    def required(self, key: str, hint: str) -> Any:
        value = self.get(key)
        if value in (None, ""):
            raise ConfigError(f"{self.where(key)}: missing required key; {hint}")
        return value

    def str_(self, key: str, default: str | None = None) -> str | None:
        value = self.get(key, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{self.where(key)}: expected a string, got {value!r}")
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where(key)}: expected true or false, got {value!r}")
        return value

    def int_(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.where(key)}: expected a whole number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{self.where(key)}: must be at least {minimum}, got {value}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, default)
        if value not in choices:
            raise ConfigError(f"{self.where(key)}: must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def section_reader(self, key: str) -> _Reader:
        value = self.get(key, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.where(key)}: expected a mapping of keys, got {value!r}")
        return _Reader(value, self.file, f"{self.section}{key}.")


def load_config(path: str | os.PathLike[str], *, folder_must_exist: bool = True) -> Config:
    """Read and validate the config file; raise ConfigError naming the file and key on any problem.

    folder_must_exist=False is for commands that only read the state and the bucket (status, versions):
    they must work while the folder's disk is not mounted.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: config file not found; create it (see config.example.yaml) or pass -c FILE"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{file}:{line}: {problem}; fix the YAML syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file}: the config must be a mapping of keys (folder:, bucket:, ...)")
    return parse_config(data, file, folder_must_exist=folder_must_exist)


def parse_config(data: Mapping[str, Any], file: Path, *, folder_must_exist: bool = True) -> Config:
    _check_keys(data, file)
    top = _Reader(data, file)
    folder = _parse_folder(top, file, must_exist=folder_must_exist)
    bucket = _parse_bucket(top)
    raw_prefix = top.str_("prefix", "") or ""
    try:
        prefix = normalize_prefix(raw_prefix)
    except ValueError as exc:
        raise ConfigError(f"{top.where('prefix')}: {exc}") from None

    s3r = top.section_reader("s3")
    s3 = S3Settings(
        endpoint_url=s3r.str_("endpoint_url"),
        region=s3r.str_("region"),
        profile=s3r.str_("profile"),
        checksum=s3r.choice("checksum", "when_required", ("when_required", "when_supported")),
        request_timeout=parse_duration(s3r.get("request_timeout", "130s"), s3r.where("request_timeout")),
    )
    if s3.request_timeout < 1:
        raise ConfigError(
            f"{s3r.where('request_timeout')}: a request needs at least 1s, got {s3.request_timeout}s"
        )
    if s3.endpoint_url and not re.match(r"^https?://[^/\s]+", s3.endpoint_url):
        raise ConfigError(
            f"{s3r.where('endpoint_url')}: expected a URL like https://s3.us-west-004.backblazeb2.com, "
            f"got {s3.endpoint_url!r}"
        )

    logr = top.section_reader("log")
    log = LogSettings(
        format=logr.choice("format", "auto", ("json", "console", "auto")),
        level=logr.choice("level", "info", ("debug", "info", "warning", "error")),
    )

    metricsr = top.section_reader("metrics")
    metrics = MetricsSettings(listen=metricsr.str_("listen"))
    if metrics.listen and not re.match(r"^[\w.\-\[\]:]+:\d+$", metrics.listen):
        raise ConfigError(
            f"{metricsr.where('listen')}: expected HOST:PORT like 127.0.0.1:9464, got {metrics.listen!r}"
        )

    state_dir_raw = top.str_("state_dir")
    state_dir = Path(state_dir_raw).expanduser() if state_dir_raw else default_state_dir()

    exclude_raw = top.get("exclude", [])
    if not isinstance(exclude_raw, list) or not all(isinstance(p, str) for p in exclude_raw):
        raise ConfigError(f"{top.where('exclude')}: expected a list of glob patterns, got {exclude_raw!r}")
    default_excludes = top.bool_("default_excludes", True)
    try:
        Excludes(exclude_raw, use_defaults=default_excludes)
    except ValueError as exc:
        raise ConfigError(f"{top.where('exclude')}: {exc}") from None

    guard_percent, guard_files, guard_window = _parse_delete_guard_section(top)

    keep_days = top.get("keep_versions_days")
    if keep_days is not None and (
        isinstance(keep_days, bool) or not isinstance(keep_days, int) or keep_days < 1
    ):
        raise ConfigError(
            f"{top.where('keep_versions_days')}: expected a whole number of days >= 1, got {keep_days!r}"
        )

    bandwidth = top.get("bandwidth_limit")
    config = Config(
        path=file,
        folder=folder,
        bucket=bucket,
        prefix=prefix,
        s3=s3,
        workers=top.int_("workers", 256, minimum=1),
        upload_processes=top.int_("upload_processes", 1, minimum=1),
        settle=parse_duration(top.get("settle", 0.5), top.where("settle")),
        stop_timeout=parse_duration(top.get("stop_timeout", 20), top.where("stop_timeout")),
        state_dir=state_dir,
        log=log,
        rescan_interval=parse_duration(top.get("rescan_interval", "15m"), top.where("rescan_interval")),
        max_delay=parse_duration(top.get("max_delay", "10m"), top.where("max_delay")),
        ignore_inode=top.bool_("ignore_inode", False),
        multipart_threshold=parse_size(
            top.get("multipart_threshold", "64MiB"), top.where("multipart_threshold")
        ),
        multipart_chunksize=parse_size(
            top.get("multipart_chunksize", "16MiB"), top.where("multipart_chunksize")
        ),
        max_inflight=parse_size(top.get("max_inflight", "64MiB"), top.where("max_inflight")),
        bandwidth_limit=None if bandwidth is None else parse_size(bandwidth, top.where("bandwidth_limit")),
        follow_symlinks=top.bool_("follow_symlinks", False),
        exclude=tuple(exclude_raw),
        default_excludes=default_excludes,
        on_delete=top.choice("on_delete", "keep", ("keep", "delete")),
        delete_guard_percent=guard_percent,
        delete_guard_files=guard_files,
        delete_guard_window=guard_window,
        folder_grace=parse_duration(top.get("folder_grace", "10m"), top.where("folder_grace")),
        keep_versions_days=keep_days,
        metrics=metrics,
        object_lock=_parse_object_lock(top),
    )
    _check_ranges(config, top)
    return config


MIN_RETAIN = 10.0  # seconds: below this a lock would expire before the extension pass could renew it


def _parse_object_lock(top: _Reader) -> ObjectLockSettings | None:
    """Off unless the section is there; then both keys are required (a lock of unknown length is a guess)."""
    if top.get("object_lock") is None:
        return None
    section = top.section_reader("object_lock")
    section.required("mode", "set it to governance or compliance")
    mode = section.choice("mode", "", ("governance", "compliance"))
    raw = section.required("retain", "set how long each version stays locked, e.g. retain: 30d")
    retain = parse_duration(raw, section.where("retain"))
    if retain < MIN_RETAIN:
        raise ConfigError(
            f"{section.where('retain')}: at least {MIN_RETAIN:.0f}s, got {raw!r}; "
            "versions are locked for this long and renewed while current"
        )
    return ObjectLockSettings(mode=mode, retain=retain)


def _parse_folder(top: _Reader, file: Path, *, must_exist: bool = True) -> Path:
    raw = top.required("folder", "set it to the directory to back up, e.g. folder: /srv/data")
    if not isinstance(raw, str):
        raise ConfigError(f"{top.where('folder')}: expected a path, got {raw!r}")
    folder = Path(raw).expanduser()
    if not folder.is_absolute():
        folder = (file.parent / folder).resolve()
    if not folder.exists() and not must_exist:
        return folder.resolve()
    if not folder.exists():
        raise ConfigError(f"{top.where('folder')}: {folder} does not exist; create it or fix the path")
    if not folder.is_dir():
        raise ConfigError(f"{top.where('folder')}: {folder} is not a directory; point it at a directory")
    return folder.resolve()


def _parse_bucket(top: _Reader) -> str:
    bucket = top.required("bucket", "set it to the bucket name, e.g. bucket: acme-backups")
    if not isinstance(bucket, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        raise ConfigError(
            f"{top.where('bucket')}: {bucket!r} is not a valid bucket name "
            "(3-63 characters: lowercase letters, digits, '-' and '.')"
        )
    return bucket


def _parse_delete_guard_section(top: _Reader) -> tuple[float, int, float]:
    """`delete_guard: 50%` (or a number of files), or `delete_guard: {limit: 50%, window: 1h}`."""
    raw = top.get("delete_guard", "50%")
    if not isinstance(raw, Mapping):
        return (*_parse_delete_guard(raw, top.where("delete_guard")), 3600.0)
    section = top.section_reader("delete_guard")
    percent, files = _parse_delete_guard(section.get("limit", "50%"), section.where("limit"))
    window = parse_duration(section.get("window", "1h"), section.where("window"))
    if window <= 0:
        raise ConfigError(f"{section.where('window')}: must be more than 0, e.g. 1h")
    return percent, files, window


def _parse_delete_guard(value: Any, where: str) -> tuple[float, int]:
    """'50%' -> (50, 1000); 200 -> (100, 200): deletions beyond either bound are refused."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            raise ConfigError(
                f"{where}: expected a percentage like '50%' or a number of files, got {value!r}"
            ) from None
        if not 0 < percent <= 100:
            raise ConfigError(f"{where}: percentage must be between 0 and 100, got {value!r}")
        return percent, 1000
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return 100.0, value
    raise ConfigError(f"{where}: expected a percentage like '50%' or a number of files, got {value!r}")


def _check_ranges(config: Config, top: _Reader) -> None:
    if config.multipart_chunksize < 5 * MiB:
        raise ConfigError(f"{top.where('multipart_chunksize')}: S3 parts must be at least 5MiB")
    if config.multipart_threshold < 5 * MiB:
        raise ConfigError(f"{top.where('multipart_threshold')}: must be at least 5MiB (S3's smallest part)")
    if config.max_inflight < MiB:
        raise ConfigError(f"{top.where('max_inflight')}: must be at least 1MiB")
    if config.rescan_interval and config.rescan_interval < 1:
        raise ConfigError(
            f"{top.where('rescan_interval')}: must be at least 1s (or 0 to turn periodic rescans off)"
        )
    if config.workers > 512:
        raise ConfigError(f"{top.where('workers')}: at most 512, got {config.workers}")
    if config.upload_processes > 2:
        raise ConfigError(
            f"{top.where('upload_processes')}: 1 or 2 (one helper process for small PUTs), "
            f"got {config.upload_processes}"
        )
