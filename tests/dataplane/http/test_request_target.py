"""Request-target normalisation (dataplane.http.target) and its place in the request reader.

The central property: for any path and any equivalent spelling of it, the route chosen, the
policies that run and the path sent upstream are the same.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.http.request import HttpError, RequestReader
from dataplane.http.target import (
    PathRules,
    TargetError,
    canonical_route_path,
    host_key,
    normalize_path,
)
from dataplane.routing import RouteMatcher, RouteRule

UNRESERVED = string.ascii_letters + string.digits + "-._~"
SUB_DELIMS = "!$&'()*+,;=:@"
SEGMENT_CHARS = UNRESERVED + SUB_DELIMS


def parse_head(target: bytes, rules: PathRules = PathRules(), host: bytes = b"h") -> object:
    reader = RequestReader(path_rules=rules)
    reader.feed(b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    return reader.events[0]


def status(target: bytes, rules: PathRules = PathRules(), host: bytes = b"h") -> int:
    try:
        parse_head(target, rules, host)
    except HttpError as exc:
        return exc.status
    return 200


# -- the rules, case by case --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/", "/"),
        ("/admin/", "/admin/"),
        ("//admin/", "/admin/"),
        ("/./admin/", "/admin/"),
        ("/x/../admin/", "/admin/"),
        ("/%61dmin/", "/admin/"),
        ("/%2e/admin/", "/admin/"),
        ("/%2E%2E/admin", "/admin"),
        ("//secret", "/secret"),
        ("/./secret", "/secret"),
        ("/%73ecret", "/secret"),
        ("/secret/.", "/secret/"),
        ("/a/b/..", "/a/"),
        ("/../../a", "/a"),
        ("/a/.b/..c/", "/a/.b/..c/"),  # dots inside names are not dot segments
        ("/.well-known/x", "/.well-known/x"),
        ("/a%3bb", "/a%3Bb"),  # reserved characters stay encoded, in upper case
        ("/a;b", "/a;b"),  # ... and stay distinct from their raw form
        ("/a{b}|c", "/a%7Bb%7D%7Cc"),  # not allowed raw: the encoded spelling is canonical
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a///b//", "/a/b/"),
    ],
)
def test_normalize_path(raw: str, canonical: str) -> None:
    assert normalize_path(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b", "/a%00b", "/a%0d%0aX", "/a%7F", "/a%", "/a%g1", "/a%1", "/a#f"],
)
def test_refused_by_default(raw: str) -> None:
    with pytest.raises(TargetError):
        normalize_path(raw)


def test_escaped_slashes_keep_and_unescape() -> None:
    keep = PathRules(escaped_slashes="keep")
    assert normalize_path("/a%2fb/../c", keep) == "/c"  # %2F is no separator: "a%2Fb" is one segment
    assert normalize_path("/a%2fb", keep) == "/a%2Fb"
    assert normalize_path("/a\\b", keep) == "/a%5Cb"
    unescape = PathRules(escaped_slashes="unescape")
    assert normalize_path("/a%2Fb/../c", unescape) == "/a/c"
    assert normalize_path("/a%5C..%5Cb", unescape) == "/b"
    assert normalize_path("/admin\\", unescape) == "/admin/"
    with pytest.raises(TargetError):  # control bytes are refused whatever the setting
        normalize_path("/a%00", unescape)


def test_merge_slashes_off_keeps_empty_segments() -> None:
    rules = PathRules(merge_slashes=False)
    assert normalize_path("/a//b", rules) == "/a//b"
    assert normalize_path("/a//b/./c", rules) == "/a//b/c"


def test_canonical_route_path() -> None:
    assert canonical_route_path("/café") == "/caf%C3%A9"
    assert canonical_route_path("/a/%62") == "/a/b"
    assert canonical_route_path("/files%2Fx") == "/files%2Fx"  # a route may name an encoded slash


@pytest.mark.parametrize(
    ("value", "key"),
    [("Example.COM", "example.com"), ("example.com.", "example.com"), ("example.com:8080", "example.com"),
     ("[::1]:443", "[::1]"), ("127.0.0.1:80", "127.0.0.1"), ("EXAMPLE.com.:443", "example.com")],
)  # fmt: skip
def test_host_key(value: str, key: str) -> None:
    assert host_key(value) == key


@pytest.mark.parametrize("value", ["a b", "user@evil", "a/b", "evil:99999", "a\tb", "[::1", "x:80:80"])
def test_bad_hosts_are_refused(value: str) -> None:
    with pytest.raises(TargetError):
        host_key(value)


# -- in the request reader -----------------------------------------------------------------


def test_reader_normalises_the_path_and_keeps_the_query() -> None:
    head = parse_head(b"//a/./b/../%63?x=%2F..&y=1")
    assert head.path == "/a/c"  # type: ignore[attr-defined]
    assert head.query == b"x=%2F..&y=1"  # type: ignore[attr-defined]
    assert head.target == b"/a/c?x=%2F..&y=1"  # type: ignore[attr-defined]


def test_reader_keeps_the_target_object_when_nothing_changes() -> None:
    head = parse_head(b"/plain/path?q=1")
    assert head.target == b"/plain/path?q=1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("target", "host", "code"),
    [
        (b"/a%2Fb", b"h", 400),
        (b"/a%00b", b"h", 400),
        (b"/a#frag", b"h", 400),
        (b"/a?b#frag", b"h", 400),
        (b"/", b"a b", 400),
        (b"/", b"user@evil", 400),
        (b"/", b"evil.com:123456", 400),
    ],
)
def test_reader_refuses(target: bytes, host: bytes, code: int) -> None:
    assert status(target, host=host) == code


def test_reader_host_key() -> None:
    head = parse_head(b"/", host=b"API.Example.com.:8080")
    assert head.hostname == "api.example.com"  # type: ignore[attr-defined]
    assert head.host == "API.Example.com.:8080"  # type: ignore[attr-defined]  # passed on as sent


def test_connect_is_405_on_a_reverse_proxy() -> None:
    reader = RequestReader()
    with pytest.raises(HttpError) as info:
        reader.feed(b"CONNECT evil.com:443 HTTP/1.1\r\nHost: evil.com:443\r\n\r\n")
    assert info.value.status == 405


@pytest.mark.parametrize("name", [b"User-Agent", b"Authorization", b"Origin", b"Referer", b"Proxy-Authorization"])
def test_singleton_fields_may_come_once(name: bytes) -> None:
    reader = RequestReader()
    with pytest.raises(HttpError) as info:
        reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\n" + name + b": a\r\n" + name.lower() + b": b\r\n\r\n")
    assert info.value.status == 400


def test_repeated_fields_are_read_whole_in_order() -> None:
    head = parse_head(b"/")
    reader = RequestReader()
    reader.feed(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.1.2.3\r\nCookie: a=1\r\n"
        b"x-forwarded-for: 8.8.8.8, 9.9.9.9\r\nCookie: b=2\r\n\r\n"
    )
    head = reader.events[0]
    assert head.get("x-forwarded-for") == "10.1.2.3, 8.8.8.8, 9.9.9.9"  # type: ignore[attr-defined]
    assert head.get("cookie") == "a=1; b=2"  # type: ignore[attr-defined]


# -- the property ----------------------------------------------------------------------------

segments = st.lists(
    st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=6).filter(lambda s: s not in (".", "..")),
    min_size=0,
    max_size=5,
)


@st.composite
def canonical_paths(draw: st.DrawFn) -> str:
    segs = draw(segments)
    trailing = draw(st.booleans()) and bool(segs)
    return "/" + "/".join(segs) + ("/" if trailing else "")


def _encode_char(draw: st.DrawFn, c: str) -> str:
    if c in UNRESERVED and draw(st.integers(0, 3)) == 0:
        hx = f"{ord(c):02X}"
        return "%" + (hx.lower() if draw(st.booleans()) else hx)
    return c


@st.composite
def spellings(draw: st.DrawFn, path: str) -> str:
    """An equivalent spelling of canonical `path`: encoded unreserved characters, repeated
    slashes, "." segments and "name/.." detours."""
    segs = path.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        # Detours before the segment: "./" or "<junk>/../".
        for _ in range(draw(st.integers(0, 2))):
            if draw(st.booleans()):
                out.append("." if draw(st.booleans()) else "%2e")
            else:
                junk = draw(
                    st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
                )
                out.append(junk)
                out.append(".." if draw(st.booleans()) else "%2E%2e")
        spelled = "".join(_encode_char(draw, c) for c in seg)
        if seg == "" and last:
            out.append("")
        else:
            out.append(spelled)
            if not last:
                out.extend([""] * draw(st.integers(0, 2)))  # "a//b": merged
    return "/" + "/".join(out)


ROUTES = [
    RouteRule("catch-all", (), "/", "prefix"),
    RouteRule("admin", (), "/admin", "prefix"),
    RouteRule("secret", (), "/secret", "exact"),
    RouteRule("api-v1", (), "/api/v1/", "prefix"),
    RouteRule("tilde", (), "/~u", "prefix"),
]
MATCHER = RouteMatcher(ROUTES)


@st.composite
def interesting_paths(draw: st.DrawFn) -> str:
    head = draw(st.sampled_from(["", "/admin", "/secret", "/api/v1", "/~u", "/api"]))
    return head + draw(canonical_paths()) if head else draw(canonical_paths())


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_equivalent_spellings_route_and_go_upstream_alike(data: st.DataObject) -> None:
    path = normalize_path(data.draw(interesting_paths()))
    spelled = data.draw(spellings(path))
    head = parse_head(spelled.encode())
    canonical = parse_head(path.encode())
    assert head.path == canonical.path == path  # type: ignore[attr-defined]
    assert head.target == canonical.target  # type: ignore[attr-defined]  # what goes upstream
    rule = MATCHER.match("h", head.path, "GET", {})  # type: ignore[attr-defined]
    same = MATCHER.match("h", canonical.path, "GET", {})  # type: ignore[attr-defined]
    assert rule is same  # the same route, so the same policies


@settings(max_examples=300, deadline=None)
@given(raw=st.text(alphabet=SEGMENT_CHARS + '/%.\\{}|^`"<>#' + "0123456789abcdefABCDEF", max_size=40))
def test_normalisation_is_idempotent_or_refuses(raw: str) -> None:
    path = "/" + raw
    for rules in (PathRules(), PathRules(escaped_slashes="keep"), PathRules(escaped_slashes="unescape"),
                  PathRules(merge_slashes=False)):  # fmt: skip
        try:
            once = normalize_path(path, rules)
        except TargetError:
            continue
        assert normalize_path(once, rules) == once
        assert once.startswith("/")
        assert "/./" not in once and "/../" not in once and not once.endswith(("/.", "/.."))
        assert all(0x20 < ord(c) < 0x7F for c in once)
        if rules.merge_slashes:
            assert "//" not in once
