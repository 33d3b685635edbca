"""HTTP/1.1 to an upstream: one attempt on a pooled connection, for any front end.

`attempt()` carries out the core's `Attempt` command: take an idle connection (a retry
never trusts one) or open one, send the request head the core decided and the client's
body as it comes (`RequestBody`: the HTTP/1.1 reader, or an HTTP/2 stream), and read the
response head. Anything that fails before the client saw a byte raises `Failure` with its
kind, status and whether another attempt may follow. The `H1Response` it returns hands the
body over as it arrives (`first`, `more`) and gives the connection back (`finish`) or closes
it (`abort`, `discard`).

The request body is kept (as raw bytes, framed again on a replay) while it stays under
RETRY_BUFFER, so an attempt on another endpoint can send it again.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dataplane.exchange.commands import Attempt, Failure
from dataplane.exchange.core import RETRY_BUFFER, Exchange
from dataplane.http.headers import LAST_CHUNK, chunk, upstream_request_head
from dataplane.http.request import MESSAGE_END
from dataplane.http.response import ResponseHead, ResponseReader, UpstreamProtocolError
from dataplane.http.services import BODY, UPSTREAM, Conn, Timeout
from dataplane.reactor import ConnectError
from dataplane.upstream.pool import PoolOverflow, UpstreamConn, UpstreamTlsError

if TYPE_CHECKING:
    from dataplane.reactor import RSock
    from dataplane.upstream.pool import EndpointPool

_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ClientGone(ConnectionResetError):
    """The client closed while its request body was still coming."""


class RequestBody(Protocol):
    """The client's request body, as the front end receives it."""

    def take(self) -> tuple[list[bytes], bool]:
        """The chunks there now, and whether the body ended (no waiting)."""
        ...

    async def wait(self, state: Conn | None = None) -> None:
        """Until more of the body is there (ClientGone, or the front end's Timeout). The wait is
        the phase and deadline of `state` (default: the exchange's own connection state)."""
        ...


def _framing(x: Exchange) -> bytes:
    head = x.head
    if not head.has_body:
        return b""
    return b"chunked" if head.chunked or head.content_length is None else str(head.content_length).encode()


async def attempt(x: Exchange, a: Attempt, body: RequestBody, state: Conn) -> H1Response:
    """One attempt against one endpoint; Failure while the client has seen nothing."""
    head = x.head
    now = x.monotonic  # the clock of the deadlines (the worker's ProxyServices.clock)
    cluster, ep, req = a.cluster, a.ep, a.request
    pool = cluster.pools[ep.key]
    framing = _framing(x)
    head_bytes = upstream_request_head(
        head, req.target, x.client_ip, x.proto, x.rid, framing, req.host, req.add, req.remove
    )
    read_timeout = cluster.read_timeout
    state.phase = UPSTREAM
    state.deadline = min(now() + read_timeout, a.deadline)
    conn: UpstreamConn | None = None
    reused = False
    body_sent = 0
    try:
        try:
            if a.fresh:
                while pool.idle:  # a retry never trusts an idle connection
                    pool.idle.pop().sock.close()
            else:
                conn = pool.take_idle()
            if conn is None:
                conn, reused = await pool.acquire(cluster.connect_timeout)
            else:
                reused = True
        except PoolOverflow as exc:
            raise Failure("overflow", 503, str(exc), retryable=True) from None
        except UpstreamTlsError as exc:
            raise Failure("tls", 502, str(exc.strerror or exc), retryable=True) from None
        except ConnectError as exc:
            raise Failure(
                "connect_failure", 502, f"upstream {ep.key} unreachable: {exc.strerror or exc}", retryable=True
            ) from None
        except OSError as exc:
            if exc.errno in _LOCAL_ERRNOS:  # this node is out of descriptors or memory, not the endpoint
                raise Failure(
                    "local", 503, f"the node cannot open a connection now: {exc.strerror or exc}", retryable=False
                ) from None
            raise Failure(
                "connect_failure", 502, f"upstream {ep.key} unreachable: {exc.strerror or exc}", retryable=True
            ) from None
        up = conn.sock
        try:
            if head.has_body:
                chunked = framing == b"chunked"
                body_sent = await send_body(up, head_bytes, x, body, state, chunked, a.fresh, read_timeout)
            else:
                body.take()  # the end marker of a bodiless request
                sent = up.try_send(head_bytes)
                if sent < len(head_bytes):
                    await up.send_all(memoryview(head_bytes)[sent:])
        except ClientGone:
            raise
        except OSError as exc:
            raise Failure("reset", 502, f"upstream {ep.key} reset the connection: {exc}",
                          retryable=reused or not head.has_body) from None  # fmt: skip
        reader = ResponseReader(head_request=head.method == "HEAD")
        got = False
        state.deadline = min(now() + read_timeout, a.deadline)
        while reader.head is None:
            try:
                data = await up.recv()
            except OSError as exc:
                raise Failure("reset", 502, f"upstream {ep.key} reset the connection: {exc}",
                              retryable=not got) from None  # fmt: skip
            if not data:
                if reader.eof() and reader.head is not None:
                    break
                raise Failure(
                    "reset", 502, f"upstream {ep.key} closed the connection before responding",
                    retryable=not got and (reused or head.method in _IDEMPOTENT),
                )  # fmt: skip
            got = True
            try:
                reader.feed(data)
            except UpstreamProtocolError as exc:
                raise Failure("protocol", 502, f"upstream {ep.key} sent a bad response: {exc}",
                              retryable=False) from None  # fmt: skip
        response = H1Response(reader, conn, pool, state, read_timeout, a.deadline, body_sent, now)
        conn = None  # the response owns it now
        return response
    except Timeout:
        # A per-try timeout (the route's total deadline not reached yet) is a failed attempt; a
        # client that went silent in the middle of its body is the client's (408).
        if state.phase == BODY or now() >= x.deadline or not a.retry_on:
            raise
        state.deadline = math.inf
        raise Failure("timeout", 504, f"upstream {ep.key} did not answer within the per-try timeout",
                      retryable=not body_sent) from None  # fmt: skip
    finally:
        if conn is not None:
            pool.release(conn, False)


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


