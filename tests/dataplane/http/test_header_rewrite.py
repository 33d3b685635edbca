"""Property tests of header rewriting between client and upstream (`dataplane.http.headers`).

Requests are built from random parts, parsed by the node's own RequestReader, rewritten with
`upstream_request_head` and parsed back with httptools: the result must be a valid request
that carries no hop-by-hop header (nor any the client named in Connection), the X-Forwarded-*
and X-Request-Id headers, the Host the route wants and the framing asked for. Responses go
the same way through ResponseReader and `client_response_head`.
"""

from __future__ import annotations

import json
import string

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.http.errors import CODES, error_response
from dataplane.http.headers import (
    HOP_BY_HOP,
    LAST_CHUNK,
    chunk,
    client_response_head,
    connection_tokens,
    reason,
    upstream_request_head,
)
from dataplane.http.request import RequestHead, RequestReader
from dataplane.http.response import ResponseHead, ResponseReader

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TCHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
# Set by the node itself (or checked separately below), never generated as extra headers.
OWN = {"host", "content-length", "transfer-encoding", "expect", "x-request-id", "x-forwarded-for",
       "x-forwarded-proto", "x-forwarded-host", "connection", "close"}  # fmt: skip
HOP = [("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"), ("TE", "trailers"),
       ("Trailer", "X-Sum"), ("Upgrade", "websocket")]  # fmt: skip

token = st.text(alphabet=TCHARS, min_size=1, max_size=14)
header_name = token.filter(lambda n: n.lower() not in OWN and n.lower().encode() not in HOP_BY_HOP)
header_value = st.text(alphabet=VISIBLE + " ", max_size=30).map(str.strip)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
client_ips = st.one_of(ipv4, st.sampled_from(["::1", "2001:db8::7", "fe80::1"]))


class Sink:
    """httptools callbacks collecting what a peer would see."""

    def __init__(self) -> None:
        self.url = b""
        self.status = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self.keep_alive: bool | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        self.status += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()


def parse_request(data: bytes) -> tuple[httptools.HttpRequestParser, Sink]:
    sink = Sink()
    parser = httptools.HttpRequestParser(sink)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    assert sink.complete, data
    return parser, sink


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


@st.composite
def client_requests(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str]], list[str], list[str]]:
    """Wire bytes of a client request head, its header lines, the names its Connection lists, its XFF values."""
    extra = draw(st.lists(st.tuples(header_name, header_value), max_size=15))
    named = draw(st.lists(st.sampled_from([n for n, _ in extra]), max_size=3)) if extra else []
    named += draw(st.lists(header_name, max_size=1))
    options = draw(st.lists(st.sampled_from(["keep-alive", "Upgrade"]), max_size=1))
    lines = list(extra)
    tokens = [*named, *options]
    if tokens:
        lines.append(("Connection", ", ".join(tokens)))
    lines += draw(st.lists(st.sampled_from(HOP), max_size=3, unique=True))
    xff = draw(st.lists(st.sampled_from(["203.0.113.9", "198.51.100.1, 10.0.0.1", "unknown"]), max_size=2))
    lines += [("X-Forwarded-For", v) for v in xff]
    if draw(st.booleans()):
        lines.append(("X-Request-Id", "client-chosen"))
    if draw(st.booleans()):
        lines.append(("X-Forwarded-Proto", "gopher"))
    lines.append(("Host", draw(st.sampled_from(["example.com", "api.example.com:8443", "10.1.2.3"]))))
    draw(st.randoms()).shuffle(lines)
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]))
    path = "/" + draw(st.text(alphabet=string.ascii_letters + string.digits + "-._~/", max_size=20))
    query = draw(st.text(alphabet=string.ascii_letters + "=&", max_size=12))
    wire = f"{method} {path}{'?' + query if query else ''} HTTP/1.1\r\n"
    wire += "".join(f"{n}: {v}\r\n" for n, v in lines) + "\r\n"
    return wire.encode(), lines, named, xff


