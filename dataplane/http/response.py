"""Sans-IO HTTP/1.1 response reader for upstream responses, one reader per response.

Fast path: most upstream responses have a plain head and a Content-Length
body. For those the reader splits the head itself, keeps its header lines as
they came (minus hop-by-hop headers) so the proxy can pass them on without
rebuilding them, and counts body bytes instead of parsing them. Anything else
(chunked or read-until-close bodies, folded or odd header lines, interim 1xx
responses) goes through httptools (llhttp), which validates and de-chunks.

The reader also knows what llhttp cannot: a reply to HEAD has no body
whatever its Content-Length says, and a body with neither length nor chunking
ends when the upstream closes (`eof()`).

Hostile or broken upstreams get `UpstreamProtocolError` (the proxy answers 502
and counts it) instead of reaching the client: control bytes or malformed
names in a header line (the fast path checks the whole block with one regular
expression; llhttp refuses the rest), a bare LF where CRLF belongs (refused at
once, instead of waiting for a CRLF CRLF that never comes), bytes that are not
an HTTP/1.x status line, and a Transfer-Encoding other than exactly
``chunked`` (the node de-chunks and re-frames bodies; passing ``gzip,
chunked`` on as plain chunked would lose the gzip coding).
"""

from __future__ import annotations

import re

import httptools

from dataplane.http.request import MESSAGE_END

MAX_HEAD = 64 * 1024

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)


class UpstreamProtocolError(Exception):
    """The upstream sent something that is not HTTP/1.x."""


class ResponseHead:
    """Status and framing of a response, and its end-to-end header block.

    `block` holds the header lines ready to forward ("Name: value" joined by CRLF,
    without a trailing CRLF; hop-by-hop headers and headers named in Connection
    removed); `headers` gives them as (name, value) pairs.
    """

    __slots__ = (
        "_headers", "block", "chunked", "content_length", "keep_alive", "reason", "status", "upgrade", "version",
    )  # fmt: skip

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.version = "1.1"
        self.block = b""
        self._headers: list[tuple[bytes, bytes]] | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade = b""  # the Upgrade header of a 101 (hop-by-hop, so not in `block`)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        if self._headers is None:
            pairs = []
            for line in self.block.split(b"\r\n") if self.block else ():
                name, _, value = line.partition(b":")
                pairs.append((name, value.strip()))
            self._headers = pairs
        return self._headers

    @property
    def until_close(self) -> bool:
        """Body delimited by the upstream closing the connection."""
        return self.content_length is None and not self.chunked


def _drop_connection_tokens(lines: list[bytes], connection: bytes) -> list[bytes]:
    tokens = {t.strip().lower() for t in connection.split(b",")} - {b"close", b"keep-alive", b""}
    if not tokens:
        return lines
    return [ln for ln in lines if ln.partition(b":")[0].lower() not in tokens]


# A header block the fast path may pass on as it is: token names, a colon, field-value
# characters (visible ASCII, SP, HTAB, obs-text). Anything else goes to llhttp, which refuses it.
_CLEAN_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")

# First bytes that need a closer look: letters starting Content-Length and the hop-by-hop
# names (False), and whitespace, which means obsolete line folding (True).
_FIRST_BYTE = {**dict.fromkeys(b"cCtTkKpPuU", False), 32: True, 9: True}
_SPECIAL = {
    b"content-length": 1,
    b"transfer-encoding": 2,
    b"connection": 3,
    **dict.fromkeys(_HOP_BY_HOP - {b"transfer-encoding", b"connection"}, 4),
}


