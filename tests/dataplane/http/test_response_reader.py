"""Property and unit tests of the upstream response reader (`dataplane.http.response`).

Random responses (status, end-to-end and hop-by-hop headers, Connection options, a body by
Content-Length, chunked or read-until-close, optional interim 1xx responses first) are fed
whole, byte by byte and split at random points; the reader must report the same head and
body each time, forward only end-to-end header lines, and never let bytes past the end of
the response into its events. Garbage raises UpstreamProtocolError and nothing else.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.http.request import MESSAGE_END
from dataplane.http.response import MAX_HEAD, ResponseHead, ResponseReader, UpstreamProtocolError

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
TCHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
RESERVED = {n.decode() for n in HOP_BY_HOP} | {"content-length", "close"}

token = st.text(alphabet=TCHARS, min_size=1, max_size=14)
header_name = token.filter(lambda n: n.lower() not in RESERVED)
header_value = st.text(alphabet=VISIBLE + " ", max_size=30).map(str.strip)
EXTRA_HOP = [
    ("Keep-Alive", "timeout=5, max=100"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("keep-alive", "timeout=1"),
]
INTERIM = [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 102 Processing\r\n\r\n",
           b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"]  # fmt: skip


def randcase(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.swapcase() if f else c for c, f in zip(text, flips, strict=True))


@dataclass
class Resp:
    status: int
    version: str
    lines: list[tuple[str, str]]  # every header line as sent
    kept: list[tuple[str, str]]  # the end-to-end ones the reader must forward
    framing: str  # length | chunked | close
    body: bytes
    chunks: list[int] = field(default_factory=list)
    close: bool = False  # Connection: close
    keep_alive_option: bool = False  # Connection: keep-alive
    head_request: bool = False
    interim: list[bytes] = field(default_factory=list)

    @property
    def bodyless(self) -> bool:
        return self.head_request or self.status in (204, 304)

    def wire(self) -> bytes:
        head = f"HTTP/{self.version} {self.status} Reason\r\n" + "".join(f"{n}: {v}\r\n" for n, v in self.lines)
        out = b"".join(self.interim) + head.encode() + b"\r\n"
        if self.bodyless:
            return out
        if self.framing == "chunked":
            pos = 0
            for size in self.chunks:
                out += b"%x\r\n%b\r\n" % (size, self.body[pos : pos + size])
                pos += size
            return out + b"0\r\n\r\n"
        return out + self.body

    def expected_keep_alive(self) -> bool | None:
        if self.close:
            return False
        if self.bodyless and self.framing == "close" and self.head_request:
            return None  # llhttp cannot know a HEAD reply has no body: either answer is safe
        if self.framing == "close" and not self.bodyless:
            return False
        return self.version == "1.1" or self.keep_alive_option


@st.composite
def responses(draw: st.DrawFn, *, allow_interim: bool = True) -> Resp:
    status = draw(st.one_of(st.integers(min_value=200, max_value=599), st.sampled_from([200, 204, 304])))
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    head_request = draw(st.booleans()) if draw(st.integers(0, 3)) == 0 else False
    framing = draw(st.sampled_from(["length", "chunked", "close"] if version == "1.1" else ["length", "close"]))
    if status in (204, 304) and framing == "chunked":
        framing = draw(st.sampled_from(["length", "close"]))
    extra = draw(st.lists(st.tuples(header_name, header_value), max_size=12))
    # Header names the Connection header lists (from the generated ones, in any case, plus unknown ones).
    named = draw(st.lists(st.sampled_from([n for n, _ in extra]), max_size=3)) if extra else []
    named = [randcase(draw, n) for n in named] + draw(st.lists(header_name, max_size=1))
    option = draw(st.sampled_from(["", "close", "keep-alive"]))
    tokens = [*named, *([option] if option else [])]
    draw(st.randoms()).shuffle(tokens)
    conn_lines: list[tuple[str, str]] = []
    if tokens:
        # One Connection line, or the options spread over several lines (both are valid).
        if draw(st.booleans()) or len(tokens) == 1:
            conn_lines.append((randcase(draw, "Connection"), ", ".join(tokens)))
        else:
            cut = draw(st.integers(min_value=1, max_value=len(tokens) - 1))
            conn_lines += [("Connection", ", ".join(tokens[:cut])), ("connection", ",".join(tokens[cut:]))]
    hop = draw(st.lists(st.sampled_from(EXTRA_HOP), max_size=3, unique=True))
    body, chunks = b"", []
    framing_lines: list[tuple[str, str]] = []
    if framing == "length":
        body = b"" if status in (204, 304) else draw(st.binary(max_size=300))
        length = draw(st.integers(0, 99999)) if status in (204, 304) or head_request else len(body)
        framing_lines.append((randcase(draw, "Content-Length"), str(length)))
    elif framing == "chunked":
        chunks = draw(st.lists(st.integers(min_value=1, max_value=80), max_size=5))
        body = draw(st.binary(min_size=sum(chunks), max_size=sum(chunks)))
        framing_lines.append((randcase(draw, "Transfer-Encoding"), "chunked"))
    elif status not in (204, 304):
        body = draw(st.binary(max_size=300))
    if head_request:
        body = b""
    lines = list(extra)
    for h in [*conn_lines, *hop, *framing_lines]:
        lines.insert(draw(st.integers(min_value=0, max_value=len(lines))), h)
    dropped = {t.lower() for t in named}
    kept = [(n, v) for n, v in lines if n.lower().encode() not in HOP_BY_HOP and n.lower() not in dropped]
    interim = draw(st.lists(st.sampled_from(INTERIM), max_size=2)) if allow_interim and version == "1.1" else []
    return Resp(status, version, lines, kept, framing, body, chunks, option == "close", option == "keep-alive",
                head_request, interim)  # fmt: skip


def cuts_for(draw: st.DrawFn, data: bytes, mode: str) -> list[int]:
    if mode == "whole" or not data:
        return []
    if mode == "bytes":
        return list(range(1, len(data)))
    return sorted(set(draw(st.lists(st.integers(min_value=1, max_value=max(1, len(data) - 1)), max_size=12))))


@dataclass
class Result:
    head: ResponseHead
    body: bytes
    ended: bool
    events: list[object]


def read(data: bytes, cuts: list[int], *, head_request: bool = False, eof: bool = True) -> Result:
    reader = ResponseReader(head_request=head_request)
    prev = 0
    for cut in [*cuts, len(data)]:
        reader.feed(data[prev:cut])
        prev = cut
    if eof:
        reader.eof()
    events = list(reader.events)
    assert events and isinstance(events[0], ResponseHead), events[:1]
    assert all(not isinstance(ev, ResponseHead) for ev in events[1:]), "a second head"
    ends = [i for i, ev in enumerate(events) if ev is MESSAGE_END]
    assert len(ends) <= 1 and (not ends or ends[0] == len(events) - 1), "MESSAGE_END twice or not last"
    assert all(isinstance(ev, bytes) for ev in events[1 : ends[0] if ends else None])
    body = b"".join(ev for ev in events[1:] if isinstance(ev, bytes))
    assert reader.head is events[0]
    return Result(events[0], body, bool(ends), events)  # type: ignore[arg-type]


def key(head: ResponseHead) -> tuple[object, ...]:
    return (head.status, head.version, head.keep_alive, head.content_length, head.chunked, head.block)


def block_lines(head: ResponseHead) -> list[tuple[str, str]]:
    return [(n.decode(), v.decode()) for n, v in head.headers]


# -- properties ----------------------------------------------------------------------------


@PROPS
@given(resp=responses(), mode=st.sampled_from(["whole", "bytes", "random"]), data=st.data())
def test_random_responses_read_as_sent(resp: Resp, mode: str, data: st.DataObject) -> None:
    wire = resp.wire()
    got = read(wire, cuts_for(data.draw, wire, mode), head_request=resp.head_request)
    head = got.head
    assert got.ended
    assert head.status == resp.status
    assert got.body == (b"" if resp.bodyless else resp.body)
    if resp.bodyless:
        assert head.content_length == 0 and not head.chunked
    elif resp.framing == "length":
        assert head.content_length == len(resp.body) and not head.chunked
    elif resp.framing == "chunked":
        assert head.chunked and head.content_length is None
    else:
        assert head.until_close
    want = resp.expected_keep_alive()
    if want is not None:
        assert head.keep_alive is want
    # Only end-to-end header lines are forwarded, all of them, in order, as they came.
    assert block_lines(head) == resp.kept
    for name, _ in head.headers:
        assert name.lower() not in HOP_BY_HOP


@PROPS
@given(resp=responses(), data=st.data())
def test_whole_bytewise_and_random_splits_agree(resp: Resp, data: st.DataObject) -> None:
    wire = resp.wire()
    results = [read(wire, cuts_for(data.draw, wire, mode), head_request=resp.head_request)
               for mode in ("whole", "bytes", "random")]  # fmt: skip
    assert len({key(r.head) for r in results}) == 1
    assert len({r.body for r in results}) == 1


@PROPS
@given(resp=responses(allow_interim=False), extra=st.binary(min_size=1, max_size=200), data=st.data())
def test_bytes_past_the_end_never_reach_the_events(resp: Resp, extra: bytes, data: st.DataObject) -> None:
    if resp.framing == "close" and not resp.bodyless:
        return  # an until-close body has no end before EOF: every byte belongs to it
    wire = resp.wire()
    for mode in ("whole", "random"):
        got = read(wire + extra, cuts_for(data.draw, wire + extra, mode), head_request=resp.head_request, eof=False)
        assert got.ended
        assert got.body == (b"" if resp.bodyless else resp.body)
        if resp.framing == "chunked" and not resp.bodyless and not extra.strip(b"\r\n"):
            continue  # llhttp skips empty lines between messages (RFC 9112 2.2): consumed, harmless
        assert got.head.keep_alive is False, "a connection whose framing broke must not be reused"


@PROPS
@given(resp=responses(allow_interim=False), extra=st.binary(min_size=1, max_size=100))
def test_bytes_after_the_end_in_a_later_read(resp: Resp, extra: bytes) -> None:
    if resp.framing == "close" and not resp.bodyless:
        return
    reader = ResponseReader(head_request=resp.head_request)
    reader.feed(resp.wire())
    assert reader.done
    n = len(reader.events)
    reader.feed(extra)
    assert len(reader.events) == n
    assert reader.head is not None and reader.head.keep_alive is False


def _parse_or_protocol_error(data: bytes, cuts: list[int], head_request: bool) -> None:
    reader = ResponseReader(head_request=head_request)
    try:
        prev = 0
        for cut in [*cuts, len(data)]:
            reader.feed(data[prev:cut])
            prev = cut
        reader.eof()
    except UpstreamProtocolError:
        return
    if reader.events:
        assert isinstance(reader.events[0], ResponseHead)
        assert all(isinstance(ev, bytes) or ev is MESSAGE_END for ev in reader.events[1:])


@FUZZ
@given(blob=st.binary(max_size=400), head_request=st.booleans(), data=st.data())
def test_garbage_raises_upstream_protocol_error_only(blob: bytes, head_request: bool, data: st.DataObject) -> None:
    _parse_or_protocol_error(blob, [], head_request)
    _parse_or_protocol_error(blob, cuts_for(data.draw, blob, "random"), head_request)


@FUZZ
@given(
    prefix=st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.0 404 N\r\n"]),
    tail=st.binary(max_size=300),
    head_request=st.booleans(),
)
def test_valid_status_line_then_garbage(prefix: bytes, tail: bytes, head_request: bool) -> None:
    _parse_or_protocol_error(prefix + tail, [], head_request)
    _parse_or_protocol_error(prefix + tail, list(range(1, len(prefix + tail))), head_request)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bool]:
    resp = draw(responses())
    wire = bytearray(resp.wire())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        pos = draw(st.integers(min_value=0, max_value=len(wire)))
        junk = draw(st.one_of(st.binary(min_size=1, max_size=4), st.sampled_from([b"\r\n", b"\n", b":", b" ", b"\0"])))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        if op == "replace":
            wire[pos : pos + len(junk)] = junk
        elif op == "insert":
            wire[pos:pos] = junk
        else:
            del wire[pos : pos + len(junk)]
    return bytes(wire), resp.head_request


@FUZZ
@given(case=mutated(), data=st.data())
def test_mutated_responses_parse_or_raise_protocol_error(case: tuple[bytes, bool], data: st.DataObject) -> None:
    blob, head_request = case
    _parse_or_protocol_error(blob, [], head_request)
    _parse_or_protocol_error(blob, cuts_for(data.draw, blob, "random"), head_request)


# -- unit tests ----------------------------------------------------------------------------


def events_of(data: bytes | list[bytes], **kw: bool) -> tuple[ResponseReader, list[object]]:
    reader = ResponseReader(**kw)
    for piece in [data] if isinstance(data, bytes) else data:
        reader.feed(piece)
    return reader, reader.events


def body_of(events: list[object]) -> bytes:
    return b"".join(ev for ev in events if isinstance(ev, bytes))


def test_content_length_fast_path() -> None:
    reader, events = events_of(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
    head = reader.head
    assert head is not None and head.status == 201 and head.reason == b"Created" and head.version == "1.1"
    assert head.block == b"Content-Length: 5\r\nX-A: 1" and head.headers == [(b"Content-Length", b"5"), (b"X-A", b"1")]
    assert events[1:] == [b"hello", MESSAGE_END] and reader.done and head.keep_alive


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status: int) -> None:
    for extra in (b"Content-Length: 42\r\n", b"", b"Transfer-Encoding: chunked\r\n"):
        reader, events = events_of(b"HTTP/1.1 %d X\r\n%bX-A: 1\r\n\r\n" % (status, extra))
        assert reader.done and events[1:] == [MESSAGE_END]
        assert reader.head is not None and reader.head.content_length == 0 and reader.head.keep_alive


@pytest.mark.parametrize("framing", [b"Content-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n", b""])
def test_reply_to_head_has_no_body(framing: bytes) -> None:
    data = b"HTTP/1.1 200 OK\r\n" + framing + b"X-A: 1\r\n\r\n"
    for pieces in ([data], [data[:10], data[10:]], [data[i : i + 1] for i in range(len(data))]):
        reader, events = events_of(pieces, head_request=True)
        assert reader.done and events[1:] == [MESSAGE_END]
        assert reader.head is not None and reader.head.content_length == 0 and not reader.head.chunked


def test_interim_100_continue_is_skipped() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nhi"
    )
    for size in (None, 1, 7):
        pieces = [data] if size is None else [data[i : i + size] for i in range(0, len(data), size)]
        reader, events = events_of(pieces)
        assert reader.head is not None and reader.head.status == 200
        assert reader.head.block == b"Content-Length: 2\r\nX-Final: 1"
        assert [type(e) for e in events].count(ResponseHead) == 1 and body_of(events) == b"hi"
        assert events[-1] is MESSAGE_END


def test_interim_alone_gives_no_head_yet() -> None:
    reader, events = events_of(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert reader.head is None and events == [] and not reader.done
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert reader.head is not None and reader.head.status == 200 and reader.done


def test_until_close_body_ends_with_eof() -> None:
    reader, events = events_of([b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nabc", b"def"])
    assert reader.head is not None and reader.head.until_close and not reader.head.keep_alive
    assert not reader.done and MESSAGE_END not in events
    assert reader.eof() is True
    assert reader.done and events[-1] is MESSAGE_END and body_of(events) == b"abcdef"
    assert reader.eof() is True and events.count(MESSAGE_END) == 1


def test_eof_before_the_end_is_not_a_complete_response() -> None:
    reader, _ = events_of(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert reader.eof() is False and not reader.done
    reader, _ = events_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
    assert reader.eof() is False
    reader, _ = events_of(b"HTTP/1.1 200 OK\r\nContent-Le")
    assert reader.eof() is False and reader.head is None


def test_bytes_past_content_length_are_dropped_and_end_reuse() -> None:
    reader, events = events_of(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcSURPRISE")
    assert events[1:] == [b"abc", MESSAGE_END]
    assert reader.head is not None and reader.head.keep_alive is False


def test_bytes_past_a_chunked_end_are_dropped_and_end_reuse() -> None:
    # A second response (or junk) after the terminating chunk must not surface as events.
    for tail in (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nQ", b"junk", b"H"):
        data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + tail
        for pieces in ([data], [data[: -len(tail)], tail]):
            reader, events = events_of(pieces)
            assert events[1:] == [b"abc", MESSAGE_END], events
            assert reader.head is not None and reader.head.keep_alive is False


def test_empty_lines_after_a_chunked_end_are_ignored() -> None:
    # llhttp skips CR/LF between messages (RFC 9112 2.2); they are consumed and change nothing.
    reader, events = events_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\r\n")
    assert events[1:] == [b"abc", MESSAGE_END] and reader.done


@pytest.mark.parametrize(
    ("connection", "keep"),
    [
        ([b"close"], False),
        ([b"keep-alive"], True),
        ([b"x-foo"], True),
        ([b"close", b"x-foo"], False),
        ([b"x-foo", b"close"], False),
        ([b"X-Foo, Close"], False),
        ([b"x-bar", b"x-foo"], True),
    ],
)
@pytest.mark.parametrize("framing", [b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n"])
def test_connection_options_over_several_lines(connection: list[bytes], keep: bool, framing: bytes) -> None:
    lines = b"".join(b"Connection: " + c + b"\r\n" for c in connection)
    body = b"0\r\n\r\n" if b"chunked" in framing else b""
    data = b"HTTP/1.1 200 OK\r\n" + lines + b"X-Foo: 1\r\nX-Bar: 2\r\nX-Keep: 3\r\n" + framing + b"\r\n" + body
    reader, _ = events_of(data)
    head = reader.head
    assert head is not None and head.keep_alive is keep
    named = {t.strip().lower() for c in connection for t in c.split(b",")}
    names = {n.lower() for n, _ in head.headers}
    assert b"x-keep" in names
    for token in (b"x-foo", b"x-bar"):
        assert (token in names) is (token not in named)
    assert b"connection" not in names


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
        b"Trailer: X-T\r\nUpgrade: h2c\r\nConnection: keep-alive\r\nX-End: 1\r\nContent-Length: 0\r\n\r\n"
    )
    reader, _ = events_of(data)
    assert reader.head is not None and reader.head.block == b"X-End: 1\r\nContent-Length: 0"


def test_http10_keep_alive_rules() -> None:
    reader, _ = events_of(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert reader.head is not None and reader.head.version == "1.0" and not reader.head.keep_alive
    reader, _ = events_of(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert reader.head is not None and reader.head.keep_alive


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-A: 1\nX-Injected: 2\r\nContent-Length: 2\r\n\r\n",  # bare LF
        b"HTTP/1.1 200 OK\r\nX-A: 1\rX-Injected: 2\r\nContent-Length: 2\r\n\r\n",  # bare CR
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\nContent-Length: 2\r\n\r\n",  # space before colon
        b"HTTP/1.1 200 OK\r\nContent-Length : 9\r\nContent-Length: 2\r\n\r\n",
    ],
)
def test_header_lines_that_split_differently_downstream_are_refused(head: bytes) -> None:
    # The fast path forwards header lines as they came; a line a client could read as two
    # headers, or as framing, would let the upstream desynchronise the client connection.
    with pytest.raises(UpstreamProtocolError):
        events_of(head + b"hi")


def test_obsolete_line_folding_goes_to_llhttp() -> None:
    with pytest.raises(UpstreamProtocolError):
        events_of(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01garbage\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
)
def test_garbage_raises_upstream_protocol_error(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        events_of(data)


def test_oversized_head_raises() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(UpstreamProtocolError):
        for _ in range(MAX_HEAD // 100 + 2):
            reader.feed(b"X-Pad: " + b"v" * 91 + b"\r\n")


def test_switching_protocols_gives_a_head_not_an_exception() -> None:
    # llhttp pauses on a 101; the reader reports the head and leaves the rest to the caller.
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-A: 1\r\n\r\n"
    reader, events = events_of(data)
    assert reader.head is not None and reader.head.status == 101 and events[0] is reader.head


def test_headers_property_splits_block() -> None:
    assert ResponseHead().headers == []
    head = ResponseHead()
    head.block = b"A: 1\r\nB:2\r\nC:  x y "
    assert head.headers == [(b"A", b"1"), (b"B", b"2"), (b"C", b"x y")]


def test_block_round_trips_through_llhttp() -> None:
    # What the reader forwards must itself be a valid header block.
    data = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nSet-Cookie: a=b; Path=/\r\nSet-Cookie: c=d\r\nContent-Length: 0\r\n\r\n"
    reader, _ = events_of(data)
    assert reader.head is not None
    seen: list[tuple[bytes, bytes]] = []

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            seen.append((name, value))

    httptools.HttpResponseParser(Sink()).feed_data(b"HTTP/1.1 200 OK\r\n" + reader.head.block + b"\r\n\r\n")
    assert seen == reader.head.headers


# -- hostile upstreams (issue 12): refused, never passed on ------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX Y: 1\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhi",
    ],
)
def test_hostile_heads_raise(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        ResponseReader().feed(data)


@pytest.mark.parametrize(
    "data", [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", b"HTTP/1.1 200 OK\r\nA: 1\n", b"SSH-2.0-x\r\n"]
)
def test_a_head_that_can_never_complete_raises_at_once(data: bytes) -> None:
    """No CRLF CRLF will ever come: refused on the first bytes instead of waiting for a timeout."""
    with pytest.raises(UpstreamProtocolError):
        ResponseReader().feed(data)


def test_transfer_coding_on_a_bodyless_reply_is_ignored() -> None:
    reader = ResponseReader(head_request=True)
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert reader.head is not None and reader.done


def test_obs_text_in_values_passes() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nX: caf\xe9\r\nContent-Length: 2\r\n\r\nhi")
    assert reader.head is not None and reader.head.block == b"X: caf\xe9\r\nContent-Length: 2"
