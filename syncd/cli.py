"""The command line: arguments, dispatch, exit codes and error lines.

What each subcommand does is in once.py (once, verify --repair), admin.py (status, versions, verify,
check), restore.py, daemon.py (run) and demo.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from syncd import __version__, heap
from syncd.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    ConfigError,
    SyncdError,
    first_syncd_error,
)

if TYPE_CHECKING:
    from syncd.config import Config

# Only light modules are imported here: the AWS libraries take a few hundred milliseconds to import, and
# they are imported inside main()'s try, so a Ctrl-C while syncd starts is an exit 130 and no traceback.


def build_parser() -> argparse.ArgumentParser:
    from syncd.config import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(
        prog="syncd",
        description="Keep a folder backed up to a private, versioned S3-compatible bucket.",
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c",
            "--config",
            default=None,
            metavar="FILE",
            help=f"config file (default: $SYNCD_CONFIG, then {DEFAULT_CONFIG})",
        )
        return p

    with_config(sub.add_parser("run", help="the daemon, in the foreground (what systemd runs)"))
    once = with_config(sub.add_parser("once", help="bring the bucket up to date with the folder, then exit"))
    once.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    once.add_argument(
        "--retry-for",
        default="10m",
        metavar="DURATION",
        help="how long to keep retrying while the server is unreachable (default 10m); then exit 75",
    )
    once.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    with_config(sub.add_parser("check", help="run every startup check; create, change or upload nothing"))
    with_config(sub.add_parser("status", help="what the daemon for this config is doing"))
    versions = with_config(sub.add_parser("versions", help="every version of one file in the bucket"))
    versions.add_argument("path", help="the file's path (absolute, or relative to the current directory)")
    restore = with_config(sub.add_parser("restore", help="get files back from the bucket"))
    restore.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to restore")
    when = restore.add_mutually_exclusive_group()
    when.add_argument("--version", dest="version_id", metavar="ID", help="this version of a single file")
    when.add_argument("--at", metavar="TIME", help="as it was at this time (ISO 8601, e.g. 2026-11-20T14:00)")
    restore.add_argument("--to", metavar="DEST", help="write here instead of the original place")
    restore.add_argument("--force", action="store_true", help="overwrite existing files")
    verify = with_config(sub.add_parser("verify", help="compare the bucket with the state and the folder"))
    verify.add_argument("--repair", action="store_true", help="upload what is missing or different")
    demo = sub.add_parser("demo", help="try syncd on a throwaway local SeaweedFS: no account, no config")
    demo.add_argument("--dir", metavar="DIR", help="where to keep the demo folder and server data")
    demo.add_argument(
        "--port", type=int, default=None, help="S3 port for the demo server (default: a free one)"
    )
    return parser


def entry() -> NoReturn:
    """The `syncd` command: main(), then exit without the interpreter's teardown.

    By then everything syncd opened is closed (state, client, helper, demo server) and every thread has
    ended; freeing botocore's models and the rest of the heap one object at a time took ~0.12 s of
    every `syncd once`.
    """
    heap.tune()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (`syncd versions ... | head`) has nowhere to flush to.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return dispatch(args)
    except KeyboardInterrupt:
        print("syncd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:
        return report(exc)


def default_config_path() -> str:
    from syncd.config import DEFAULT_CONFIG

    return os.environ.get("SYNCD_CONFIG") or DEFAULT_CONFIG


def load(args: argparse.Namespace) -> Config:
    from syncd.config import load_config
    from syncd.log import configure_logging

    reads_only = args.command in ("status", "versions")  # these work while the folder is not mounted
    config = load_config(args.config or default_config_path(), folder_must_exist=not reads_only)
    configure_logging(config.log.format, config.log.level)
    return config


def dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand; the AWS libraries are imported here, inside main()'s try."""
    import asyncio

    command = args.command
    if command == "demo":
        from syncd.demo import run_demo

        return run_demo(args.dir, args.port)
    config = load(args)
    if command == "run":
        from syncd.daemon import Daemon

        asyncio.run(Daemon(config).main())
        return EXIT_OK
    if command == "once":
        from syncd.config import parse_duration
        from syncd.once import run_once

        retry_for = parse_duration(args.retry_for, "--retry-for")
        progress = sys.stdout.isatty() and not args.no_progress and not args.dry_run
        return asyncio.run(run_once(config, dry_run=args.dry_run, retry_for=retry_for, progress=progress))
    if command == "verify" and args.repair:
        from syncd.once import verify_repair

        return asyncio.run(verify_repair(config))
    if command == "restore":
        from syncd.restore import restore

        return asyncio.run(
            restore(config, args.paths, version_id=args.version_id, at=args.at, to=args.to, force=args.force)
        )
    from syncd import admin

    if command == "check":
        return asyncio.run(admin.check(config))
    if command == "status":
        return admin.status(config)
    if command == "versions":
        return asyncio.run(admin.versions(config, args.path))
    if command == "verify":
        return asyncio.run(admin.verify(config))
    raise ConfigError(f"unknown command {command!r}")


def report(exc: BaseException) -> int:
    """One stderr line for anything the user can fix; a traceback only for our own bugs."""
    user_error = first_syncd_error(exc) or _credentials_refused(exc)
    if user_error is not None:
        print(f"syncd: error: {user_error}", file=sys.stderr)
        return user_error.exit_code
    if isinstance(exc, SystemExit):
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    import asyncio

    if _contains(exc, KeyboardInterrupt) or _contains(exc, asyncio.CancelledError):
        print("syncd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if _contains(exc, BrokenPipeError):  # the reader went away (`| head`): no error of ours to report
        return EXIT_PIPE_CLOSED
    print(f"syncd: internal error: {type(exc).__name__}: {exc} (please report this)", file=sys.stderr)
    if os.environ.get("SYNCD_DEBUG"):
        traceback.print_exception(exc)
    return EXIT_INTERNAL


def _credentials_refused(exc: BaseException) -> SyncdError | None:
    """A server's refusal of the keys that no command turned into a CredentialsError itself (exit 4)."""
    if "botocore" not in sys.modules:  # no S3 request was made
        return None
    from syncd.s3.client import ErrorKind, classify, credentials_error

    if isinstance(exc, BaseExceptionGroup):
        return next(filter(None, (_credentials_refused(inner) for inner in exc.exceptions)), None)
    if isinstance(exc, Exception) and classify(exc) is ErrorKind.CREDENTIALS:
        return credentials_error(exc)
    return None


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, kind):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains(inner, kind) for inner in exc.exceptions)
    return False


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
