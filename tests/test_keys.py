"""Key mapping: verbatim where possible, reversible always, never outside the prefix."""

from __future__ import annotations

import os
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.keys import (
    ESCAPE,
    MAX_KEY_BYTES,
    KeyTooLong,
    decode_key,
    encode_key,
    key_for_path,
    normalize_prefix,
    rel_path_for_key,
)

FORBIDDEN_CHARS = "".join(map(chr, range(32))) + "\x7f\\" + ESCAPE

# Arbitrary bytes, or realistic text, per path component.
raw_component = (
    st.binary(min_size=1, max_size=24)
    .map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))
    .filter(lambda b: b not in (b".", b".."))
)
text_component = (
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/\0"), min_size=1, max_size=24)
    .map(lambda s: s.encode("utf-8"))
    .filter(lambda b: b not in (b".", b".."))
)
rel_paths = st.lists(st.one_of(raw_component, text_component), min_size=1, max_size=5).map(b"/".join)
clean_names = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/" + FORBIDDEN_CHARS),
    min_size=1,
    max_size=40,
).filter(lambda s: s not in (".", ".."))
prefixes = st.sampled_from(["", "host1/", "a/b/", "é/日本 x/"])


@given(prefixes, rel_paths)
def test_round_trip(prefix: str, rel: bytes) -> None:
    key = encode_key(prefix, rel)
    assert decode_key(prefix, key) == rel
    assert rel_path_for_key(prefix, key) == os.fsdecode(rel)


@given(prefixes, rel_paths)
def test_keys_are_clean_utf8_under_the_prefix(prefix: str, rel: bytes) -> None:
    key = encode_key(prefix, rel)
    key.encode("utf-8")  # no lone surrogates
    assert key.startswith(prefix)
    assert not any(c in key[len(prefix) :].replace(ESCAPE, "") for c in FORBIDDEN_CHARS)
    assert [p for p in key[len(prefix) :].split("/") if p in ("", ".", "..")] == []


@given(prefixes, rel_paths, rel_paths)
def test_distinct_paths_get_distinct_keys(prefix: str, a: bytes, b: bytes) -> None:
    if a != b:
        assert encode_key(prefix, a) != encode_key(prefix, b)


@given(prefixes, st.lists(clean_names, min_size=1, max_size=4).map("/".join))
def test_clean_names_map_verbatim(prefix: str, rel: str) -> None:
    assert key_for_path(prefix, rel) == prefix + rel


key_like = st.text(st.one_of(st.characters(), st.sampled_from([ESCAPE, "0", "9", "A", "F", "a", "/", "."])))


@given(prefixes, key_like)
def test_decode_accepts_only_what_encode_produces(prefix: str, key: str) -> None:
    rel = decode_key(prefix, prefix + key)
    if rel is not None:
        assert encode_key(prefix, rel) == prefix + key


@pytest.mark.parametrize(
    "name",
    [
        "my file.txt",
        "100%.txt",
        "a+b.txt",
        "#1.txt",
        "why?.txt",
        "50% off #1 + what?.pdf",
        "~$doc.docx",
        "日本語",
    ],
)
def test_common_specials_are_verbatim(name: str) -> None:
    assert key_for_path("host1/", f"dir/{name}") == f"host1/dir/{name}"


def test_nfc_and_nfd_stay_distinct() -> None:
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    assert nfc != nfd
    assert key_for_path("", nfc) == nfc
    assert key_for_path("", nfd) == nfd
    assert rel_path_for_key("", nfd) == nfd


@pytest.mark.parametrize(
    ("rel", "key"),
    [
        (b"a\xffb", "p/a\u201bFFb"),
        (b"line\nbreak", "p/line\u201b0Abreak"),
        (b"tab\there", "p/tab\u201b09here"),
        (b"del\x7f", "p/del\u201b7F"),
        (b"back\\slash", "p/back\u201b5Cslash"),
        ("quote\u201b".encode(), "p/quote\u201bE2\u201b80\u201b9B"),
        (b"\xed\xa0\x80", "p/\u201bED\u201bA0\u201b80"),  # an encoded surrogate is not valid UTF-8
        (b"caf\xe9/\xc3\xa9", "p/caf\u201bE9/é"),  # Latin-1 name next to a UTF-8 one
    ],
)
def test_escapes(rel: bytes, key: str) -> None:
    assert encode_key("p/", rel) == key
    assert decode_key("p/", key) == rel


