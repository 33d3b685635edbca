"""The first request on a tcpmux port: `CONNECT name:port HTTP/1.1`, read with h11 (sans-IO).

A client of a tcpmux proxy (frp's multiplexer "httpconnect") opens a TCP connection to the
node's `tcpmux_httpconnect_port` and sends an HTTP CONNECT request naming the proxy's domain;
`Proxy-Authorization: Basic ...` carries the user that `routeByHTTPUser` chooses by and that
`httpUser`/`httpPassword` check. `parse_connect(data)` answers NEED_MORE until the request head
is whole, then a `ConnectRequest` (with the bytes that followed it) or a `ConnectRefusal` with
the status to answer. The answers the node writes are here too (`ESTABLISHED`, `answer`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

import h11

__all__ = ["ESTABLISHED", "MAX_HEAD", "NEED_MORE", "ConnectRefusal", "ConnectRequest", "answer", "parse_connect"]

MAX_HEAD: Final = 16 * 1024
NEED_MORE: Final = object()
ESTABLISHED: Final = b"HTTP/1.1 200 Connection established\r\n\r\n"


@dataclass(frozen=True)
class ConnectRequest:
    host: str  # lower case, no port, no trailing dot
    port: int
    user: str  # from Proxy-Authorization (Basic); "" without one
    password: str
    head: bytes  # the request head as received (passed on with tcpmux_passthrough)
    rest: bytes  # what the client sent after the head


@dataclass(frozen=True)
class ConnectRefusal:
    status: int  # 400 (not a CONNECT request), 405 (another method), 431 (head too large)
    reason: str


def parse_connect(data: bytes) -> ConnectRequest | ConnectRefusal | object:
    """NEED_MORE, or what the client asked for in `data` (everything it sent so far)."""
    event = _first_event(data)
    if isinstance(event, ConnectRefusal) or event is NEED_MORE:
        return event
    if not isinstance(event, h11.Request):
        return ConnectRefusal(400, "not an HTTP request")
    if event.method != b"CONNECT":
        return ConnectRefusal(405, "only CONNECT requests are served on this port")
    target = event.target.decode("latin-1")
    host, sep, port_text = target.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        return ConnectRefusal(400, f"CONNECT needs host:port, got {target!r}")
    host = host.strip("[]").lower().rstrip(".")
    user, password = _basic(dict(event.headers).get(b"proxy-authorization", b""))
    end = _head_end(data)
    return ConnectRequest(host, int(port_text), user, password, data[:end], data[end:])


def _first_event(data: bytes, *, hostless: bool = False) -> object:
    """h11's first event of `data`: a Request, NEED_MORE, or a ConnectRefusal. h11 wants a Host
    header in HTTP/1.1; a CONNECT request names its host in the target, so one without is read as if
    it had one (frp's reader does not ask for it either)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    if hostless:
        line_end = data.find(b"\n") + 1
        data = data[:line_end] + b"Host: tcpmux\r\n" + data[line_end:]
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        if not hostless and "Host" in str(exc) and data.startswith(b"CONNECT "):
            return _first_event(data, hostless=True)
        status = 431 if len(data) >= MAX_HEAD else 400
        return ConnectRefusal(status, f"not an HTTP request: {exc}")
    return NEED_MORE if event is h11.NEED_DATA else event


def _head_end(data: bytes) -> int:
    """Where the request head ends (after its blank line); h11 has checked that it does."""
    for marker in (b"\r\n\r\n", b"\n\n"):
        at = data.find(marker)
        if at >= 0:
            return at + len(marker)
    return len(data)


def _basic(value: bytes) -> tuple[str, str]:
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return user, password


def answer(status: int, reason: str, *, realm: str = "") -> bytes:
    """A short HTTP/1.1 answer that ends the connection (404, 407, 400, ...)."""
    phrases = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 407: "Proxy Authentication Required",
               431: "Request Header Fields Too Large", 502: "Bad Gateway"}  # fmt: skip
    body = (reason + "\n").encode()
    head = f"HTTP/1.1 {status} {phrases.get(status, 'Error')}\r\n"
    if status == 407:
        head += f'Proxy-Authenticate: Basic realm="{realm or "flux-tunnel"}"\r\n'
    head += f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body
