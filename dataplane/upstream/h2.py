"""HTTP/2 to an upstream (cluster `protocol: http2`): requests of a worker share one connection
per endpoint as streams; h2c in the clear, h2 by ALPN with the cluster's TLS. gRPC needs it
(trailers).

`attempt()` carries out the core's `Attempt` like `dataplane.upstream.h1.attempt`: it opens
(or shares) the endpoint's connection, sends the head as HTTP/2 fields (`:authority` from the
Host the core decided) and the body as the window allows, and waits for the response head.
Failures before the client saw a byte raise `Failure`, mapped as HTTP/1.1's are: the
connection cannot be opened (connect_failure, tls), it goes away (reset; a stream the server
refused by GOAWAY or REFUSED_STREAM may be retried at once), the head does not come in time
(the per-try timeout). `H2Response` hands the body over as it arrives, acknowledging it as it
is taken (the upstream's sending rate follows the client's), and the trailers at the end.

One reactor task reads each connection; streams wait on one-shot events. An idle connection
(no stream) closes after the pool's idle timeout (the pool's sweeper asks `expired`).

gRPC-Web: when the request is `application/grpc-web*` on a route with `grpc_web`, the head
goes up as `application/grpc`, a -text body is decoded, and the response carries its trailers
in the body as gRPC-Web wants (`dataplane.http.grpc.GrpcWebCodec`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from dataplane.exchange.commands import Attempt, Failure
from dataplane.http.grpc import GrpcWebCodec, is_grpc_web
from dataplane.http.headers import upstream_request_fields
from dataplane.http.response import ResponseHead
from dataplane.http.services import BODY, UPSTREAM, Conn, Timeout
from dataplane.reactor import ConnectError
from dataplane.upstream.h1 import ClientGone, RequestBody
from dataplane.upstream.pool import UpstreamTlsError

if TYPE_CHECKING:
    from dataplane.exchange.core import Exchange
    from dataplane.reactor import Reactor, REvent, RSock
    from dataplane.upstream.pool import EndpointPool

log = logging.getLogger("flux.upstream.h2")

STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 8 << 20
_PSEUDO = b":"


class _UpStream:
    __slots__ = ("body_sent", "chunks", "ended", "error", "head", "id", "pending", "trailers", "waiter")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.body_sent = 0  # request body bytes sent (by the body pump)
        self.head: list[tuple[bytes, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.pending = 0
        self.trailers: list[tuple[bytes, bytes]] = []
        self.ended = False
        self.error: str | None = None
        self.waiter: REvent | None = None

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.set()


class H2Upstream:
    """One HTTP/2 connection to an endpoint."""

    def __init__(
        self, reactor: Reactor, sock: RSock, key: str, tls: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reactor = reactor
        self.clock = clock  # monotonic seconds: when the connection went idle (its pool's clock)
        self.sock = sock
        self.key = key
        self.tls = tls
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.streams: dict[int, _UpStream] = {}
        self.closed = False
        self.goaway_last: int | None = None  # the server's last stream id in a GOAWAY
        self.idle_since = clock()
        self._flushing = False
        self.window_waiters: list[REvent] = []

    @property
    def usable(self) -> bool:
        if self.closed or self.goaway_last is not None:
            return False
        return len(self.streams) < self.h2.remote_settings.max_concurrent_streams

    async def start(self) -> None:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        await self.flush()
        self.reactor.spawn(self._read(), f"h2-upstream {self.key}")

    async def flush(self) -> None:
        if self._flushing or self.closed:
            return
        self._flushing = True
        try:
            while True:
                data = self.h2.data_to_send()
                if not data:
                    return
                await self.sock.send_all(data)
        except OSError as exc:
            self._fail(f"send failed: {exc}")
        finally:
            self._flushing = False

    def _fail(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            if stream.error is None:
                stream.error = why
            stream.wake()
        self._wake_windows()
        self.sock.close()

    def _wake_windows(self) -> None:
        waiters, self.window_waiters = self.window_waiters, []
        for ev in waiters:
            ev.set()

    async def wait_window(self) -> None:
        ev = self.reactor.event()
        self.window_waiters.append(ev)
        await ev

    def close(self) -> None:
        if not self.closed:
            try:
                self.h2.close_connection()
                self.sock.try_send(self.h2.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass
            self._fail("connection closed")

    def expired(self, t: float, idle_timeout: float) -> bool:
        return self.closed or (not self.streams and t - self.idle_since > idle_timeout)

    async def _read(self) -> None:
        try:
            while not self.closed:
                data = await self.sock.recv()
                if not data:
                    self._fail(f"upstream {self.key} closed the connection")
                    return
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._fail(f"upstream {self.key} broke HTTP/2: {exc}")
                    return
                for event in events:
                    self._handle(event)
                await self.flush()
        except OSError as exc:
            self._fail(f"upstream {self.key} reset the connection: {exc}")

    def _handle(self, event: Any) -> None:
        kind = type(event)
        if kind is h2.events.DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream.chunks.append(event.data)
            stream.pending += event.flow_controlled_length
            if event.stream_ended is not None:
                stream.ended = True
            stream.wake()
            return
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if kind is h2.events.ResponseReceived:
            if stream is not None:
                stream.head = event.headers
                if event.stream_ended is not None:
                    stream.ended = True
                stream.wake()
        elif kind is h2.events.TrailersReceived:
            if stream is not None:
                stream.trailers = list(event.headers)
                stream.ended = True
                stream.wake()
        elif kind is h2.events.StreamEnded:
            if stream is not None:
                stream.ended = True
                stream.wake()
        elif kind is h2.events.StreamReset:
            if stream is not None:
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                stream.error = ("refused: " if refused else "") + (
                    f"upstream {self.key} reset the stream (error code {int(event.error_code)})"
                )
                stream.wake()
        elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
            self._wake_windows()
        elif kind is h2.events.ConnectionTerminated:
            self.goaway_last = event.last_stream_id or 0
            for sid, s in self.streams.items():
                if sid > self.goaway_last:
                    s.error = "refused: the upstream is going away"
                    s.wake()
            if not self.streams:
                self._fail("GOAWAY")

    def forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        if not self.streams:
            self.idle_since = self.clock()
            if self.goaway_last is not None:
                self._fail("GOAWAY")

    async def send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            if self.closed:
                raise ConnectionResetError(f"upstream {self.key}: connection closed")
            window = self.h2.local_flow_control_window(stream_id)
            size = min(window, self.h2.max_outbound_frame_size, len(view))
            if size <= 0 and view:
                await self.flush()
                await self.wait_window()
                continue
            last = size == len(view)
            self.h2.send_data(stream_id, bytes(view[:size]), end_stream=end and last)
            view = view[size:]
            if last:
                break
        await self.flush()


async def _connection(pool: EndpointPool, connect_timeout: float, reactor: Reactor) -> H2Upstream:
    existing: H2Upstream | None = getattr(pool, "h2", None)
    if existing is not None and existing.usable:
        return existing
    sock = await pool.open(connect_timeout)  # TLS when the cluster says so
    tls = pool.tls is not None and pool.opener is None
    if tls:
        alpn = sock.alpn  # type: ignore[attr-defined]
        if alpn != "h2":
            sock.close()
            raise UpstreamTlsError(0, f"TLS to {pool.address}:{pool.port}: the upstream did not agree to h2 ({alpn})")
    conn = H2Upstream(reactor, sock, f"{pool.address}:{pool.port}", tls, pool.clock)
    await conn.start()
    pool.h2 = conn
    return conn


async def attempt(x: Exchange, a: Attempt, body: RequestBody, state: Conn, reactor: Reactor) -> H2Response:
    """One attempt on an HTTP/2 connection; Failure while the client has seen nothing."""
    head = x.head
    now = x.monotonic  # the clock of the deadlines (the worker's ProxyServices.clock)
    cluster, ep, req = a.cluster, a.ep, a.request
    pool = cluster.pools[ep.key]
    read_timeout = cluster.read_timeout
    state.phase = UPSTREAM
    state.deadline = min(now() + read_timeout, a.deadline)
    try:
        conn = await _connection(pool, cluster.connect_timeout, reactor)
    except UpstreamTlsError as exc:
        raise Failure("tls", 502, str(exc.strerror or exc), retryable=True) from None
    except (ConnectError, OSError) as exc:
        raise Failure("connect_failure", 502, f"upstream {ep.key} unreachable: {exc.strerror or exc}",
                      retryable=True) from None  # fmt: skip
    ctype_in = head.get("content-type")
    web = GrpcWebCodec(ctype_in or "") if req.grpc_web and is_grpc_web(ctype_in) else None
    fields = upstream_request_fields(head, x.client_ip, x.proto, x.rid, req.host, req.add, req.remove)
    if web is not None:
        ctype = GrpcWebCodec.upstream_content_type(head.get("content-type") or "")
        fields = [(n, ctype if n == b"content-type" else v) for n, v in fields if n != b"content-length"]
        if not any(n == b"te" for n, _ in fields):
            fields.append((b"te", b"trailers"))
    authority = req.host if req.host is not None else head.host.encode("latin-1")
    headers = [
        (b":method", head.method.encode("ascii")),
        (b":scheme", b"https" if conn.tls else b"http"),
        (b":authority", authority),
        (b":path", req.target),
        *fields,
    ]
    try:
        stream_id = conn.h2.get_next_available_stream_id()
    except h2.exceptions.NoAvailableStreamIDError:
        conn.goaway_last = 0
        raise Failure("reset", 502, f"upstream {ep.key}: no stream ids left", retryable=True) from None
    stream = _UpStream(stream_id)
    conn.streams[stream_id] = stream
    ok = False
    try:
        try:
            conn.h2.send_headers(stream_id, headers, end_stream=not head.has_body)
            await conn.flush()
        except (OSError, h2.exceptions.ProtocolError) as exc:
            raise Failure("reset", 502, f"upstream {ep.key}: {exc}", retryable=True) from None
        if head.has_body:
            # The body goes up while the response comes down: streaming calls (gRPC client and
            # bidi streams) answer before the request ends.
            reactor.spawn(_pump(conn, stream, x, body, a.fresh, web), "h2-upstream-body")
        state.deadline = min(now() + read_timeout, a.deadline)
        while stream.head is None:
            if stream.error is not None:
                retry = stream.error.startswith("refused")  # GOAWAY or REFUSED_STREAM: never processed
                raise Failure("reset", 502, stream.error, retryable=retry or not stream.body_sent)
            ev = reactor.event()
            stream.waiter = ev
            await ev
        response = H2Response(conn, stream, state, read_timeout, a.deadline, stream.body_sent, web, now)
        ok = True
        return response
    except Timeout:
        if state.phase == BODY or now() >= x.deadline or not a.retry_on:
            raise
        state.deadline = math.inf
        raise Failure("timeout", 504, f"upstream {ep.key} did not answer within the per-try timeout",
                      retryable=not stream.body_sent) from None  # fmt: skip
    finally:
        if not ok:
            _reset(conn, stream_id)


def _reset(conn: H2Upstream, stream_id: int) -> None:
    if not conn.closed:
        try:
            conn.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.ProtocolError, KeyError):
            pass
        conn.reactor.spawn(conn.flush(), "h2-reset")
    conn.forget(stream_id)


async def _pump(
    conn: H2Upstream, stream: _UpStream, x: Exchange, body: RequestBody, replay: bool, web: GrpcWebCodec | None
) -> None:
    """Send the request body as it comes (a reactor task of its own); a failure resets the stream."""
    stream_id = stream.id
    kept = x.body_buffer
    own = Conn()  # the body may pause as long as the call lasts: no body-idle deadline here
    try:
        if replay and kept:
            await conn.send_data(stream_id, b"".join(kept), end=True)
            stream.body_sent = sum(len(b) for b in kept)
            return
        buffered = 0
        keep = kept is not None
        while True:
            chunks, done = body.take()
            data = b"".join(chunks)
            if web is not None:
                data = web.request_chunk(data)
            if data or done:
                stream.body_sent += len(data)
                if keep:
                    buffered += len(data)
                    if buffered > 64 * 1024:
                        keep = False
                        kept.clear()  # type: ignore[union-attr]
                    elif data:
                        kept.append(data)  # type: ignore[union-attr]
                await conn.send_data(stream_id, data, end=done)
            if done:
                return
            if stream.error is not None or stream.id not in conn.streams:
                return  # the exchange is over
            await body.wait(own)
    except (ClientGone, OSError, h2.exceptions.ProtocolError, KeyError) as exc:
        if stream.id in conn.streams and not stream.ended:
            if stream.error is None:
                stream.error = f"request body: {exc}"
            stream.wake()
            _reset(conn, stream_id)


class H2Response:
    """An upstream HTTP/2 response whose head arrived."""

    __slots__ = ("body_sent", "conn", "deadline", "head", "now", "read_timeout", "state", "stream", "web")

    def __init__(
        self,
        conn: H2Upstream,
        stream: _UpStream,
        state: Conn,
        read_timeout: float,
        deadline: float,
        body_sent: int,
        web: GrpcWebCodec | None,
        now: Callable[[], float],
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.state = state
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.body_sent = body_sent
        self.web = web
        self.now = now  # the deadline's clock
        self.head = _head(stream.head or [], web)

    @property
    def trailers(self) -> list[tuple[bytes, bytes]]:
        if self.web is not None:
            return []  # in the body (gRPC-Web)
        return self.stream.trailers

    def _take(self) -> tuple[list[bytes], bool]:
        stream = self.stream
        chunks, stream.chunks = stream.chunks, []
        if stream.pending and not self.conn.closed:
            try:
                self.conn.h2.acknowledge_received_data(stream.pending, stream.id)
            except (h2.exceptions.ProtocolError, KeyError):
                pass
            stream.pending = 0
            self.conn.reactor.spawn(self.conn.flush(), "h2-window")
        done = stream.ended and not stream.chunks
        web = self.web
        if web is not None:
            chunks = [web.response_chunk(c) for c in chunks]
            if done:
                chunks.append(web.trailer_frame(stream.trailers))
            chunks = [c for c in chunks if c]
        return chunks, done

    def first(self) -> tuple[list[bytes], bool]:
        return self._take()

    async def more(self) -> tuple[list[bytes], bool]:
        stream = self.stream
        while not stream.chunks and not stream.ended:
            if stream.error is not None:
                raise ConnectionResetError(stream.error)
            self.state.deadline = min(self.now() + self.read_timeout, self.deadline)
            ev = self.conn.reactor.event()
            stream.waiter = ev
            await ev
        return self._take()

    def finish(self) -> None:
        self.conn.forget(self.stream.id)

    def abort(self) -> None:
        _reset(self.conn, self.stream.id)

    def discard(self) -> None:
        if self.stream.ended:
            self.conn.forget(self.stream.id)
        else:
            _reset(self.conn, self.stream.id)


def _head(fields: list[tuple[bytes, bytes]], web: GrpcWebCodec | None) -> ResponseHead:
    head = ResponseHead()
    head.version = "2"
    lines = []
    for name, value in fields:
        if name == b":status":
            head.status = int(value)
        elif name[:1] == _PSEUDO:
            continue
        elif name == b"content-length":
            try:
                head.content_length = int(value)
            except ValueError:
                pass
            lines.append(name + b": " + value)
        elif web is not None and name == b"content-type":
            lines.append(b"content-type: " + web.response_content_type())
        else:
            lines.append(name + b": " + value)
    if web is not None:
        head.content_length = None
        lines = [ln for ln in lines if not ln.lower().startswith(b"content-length:")]
    head.block = b"\r\n".join(lines)
    return head