def test_str_paths_use_surrogateescape() -> None:
    rel = os.fsdecode(b"dir/\xff.bin")
    key = key_for_path("p/", rel)
    assert key == "p/dir/\u201bFF.bin"
    assert rel_path_for_key("p/", key) == rel


@pytest.mark.parametrize(
    "key",
    [
        "other/a.txt",  # outside the prefix
        "p/",  # the prefix itself, or a folder marker
        "p/dir/",
        "p/a//b",
        "p/../etc/passwd",
        "p/./a",
        "p//a",
        "p/a\u201b",  # truncated escape
        "p/a\u201b4",
        "p/a\u201bzz",
        "p/a\u201bff",  # lowercase is not what we write
        "p/\u201b41",  # "A" needs no escape: two keys must not mean one path
        "p/a\u201b2Fb",  # an escaped "/" would hide a separator
        "p/a\u201b00",  # NUL
        "p/a\nb",  # raw control character
        "p/a\\b",
        "p/\ud800",  # lone surrogate
    ],
)
def test_decode_rejects(key: str) -> None:
    assert decode_key("p/", key) is None
    assert rel_path_for_key("p/", key) is None


def test_empty_prefix_decodes_everything_valid() -> None:
    assert decode_key("", "a/b c") == b"a/b c"
    assert decode_key("", "/a") is None


@pytest.mark.parametrize(
    "rel", [b"", b"/abs", b"a/", b"a//b", b".", b"..", b"a/../b", b"./a", b"a/.", b"a\0b"]
)
def test_encode_rejects_paths_that_could_escape(rel: bytes) -> None:
    with pytest.raises(ValueError, match="not a plain relative path"):
        encode_key("p/", rel)


def test_unnormalized_prefix_is_a_bug_not_a_miss() -> None:
    with pytest.raises(ValueError, match="not normalized"):
        encode_key("host1", b"a")
    with pytest.raises(ValueError, match="not normalized"):
        decode_key("host1", "host1/a")


def test_key_length_limit() -> None:
    assert len(encode_key("", b"a" * MAX_KEY_BYTES)) == MAX_KEY_BYTES
    with pytest.raises(KeyTooLong, match="1025 bytes") as info:
        encode_key("", b"a" * (MAX_KEY_BYTES + 1))
    assert info.value.length == MAX_KEY_BYTES + 1
    assert isinstance(info.value, ValueError)
    with pytest.raises(KeyTooLong):
        encode_key("p/", b"a" * (MAX_KEY_BYTES - 1))
    with pytest.raises(KeyTooLong):  # 205 escaped bytes, 5 UTF-8 bytes each
        encode_key("", b"\xff" * 205)
    assert len(encode_key("", "é".encode() * 512).encode()) == MAX_KEY_BYTES
    with pytest.raises(KeyTooLong):
        key_for_path("", "é" * 512 + "x")


@pytest.mark.parametrize(
    ("raw", "prefix"),
    [
        ("", ""),
        ("/", ""),
        ("host1", "host1/"),
        ("host1/", "host1/"),
        ("/host1", "host1/"),
        ("a/b/", "a/b/"),
        ("/a/b", "a/b/"),
        ("backups/my laptop", "backups/my laptop/"),
        ("100%+#?", "100%+#?/"),
        ("日本", "日本/"),
    ],
)
def test_normalize_prefix(raw: str, prefix: str) -> None:
    assert normalize_prefix(raw) == prefix
    assert normalize_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "raw",
    ["a//b", "a/../b", "..", "../x", "./a", "a/.", "a//", "tab\there", "back\\slash", "x\u201by", "a\x7f"],
)
def test_normalize_prefix_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        normalize_prefix(raw)


def test_normalize_prefix_rejects_a_prefix_that_fills_the_key() -> None:
    with pytest.raises(ValueError, match="no room"):
        normalize_prefix("a" * MAX_KEY_BYTES)
