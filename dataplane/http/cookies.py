"""The request `Cookie` header, read the one way every part of the node reads it.

Sans-IO and clock-free; the only cookie parser of the node (auth token sources, session
affinity, grayscale rules and stickiness, consistent hashing on a cookie).

The rule (RFC 6265 section 5.4, as browsers send it, read leniently):

- Every `Cookie` field of the request counts, in order: HTTP/2 clients split the cookies
  into one field per pair (RFC 9113 8.2.3), HTTP/1.1 clients may send several lines.
- A field is split on `;`. In each pair the first `=` splits the name from the value, so
  a value may itself contain `=`. Spaces and tabs around the name and around the value are
  dropped (RFC 6265 allows them after `;`; some clients put them around `=` as well).
- A value in double quotes (`name="value"`, RFC 6265 4.1.1 `cookie-value`) has that one
  pair of quotes removed; nothing inside is unescaped (a backslash stays a backslash).
- A pair without `=` or with an empty name is skipped; so are the pairs after the first
  `MAX_PAIRS` of the request (browsers send far fewer: about 180 per site at most).
- Names are compared exactly (case-sensitive), and the first pair with the name wins
  (browsers send the cookie of the longest path first). Bytes are read as Latin-1, so
  no input makes a lookup raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

MAX_PAIRS = 1024
"""Pairs read per request; any after them are ignored (work stays bounded)."""

_OWS = b" \t"
_QUOTE = 0x22


def cookie_lines(headers: Iterable[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """The values of the `Cookie` fields among `headers` (any case of the name), in order."""
    for name, value in headers:
        if len(name) == 6 and name.lower() == b"cookie":
            yield value


def _pairs(lines: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(name, raw value) of each well-formed pair, at most MAX_PAIRS, quotes not yet removed."""
    left = MAX_PAIRS
    for line in lines:
        for part in line.split(b";"):
            name, sep, value = part.partition(b"=")
            if not sep:
                continue
            name = name.strip(_OWS)
            if not name:
                continue
            if left <= 0:
                return
            left -= 1
            yield name, value


def _unquote(raw: bytes) -> bytes:
    value = raw.strip(_OWS)
    if len(value) >= 2 and value[0] == _QUOTE and value[-1] == _QUOTE:
        return value[1:-1]
    return value


def parse_cookies(lines: Iterable[bytes]) -> list[tuple[str, str]]:
    """Every (name, value) pair of the `Cookie` field values `lines`, in order, duplicates kept."""
    return [(name.decode("latin-1"), _unquote(raw).decode("latin-1")) for name, raw in _pairs(lines)]


def find_cookie(lines: Iterable[bytes], name: str) -> str | None:
    """The value of the first cookie called `name` in the `Cookie` field values `lines`, or None."""
    try:
        key = name.encode("latin-1")
    except UnicodeEncodeError:
        return None  # no cookie name on the wire is spelled so
    for found, raw in _pairs(lines):
        if found == key:
            return _unquote(raw).decode("latin-1")
    return None


def request_cookie(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of cookie `name` in a request's header list (all its `Cookie` fields), or None."""
    return find_cookie(cookie_lines(headers), name)
