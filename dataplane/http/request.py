"""Sans-IO HTTP/1.1 request reader on httptools (llhttp).

`RequestReader.feed(data)` parses client bytes and queues events: a
`RequestHead` when headers are complete, then body chunks (bytes), then
`MESSAGE_END`. Pipelined requests queue one after another. Malformed input
raises `HttpError` with the status the client should get: 400 for a bad
request line or headers (llhttp refuses conflicting Content-Length /
Transfer-Encoding and other smuggling vectors), 431 for oversized headers,
413 for a body over the limit, 501 for an unknown transfer coding.

No sockets, no clock: the trio shell feeds bytes and drains `events`.
"""

from __future__ import annotations

from collections import deque

import httptools

MESSAGE_END = object()
"""Event marking the end of a request body."""

MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 128


class HttpError(Exception):
    """A request the node refuses; `status` is what the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHead:
    __slots__ = (
        "_index",
        "chunked",
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "path",
        "query",
        "request_id",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.path = "/"
        self.query = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self._index: dict[bytes, bytes] | None = None  # lower-case name -> first value, built on first get
        self.host = ""
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.expect_continue = False
        self.upgrade = False
        self.request_id: bytes | None = None
        self.connection = b""

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def get(self, name: str) -> str | None:
        """First value of header `name` (lower case), decoded; for route header matching."""
        index = self._index
        if index is None:  # policies and header routes ask several times per request: index once
            index = {}
            for n, v in self.headers:
                index.setdefault(n.lower(), v)
            self._index = index
        value = index.get(name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")


class RequestReader:
    __slots__ = (
        "_body_limit",
        "_body_seen",
        "_head",
        "_head_size",
        "_header_bytes",
        "_in_body",
        "_max_header_bytes",
        "_parser",
        "_url",
        "events",
    )

    def __init__(self, *, max_header_bytes: int = MAX_HEADER_BYTES, body_limit: int = 0) -> None:
        self.events: deque[object] = deque()
        self._parser = httptools.HttpRequestParser(self)
        self._head = RequestHead()
        self._url = b""
        self._in_body = False
        self._header_bytes = 0
        self._head_size = 0
        self._max_header_bytes = max_header_bytes
        self._body_limit = body_limit
        self._body_seen = 0

    def feed(self, data: bytes) -> None:
        if not self._in_body:
            self._header_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is queued; upgraded bytes are handled by the caller (not proxied yet)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpError):
                raise cause from None
            raise HttpError(400, f"bad request: {exc}") from None
        except httptools.HttpParserError as exc:
            text = str(exc)
            if "Transfer-Encoding" in text and "Content-Length" not in text:
                raise HttpError(501, f"unsupported transfer coding: {text}") from None
            raise HttpError(400, f"bad request: {text}") from None
        if not self._in_body and self._header_bytes > self._max_header_bytes:
            raise HttpError(431, "request headers too large")

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head = RequestHead()
        self._url = b""
        self._body_seen = 0
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_header_bytes:
            raise HttpError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        if len(head.headers) >= MAX_HEADERS:
            raise HttpError(431, f"more than {MAX_HEADERS} request headers")
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_header_bytes:
            raise HttpError(431, "request headers too large")
        head.headers.append((name, value))
        head._index = None
        n = len(name)
        if n == 4 and name.lower() == b"host":
            if head.host or any(len(h) == 4 and h.lower() == b"host" for h, _ in head.headers[:-1]):
                raise HttpError(400, "more than one Host header")  # an empty first Host counts too
            head.host = value.decode("latin-1")
        elif n == 14 and name.lower() == b"content-length":
            try:
                head.content_length = int(value)
            except ValueError:
                raise HttpError(400, "bad Content-Length") from None
        elif n == 17 and name.lower() == b"transfer-encoding":
            # llhttp accepts codings that end in chunked ("gzip, chunked"), but the node only
            # de-chunks: forwarding such a body as plain chunked would corrupt it.
            if value.strip().lower() != b"chunked":
                raise HttpError(501, f"unsupported transfer coding: {value.decode('latin-1')}")
            head.chunked = True
        elif n == 6 and name.lower() == b"expect":
            if value.lower() != b"100-continue":
                raise HttpError(417, f"unsupported Expect: {value.decode('latin-1')}")
            head.expect_continue = True
        elif n == 12 and name.lower() == b"x-request-id":
            head.request_id = value
        elif n == 10 and name.lower() == b"connection":
            head.connection = head.connection + b"," + value if head.connection else value

    def on_headers_complete(self) -> None:
        head = self._head
        parser = self._parser
        head.method = parser.get_method().decode("ascii")
        head.version = parser.get_http_version()
        head.keep_alive = parser.should_keep_alive()
        head.upgrade = parser.should_upgrade()
        url = self._url
        if not url or url[0] != 47:  # 47 == "/"
            if url.startswith((b"http://", b"https://")):
                parsed = httptools.parse_url(url)
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            elif head.method != "OPTIONS" or url != b"*":
                raise HttpError(400, "bad request target")
        head.target = url
        path, _, query = url.partition(b"?")
        head.path = path.decode("latin-1")
        head.query = query
        if head.version == "1.1" and not head.host:
            raise HttpError(400, "HTTP/1.1 request without Host header")
        if self._body_limit and head.content_length and head.content_length > self._body_limit:
            raise HttpError(413, f"request body larger than {self._body_limit} bytes")
        self._in_body = True
        self._header_bytes = 0
        self.events.append(head)

    def on_body(self, body: bytes) -> None:
        if self._body_limit:
            self._body_seen += len(body)
            if self._body_seen > self._body_limit:
                raise HttpError(413, f"request body larger than {self._body_limit} bytes")
        self.events.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self.events.append(MESSAGE_END)
