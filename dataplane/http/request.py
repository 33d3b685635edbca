"""Sans-IO HTTP/1.1 request reader on httptools (llhttp).

`RequestReader.feed(data)` parses client bytes and queues events: a
`RequestHead` when headers are complete, then body chunks (bytes), then
`MESSAGE_END`. Pipelined requests queue one after another. Malformed input
raises `HttpError` with the status the client should get: 400 for a bad
request line or headers (llhttp refuses conflicting Content-Length /
Transfer-Encoding and other smuggling vectors), 431 for oversized headers,
413 for a body over the limit, 501 for an unknown transfer coding, 405 for
CONNECT on a reverse-proxy listener. A forward-proxy reader (`forward=True`)
takes `CONNECT host:port` (authority-form: `target` is the authority, `path`
empty) and absolute-form `http://` requests (`absolute` set), and refuses
origin-form ones.

The head is normalised before anyone sees it (`dataplane.http.target`): the
path in its canonical spelling (the listener's `PathRules`), the Host checked
and reduced to the key routes compare (`hostname`), an absolute-form target's
authority in place of the Host header (RFC 9112 3.2.2). Headers that policies
read as one value (Host, Authorization, User-Agent, Origin, Referer) may come
once only: a second line is a 400, so no part of the node can read a
different line than another. Other repeated fields are read whole: `get`
joins their lines in order with ", " (RFC 9110 5.3; "; " for Cookie).

No sockets, no clock: the trio shell feeds bytes and drains `events`.
"""

from __future__ import annotations

from collections import deque
from typing import Literal, NoReturn

import httptools

from dataplane.http.target import DEFAULT_RULES, PathRules, TargetError, host_key, normalize_path

MESSAGE_END = object()
"""Event marking the end of a request body."""

MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 128

# Fields the policies read as a single value: a second line is refused (400). Host is
# checked on its own (it also sets `host`); Content-Length conflicts are llhttp's.
_SINGLETONS = frozenset({b"authorization", b"proxy-authorization", b"user-agent", b"origin", b"referer"})
_SINGLETON_LENGTHS = frozenset(len(n) for n in _SINGLETONS)