def _fast_head(buf: bytes, end: int, bodyless: bool = False) -> ResponseHead | None:
    """Parse a plain response head with a Content-Length (or none needed), else None for llhttp.

    One split and a glance at each line's first byte: only lines that may be
    Content-Length or hop-by-hop are looked at closely. `bodyless` (a reply to
    HEAD): the framing headers do not matter, there is no body.
    """
    if buf[:7] != b"HTTP/1." or buf[8] != 32 or not buf[9:12].isdigit():
        return None
    crlf = buf.count(b"\r\n", 0, end)
    if buf.count(b"\n", 0, end) != crlf or buf.count(b"\r", 0, end) != crlf:
        return None  # a bare CR or LF: a client could split these lines differently; llhttp refuses them
    first = buf.find(b"\r\n")
    if first < 0 or first > end:
        first = end
    elif _CLEAN_BLOCK.fullmatch(buf, first + 2, end + 2) is None:
        return None  # a control byte, a bad name, a line without a colon: llhttp judges (and refuses)
    status = int(buf[9:12])
    if status < 200 or (first > 12 and buf[12] != 32):
        return None  # 1xx (interim, upgrades) go through llhttp
    keep = buf[7] == 49  # HTTP/1.1
    kept: list[bytes] = []
    content_length: int | None = None
    connection = b""
    if first < end:
        for line in buf[first + 2 : end].split(b"\r\n"):
            look = _FIRST_BYTE.get(line[0])  # None for most headers: kept as they are
            if look is not None:
                if look:
                    return None  # obsolete line folding: let llhttp judge
                name, _, value = line.partition(b":")
                special = _SPECIAL.get(name.lower())
                if special is not None:
                    if special == 1:  # content-length
                        value = value.strip()
                        if content_length is not None or not value.isdigit():
                            return None
                        content_length = int(value)
                    elif special == 2:  # transfer-encoding
                        if not bodyless:
                            return None  # chunked (or worse): llhttp de-chunks it
                        continue  # a reply to HEAD has no body whatever its framing says
                    else:  # hop-by-hop: dropped
                        if special == 3:  # Connection may come on several lines: all count
                            value = value.strip().lower()
                            connection = connection + b"," + value if connection else value
                        continue
                elif name[-1:] in (b" ", b"\t"):
                    return None  # "Content-Length :": a client may still read it as framing; llhttp refuses it
            kept.append(line)
    if connection:
        if connection == b"keep-alive":
            keep = True
        elif connection == b"close":
            keep = False
        else:
            tokens = {t.strip() for t in connection.split(b",")}
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens:
                keep = True
            kept = _drop_connection_tokens(kept, connection)
    head = ResponseHead()
    head.status = status
    head.reason = buf[13:first]
    head.version = "1.1" if buf[7] == 49 else "1.0"
    head.keep_alive = keep
    head.content_length = content_length
    head.block = b"\r\n".join(kept)
    return head


