"""Header rewriting between client and upstream (sans-IO).

Hop-by-hop headers (RFC 9110 7.6.1: Connection and every header it names,
Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade) never
cross the proxy; the node sets framing itself. Upstream requests get
X-Forwarded-For (appended), X-Forwarded-Proto, X-Forwarded-Host and
X-Request-Id (kept if the client sent one); Host passes through unchanged
unless a route rewrites it.
"""

from __future__ import annotations

from collections.abc import Iterable

from dataplane.http.request import RequestHead
from dataplane.http.response import ResponseHead

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# Headers the node writes itself on the way up.
_SET_UPSTREAM = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"content-length",
        b"expect",
        b"x-consumer-name",
        b"x-consumer-groups",  # only the node's auth policies may claim an identity
        b"proxy-authorization",  # credentials for this proxy, never for the upstream
        b"x-forwarded-client-cert",  # only the node vouches for a client certificate
    }
)
_SKIP_UP = HOP_BY_HOP | _SET_UPSTREAM

_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    301: b"Moved Permanently", 302: b"Found", 303: b"See Other", 304: b"Not Modified",
    307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request", 401: b"Unauthorized",
    403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed", 407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 417: b"Expectation Failed", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}  # fmt: skip


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Extra hop-by-hop names listed in a Connection header value (lower case)."""
    names = {t.strip().lower() for t in value.split(b",")}
    return frozenset(names - {b"close", b"keep-alive", b"upgrade", b""})


def upstream_request_head(
    req: RequestHead,
    target: bytes,
    client_ip: str,
    proto: bytes,
    request_id: bytes,
    body_framing: bytes,
    host: bytes | None = None,
    add: Iterable[Header] = (),
    remove: frozenset[bytes] = frozenset(),
) -> bytes:
    """The request line and headers sent upstream.

    `body_framing` is b"" (no body), b"chunked", or the Content-Length digits.
    `host` replaces the Host header when given; `remove` drops more headers (lower case).
    """
    extra_hop = connection_tokens(req.connection) if req.connection else frozenset()
    parts = [req.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    xff = b""
    for name, value in req.headers:
        low = name.lower()
        if low in _SKIP_UP or low in extra_hop or low in remove:
            if low == b"x-forwarded-for":  # several lines form one list: keep every hop
                xff = xff + b", " + value if xff else value
            continue
        if host is not None and low == b"host":
            continue
        parts += (name, b": ", value, b"\r\n")
    if host is not None:
        parts += (b"Host: ", host, b"\r\n")
    parts += (
        b"X-Forwarded-For: ",
        xff + b", " + client_ip.encode() if xff else client_ip.encode(),
        b"\r\nX-Forwarded-Proto: ",
        proto,
        b"\r\nX-Request-Id: ",
        request_id,
        b"\r\n",
    )
    if req.host:
        parts += (b"X-Forwarded-Host: ", req.host.encode("latin-1"), b"\r\n")
    if body_framing == b"chunked":
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif body_framing:
        parts += (b"Content-Length: ", body_framing, b"\r\n")
    for name, value in add:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


_H2_SKIP = frozenset({b"host", b"te"})


def upstream_request_fields(
    req: RequestHead,
    client_ip: str,
    proto: bytes,
    request_id: bytes,
    host: bytes | None = None,
    add: Iterable[Header] = (),
    remove: frozenset[bytes] = frozenset(),
) -> list[Header]:
    """The regular header fields of an HTTP/2 request upstream (lower-case names), with the same
    rules as `upstream_request_head`: hop-by-hop and node-set headers dropped, X-Forwarded-*
    and X-Request-Id set, `add` appended. Host travels as :authority (`host` or the client's);
    `te: trailers` is kept, as gRPC needs it."""
    extra_hop = connection_tokens(req.connection) if req.connection else frozenset()
    out: list[Header] = []
    xff = b""
    te_trailers = False
    for name, value in req.headers:
        low = name.lower()
        if low == b"te":
            te_trailers = te_trailers or b"trailers" in value.lower()
            continue
        if low in _SKIP_UP or low in extra_hop or low in remove or low in _H2_SKIP:
            if low == b"x-forwarded-for":
                xff = xff + b", " + value if xff else value
            continue
        out.append((low, value))
    if te_trailers:
        out.append((b"te", b"trailers"))
    out.append((b"x-forwarded-for", xff + b", " + client_ip.encode() if xff else client_ip.encode()))
    out.append((b"x-forwarded-proto", proto))
    out.append((b"x-request-id", request_id))
    if req.host:
        out.append((b"x-forwarded-host", req.host.encode("latin-1")))
    if req.has_body and req.content_length is not None:
        out.append((b"content-length", str(req.content_length).encode()))
    out += [(n.lower(), v) for n, v in add if n.lower() not in (b"connection", b"upgrade")]
    return out


def client_response_head(
    resp: ResponseHead,
    *,
    chunked: bool,
    close: bool,
    add: Iterable[Header] = (),
) -> bytes:
    """Status line and headers for the client: the upstream's end-to-end header lines as
    they came, then Transfer-Encoding when the node re-chunks, then `add`."""
    parts = [b"HTTP/1.1 %d %b\r\n" % (resp.status, resp.reason or reason(resp.status))]
    if resp.block:
        parts.append(resp.block)
        parts.append(b"\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    for name, value in add:
        parts += (name, b": ", value, b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
