"""A small HTTP/1.1 server for admin endpoints: the node's (/ready, /metrics, /config_dump ...)
and the `flux-tunnel` agent's (frp's webServer: /healthz, /api/status, /api/reload).

One request per connection (`Connection: close`), GET and HEAD only, on its own port (never a
traffic listener). Handlers take an `AdminRequest` and return `(status, content type, body)`,
or an awaitable of it. A request head that is not HTTP gets a 400 (431 past 64 KiB), a path
nobody serves a 404 listing the paths, a handler that raises a 500 with its message; a client
that sends no full head within 10 seconds is dropped. Nothing a client does stops the server.

Only the request line and the header lines are read (admin requests carry no body), by
`parse_head`, which is sans-IO; the I/O is trio's socket streams. This module imports nothing
from the node or the agent, so both use it.
"""

from __future__ import annotations

import errno
import http
import inspect
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger("flux.admin")

REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request head
MAX_HEAD = 64 * 1024  # bytes of request line and headers
_RECV_SIZE = 65536
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/(\d)\.(\d)")


class BadRequest(ValueError):
    """A request head the server refuses; `status` is what the client gets (400 or 431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """What an admin handler sees of a request: method, path (no query), raw query, headers."""

    method: str
    path: str
    query: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def header(self, name: str) -> str | None:
        """First value of a header (name in any case), as text."""
        low = name.lower().encode("latin-1")
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == low), None)


Reply = tuple[int, str, bytes]
Handler = Callable[[AdminRequest], Reply | Awaitable[Reply]]


def json_body(data: Any) -> bytes:
    """`data` as indented JSON plus a newline (anything JSON lacks shown with str())."""
    return json.dumps(data, indent=2, default=str).encode() + b"\n"


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("latin-1")
    except ValueError:
        return b"Unknown"


def head_end(data: bytes | bytearray) -> int:
    """Where the request head in `data` ends (past its blank line), or -1 while incomplete;
    BadRequest(431) once an incomplete head is longer than MAX_HEAD."""
    match = _HEAD_END.search(data)
    if match is None:
        if len(data) > MAX_HEAD:
            raise BadRequest(431, "request head too large")
        return -1
    if match.end() > MAX_HEAD:
        raise BadRequest(431, "request head too large")
    return match.end()


def parse_head(head: bytes) -> AdminRequest:
    """An `AdminRequest` from a complete request head (request line and header lines);
    BadRequest(400) for anything that is not an HTTP/1.x request head."""
    lines = re.split(rb"\r?\n", head.rstrip(b"\r\n"))
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None or match.group(3) != b"1":
        raise BadRequest(400, "bad request line")
    method, target = match.group(1), match.group(2)
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise BadRequest(400, "bad header line")
        headers.append((name, value.strip(b" \t")))
    if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":  # absolute form
        rest = target.split(b"//", 1)[1]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    elif not target.startswith(b"/") and target != b"*":
        raise BadRequest(400, "bad request target")
    path, _, query = target.partition(b"?")
    return AdminRequest(method.decode("ascii"), path.decode("latin-1") or "/", query, tuple(headers))


async def _listen(address: str, port: int, backlog: int) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address == "::" else 1)
        await sock.bind((address, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class AdminServer:
    """Serves `routes` (path -> handler); `port` is the bound port once `serve` has started."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.port = 0

    async def serve(self, address: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = await _listen(address, port, backlog=128)
        self.port = sock.getsockname()[1]
        task_status.started(self.port)
        with sock:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        conn, _peer = await sock.accept()
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            await trio.sleep(0.1)  # out of descriptors: back off instead of spinning
                            continue
                        if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                            continue
                        raise
                    nursery.start_soon(self._handle, trio.SocketStream(conn))

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                try:
                    request = await _read_request(stream)
                except BadRequest as exc:
                    status = exc.status
                    await stream.send_all(b"HTTP/1.1 %d %b\r\nConnection: close\r\n\r\n" % (status, _reason(status)))
                    return
                if request is None:
                    return
                status, ctype, body = await self._dispatch(request)
                out = b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
                    status,
                    _reason(status),
                    ctype.encode("latin-1"),
                    len(body),
                )
                await stream.send_all(out + (body if request.method != "HEAD" else b""))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _dispatch(self, request: AdminRequest) -> Reply:
        if request.method not in ("GET", "HEAD"):
            return 405, "application/json", json_body({"error": "method_not_allowed"})
        handler = self.routes.get(request.path.rstrip("/") or "/")
        if handler is None:
            return 404, "application/json", json_body({"error": "not_found", "paths": sorted(self.routes)})
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            return result
        except Exception as exc:
            log.exception("admin handler %s failed", request.path)
            return 500, "application/json", json_body({"error": "internal_error", "message": str(exc)})


async def _read_request(stream: trio.SocketStream) -> AdminRequest | None:
    """The request head, or None when the client closed first; BadRequest if it is not one."""
    data = bytearray()
    while (end := head_end(data)) < 0:
        chunk = await stream.receive_some(_RECV_SIZE)
        if not chunk:
            return None
        data += chunk
    return parse_head(bytes(data[:end]))
