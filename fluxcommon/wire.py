"""What config text may go on the wire: the one validator of header names and values, request
paths, URLs, hosts and free text, shared by the control plane (write-time checks of every
resource and policy) and the node (snapshot checks before it compiles).

Sans-IO: plain functions on strings. Every check returns why the value cannot be used (a short
message fit for an API error, never starting with `word: `) or None when it can; `require`
turns a problem into a ValueError for validators.

Grammar references: header names are RFC 9110 tokens (5.1), header values field-values
(5.5: visible ASCII, SP/HTAB inside, obs-text; no CR, LF, NUL or other controls), paths the
origin-form of RFC 9112 3.2.1 (absolute-path [ "?" query ], RFC 3986 pchar and
percent-encodings), hosts RFC 3986 3.2.2 reg-name / IPv4 / [IPv6] with an optional port.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "checked_headers",
    "header_name_problem",
    "header_value_problem",
    "host_problem",
    "location_problem",
    "multiline_text_problem",
    "path_problem",
    "regex_replacement_problem",
    "require",
    "text_problem",
    "token_problem",
    "url_problem",
]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::([0-9]{1,5}))?")
# RFC 3986: pchar = unreserved / pct-encoded / sub-delims / ":" / "@"
_PCHAR = r"A-Za-z0-9\-._~!$&'()*+,;=:@"
_PATH = re.compile(rf"(?:/(?:[{_PCHAR}]|%[0-9A-Fa-f]{{2}})*)+")
_QUERY = re.compile(rf"(?:[{_PCHAR}/?]|%[0-9A-Fa-f]{{2}})*")
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL)
# Single-line text: no C0 control but TAB, no DEL, no lone surrogate (not encodable as UTF-8).
_SINGLE_LINE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
# Multi-line text (PEM blocks, bodies, descriptions): TAB, LF and CR allowed.
_MULTI_LINE_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_CHAR_NAMES = {"\x00": "NUL", "\t": "TAB", "\n": "LF", "\r": "CR", " ": "SP", "\x7f": "DEL"}
# re.sub replacement templates: group references are the only escapes a path rewrite may use
# (others such as \n or \0 would put control bytes into the path).
_GROUP_REF = re.compile(r"\\(?:g<([^>]*)>|([1-9][0-9]?))")

MAX_PORT = 65535


def _char_name(c: str) -> str:
    return _CHAR_NAMES.get(c, f"U+{ord(c):04X}")


def _bad_char(pattern: re.Pattern[str], value: str) -> str | None:
    m = pattern.search(value)
    if m is None:
        return None
    c = m.group()
    if "\ud800" <= c <= "\udfff":
        return f"a lone surrogate ({_char_name(c)}) at position {m.start()} is not text"
    return f"a control character ({_char_name(c)}) at position {m.start()} is not allowed"


def require(problem: str | None) -> None:
    """Raise ValueError(problem) when there is one (for pydantic validators)."""
    if problem is not None:
        raise ValueError(problem)


# -- free text -------------------------------------------------------------------------------


def text_problem(value: str) -> str | None:
    """Why `value` is not one line of text: C0 controls (TAB aside), DEL or lone surrogates."""
    return _bad_char(_SINGLE_LINE_BAD, value)


def multiline_text_problem(value: str) -> str | None:
    """Why `value` is not (multi-line) text: LF, CR and TAB are fine; NUL, other controls,
    DEL and lone surrogates are not."""
    return _bad_char(_MULTI_LINE_BAD, value)


# -- HTTP fields ------------------------------------------------------------------------------


def token_problem(value: str, what: str = "token") -> str | None:
    """Why `value` is not an RFC 9110 token (method names, header names, cookie names)."""
    if _TOKEN.fullmatch(value):
        return None
    return f"{value!r} is not a {what} (letters, digits and !#$%&'*+-.^_`|~ only)"


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be a header name (None: it can)."""
    return None if _TOKEN.fullmatch(name) else f"{name!r} is not a header name"


def header_value_problem(name: str, value: str) -> str | None:
    """Why `value` cannot be sent as header `name`'s value: printable latin-1, spaces and tabs
    only (the node encodes values as latin-1; spaces at the ends are trimmed by readers)."""
    if any(c in value for c in "\r\n\0"):
        return f"{name}: header values may not hold CR, LF or NUL"
    bad = next((c for c in value if not _printable_latin1(c)), None)
    if bad is not None:
        return f"{name}: header values are printable latin-1 text; {bad!r} is not"
    return None


def _printable_latin1(c: str) -> bool:
    return c == "\t" or " " <= c <= "~" or "\xa0" <= c <= "\xff"