class ResponseReader:
    __slots__ = (
        "_bodyless", "_buf", "_coding", "_connection", "_done", "_lines", "_next", "_parser", "_remaining", "events",
        "head", "tail",
    )  # fmt: skip

    def __init__(self, *, head_request: bool = False) -> None:
        self.events: list[object] = []
        self.head: ResponseHead | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._bodyless = head_request
        self._done = False
        self._buf = b""
        self._remaining = -1  # bytes of a Content-Length body still to come (fast path)
        self.tail = b""  # after a 101: bytes of the new protocol that came with the head

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> None:
        """Parse `data` into `events` (head, body chunks, MESSAGE_END)."""
        if self._done:
            if data and self.head is not None:
                self.head.keep_alive = False  # bytes past the end: the framing is lost
            return
        if self._remaining >= 0:
            self._body(data)
        elif self._parser is not None:
            self._llhttp(data)
        else:
            self._start(data)

    def _start(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise UpstreamProtocolError("response head too large")
            if buf[:5] != b"HTTP/"[: len(buf)]:
                raise UpstreamProtocolError(f"not an HTTP response: {bytes(buf[:20])!r}")
            if buf.count(b"\n") != buf.count(b"\r\n"):
                raise UpstreamProtocolError("a bare LF in the response head")
            self._buf = buf
            return
        self._buf = b""
        head = _fast_head(buf, end, self._bodyless)
        if head is not None and (self._bodyless or head.status in (204, 304)):
            head.content_length = 0
        if head is None or head.content_length is None:
            self._parser = httptools.HttpResponseParser(self)
            self._llhttp(buf)
            return
        self.head = head
        self.events.append(head)
        self._remaining = head.content_length
        self._body(buf[end + 4 :])

    def _body(self, data: bytes) -> None:
        remaining = self._remaining
        if data:
            if len(data) > remaining:
                # More than announced (a body on HEAD/204/304, or a broken upstream): drop
                # the excess and never reuse this connection, whose framing is lost.
                data = data[:remaining]
                assert self.head is not None
                self.head.keep_alive = False
            if data:
                self.events.append(data)
            remaining -= len(data)
            self._remaining = remaining
        if remaining == 0 and not self._done:
            self._done = True
            self.events.append(MESSAGE_END)

    def _llhttp(self, data: bytes) -> None:
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, UpstreamProtocolError):
                raise cause from None
            if not isinstance(cause, _HeadDone):
                raise UpstreamProtocolError(str(exc)) from None
        except httptools.HttpParserUpgrade as exc:
            # A 101: the head is queued; the bytes after it belong to the new protocol.
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.tail = data[offset:]
        except httptools.HttpParserError as exc:
            if self._done and self.head is not None:
                self.head.keep_alive = False  # junk after a complete response: drop it, never reuse
                return
            raise UpstreamProtocolError(str(exc)) from None

    def eof(self) -> bool:
        """The upstream closed; True when that completes the response (a read-until-close body)."""
        if self._done:
            return True
        head = self.head
        if head is not None and head.until_close and self._remaining < 0:
            self._done = True
            self.events.append(MESSAGE_END)
            return True
        return False

    # -- llhttp callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done:  # another message after the response: not ours, and the framing is lost
            assert self.head is not None
            self.head.keep_alive = False
            raise _HeadDone
        self._next = ResponseHead()
        self._connection = b""
        self._coding = b""
        self._lines: list[bytes] = []

    def on_status(self, reason: bytes) -> None:
        self._next.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._next
        low = name.lower()
        if low in _HOP_BY_HOP:
            if low == b"transfer-encoding":  # may come on several lines: all count
                self._coding = self._coding + b"," + value.lower() if self._coding else value.lower()
            elif low == b"connection":  # may come on several lines: all count
                self._connection = self._connection + b"," + value.lower() if self._connection else value.lower()
            elif low == b"upgrade":
                head.upgrade = value
            return
        if low == b"content-length":
            try:
                head.content_length = int(value)
            except ValueError:
                raise UpstreamProtocolError("bad Content-Length from upstream") from None
        self._lines.append(name + b": " + value)

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        head = self._next
        head.status = parser.get_status_code()
        if 100 <= head.status < 200 and head.status != 101:
            return  # interim response: llhttp completes it; wait for the final one
        head.version = parser.get_http_version()
        head.keep_alive = parser.should_keep_alive()
        if self._coding:
            codings = [c.strip() for c in self._coding.split(b",") if c.strip()]
            if codings != [b"chunked"] and not self._bodyless and head.status not in (204, 304):
                raise UpstreamProtocolError(
                    f"Transfer-Encoding {self._coding.decode('latin-1')!r}: only chunked is passed on"
                )
            head.chunked = codings == [b"chunked"]
        lines = _drop_connection_tokens(self._lines, self._connection) if self._connection else self._lines
        head.block = b"\r\n".join(lines)
        if self._bodyless or head.status in (204, 304):
            head.content_length = 0
            head.chunked = False
        self.head = head
        self.events.append(head)
        if self._bodyless:
            self._done = True
            self.events.append(MESSAGE_END)
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        if self.head is None:  # end of an interim 1xx response
            return
        if not self._done:
            self._done = True
            self.events.append(MESSAGE_END)


class _HeadDone(Exception):
    """Stops llhttp after the head of a reply to HEAD (it would wait for a body)."""