def read_head(wire: bytes) -> RequestHead:
    reader = RequestReader()
    reader.feed(wire)
    head = reader.events[0]
    assert isinstance(head, RequestHead)
    return head


@PROPS
@given(
    case=client_requests(),
    client_ip=client_ips,
    proto=st.sampled_from([b"http", b"https"]),
    framing=st.one_of(st.sampled_from([b"", b"chunked"]), st.integers(0, 10**9).map(lambda n: str(n).encode())),
    host=st.one_of(st.none(), st.sampled_from([b"backend.internal", b"10.0.0.5:8080"])),
    add=st.lists(st.tuples(st.sampled_from([b"X-Route", b"X-Added"]), st.sampled_from([b"1", b"two"])), max_size=2),
)
def test_upstream_request_head(
    case: tuple[bytes, list[tuple[str, str]], list[str], list[str]],
    client_ip: str,
    proto: bytes,
    framing: bytes,
    host: bytes | None,
    add: list[tuple[bytes, bytes]],
) -> None:
    wire, lines, named, xff = case
    req = read_head(wire)
    target = req.target
    out = upstream_request_head(req, target, client_ip, proto, b"rid-42", framing, host=host, add=add)
    parser, sink = parse_request(out)
    got = sink.headers
    assert parser.get_method().decode() == req.method and sink.url == target
    assert parser.get_http_version() == "1.1"

    # Nothing hop-by-hop, nothing the client named in Connection.
    dropped = {n.lower().encode() for n in named}
    for name in names(got):
        assert name not in HOP_BY_HOP - {b"transfer-encoding"} and name not in dropped
    # Every other client header passes unchanged and in order.
    kept = [(n.encode(), v.encode()) for n, v in lines
            if n.lower() not in OWN and n.lower().encode() not in HOP_BY_HOP | dropped]  # fmt: skip
    assert [h for h in got if h in kept] == kept

    # X-Forwarded-For: the client's chain (every line of it) plus the client address, once.
    chain = [v for n, v in lines if n == "X-Forwarded-For"]
    assert sorted(chain) == sorted(xff)
    assert values(got, b"x-forwarded-for") == [", ".join([*chain, client_ip]).encode()]
    assert values(got, b"x-forwarded-proto") == [proto]
    assert values(got, b"x-forwarded-host") == [req.host.encode()]
    assert values(got, b"x-request-id") == [b"rid-42"]
    assert values(got, b"host") == [host if host is not None else req.host.encode()]

    # Framing exactly as asked, whatever the client sent.
    if framing == b"chunked":
        assert values(got, b"transfer-encoding") == [b"chunked"] and not values(got, b"content-length")
    elif framing:
        assert values(got, b"content-length") == [framing] and not values(got, b"transfer-encoding")
    else:
        assert not values(got, b"content-length") and not values(got, b"transfer-encoding")
    assert not values(got, b"expect")
    assert got[len(got) - len(add) :] == add if add else True


def test_upstream_request_head_remove_and_expect() -> None:
    req = read_head(
        b"POST /up HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 3\r\n"
        b"Authorization: secret\r\nX-Keep: 1\r\nCookie: c=1\r\n\r\n"
    )
    out = upstream_request_head(req, b"/rewritten?x=1", "192.0.2.1", b"https", b"r1", b"3",
                                remove=frozenset({b"authorization", b"cookie"}))  # fmt: skip
    _, sink = parse_request(out)
    assert sink.url == b"/rewritten?x=1"
    assert names(sink.headers) == [b"host", b"x-keep", b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id",
                                   b"x-forwarded-host", b"content-length"]  # fmt: skip


def test_http10_request_without_host_gets_no_forwarded_host() -> None:
    req = read_head(b"GET / HTTP/1.0\r\n\r\n")
    _, sink = parse_request(upstream_request_head(req, b"/", "192.0.2.1", b"http", b"r", b"", host=b"up"))
    assert values(sink.headers, b"host") == [b"up"] and not values(sink.headers, b"x-forwarded-host")


