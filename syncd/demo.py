"""`syncd demo`: a throwaway local SeaweedFS and a demo folder, synced live. No account, no config."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
from pathlib import Path

import yaml

from syncd.config import load_config
from syncd.errors import EXIT_OK
from syncd.log import configure_logging

DEMO_BUCKET = "syncd-demo"


def run_demo(directory: str | None, port: int | None) -> int:
    from syncd.daemon import Daemon
    from syncd.seaweed import Identity, SeaweedServer

    base = (
        Path(directory).expanduser().resolve() if directory else Path(tempfile.mkdtemp(prefix="syncd-demo-"))
    )
    folder = base / "folder"
    folder.mkdir(parents=True, exist_ok=True)
    (base / "server").mkdir(exist_ok=True)
    identity = Identity("demo", "DEMO" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24))
    server = SeaweedServer(base / "server", [identity], s3_port=port)
    print(f"syncd demo: starting a local SeaweedFS in {base / 'server'} ...", flush=True)
    server.start()
    if not server.isolated:
        print(
            "syncd demo: WARNING: SeaweedFS's filer, master and volume APIs are unauthenticated and any "
            f"local user can reach them, because {server.isolation_problem}",
            file=sys.stderr,
            flush=True,
        )
    try:
        config_path = base / "config.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "folder": str(folder),
                    "bucket": DEMO_BUCKET,
                    "s3": {"endpoint_url": server.endpoint_url, "region": "us-east-1"},
                    "state_dir": str(base / "state"),
                    "log": {"format": "console", "level": "info"},
                },
                sort_keys=False,
            )
        )
        sample = folder / "hello.txt"
        if not sample.exists():
            sample.write_text("Hello from syncd. Edit me, or drop more files into this folder.\n")
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(var, None)
        os.environ["AWS_ACCESS_KEY_ID"] = identity.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = identity.secret_key
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        creds = base / "credentials"
        creds.write_text(
            "[default]\n"
            f"aws_access_key_id = {identity.access_key}\n"
            f"aws_secret_access_key = {identity.secret_key}\n"
        )
        creds.chmod(0o600)
        me = sys.argv[0] if os.path.basename(sys.argv[0]) == "syncd" else "syncd"
        print(
            f"""
  folder:    {folder}
             drop or edit files here; each change is uploaded within about a second
  bucket:    {DEMO_BUCKET} at {server.endpoint_url} (private, versioned)
             only this S3 port is open, and only to signed requests; the server's other APIs
             are in a network namespace of their own ({"on" if server.isolated else "OFF, see above"})
  config:    {config_path}
  look at it (in another terminal):
    export AWS_SHARED_CREDENTIALS_FILE={creds}
    {me} versions -c {config_path} {sample}
    {me} restore -c {config_path} {sample} --to {base / "restored-hello.txt"}
        (add --version ID from `versions`, or --at TIME, for an older version)
    {me} status -c {config_path}
    aws --endpoint-url {server.endpoint_url} s3 ls --recursive s3://{DEMO_BUCKET}/   (if awscli is installed)
  Ctrl-C stops syncd and the server.
""",
            flush=True,
        )
        config = load_config(config_path)
        configure_logging(config.log.format, config.log.level)
        asyncio.run(Daemon(config).main())
    except KeyboardInterrupt:
        pass
    finally:
        print("syncd demo: stopping the server ...", file=sys.stderr, flush=True)
        server.stop()
        print(f"syncd demo: stopped; the demo files stay in {base}", file=sys.stderr)
    return EXIT_OK
