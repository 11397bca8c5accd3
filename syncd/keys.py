"""Map a file's path inside the watched folder to its S3 key and back.

A key is ``prefix + relative POSIX path``. Names that S3 and B2 can hold map verbatim (spaces, ``%``,
``+``, ``#``, ``?``, any Unicode; NFC and NFD spellings stay distinct, nothing is normalised). Only these are
escaped, each *byte* as ``‛`` (U+201B SINGLE HIGH-REVERSED-9 QUOTATION MARK) and two uppercase hex digits:

- bytes that are not valid UTF-8 (Linux names are bytes; ``os.fsencode`` keeps them): ``\\xff`` -> ``‛FF``
- control characters U+0000-U+001F and DEL U+007F (B2 rejects them): newline -> ``‛0A``
- backslash (B2 rejects it): ``\\`` -> ``‛5C``
- the escape character itself, byte by byte: ``‛`` -> ``‛E2‛80‛9B``

This is the form rclone's lib/encoder uses for invalid UTF-8, applied uniformly; rclone's look-alike
substitutes (``␊``, ``＼``) are avoided because they are valid names themselves and would need quoting too.
Since a literal ``‛`` never appears unescaped, decoding is unambiguous, and `decode_key` accepts only the
canonical form (``re-encode == key``), so every path has exactly one key and every key at most one path.
"""  # noqa: RUF002

from __future__ import annotations

import os
import re
from functools import lru_cache

ESCAPE = "\u201b"
MAX_KEY_BYTES = 1024  # S3 and B2 limit on the UTF-8 length of a key

# Characters escaped even though they are valid UTF-8.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f\\\\" + ESCAPE + "]")
_ESCAPED_BYTE = re.compile(ESCAPE + "([0-9A-F]{2})")


class KeyTooLong(ValueError):
    """The key would exceed S3's 1024-byte limit; the file cannot be stored under its name."""

    def __init__(self, rel: bytes, length: int) -> None:
        self.rel = rel
        self.length = length
        super().__init__(
            f"the key for {os.fsdecode(rel)!r} would be {length} bytes, over the {MAX_KEY_BYTES}-byte "
            "limit of S3 keys; shorten the path"
        )


def normalize_prefix(raw: str) -> str:
    """The prefix as a folder: "host1" -> "host1/", "" -> "", leading "/" dropped; ValueError if unsafe."""
    stripped = raw.lstrip("/")
    if not stripped:
        return ""
    body = stripped.removesuffix("/")
    for segment in body.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"prefix {raw!r} has an empty, '.' or '..' segment; use a path like 'host1'")
        if _FORBIDDEN.search(segment) or _has_surrogate(segment):
            raise ValueError(
                f"prefix {raw!r} contains a control character, a backslash or {ESCAPE!r}; "
                "use printable characters only"
            )
    prefix = body + "/"
    if len(prefix.encode()) >= MAX_KEY_BYTES:
        raise ValueError(f"prefix {raw!r} leaves no room for file names in a {MAX_KEY_BYTES}-byte key")
    return prefix


def encode_key(prefix: str, rel: bytes) -> str:
    """The key for a relative path (os.fsencode'd); ValueError if it is not a plain relative path."""
    _check_prefix(prefix)
    _check_rel(rel)
    try:
        text = rel.decode("utf-8")
    except UnicodeDecodeError:
        encoded = _escape(rel)
    else:
        encoded = _escape(rel) if _FORBIDDEN.search(text) else text
    key = prefix + encoded
    length = len(key.encode("utf-8"))
    if length > MAX_KEY_BYTES:
        raise KeyTooLong(rel, length)
    return key


def key_for_path(prefix: str, rel: str) -> str:
    """encode_key for a str path as Python gives it (os.fsdecode'd, surrogateescape)."""
    return encode_key(prefix, os.fsencode(rel))


def decode_key(prefix: str, key: str) -> bytes | None:
    """The relative path (bytes) a key stands for; None if it is outside the prefix or not a key we write."""
    _check_prefix(prefix)
    if not key.startswith(prefix):
        return None
    encoded = key[len(prefix) :]
    try:
        rel = b"".join(_unescape_parts(encoded)) if ESCAPE in encoded else encoded.encode("utf-8")
        if encode_key(prefix, rel) != key:
            return None  # not canonical: an escaped "A", a raw control character, "a//b", "../x", ...
    except ValueError:  # also UnicodeEncodeError (lone surrogates) and KeyTooLong
        return None
    return rel


def rel_path_for_key(prefix: str, key: str) -> str | None:
    """decode_key as a str path (os.fsdecode'd), for restore and version listings."""
    rel = decode_key(prefix, key)
    return None if rel is None else os.fsdecode(rel)


def _escape(rel: bytes) -> str:
    """Escape invalid UTF-8 and forbidden characters; everything else stays as it is."""
    out = []
    for char in rel.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, carried by surrogateescape
            out.append(f"{ESCAPE}{code - 0xDC00:02X}")
        elif _FORBIDDEN.match(char):
            out.extend(f"{ESCAPE}{byte:02X}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)


def _unescape_parts(encoded: str) -> list[bytes]:
    parts = []
    pos = 0
    for match in _ESCAPED_BYTE.finditer(encoded):
        parts.append(encoded[pos : match.start()].encode("utf-8"))
        parts.append(bytes((int(match.group(1), 16),)))
        pos = match.end()
    parts.append(encoded[pos:].encode("utf-8"))
    return parts  # a stray ESCAPE stays in the text; the canonical check in decode_key rejects it


def _check_rel(rel: bytes) -> None:
    """Nothing may map outside the prefix: no absolute paths, no empty, '.' or '..' segments, no NUL."""
    if not rel or b"\0" in rel or any(segment in (b"", b".", b"..") for segment in rel.split(b"/")):
        raise ValueError(f"not a plain relative path: {os.fsdecode(rel)!r}")


@lru_cache(maxsize=16)
def _check_prefix(prefix: str) -> None:
    if normalize_prefix(prefix) != prefix:
        raise ValueError(f"prefix {prefix!r} is not normalized; pass it through normalize_prefix()")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
