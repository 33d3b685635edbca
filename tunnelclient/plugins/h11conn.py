"""HTTP/1.1 over a trio stream with h11 (sans-IO): the plugins' server side and their client side.

`H11Stream` pairs a stream with an `h11.Connection` and moves events both ways; `forward`
passes one request (head and streamed body) to an upstream `H11Stream` and its response back,
which is all a reverse proxy or a forward proxy needs. Hop-by-hop headers are dropped on the
way (RFC 9110 7.6.1); framing headers (Content-Length, Transfer-Encoding) are kept, so h11
frames the body as it came.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import h11
import trio

READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization", b"te",
     b"trailer", b"upgrade"}
)  # fmt: skip
Headers = list[tuple[bytes, bytes]]


class H11Stream:
    """One side of an HTTP/1.1 connection: `role` is h11.SERVER (we answer) or h11.CLIENT (we ask)."""

    def __init__(self, stream: trio.abc.Stream, role: Any) -> None:
        self.stream = stream
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)

    async def next_event(self) -> Any:
        """The next h11 event; reads from the stream as needed (h11.ConnectionClosed at the end)."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            self.conn.receive_data(data)

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        """A whole response with `body` (Content-Length added)."""
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await self.send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    def reusable(self) -> bool:
        """Both sides finished the exchange and keep the connection: start the next one."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


def reason(status: int) -> bytes:
    """The reason phrase of `status` ("OK", "Not Found", ...)."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """`headers` without hop-by-hop ones (and those the Connection header names)."""
    headers = list(headers)
    named = {
        token.strip().lower() for name, value in headers if name.lower() == b"connection" for token in value.split(b",")
    }
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


def replace(headers: Headers, name: bytes, value: bytes) -> Headers:
    """`headers` with every `name` header replaced by one `name: value` (case-insensitive)."""
    low = name.lower()
    return [(n, v) for n, v in headers if n.lower() != low] + [(name, value)]


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    low = name.lower()
    return next((v for n, v in headers if n.lower() == low), None)


def basic_auth_ok(value: bytes | None, user: str, password: str) -> bool:
    """Whether a Basic `Authorization`/`Proxy-Authorization` value carries exactly `user` and
    `password` (compared in constant time); no user configured lets everyone in."""
    if not user:
        return True
    scheme, _, encoded = (value or b"").strip().partition(b" ")
    try:
        given_user, _, given_password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user_ok = hmac.compare_digest(given_user.encode(), user.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    return scheme.lower() == b"basic" and user_ok and password_ok


async def forward(client: H11Stream, request: h11.Request, upstream: H11Stream, headers: Headers,
                  target: bytes) -> bool:  # fmt: skip
    """Send `request` (with `headers` and `target`) and its body from `client` to `upstream`, then
    the response back. True when `client` may carry another request."""
    await upstream.send(h11.Request(method=request.method, target=target, headers=headers))
    while True:  # the request body, as it comes
        event = await client.next_event()
        if isinstance(event, h11.Data):
            await upstream.send(event)
        elif isinstance(event, h11.EndOfMessage):
            await upstream.send(h11.EndOfMessage())
            break
        else:
            return False  # the client went away in the middle of its request
    while True:
        event = await upstream.next_event()
        if isinstance(event, h11.InformationalResponse):
            if event.status_code != 101:
                await client.send(h11.InformationalResponse(status_code=event.status_code, headers=event.headers))
            continue
        if isinstance(event, h11.Response):
            await client.send(h11.Response(status_code=event.status_code, headers=end_to_end(event.headers),
                                           reason=event.reason))  # fmt: skip
            break
        raise h11.RemoteProtocolError("the local service closed the connection before answering")
    while True:
        event = await upstream.next_event()
        if isinstance(event, h11.Data):
            await client.send(event)
        elif isinstance(event, h11.EndOfMessage):
            await client.send(h11.EndOfMessage())
            return client.reusable()
        else:
            raise h11.RemoteProtocolError("the local service closed the connection in the middle of its answer")