class HttpError(Exception):
    """A request the node refuses; `status` is what the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHead:
    __slots__ = (
        "_index",
        "absolute",
        "chunked",
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "hostname",
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
        self._index: dict[bytes, bytes] | None = None  # lower-case name -> value(s), built on first get
        self.host = ""  # the Host as sent (or the absolute-form target's authority)
        self.hostname = ""  # what routes compare: lower case, no port, no trailing dot
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.expect_continue = False
        self.upgrade = False
        self.request_id: bytes | None = None
        self.connection = b""
        self.absolute = False  # the target was absolute-form (http://authority/...)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def get(self, name: str) -> str | None:
        """The value of header `name` (lower case), decoded; every line of a repeated field,
        joined in order (", ", or "; " for Cookie), so a policy judges all of them."""
        index = self._index
        if index is None:  # policies and header routes ask several times per request: index once
            index = {}
            for n, v in self.headers:
                key = n.lower()
                old = index.get(key)
                index[key] = v if old is None else old + (b"; " if key == b"cookie" else b", ") + v
            self._index = index
        value = index.get(name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")


class RequestReader:
    __slots__ = (
        "_body_limit",
        "_body_seen",
        "_forward",
        "_h2c_body",
        "_head",
        "_head_size",
        "_header_bytes",
        "_in_body",
        "_max_header_bytes",
        "_parser",
        "_rules",
        "_url",
        "events",
        "tail",
    )

    def __init__(
        self,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        body_limit: int = 0,
        path_rules: PathRules = DEFAULT_RULES,
        forward: bool = False,
    ) -> None:
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
        self._rules = path_rules
        self._forward = forward
        self.tail = b""  # after an upgrade or CONNECT: bytes of the new protocol that came with the head
        # see _decline_h2c: None, the parser of a declined h2c upgrade's body, or False once it is read
        self._h2c_body: httptools.HttpRequestParser | Literal[False] | None = None

    def feed(self, data: bytes) -> None:
        if self._h2c_body is not None:
            self._feed_h2c_body(data)
            return
        if not self._in_body:
            self._header_bytes += len(data)
        upgraded = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The head is queued; what follows it belongs to the new protocol (a CONNECT tunnel),
            # unless the upgrade is to h2c, which is declined (below, outside this handler).
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.tail = data[offset:]
            upgraded = True
        except httptools.HttpParserCallbackError as exc:
            _raise_for_callback(exc)
        except httptools.HttpParserError as exc:
            _raise_for_parse(exc)
        if upgraded and _asks_for_h2c(self._head):
            tail, self.tail = self.tail, b""
            self._decline_h2c(tail)
        elif not self._in_body and self._header_bytes > self._max_header_bytes:
            raise HttpError(431, "request headers too large")

    def _decline_h2c(self, tail: bytes) -> None:
        """`Upgrade: h2c` is declined (RFC 9113 deprecates it; HTTP/2 here is prior knowledge or
        ALPN) and the request served as HTTP/1.1: never passed upstream, where a backend that
        speaks h2c would take the rest of the connection past routing and policies (h2c smuggling).

        llhttp stops at the head of any upgrade, body or not. Without a body the parser resumes on
        what follows (a pipelined request). With one, the body is read by a second parser given
        only its framing, and the connection ends after this exchange: the bytes after the body
        are not read."""
        head = self._head
        head.upgrade = False
        if not head.has_body:
            if tail:
                self.feed(tail)
            return
        head.keep_alive = False
        if self.events and self.events[-1] is MESSAGE_END:
            self.events.pop()  # llhttp ended the message at the head: the body comes first
        self._in_body = True
        framing = b"Transfer-Encoding: chunked" if head.chunked else b"Content-Length: %d" % (head.content_length or 0)
        self._h2c_body = httptools.HttpRequestParser(_BodyOnly(self))
        self._feed_h2c_body(b"POST / HTTP/1.1\r\nHost: h2c\r\n" + framing + b"\r\n\r\n" + tail)

    def _feed_h2c_body(self, data: bytes) -> None:
        parser = self._h2c_body
        if not parser:
            return  # the body was read; the connection ends with this exchange
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if self._h2c_body is False:
                return  # the body is whole (_BodyDone stopped the parser); what follows is not read
            _raise_for_callback(exc)
        except httptools.HttpParserError as exc:
            _raise_for_parse(exc)

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
        if n in _SINGLETON_LENGTHS:
            low = name.lower()
            if low in _SINGLETONS and any(h.lower() == low for h, _ in head.headers[:-1]):
                raise HttpError(400, f"more than one {name.decode('latin-1')} header")

    def on_headers_complete(self) -> None:
        head = self._head
        parser = self._parser
        head.method = parser.get_method().decode("ascii")
        head.version = parser.get_http_version()
        head.keep_alive = parser.should_keep_alive()
        head.upgrade = parser.should_upgrade()
        if head.method == "CONNECT":
            if not self._forward:
                raise HttpError(405, "CONNECT is not served here (this listener is a reverse proxy)")
            self._connect_target(head)
            return
        url = self._url
        if not url or url[0] != 47:  # 47 == "/"
            if url[:7].lower() == b"http://" or (url[:8].lower() == b"https://" and not self._forward):
                url = self._absolute_form(head, url)
                head.absolute = True
            elif head.method != "OPTIONS" or url != b"*":
                raise HttpError(400, "bad request target")
        elif self._forward:
            raise HttpError(400, "this listener is a forward proxy: send http://host/path or CONNECT host:port")
        path, _, query = url.partition(b"?")
        if b"#" in query:
            raise HttpError(400, "a fragment ('#') in the request target")
        try:
            raw = path.decode("latin-1")
            head.path = normalize_path(raw, self._rules) if path != b"*" else raw
            head.hostname = host_key(head.host) if head.host else ""
        except TargetError as exc:
            raise HttpError(400, str(exc)) from None
        head.target = url if head.path == raw else head.path.encode("latin-1") + (b"?" + query if query else b"")
        head.query = query
        if head.version == "1.1" and not head.host:
            raise HttpError(400, "HTTP/1.1 request without Host header")
        if self._body_limit and head.content_length and head.content_length > self._body_limit:
            raise HttpError(413, f"request body larger than {self._body_limit} bytes")
        self._in_body = True
        self._header_bytes = 0
        self.events.append(head)

    def _connect_target(self, head: RequestHead) -> None:
        """CONNECT host:port (authority-form, RFC 9110 9.3.6) on a forward-proxy listener."""
        authority = self._url.decode("latin-1")
        host, sep, port = authority.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "@" in authority:
            raise HttpError(400, "CONNECT needs host:port")
        try:
            head.hostname = host_key(authority)
        except TargetError as exc:
            raise HttpError(400, str(exc)) from None
        head.host = authority
        head.target = self._url
        head.path = ""
        head.upgrade = True
        self.events.append(head)  # what follows is tunnel data, not a body

    @staticmethod
    def _absolute_form(head: RequestHead, url: bytes) -> bytes:
        """`http://authority/path?q`: the authority replaces Host (RFC 9112 3.2.2); returns the origin form."""
        rest = url[url.index(b"//") + 2 :]
        end = len(rest)
        for sep in (b"/", b"?", b"#"):
            i = rest.find(sep)
            if 0 <= i < end:
                end = i
        authority = rest[:end].decode("latin-1")
        origin = rest[end:]
        if not authority or "@" in authority:
            raise HttpError(400, "bad authority in an absolute-form request target")
        head.host = authority
        head.headers = [(n, v) for n, v in head.headers if n.lower() != b"host"]
        head.headers.append((b"Host", authority.encode("latin-1")))
        head._index = None
        if not origin.startswith(b"/"):
            origin = b"/" + origin
        return origin

    def on_body(self, body: bytes) -> None:
        if self._body_limit:
            self._body_seen += len(body)
            if self._body_seen > self._body_limit:
                raise HttpError(413, f"request body larger than {self._body_limit} bytes")
        self.events.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self.events.append(MESSAGE_END)


class _BodyDone(Exception):
    """Raised by `_BodyOnly` to stop its parser at the end of the body."""


class _BodyOnly:
    """Callbacks of the parser that reads the body of a declined h2c upgrade (`_decline_h2c`):
    the body goes to the reader as any body would (with its limit); the end stops the parser."""

    def __init__(self, reader: RequestReader) -> None:
        self.reader = reader

    def on_body(self, body: bytes) -> None:
        self.reader.on_body(body)

    def on_message_complete(self) -> None:
        self.reader._h2c_body = False
        self.reader.on_message_complete()
        raise _BodyDone


def _asks_for_h2c(head: RequestHead) -> bool:
    if head.method == "CONNECT":
        return False
    upgrade = head.get("upgrade")
    return upgrade is not None and upgrade.strip().lower() == "h2c"


def _raise_for_callback(exc: httptools.HttpParserCallbackError) -> NoReturn:
    cause = exc.__context__
    if isinstance(cause, HttpError):
        raise cause from None
    raise HttpError(400, f"bad request: {exc}") from None


def _raise_for_parse(exc: httptools.HttpParserError) -> NoReturn:
    text = str(exc)
    if "Transfer-Encoding" in text and "Content-Length" not in text:
        raise HttpError(501, f"unsupported transfer coding: {text}") from None
    raise HttpError(400, f"bad request: {text}") from None