async def send_body(
    up: RSock,
    head_bytes: bytes,
    x: Exchange,
    body: RequestBody,
    state: Conn,
    chunked: bool,
    replay: bool,
    read_timeout: float,
) -> int:
    """Send the head and the body (streamed chunk by chunk); the bytes of body sent."""
    kept = x.body_buffer
    now = x.monotonic
    if replay and kept:
        pieces = [chunk(b) for b in kept] + [LAST_CHUNK] if chunked else kept
        await up.send_all(b"".join([head_bytes, *pieces]))
        return sum(len(b) for b in kept)
    out = [head_bytes]
    sent = 0
    buffered = 0
    keep = kept is not None
    while True:
        chunks, done = body.take()
        for data in chunks:
            out.append(chunk(data) if chunked else data)
            sent += len(data)
            if keep:
                buffered += len(data)
                if buffered > RETRY_BUFFER:
                    keep = False
                    kept.clear()  # type: ignore[union-attr]
                else:
                    kept.append(data)  # type: ignore[union-attr]
        if done and chunked:
            out.append(LAST_CHUNK)
        if out:
            await up.send_all(b"".join(out) if len(out) > 1 else out[0])
            out = []
        if done:
            return sent  # (a body too large to keep left the buffer empty: no retry can replay it)
        await body.wait()
        state.phase = UPSTREAM
        state.deadline = min(now() + read_timeout, x.deadline)


class H1Response:
    """An upstream HTTP/1.1 response whose head arrived; its body comes through `first`/`more`."""

    __slots__ = ("body_sent", "conn", "deadline", "head", "now", "pool", "read_timeout", "reader", "state")

    trailers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(
        self,
        reader: ResponseReader,
        conn: UpstreamConn,
        pool: EndpointPool,
        state: Conn,
        read_timeout: float,
        deadline: float,
        body_sent: int,
        now: Callable[[], float],
    ) -> None:
        assert reader.head is not None
        self.reader = reader
        self.head: ResponseHead = reader.head
        self.conn: UpstreamConn | None = conn
        self.pool = pool
        self.state = state
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.body_sent = body_sent
        self.now = now  # the deadline's clock

    @property
    def sock(self) -> RSock:
        assert self.conn is not None
        return self.conn.sock

    def discard(self) -> None:
        """Not passed on (a retry follows): the connection is kept only if the response ended."""
        conn, self.conn = self.conn, None
        if conn is not None:
            head = self.head
            self.pool.release(conn, self.reader.done and head.keep_alive and not head.until_close)

    def first(self) -> tuple[list[bytes], bool]:
        """Body bytes that came with the head, and whether the response ended with them."""
        events = self.reader.events
        out: list[bytes] = []
        done = False
        for i in range(1, len(events)):
            ev = events[i]
            if ev is MESSAGE_END:
                done = True
            elif ev:
                out.append(ev)  # type: ignore[arg-type]
        events.clear()
        return out, done

    async def more(self) -> tuple[list[bytes], bool]:
        """The next body bytes (waits for them), and whether the response ended."""
        state = self.state
        state.deadline = min(self.now() + self.read_timeout, self.deadline)
        reader = self.reader
        data = await self.sock.recv()
        if not data:
            if not reader.eof():
                raise ConnectionResetError("upstream closed mid-response")
        else:
            try:
                reader.feed(data)
            except UpstreamProtocolError as exc:
                raise ConnectionResetError(str(exc)) from None
        events = reader.events
        out: list[bytes] = []
        done = False
        for ev in events:
            if ev is MESSAGE_END:
                done = True
            elif ev:
                out.append(ev)  # type: ignore[arg-type]
        events.clear()
        return out, done

    def finish(self) -> None:
        """The body was passed on whole: the connection goes back to the pool if it may."""
        conn, self.conn = self.conn, None
        if conn is not None:
            head = self.head
            self.pool.release(conn, head.keep_alive and not head.until_close)

    def abort(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.release(conn, False)
