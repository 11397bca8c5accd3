"""Print `name==version` pins for the oldest versions pyproject.toml's ranges allow (CI's second venv).

Without arguments: each direct dependency at its `>=` floor. With PACKAGE:DEPENDENCY arguments: that
dependency at the floor the installed PACKAGE allows it (botocore as the oldest aiobotocore takes it).
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REQUIREMENT = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*([^;]*)")


def floor(requirement: str) -> tuple[str, str | None]:
    """(name, the version after >=) of one requirement string."""
    match = REQUIREMENT.match(requirement)
    if match is None:
        raise SystemExit(f"cannot read requirement {requirement!r}")
    name, specifiers = match.group(1), match.group(2).strip().strip("()")
    found = [s.strip()[2:].strip() for s in specifiers.split(",") if s.strip().startswith(">=")]
    return name, (found[0] if found else None)


def main(args: list[str]) -> int:
    if not args:
        project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
        for requirement in project["project"]["dependencies"]:
            name, version = floor(requirement)
            if version is None:
                raise SystemExit(f"{requirement!r} has no floor: give it one (>=) so CI can prove it")
            print(f"{name}=={version}")
        return 0
    for arg in args:
        package, _, dependency = arg.partition(":")
        for requirement in metadata.requires(package) or []:
            name, version = floor(requirement)
            if name.lower() == dependency.lower() and version is not None and "extra ==" not in requirement:
                print(f"{name}=={version}")
                break
        else:
            raise SystemExit(f"{package} sets no floor for {dependency}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
