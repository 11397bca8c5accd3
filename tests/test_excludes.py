"""Exclude patterns: the gitignore subset documented in syncd/excludes.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.excludes import DEFAULT_EXCLUDES, Excludes

# (patterns, path, is_dir, excluded)
CASES = [
    # no "/": the name at any depth, files and directories
    (["*.log"], "a.log", False, True),
    (["*.log"], "deep/er/a.log", False, True),
    (["*.log"], "a.log.txt", False, False),
    (["*.log"], "logs", True, False),
    (["node_modules"], "node_modules", True, True),
    (["node_modules"], "web/node_modules", True, True),
    (["node_modules"], "web/node_modules/x/index.js", False, True),  # below an excluded directory
    (["node_modules"], "web/node_modules.txt", False, False),
    (["node_modules"], "node_modules", False, True),  # a file of that name too
    # leading or middle "/": anchored to the folder root
    (["/build"], "build", True, True),
    (["/build"], "build/out.o", False, True),
    (["/build"], "src/build", True, False),
    (["/build"], "src/build/out.o", False, False),
    (["docs/*.tmp"], "docs/a.tmp", False, True),
    (["docs/*.tmp"], "x/docs/a.tmp", False, False),
    (["docs/*.tmp"], "docs/sub/a.tmp", False, False),
    # trailing "/": directories only
    (["cache/"], "cache", True, True),
    (["cache/"], "cache", False, False),
    (["cache/"], "a/cache/x.bin", False, True),
    (["cache/"], "a/cache", False, False),
    (["/tmp/"], "tmp/x", False, True),
    (["/tmp/"], "a/tmp/x", False, False),
    # "**"
    (["**/tmp"], "tmp", True, True),
    (["**/tmp"], "a/b/tmp", False, True),
    (["**/tmp"], "a/b/tmp/c", False, True),
    (["**/tmp"], "a/b/tmpx", False, False),
    (["logs/**"], "logs", True, False),
    (["logs/**"], "logs/a", False, True),
    (["logs/**"], "logs/a/b/c", False, True),
    (["logs/**"], "x/logs/a", False, False),
    (["a/**/b"], "a/b", False, True),
    (["a/**/b"], "a/x/b", False, True),
    (["a/**/b"], "a/x/y/z/b", False, True),
    (["a/**/b"], "a/x/bb", False, False),
    (["a/**/b"], "x/a/b", False, False),
    (["a/**/**/b"], "a/x/y/b", False, True),
    (["**"], "anything/at/all", False, True),
    (["a**b"], "aXYb", False, True),  # not a whole segment: an ordinary "*"
    (["a**b"], "a/b", False, False),
    # "*" and "?" never match "/"
    (["a*b"], "a/b", False, False),
    (["/a*"], "abc", False, True),
    (["/a*"], "a/b", False, True),  # via the directory "a"
    (["/a*/c"], "ab/c", False, True),
    (["/a*/c"], "a/b/c", False, False),
    (["a?c"], "abc", False, True),
    (["a?c"], "a/c", False, False),
    (["x/a?c"], "x/a/c", False, False),
    (["a?c"], "ac", False, False),
    # classes
    (["[abc].txt"], "b.txt", False, True),
    (["[abc].txt"], "d.txt", False, False),
    (["[a-c]1"], "b1", False, True),
    (["[a-c]1"], "-1", False, False),
    (["[!a-c]1"], "d1", False, True),
    (["[^a-c]1"], "a1", False, False),
    (["x/[!a]"], "x/b", False, True),
    (["[-a]x"], "-x", False, True),
    (["[a-]x"], "-x", False, True),
    (["[]]x"], "]x", False, True),
    (["[a\\-c]x"], "-x", False, True),
    (["[a\\-c]x"], "bx", False, False),
    # escapes and literal specials
    (["\\*.txt"], "*.txt", False, True),
    (["\\*.txt"], "a.txt", False, False),
    (["\\!important"], "!important", False, True),
    (["#*#"], "#notes.org#", False, True),
    (["a+b(c).txt"], "a+b(c).txt", False, True),
    (["a+b(c).txt"], "aab(c).txt", False, False),
    (["$x^"], "$x^", False, True),
    # matching is case-sensitive
    (["*.JPG"], "a.jpg", False, False),
    # negation: last match wins; an excluded directory cannot be re-entered
    (["*.log", "!keep.log"], "keep.log", False, False),
    (["*.log", "!keep.log"], "a/keep.log", False, False),
    (["*.log", "!keep.log"], "other.log", False, True),
    (["*.log", "!keep.log", "keep.log"], "keep.log", False, True),
    (["!keep.log", "*.log"], "keep.log", False, True),
    (["build/", "!build/keep.txt"], "build/keep.txt", False, True),
    (["logs/**", "!logs/keep"], "logs/keep", False, False),
    (["logs/**", "!logs/keep"], "logs/drop", False, True),
    (["/*", "!/src"], "src/a.py", False, False),
    (["/*", "!/src"], "README", False, True),
    (["!cache/"], "cache/x", False, False),
    (["cache", "!cache/"], "cache", True, False),
    (["cache", "!cache/"], "cache", False, True),
    # nothing configured, nothing excluded
    ([], "a.swp", False, False),
]


@pytest.mark.parametrize(("patterns", "rel", "is_dir", "expected"), CASES)
def test_rules(patterns: list[str], rel: str, is_dir: bool, expected: bool) -> None:
    ex = Excludes(patterns, use_defaults=False)
    assert ex.excluded(rel, is_dir=is_dir) is expected
    if is_dir:
        assert ex.excluded_dir(rel) is expected


@pytest.mark.parametrize(
    "rel",
    [
        ".notes.txt.swp",
        "a/b.swp",
        "draft.swx",
        "report.txt~",
        ".#report.txt",
        "Downloads/big.iso.part",
        "Downloads/big.iso.crdownload",
        "~$budget.xlsx",
        "docs/.syncd-restore-4242-0123456789ab",
    ],
)
def test_defaults(rel: str) -> None:
    assert Excludes([]).excluded(rel)
    assert not Excludes([], use_defaults=False).excluded(rel)


@pytest.mark.parametrize(
    "rel", [".git/config", ".git/objects/ab/cdef", "notes.txt", "swp", "a.part.txt", "x~y", "#x#"]
)
def test_defaults_leave_ordinary_files(rel: str) -> None:
    assert not Excludes([]).excluded(rel)


def test_user_patterns_come_after_defaults() -> None:
    ex = Excludes(["!keep.swp", "*.bak"])
    assert ex.patterns == (*DEFAULT_EXCLUDES, "!keep.swp", "*.bak")
    assert not ex.excluded("keep.swp")
    assert ex.excluded("other.swp")
    assert ex.excluded("x.bak")


def test_directory_pruning() -> None:
    ex = Excludes(["node_modules", "/build/", "*.tmp"], use_defaults=False)
    assert ex.excluded_dir("node_modules")
    assert ex.excluded_dir("a/node_modules")
    assert ex.excluded_dir("a/node_modules/b")  # below a pruned directory
    assert ex.excluded_dir("build")
    assert not ex.excluded_dir("src/build")
    assert ex.excluded_dir("x.tmp")
    assert not ex.excluded_dir("src")
    assert not ex.excluded_dir("")
    # a file path asked after its directory was pruned gives the same answer (watcher events)
    assert ex.excluded("a/node_modules/b/c.js")
    assert not ex.excluded("src/build/c.js")


def test_cache_does_not_change_answers() -> None:
    ex = Excludes(["/a/b/"], use_defaults=False)
    for _ in range(2):
        assert ex.excluded_dir("a/b")
        assert not ex.excluded_dir("a")
        assert ex.excluded("a/b/c")
        assert not ex.excluded("a/c")


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("!", "empty"),
        ("/", "empty"),
        ("[abc", "unbalanced"),
        ("a/[b", "unbalanced"),
        ("[!", "unbalanced"),
        ("[]", "unbalanced"),
        ("a[/]b", "unbalanced"),
        ("abc\\", "backslash"),
        ("[z-a]", "range"),
        ("[[:alpha:]]", "named classes"),
        ("a//b", "segment"),
        ("a/../b", "segment"),
        ("./a", "segment"),
    ],
)
def test_invalid_patterns(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        Excludes(["*.ok", pattern])
    assert repr(pattern) in str(info.value)


# Names without glob syntax, escapes or a leading "!".
literal_names = st.text(
    st.characters(min_codepoint=32, exclude_categories=["Cs"], exclude_characters="/\\*?[]!\x7f"),
    min_size=1,
    max_size=12,
).filter(lambda s: s.strip() and s not in (".", ".."))
components = st.text(
    st.characters(min_codepoint=32, exclude_categories=["Cs"], exclude_characters="/"), min_size=1, max_size=8
)


@given(literal_names, st.lists(components, max_size=4), st.booleans())
def test_literal_pattern_matches_that_name_at_any_depth(name: str, dirs: list[str], is_dir: bool) -> None:
    ex = Excludes([name], use_defaults=False)
    assert ex.excluded("/".join([*dirs, name]), is_dir=is_dir)


@given(literal_names, st.lists(components, min_size=1, max_size=5))
def test_literal_pattern_matches_nothing_else(name: str, parts: list[str]) -> None:
    ex = Excludes([name], use_defaults=False)
    assert ex.excluded("/".join(parts)) is (name in parts)
