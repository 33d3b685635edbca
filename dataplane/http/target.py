"""Sans-IO request-target normalisation: what routing and policies judge is what goes upstream.

What this module owns
---------------------
One canonical spelling of a request path and of a Host value, computed once
per request before routing. The proxy matches routes, runs policies and sends
upstream the normalised path, so `/admin`, `//admin`, `/./admin`,
`/x/../admin`, `/%61dmin` and `/%2e/admin` are one resource to every part of
the node, and a policy on `/admin` cannot be walked around by spelling.

Path rules (RFC 3986 6.2.2, in this order)
------------------------------------------
1. Percent-encodings are decoded when they stand for an unreserved character
   (``A-Z a-z 0-9 - . _ ~``); every other encoding is kept, in upper-case hex.
   A malformed encoding (``%G1``, a lone ``%``) is refused.
2. An encoded slash or backslash (``%2F``, ``%5C``) and a raw backslash
   depend on the listener's ``escaped_slashes``: ``reject`` (default: 400),
   ``keep`` (kept encoded as ``%2F`` / ``%5C``, never a segment separator) or
   ``unescape`` (each becomes ``/``).
3. Control bytes, raw or encoded (``%00``-``%1F``, ``%7F``), are refused.
   Characters a path may not hold raw (``" < > ^ ` { | }`` and bytes above
   0x7F) are percent-encoded, so the raw and the encoded spelling agree.
4. Repeated slashes are merged (``merge_slashes``, default on), then dot
   segments are removed (RFC 3986 5.2.4): ``/a/./b/../c`` is ``/a/c``, a
   ``..`` above the root is dropped, and a trailing ``/.`` or ``/..`` leaves
   a trailing slash.

The query string is not changed. A fragment (``#``) is refused: it has no
place in a request target (RFC 9112 3.2).

Hosts compare lower case, without a trailing dot or a port. A Host that is
not ``host[:port]`` (reg-name, IPv4 or ``[IPv6]``; no userinfo, no spaces) is
refused.

What it must not do
-------------------
No I/O, no clock, no logging; nothing but `re` from the standard library.
Plain paths (the common case) cost one regular-expression match and two
substring tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "DEFAULT_RULES",
    "ESCAPED_SLASHES",
    "PathRules",
    "TargetError",
    "canonical_route_path",
    "host_key",
    "normalize_path",
]

ESCAPED_SLASHES = ("reject", "keep", "unescape")


class TargetError(ValueError):
    """A request target or Host the node refuses (400)."""


@dataclass(frozen=True, slots=True)
class PathRules:
    """A listener's `path_normalization` settings."""

    merge_slashes: bool = True
    escaped_slashes: str = "reject"  # reject | keep | unescape

    def __post_init__(self) -> None:
        if self.escaped_slashes not in ESCAPED_SLASHES:
            raise ValueError(f"escaped_slashes must be one of {', '.join(ESCAPED_SLASHES)}")


DEFAULT_RULES = PathRules()

# Paths made of these characters only, with no "//" and no "/." in them, are already canonical.
_PLAIN = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What a path segment may hold raw besides unreserved characters (RFC 3986 pchar, plus "/").
_RAW_OK = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_HEX = frozenset("0123456789abcdefABCDEF")


def normalize_path(path: str, rules: PathRules = DEFAULT_RULES) -> str:
    """The canonical form of an origin-form `path` (no query), or TargetError.

    `path` is the request path as received, decoded as latin-1 (one character per byte).
    """
    if _PLAIN.fullmatch(path) is not None and "//" not in path and "/." not in path:
        return path
    if not path.startswith("/"):
        raise TargetError("the request path must start with '/'")
    return _remove_dot_segments(_decode(path, rules), rules.merge_slashes)


def _decode(path: str, rules: PathRules) -> str:
    out: list[str] = []
    append = out.append
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == "%":
            hx = path[i + 1 : i + 3]
            if len(hx) != 2 or hx[0] not in _HEX or hx[1] not in _HEX:
                raise TargetError("bad percent-encoding in the request path")
            code = int(hx, 16)
            ch = chr(code)
            if ch in _UNRESERVED:
                append(ch)
            elif code < 0x20 or code == 0x7F:
                raise TargetError("an encoded control character (NUL, CR, LF, ...) in the request path")
            elif ch == "/" or ch == "\\":
                append(_escaped_slash(ch, rules))
            else:
                append("%" + hx.upper())
            i += 3
            continue
        if c in _RAW_OK:
            append(c)
        elif c == "\\":
            append(_escaped_slash(c, rules))
        elif c == "#":
            raise TargetError("a fragment ('#') in the request target")
        else:
            code = ord(c)
            if code < 0x20 or code == 0x7F:
                raise TargetError("a control character in the request path")
            append(f"%{code:02X}")  # not allowed raw: its encoded spelling is the canonical one
        i += 1
    return "".join(out)


def _escaped_slash(ch: str, rules: PathRules) -> str:
    mode = rules.escaped_slashes
    if mode == "reject":
        raise TargetError("an encoded slash or backslash (%2F, %5C, '\\') in the request path")
    if mode == "keep":
        return "%2F" if ch == "/" else "%5C"
    return "/"


def _remove_dot_segments(path: str, merge_slashes: bool) -> str:
    parts = path.split("/")[1:]  # path starts with "/"
    last = len(parts) - 1
    stack: list[str] = []
    for index, seg in enumerate(parts):
        if seg == "." or seg == "..":
            if seg == ".." and stack:
                stack.pop()
            if index == last:
                stack.append("")  # "/a/." and "/a/b/.." end in a slash
            continue
        if not seg and merge_slashes and index != last:
            continue  # "//" counts as "/"; a trailing slash stays
        stack.append(seg)
    return "/" + "/".join(stack)


def canonical_route_path(path: str) -> str:
    """A configured exact or prefix route path in the form requests are compared in.

    Non-ASCII characters are UTF-8 percent-encoded, then the path is normalised like a
    request path (encoded slashes kept as they are, so a route may name one).
    """
    if not path.isascii():
        path = quote(path, safe="".join(sorted(_RAW_OK | {"%", "\\"})))
    return normalize_path(path, PathRules(merge_slashes=True, escaped_slashes="keep"))


# -- hosts -----------------------------------------------------------------------------------

# host[:port]: a bracketed IPv6 literal, or a reg-name / IPv4 (RFC 3986 3.2.2, no userinfo).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::([0-9]{0,5}))?")
_HOST_CACHE: dict[str, str] = {}
_HOST_CACHE_SIZE = 4096


def host_key(value: str) -> str:
    """The Host as routes compare it: lower case, no port, no trailing dot; or TargetError."""
    key = _HOST_CACHE.get(value)
    if key is not None:
        return key
    m = _HOST.fullmatch(value)
    if m is None:
        raise TargetError(f"bad Host {value[:100]!r}: expected host[:port]")
    host, port = m.groups()
    if port is not None and port and int(port) > 65535:
        raise TargetError(f"bad Host {value[:100]!r}: port out of range")
    key = host.lower()
    if key.endswith(".") and len(key) > 1:
        key = key[:-1]
    if len(_HOST_CACHE) >= _HOST_CACHE_SIZE:
        _HOST_CACHE.clear()
    _HOST_CACHE[value] = key
    return key