def checked_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` as given, or ValueError naming the first name or value that cannot be sent."""
    for name, value in headers.items():
        require(header_name_problem(name) or header_value_problem(name, value))
    return headers


# -- hosts, paths and URLs ----------------------------------------------------------------------


def host_problem(value: str, *, port: bool = True) -> str | None:
    """Why `value` cannot be sent as a Host (None: it can): a host name (IDNA, labels of 1 to
    63 letters, digits, '-' or '_', not starting or ending with '-'), an IPv4 address or a
    bracketed IPv6 address, with an optional :port unless `port` is False."""
    m = _HOST_PORT.fullmatch(value)
    if m is None:
        return f"{value!r} is not a host or host:port"
    host, port_text = m.groups()
    if port_text is not None:
        if not port:
            return f"{value!r}: give a host name without a port"
        if not 0 < int(port_text) <= MAX_PORT:
            return f"{value!r}: port {port_text} is not 1 to {MAX_PORT}"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{value!r}: {host} is not an IPv6 address"
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii")
        value.encode("idna")  # as RequestRewritePolicy does
    except UnicodeError:
        return f"{value!r} is not a host name (IDNA, labels of 1 to 63 characters)"
    if not all(_HOST_LABEL.fullmatch(label) for label in ascii_host.removesuffix(".").split(".")):
        return f"{value!r} is not a host name (labels of letters, digits, '-' and '_', not starting or ending with '-')"
    return None


def path_problem(value: str, *, query: bool = True) -> str | None:
    """Why `value` is not an origin-form request target: '/' then RFC 3986 path characters
    and %XX escapes, and (when `query`) an optional '?query'. A '//' start is refused too: many
    parsers read it as a network-path reference naming a host."""
    if not value.startswith("/"):
        return f"{value!r} is not a path: it must start with '/'"
    if value.startswith("//"):
        return f"{value!r} is not a path: a '//' start reads as a host name (//host/path)"
    path, sep, rest = value.partition("?")
    if sep and not query:
        return f"{value!r} is a path prefix: no '?query' here"
    if not _PATH.fullmatch(path) or (sep and not _QUERY.fullmatch(rest)):
        bad = _first_bad_target_char(value)
        return f"{value!r} is not a path: {bad} is not allowed (RFC 3986 characters and %XX escapes only)"
    return None


def _first_bad_target_char(value: str) -> str:
    for i, c in enumerate(value):
        if c == "%":
            if not re.fullmatch(r"[0-9A-Fa-f]{2}", value[i + 1 : i + 3]):
                return f"'%' not followed by two hex digits at position {i}"
        elif not re.fullmatch(rf"[{_PCHAR}/?]", c):
            return f"{repr(c) if c.isprintable() and c != ' ' else _char_name(c)} at position {i}"
    return "the text"  # pragma: no cover - only reached when the regexes disagree


def url_problem(value: str) -> str | None:
    """Why `value` is not an absolute http(s) URL: scheme, host[:port] (no user info, ASCII),
    then an optional path, '?query' and '#fragment' of RFC 3986 characters."""
    m = _URL.fullmatch(value)
    if m is None or m.group("scheme").lower() not in ("http", "https"):
        return f"{value!r} is not an http(s) URL"
    if not value.isascii():
        return f"{value!r} is not an http(s) URL: ASCII only (punycode for names, %XX escapes for the rest)"
    authority, rest = m.group("authority"), m.group("rest")
    if "@" in authority:
        return f"{value!r}: user info ('user@') is not allowed in the URL"
    if not authority:
        return f"{value!r} is not an http(s) URL: it has no host"
    problem = host_problem(authority)
    if problem:
        return f"{value!r} is not an http(s) URL: {problem}"
    target, _, fragment = rest.partition("#")
    if target and not target.startswith("?"):
        problem = path_problem(target)
    elif target:
        problem = None if _QUERY.fullmatch(target[1:]) else f"{target!r} is not a query"
    if not problem and fragment and not _QUERY.fullmatch(fragment):
        problem = f"#{fragment!r} is not a URL fragment"
    return f"{value!r} is not an http(s) URL: {problem}" if problem else None


def location_problem(value: str) -> str | None:
    """Why `value` cannot be a redirect target: an absolute http(s) URL or an origin-form path
    (a '//' start would be read as another host, so it is refused)."""
    if value.startswith("/") and not value.startswith("//"):
        path, _, fragment = value.partition("#")
        problem = path_problem(path)
        if not problem and fragment and not _QUERY.fullmatch(fragment):
            problem = f"#{fragment!r} is not a URL fragment"
        return problem
    if value.startswith("//"):
        return f"{value!r} is neither a path nor an http(s) URL (a '//' start names another host)"
    return url_problem(value)


def regex_replacement_problem(replacement: str, groups: int, names: set[str] | frozenset[str]) -> str | None:
    """Why `replacement` cannot be a `re.sub` template for a request path: group references
    (\\1, \\g<1>, \\g<name>) to groups the pattern has, the rest path characters ('/', RFC 3986
    pchar, %XX escapes, '?query'). No other escape (\\n, \\0, ...) is allowed."""
    literal = []
    pos = 0
    for m in _GROUP_REF.finditer(replacement):
        literal.append(replacement[pos : m.start()])
        pos = m.end()
        ref = m.group(1) if m.group(1) is not None else m.group(2)
        if ref.isdigit():
            if int(ref) > groups:
                return f"group {ref} is not in the pattern (it has {groups})"
        elif ref not in names:
            return f"group {ref!r} is not in the pattern"
    literal.append(replacement[pos:])
    text = "".join(literal)
    if "\\" in text:
        return "a backslash that is not a group reference (\\1, \\g<name>) is not allowed"
    if not text:
        return None
    probe = text if text.startswith("/") else "/" + text
    return path_problem(probe)
