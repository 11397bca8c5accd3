"""Exclude patterns: a gitignore subset, compiled once into regexes because every file of a walk is checked.

Not pathspec's GitIgnoreSpec (measured in this step): with the same directory cache on top it matched a
100k-file tree 2-2.5x slower, and it differs in 5 of tests/test_excludes.py's cases (``#`` starts a comment
there, ``[a\\-c]`` is a range, ``logs/**`` also matches ``logs`` itself) and accepts patterns we reject.

Rules (paths are POSIX, relative to the folder, case-sensitive):

- ``*.log``, ``node_modules``: a pattern without a "/" matches the name at any depth.
- ``/build``, ``docs/*.tmp``: a "/" at the start or in the middle anchors the pattern to the folder root.
- ``cache/``: a trailing "/" matches directories only.
- ``*`` and ``?`` match within one name (never "/"); ``[abc]``, ``[a-z]``, ``[!abc]`` match one character.
- ``**/tmp`` (any depth), ``logs/**`` (everything inside logs), ``a/**/b`` (zero or more directories between).
- A directory that matches excludes everything below it; a later pattern cannot re-include a file in it.
- ``!pattern`` re-includes what an earlier pattern excluded; the last matching pattern wins.
- ``\\`` escapes the next character (``\\!important``, ``\\*``). There are no comments or whitespace rules:
  patterns come from a YAML list, so ``#*#`` (Emacs autosaves) is a plain pattern.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Editor swap/backup and browser/downloader partial files: never a user's finished data, always rewritten.
# Nothing else is excluded unless configured (`.git` is backed up like any other folder).
DEFAULT_EXCLUDES = (
    "*.swp",  # vim swap (also .name.swp)
    "*.swx",  # vim, briefly, while it picks a swap file name
    "*~",  # emacs, vim, gedit backups
    ".#*",  # emacs lock links
    "*.part",  # firefox, wget2 and others while downloading
    "*.crdownload",  # chrome while downloading
    "~$*",  # Microsoft Office owner/lock files
    ".syncd-restore-*",  # syncd restore's own temp files, renamed into place once checked
)

_DIR_CACHE_LIMIT = 65536


class _Matcher:
    """One regex for patterns that look at the name only, one for patterns that look at the whole path."""

    def __init__(self, name_res: list[str], path_res: list[str]) -> None:
        self.name = re.compile("|".join(name_res)) if name_res else None
        self.path = re.compile("|".join(path_res)) if path_res else None

    def matches(self, rel: str, name: str) -> bool:
        return bool(
            (self.name is not None and self.name.fullmatch(name))
            or (self.path is not None and self.path.fullmatch(rel))
        )


@dataclass
class _Group:
    """Consecutive patterns of one polarity; the last group that matches decides."""

    negated: bool
    files: _Matcher
    dirs: _Matcher


@dataclass(frozen=True)
class _Pattern:
    negated: bool
    dir_only: bool
    by_name: bool  # no "/" in the pattern: matched against the last path component
    regex: str


class Excludes:
    """Decides which paths below the folder are left out of the backup."""

    def __init__(self, patterns: Sequence[str], use_defaults: bool = True) -> None:
        """patterns: user patterns, applied after DEFAULT_EXCLUDES (so they can re-include with "!")."""
        self.patterns: tuple[str, ...] = (*(DEFAULT_EXCLUDES if use_defaults else ()), *patterns)
        self._groups = _compile_groups([_parse(p) for p in self.patterns])
        self._dirs: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"Excludes({list(self.patterns)!r}, use_defaults=False)"

    def excluded(self, rel: str, is_dir: bool = False) -> bool:
        """True if this path, or a directory above it, is excluded."""
        if not self._groups or not rel:
            return False
        if is_dir:
            return self.excluded_dir(rel)
        parent, _, name = rel.rpartition("/")
        if parent and self.excluded_dir(parent):
            return True
        return self._decide(rel, name, is_dir=False)

    def excluded_dir(self, rel: str) -> bool:
        """True if the walker should not descend into this directory (cached: files ask for their parent)."""
        if not self._groups or not rel:
            return False
        cached = self._dirs.get(rel)
        if cached is not None:
            return cached
        parent, _, name = rel.rpartition("/")
        result = bool(parent and self.excluded_dir(parent)) or self._decide(rel, name, is_dir=True)
        if len(self._dirs) >= _DIR_CACHE_LIMIT:
            self._dirs.clear()
        self._dirs[rel] = result
        return result

    def _decide(self, rel: str, name: str, is_dir: bool) -> bool:
        for group in reversed(self._groups):
            if (group.dirs if is_dir else group.files).matches(rel, name):
                return not group.negated
        return False


def _compile_groups(patterns: list[_Pattern]) -> list[_Group]:
    runs: list[list[_Pattern]] = []
    for pattern in patterns:
        if runs and runs[-1][0].negated == pattern.negated:
            runs[-1].append(pattern)
        else:
            runs.append([pattern])
    return [
        _Group(negated=run[0].negated, files=_matcher([p for p in run if not p.dir_only]), dirs=_matcher(run))
        for run in runs
    ]


def _matcher(patterns: list[_Pattern]) -> _Matcher:
    return _Matcher([p.regex for p in patterns if p.by_name], [p.regex for p in patterns if not p.by_name])


def _parse(raw: str) -> _Pattern:
    """One pattern -> its regex; ValueError naming the pattern when it can never be meant as written."""
    text = raw
    negated = text.startswith("!")
    if negated:
        text = text[1:]
    anchored = text.startswith("/")
    text = text.lstrip("/") if anchored else text
    dir_only = text.endswith("/")
    text = text[:-1] if dir_only else text
    if not text.strip():
        raise ValueError(f"exclude pattern {raw!r} is empty")
    segments = text.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"exclude pattern {raw!r} has an empty, '.' or '..' segment: it never matches")
    try:
        if len(segments) == 1 and not anchored:
            regex = _segment_regex(segments[0])
            by_name = True
        else:
            regex = _path_regex(segments)
            by_name = False
        re.compile(regex)
    except (ValueError, re.error) as exc:
        raise ValueError(f"exclude pattern {raw!r}: {exc}") from None
    return _Pattern(negated=negated, dir_only=dir_only, by_name=by_name, regex=f"(?:{regex})")


def _path_regex(segments: list[str]) -> str:
    parts = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == "**":
            if i > 0 and segments[i - 1] == "**":
                continue  # "a/**/**/b" is "a/**/b"
            parts.append(".+" if i == last else "(?:[^/]+/)*")
        else:
            parts.append(_segment_regex(segment) + ("" if i == last else "/"))
    return "".join(parts)


def _segment_regex(segment: str) -> str:
    """Glob within one path component: * ? [class] and backslash escapes; nothing matches "/"."""
    out = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            while i + 1 < len(segment) and segment[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            cls, i = _class_regex(segment, i)
            out.append(cls)
            continue
        elif char == "\\":
            if i + 1 == len(segment):
                raise ValueError("a trailing backslash escapes nothing")
            i += 1
            out.append(re.escape(segment[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _class_regex(segment: str, start: int) -> tuple[str, int]:
    """A [...] class starting at segment[start]; returns its regex and the index after the closing "]"."""
    i = start + 1
    negated = i < len(segment) and segment[i] in "!^"
    if negated:
        i += 1
    items: list[str] = []
    first = True
    while i < len(segment) and (segment[i] != "]" or first):
        first = False
        char = segment[i]
        if segment.startswith("[:", i):
            raise ValueError("named classes like [:alpha:] are not supported; list the characters")
        escaped = char == "\\"
        if escaped:
            i += 1
            if i == len(segment):
                break
            char = segment[i]
        is_range = char == "-" and not escaped and items and segment[i + 1 : i + 2] not in ("", "]")
        items.append("-" if is_range else re.escape(char))
        i += 1
    if i >= len(segment):
        raise ValueError("unbalanced '[' (write '\\[' for a literal bracket)")
    return ("[^/" if negated else "[") + "".join(items) + "]", i + 1