def test_connection_tokens() -> None:
    assert connection_tokens(b"close") == frozenset()
    assert connection_tokens(b"Keep-Alive, X-Foo ,, upgrade,x-bar") == {b"x-foo", b"x-bar"}


# -- responses -----------------------------------------------------------------------------


added_headers = st.tuples(st.sampled_from([b"X-Request-Id", b"Set-Cookie"]), st.sampled_from([b"v1", b"a=b"]))


@st.composite
def upstream_responses(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[str, str]], str]:
    status = draw(st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304)))
    extra = draw(st.lists(st.tuples(header_name, header_value), max_size=12))
    hop = draw(st.lists(st.sampled_from(HOP), max_size=3, unique=True))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    lines = [*extra, *hop]
    if draw(st.booleans()):
        lines.append(("Connection", draw(st.sampled_from(["keep-alive", "close"]))))
    if framing == "length":
        lines.append(("Content-Length", "0"))
    elif framing == "chunked":
        lines.append(("Transfer-Encoding", "chunked"))
    draw(st.randoms()).shuffle(lines)
    phrase = draw(st.sampled_from(["", "OK", "Custom Reason"]))
    wire = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in lines) + "\r\n"
    return wire.encode(), status, lines, phrase


@PROPS
@given(
    case=upstream_responses(),
    close=st.booleans(),
    add=st.lists(added_headers, max_size=2),
)
def test_client_response_head(case: tuple[bytes, int, list[tuple[str, str]], str], close: bool, add: list) -> None:
    wire, status, lines, phrase = case
    reader = ResponseReader()
    reader.feed(wire)
    resp = reader.head
    assert resp is not None
    chunked = resp.content_length is None  # what the proxy does for an HTTP/1.1 client
    out = client_response_head(resp, chunked=chunked, close=close, add=add)
    sink = Sink()
    parser = sink.parser = httptools.HttpResponseParser(sink)
    parser.feed_data(out)
    assert sink.complete
    assert parser.get_status_code() == status
    assert sink.status == (phrase.encode() or reason(status))
    end_to_end = [(n.encode(), v.encode()) for n, v in lines if n.lower().encode() not in HOP_BY_HOP]
    want = end_to_end + ([(b"Transfer-Encoding", b"chunked")] if chunked else []) + list(add)
    want += [(b"Connection", b"close")] if close else []
    assert sink.headers == want
    if chunked or resp.content_length is not None:
        assert sink.keep_alive is not close


def read_resp(wire: bytes) -> ResponseHead:
    reader = ResponseReader()
    reader.feed(wire)
    assert reader.head is not None
    return reader.head


def test_chunk_helpers_parse_back() -> None:
    head = client_response_head(read_resp(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n"), chunked=True, close=False)
    body: list[bytes] = []

    class Body(Sink):
        def on_body(self, data: bytes) -> None:
            body.append(data)

        def on_message_complete(self) -> None:
            body.append(b"<end>")

    httptools.HttpResponseParser(Body()).feed_data(head + chunk(b"hello ") + chunk(b"x" * 300) + LAST_CHUNK)
    assert b"".join(body) == b"hello " + b"x" * 300 + b"<end>"


@pytest.mark.parametrize("status", sorted(CODES))
def test_error_responses_parse_back(status: int) -> None:
    data = error_response(status, 'say "no"\n', b"rid-1", close=True, headers=((b"Retry-After", b"1"),))
    sink = Sink()
    body: list[bytes] = []
    sink.on_body = body.append  # type: ignore[attr-defined]
    parser = sink.parser = httptools.HttpResponseParser(sink)
    parser.feed_data(data)
    assert parser.get_status_code() == status and sink.keep_alive is False
    assert (b"X-Request-Id", b"rid-1") in sink.headers and (b"Retry-After", b"1") in sink.headers
    doc = json.loads(b"".join(body))
    assert doc == {"error": CODES[status], "message": 'say "no"\n', "status": status, "request_id": "rid-1"}
    head_only = error_response(status, "m", head_only=True)
    assert head_only.endswith(b"\r\n\r\n") and b"Content-Length: " in head_only
