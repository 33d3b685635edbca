"""Property and unit tests of the sans-IO request reader (`dataplane.http.request`).

The properties build valid requests (and pipelined sequences of them) from random parts,
feed their bytes whole, byte by byte and split at random points, and check that the reader
always reports the same thing: the head it was given, the body it was given, one
MESSAGE_END per request. The fuzz properties feed arbitrary and mutated bytes and check that
the reader either parses them or raises `HttpError` with a 4xx/5xx status, never anything else.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.http.request import MAX_HEADER_BYTES, MAX_HEADERS, MESSAGE_END, HttpError, RequestHead, RequestReader
from dataplane.http.target import normalize_path

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Statuses the reader may answer with (see the module docstring and RequestReader.feed).
ERROR_STATUSES = {400, 413, 414, 417, 431, 501}

TCHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
# Names the reader treats specially; the generated extra headers avoid them (the tests below
# cover them one by one). "close" is a reserved field name (RFC 9110 18.4).
SPECIAL_NAMES = {
    "host", "content-length", "transfer-encoding", "expect", "connection", "x-request-id", "close", "keep-alive",
    "upgrade",
}  # fmt: skip
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/"  # '%' and dots: test_request_target
QUERY_CHARS = PATH_CHARS + "%?"

token = st.text(alphabet=TCHARS, min_size=1, max_size=16)
header_name = token.filter(lambda n: n.lower() not in SPECIAL_NAMES)
# Visible ASCII with inner spaces; llhttp strips whitespace around a value, so none is generated there.
header_value = st.text(alphabet=VISIBLE + " ", max_size=40).map(str.strip)


@dataclass
class Req:
    method: str
    path: str
    query: str
    host: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # in wire order, Host and framing included
    body: bytes = b""
    framing: str = "none"  # none | length | chunked
    chunks: list[int] = field(default_factory=list)
    close: bool = False

    def wire(self) -> bytes:
        target = self.path + ("?" + self.query if self.query else "")
        head = f"{self.method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in self.headers) + "\r\n"
        out = head.encode("ascii")
        if self.framing == "length":
            out += self.body
        elif self.framing == "chunked":
            pos = 0
            for size in self.chunks:
                out += b"%x\r\n%b\r\n" % (size, self.body[pos : pos + size])
                pos += size
            out += b"0\r\n\r\n"
        return out


@st.composite
def requests(draw: st.DrawFn, *, last: bool = True) -> Req:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    path = "/" + draw(st.text(alphabet=PATH_CHARS, max_size=40))
    query = draw(st.text(alphabet=QUERY_CHARS, max_size=30))
    host = draw(st.sampled_from(["example.com", "api.example.com:8080", "127.0.0.1", "[::1]:443", "h"]))
    extra = draw(st.lists(st.tuples(header_name, header_value), max_size=20))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b""
    chunks: list[int] = []
    framing_headers: list[tuple[str, str]] = []
    if framing == "length":
        body = draw(st.binary(max_size=300))
        framing_headers.append((draw(st.sampled_from(["Content-Length", "content-length"])), str(len(body))))
    elif framing == "chunked":
        chunks = draw(st.lists(st.integers(min_value=1, max_value=70), max_size=6))
        body = draw(st.binary(min_size=sum(chunks), max_size=sum(chunks)))
        framing_headers.append((draw(st.sampled_from(["Transfer-Encoding", "transfer-encoding"])), "chunked"))
    close = last and draw(st.booleans())
    conn: list[tuple[str, str]] = []
    if close:
        conn.append(("Connection", draw(st.sampled_from(["close", "Close", "keep-alive, close"]))))
    elif draw(st.booleans()):
        conn.append(("Connection", "keep-alive"))
    headers = [*extra]
    for h in [("Host", host), *framing_headers, *conn]:
        headers.insert(draw(st.integers(min_value=0, max_value=len(headers))), h)
    return Req(method, path, query, host, headers, body, framing, chunks, close)


@st.composite
def pipelines(draw: st.DrawFn) -> list[Req]:
    n = draw(st.integers(min_value=1, max_value=4))
    # Connection: close can only end a pipeline (llhttp refuses bytes after it).
    return [draw(requests(last=i == n - 1)) for i in range(n)]


def feed_all(reader: RequestReader, data: bytes, cuts: list[int]) -> None:
    prev = 0
    for cut in [*cuts, len(data)]:
        reader.feed(data[prev:cut])
        prev = cut


def split_points(draw: st.DrawFn, data: bytes, mode: str) -> list[int]:
    if mode == "whole":
        return []
    if mode == "bytes":
        return list(range(1, len(data)))
    if not data:
        return []
    return sorted(set(draw(st.lists(st.integers(min_value=1, max_value=max(1, len(data) - 1)), max_size=12))))


def summarize(events: list[object]) -> list[tuple[tuple[object, ...], bytes]]:
    """One (head summary, body) per request, checking the event order on the way."""
    out: list[tuple[tuple[object, ...], bytes]] = []
    head: RequestHead | None = None
    body = b""
    for ev in events:
        if isinstance(ev, RequestHead):
            assert head is None, "a head before the previous request ended"
            head, body = ev, b""
        elif ev is MESSAGE_END:
            assert head is not None, "MESSAGE_END without a head"
            out.append((head_key(head), body))
            head = None
        else:
            assert isinstance(ev, bytes) and head is not None, f"unexpected event {ev!r}"
            body += ev
    assert head is None, "the last request did not end"
    return out


def head_key(h: RequestHead) -> tuple[object, ...]:
    return (h.method, h.path, h.query, h.host, list(h.headers), h.keep_alive, h.content_length, h.chunked)


def expected(req: Req) -> tuple[tuple[object, ...], bytes]:
    headers = [(n.encode(), v.encode()) for n, v in req.headers]
    length = len(req.body) if req.framing == "length" else None
    key = (req.method, normalize_path(req.path), req.query.encode(), req.host, headers, not req.close, length,
           req.framing == "chunked")  # fmt: skip
    return key, req.body


# -- properties ----------------------------------------------------------------------------


@PROPS
@given(reqs=pipelines(), mode=st.sampled_from(["whole", "bytes", "random"]), data=st.data())
def test_valid_requests_parse_the_same_however_split(reqs: list[Req], mode: str, data: st.DataObject) -> None:
    wire = b"".join(r.wire() for r in reqs)
    cuts = split_points(data.draw, wire, mode)
    reader = RequestReader()
    feed_all(reader, wire, cuts)
    events = list(reader.events)
    assert sum(ev is MESSAGE_END for ev in events) == len(reqs)
    assert summarize(events) == [expected(r) for r in reqs]


@PROPS
@given(reqs=pipelines(), data=st.data())
def test_whole_bytewise_and_random_splits_agree(reqs: list[Req], data: st.DataObject) -> None:
    wire = b"".join(r.wire() for r in reqs)
    results = []
    for mode in ("whole", "bytes", "random"):
        reader = RequestReader()
        feed_all(reader, wire, split_points(data.draw, wire, mode))
        results.append(summarize(list(reader.events)))
    assert results[0] == results[1] == results[2]


def _parse_or_http_error(data: bytes, cuts: list[int]) -> None:
    reader = RequestReader(max_header_bytes=2048, body_limit=4096)
    try:
        feed_all(reader, data, cuts)
    except HttpError as exc:
        assert exc.status in ERROR_STATUSES, exc.status
        assert isinstance(exc.message, str) and exc.message
        return
    for ev in reader.events:
        assert isinstance(ev, (RequestHead, bytes)) or ev is MESSAGE_END


@FUZZ
@given(blob=st.binary(max_size=400), data=st.data())
def test_arbitrary_bytes_parse_or_raise_http_error(blob: bytes, data: st.DataObject) -> None:
    _parse_or_http_error(blob, [])
    _parse_or_http_error(blob, split_points(data.draw, blob, "random"))


_PREFIXES = [b"GET / HTTP/1.1\r\nHost: a\r\n", b"POST /x?y HTTP/1.1\r\nHost: b\r\n", b"GET / HTTP/1.0\r\n"]


@FUZZ
@given(prefix=st.sampled_from(_PREFIXES), tail=st.binary(max_size=300), data=st.data())
def test_valid_start_then_arbitrary_bytes(prefix: bytes, tail: bytes, data: st.DataObject) -> None:
    blob = prefix + tail
    _parse_or_http_error(blob, [])
    _parse_or_http_error(blob, split_points(data.draw, blob, "random"))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    wire = bytearray(b"".join(r.wire() for r in draw(pipelines())))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        pos = draw(st.integers(min_value=0, max_value=len(wire)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        junk = draw(st.one_of(st.binary(min_size=1, max_size=4), st.sampled_from([b"\r\n", b"\n", b":", b" ", b"\0"])))
        if op == "replace":
            wire[pos : pos + len(junk)] = junk
        elif op == "insert":
            wire[pos:pos] = junk
        else:
            del wire[pos : pos + len(junk)]
    return bytes(wire)


@FUZZ
@given(blob=mutated(), data=st.data())
def test_mutated_requests_parse_or_raise_http_error(blob: bytes, data: st.DataObject) -> None:
    _parse_or_http_error(blob, [])
    _parse_or_http_error(blob, split_points(data.draw, blob, "random"))


# -- unit tests ----------------------------------------------------------------------------


def parse(data: bytes | list[bytes], **kw: int) -> list[object]:
    reader = RequestReader(**kw)
    for piece in [data] if isinstance(data, bytes) else data:
        reader.feed(piece)
    return list(reader.events)


def status_of(data: bytes | list[bytes], **kw: int) -> int:
    with pytest.raises(HttpError) as info:
        parse(data, **kw)
    return info.value.status


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def heads(events: list[object]) -> list[RequestHead]:
    return [ev for ev in events if isinstance(ev, RequestHead)]


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    ],
)
def test_content_length_with_transfer_encoding_is_400(headers: bytes) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n3\r\nabc\r\n0\r\n\r\n"
    assert status_of(data) == 400
    assert status_of(pieces(data, 1)) == 400


@pytest.mark.parametrize("second", [b"3", b"4"])
def test_duplicate_content_length_is_400(second: bytes) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: " + second + b"\r\n\r\nabcd"
    assert status_of(data) == 400


def _many_big_headers(total: int) -> bytes:
    lines = b"".join(b"X-Pad-%d: %b\r\n" % (i, b"v" * 1000) for i in range(total // 1000 + 1))
    return b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n"


@pytest.mark.parametrize("piece", [None, 1, 7, 1000, 4096])
def test_oversized_headers_are_431_in_one_chunk_or_many(piece: int | None) -> None:
    data = _many_big_headers(MAX_HEADER_BYTES + 1000)
    assert status_of(data if piece is None else pieces(data, piece)) == 431


@pytest.mark.parametrize("piece", [None, 1, 1000])
def test_one_huge_header_value_is_431(piece: int | None) -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n"
    assert status_of(data if piece is None else pieces(data, piece)) == 431


def test_incomplete_oversized_head_is_refused_before_it_ends() -> None:
    # A client that never finishes its head must not make the reader buffer without bound.
    reader = RequestReader(max_header_bytes=1024)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    with pytest.raises(HttpError) as info:
        for _ in range(200):
            reader.feed(b"X-More: " + b"v" * 50 + b"\r\n")
    assert info.value.status == 431


def test_header_limit_is_configurable() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"v" * 600 + b"\r\n\r\n"
    assert heads(parse(data, max_header_bytes=1024))
    assert status_of(data, max_header_bytes=512) == 431
    assert status_of(pieces(data, 3), max_header_bytes=512) == 431


def test_too_many_headers_is_431() -> None:
    ok = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS - 1)) + b"\r\n"
    assert len(heads(parse(ok))[0].headers) == MAX_HEADERS
    too_many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS)) + b"\r\n"
    assert status_of(too_many) == 431
    assert status_of(pieces(too_many, 5)) == 431


@pytest.mark.parametrize("piece", [None, 1000, 4096])
def test_long_target_is_414(piece: int | None) -> None:
    data = b"GET /" + b"a" * (MAX_HEADER_BYTES + 100) + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert status_of(data if piece is None else pieces(data, piece)) == 414


def test_http11_without_host_is_400_and_http10_is_fine() -> None:
    assert status_of(b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n") == 400
    (head,) = heads(parse(b"GET /old HTTP/1.0\r\n\r\n"))
    assert head.version == "1.0" and head.host == "" and head.path == "/old"
    assert not head.keep_alive


@pytest.mark.parametrize(
    "hosts",
    [
        b"Host: a\r\nHost: b\r\n",
        b"Host: a\r\nHost: a\r\n",
        b"Host: a\r\nhost: b\r\n",
        b"Host:\r\nHost: b\r\n",  # an empty first Host is still a Host header
        b"Host: a\r\nX-Other: 1\r\nHOST: b\r\n",
    ],
)
def test_two_host_headers_are_400(hosts: bytes) -> None:
    assert status_of(b"GET / HTTP/1.1\r\n" + hosts + b"\r\n") == 400


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue", b"100-CONTINUE"])
def test_expect_100_continue_is_recognised(value: bytes) -> None:
    events = parse(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: " + value + b"\r\nContent-Length: 2\r\n\r\n")
    (head,) = heads(events)
    assert head.expect_continue and head.content_length == 2 and head.has_body
    assert events == [head]  # the body has not come yet: the proxy answers 100 first


@pytest.mark.parametrize("value", [b"foo", b"100-continue-please", b"200-ok"])
def test_other_expectations_are_417(value: bytes) -> None:
    assert status_of(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: " + value + b"\r\nContent-Length: 0\r\n\r\n") == 417


def test_no_expect_header_means_no_100() -> None:
    (head,) = heads(parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"))
    assert not head.expect_continue


@pytest.mark.parametrize("coding", [b"gzip", b"identity", b"chunked, gzip", b"gzip, chunked", b"deflate,chunked"])
def test_unsupported_transfer_encoding_is_501(coding: bytes) -> None:
    # Only plain chunked is understood: the node de-chunks but never decodes gzip and friends,
    # so passing "gzip, chunked" on as plain chunked would hand the upstream a body it cannot read.
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n"
    assert status_of(data) == 501


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b"CHUNKED"])
def test_chunked_in_any_case_is_accepted(coding: bytes) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + coding + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    events = parse(data)
    assert events[0].chunked and b"".join(e for e in events if isinstance(e, bytes)) == b"abc"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"http://example.com/a/b?x=1&y=2", "/a/b", b"x=1&y=2"),
        (b"https://example.com:8443/p", "/p", b""),
        (b"http://example.com", "/", b""),
        (b"http://example.com?q", "/", b"q"),
        (b"HTTP://Example.com//a/./b/../c", "/a/c", b""),
    ],
)
def test_absolute_form_target_is_normalised(target: bytes, path: str, query: bytes) -> None:
    (head,) = heads(parse(b"GET " + target + b" HTTP/1.1\r\nHost: other.org\r\n\r\n"))
    assert head.path == path and head.query == query
    assert head.target == (path.encode() + (b"?" + query if query else b""))
    # The target's authority replaces Host (RFC 9112 3.2.2), for routing and upstream alike.
    assert head.hostname == "example.com"
    assert [v for n, v in head.headers if n.lower() == b"host"] == [head.host.encode()]


def test_absolute_form_with_userinfo_is_refused() -> None:
    assert status_of(b"GET http://user@example.com/p HTTP/1.1\r\nHost: example.com\r\n\r\n") == 400


def test_asterisk_form_only_for_options() -> None:
    (head,) = heads(parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert head.path == "*"
    assert status_of(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n") == 400


def test_body_over_the_limit_is_413() -> None:
    # Announced by Content-Length: refused at the head, before any body byte.
    assert status_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", body_limit=10) == 413
    # Chunked: refused once the chunks pass the limit, however they arrive.
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n"
    assert status_of(chunked, body_limit=10) == 413
    assert status_of(pieces(chunked, 1), body_limit=10) == 413


def test_body_at_the_limit_passes() -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"
    events = parse(data, body_limit=10)
    assert events[-1] is MESSAGE_END and b"".join(e for e in events if isinstance(e, bytes)) == b"0123456789"
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n5\r\nfghij\r\n0\r\n\r\n"
    assert parse(pieces(chunked, 1), body_limit=10)[-1] is MESSAGE_END


def test_body_limit_counts_per_request() -> None:
    one = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n01234567"
    events = parse(one * 3, body_limit=10)
    assert sum(ev is MESSAGE_END for ev in events) == 3


def test_request_id_and_connection_are_captured() -> None:
    data = (
        b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc-123\r\nConnection: keep-alive, X-Foo\r\n"
        b"Connection: Upgrade\r\nX-Foo: 1\r\n\r\n"
    )
    (head,) = heads(parse(data))
    assert head.request_id == b"abc-123"
    assert head.connection == b"keep-alive, X-Foo,Upgrade"
    assert head.keep_alive
    assert head.get("x-foo") == "1" and head.get("host") == "a" and head.get("missing") is None

    (plain,) = heads(parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert plain.request_id is None and plain.connection == b""


def test_connection_close_ends_keep_alive() -> None:
    (head,) = heads(parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    assert not head.keep_alive
    (head10,) = heads(parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
    assert head10.keep_alive


def test_pipelined_requests_arrive_in_order() -> None:
    data = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    for split in (None, 1, 5):
        events = parse(data if split is None else pieces(data, split))
        assert [h.path for h in heads(events)] == ["/1", "/2", "/3"]
        assert sum(ev is MESSAGE_END for ev in events) == 3


def test_bad_content_length_is_400() -> None:
    assert status_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n") == 400
    assert status_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n") == 400


def test_garbage_request_line_is_400() -> None:
    assert status_of(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == 400  # a TLS ClientHello
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n") == 400
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n") == 400


# -- Upgrade: h2c is declined, body or not ---------------------------------------------------

H2C = (b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
       b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")  # fmt: skip


def _h2c_request(body: bytes, chunked: bool) -> bytes:
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7))
        return b"POST /up HTTP/1.1\r\nHost: h\r\n" + H2C + b"Transfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"
    return b"POST /up HTTP/1.1\r\nHost: h\r\n" + H2C + b"Content-Length: %d\r\n\r\n" % len(body) + body


@PROPS
@given(body=st.binary(min_size=1, max_size=300), chunked=st.booleans(), after=st.binary(max_size=40), data=st.data())
def test_an_h2c_upgrade_with_a_body_is_a_plain_request_however_split(
    body: bytes, chunked: bool, after: bytes, data: st.DataObject
) -> None:
    """h2c smuggling: `Upgrade: h2c` with a body must not make the node a tunnel to the backend.
    llhttp stops at an upgrade's head; the reader reads the body itself and ends the connection
    after it (what follows the body, here `after`, is never parsed as a request)."""
    raw = _h2c_request(body, chunked) + after
    reader = RequestReader()
    feed_all(reader, raw, split_points(data.draw, raw, data.draw(st.sampled_from(["whole", "bytes", "random"]))))
    events = list(reader.events)
    head = events[0]
    assert isinstance(head, RequestHead) and head.path == "/up"
    assert head.upgrade is False and head.keep_alive is False
    assert b"".join(e for e in events[1:-1] if isinstance(e, bytes)) == body
    assert events[-1] is MESSAGE_END and len(heads(events)) == 1
    assert reader.tail == b""


def test_an_h2c_upgrade_without_a_body_goes_on_with_the_next_request() -> None:
    raw = b"GET /a HTTP/1.1\r\nHost: h\r\n" + H2C + b"\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    for data in (raw, pieces(raw, 1), pieces(raw, 9)):
        found = heads(parse(data))
        assert [h.path for h in found] == ["/a", "/b"] and not any(h.upgrade for h in found)
        assert found[0].keep_alive


def test_an_h2c_upgrade_body_keeps_its_limit_and_framing_errors() -> None:
    assert status_of(_h2c_request(b"x" * 50, chunked=False), body_limit=10) == 413
    bad = b"POST /up HTTP/1.1\r\nHost: h\r\n" + H2C + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n"
    assert status_of(bad) == 400


def test_other_upgrades_still_hand_over_what_follows_the_head() -> None:
    reader = RequestReader()
    reader.feed(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nFRAME")
    head = heads(list(reader.events))[0]
    assert head.upgrade is True and reader.tail == b"FRAME"
