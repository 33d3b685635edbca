"""The HTTP/2 front end: a client connection speaking HTTP/2 (h2c with prior knowledge, or h2
by ALPN), each stream a request for the exchange core.

The `h2` library is the protocol core (frames, HPACK, flow control, stream states); this
module turns its events into exchanges and carries out the core's commands on streams, as
the HTTP/1.1 front end does on its connection. One reactor task reads the connection; each
stream runs as its own reactor task with its own `Conn` (deadline, phase), so the reaper
times streams out one by one.

Limits and defences
-------------------
- SETTINGS: `MAX_CONCURRENT_STREAMS` 100, `MAX_HEADER_LIST_SIZE` 32 KiB, 16 KiB frames,
  a 1 MiB stream window; no server push.
- Flow control both ways: a client's DATA is acknowledged as the exchange takes it (a slow
  upstream slows the client down, memory stays bounded); a response waits for window.
- Rapid reset (CVE-2023-44487): more than `RESET_LIMIT` streams reset by the client within a
  second ends the connection with GOAWAY(ENHANCE_YOUR_CALM).
- SETTINGS and PING floods: more than `CONTROL_LIMIT` of either within a second, likewise.
- CONTINUATION flood: h2 refuses a header block of more than 64 frames; the header list is
  bounded by MAX_HEADER_LIST_SIZE; both end the connection with GOAWAY.
- Draining: GOAWAY (NO_ERROR) with the last stream id; streams in flight finish.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from dataplane.exchange.commands import (
    Attempt,
    Await,
    Drop,
    Failure,
    Replied,
    Reply,
    ReplyLocal,
    SendContinue,
    Sleep,
    Stream,
    Streamed,
)
from dataplane.exchange.core import Exchange
from dataplane.http import grpc
from dataplane.http.errors import error_body
from dataplane.http.request import MAX_HEADER_BYTES, RequestHead
from dataplane.http.services import BODY, IDLE, RESPONDING, UPSTREAM, Conn, Drain, Timeout
from dataplane.http.target import TargetError, host_key, normalize_path
from dataplane.upstream import h1
from dataplane.upstream.h1 import ClientGone

if TYPE_CHECKING:
    from dataplane.http.proxy import HttpConnection
    from dataplane.reactor import REvent, Task

log = logging.getLogger("flux.h2")

MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 8 << 20
RESET_LIMIT = 200  # streams reset by the client per second before GOAWAY
CONTROL_LIMIT = 100  # SETTINGS or PING frames per second before GOAWAY

_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te", b"host"})
_SINGLETONS = frozenset({b"authorization", b"proxy-authorization", b"user-agent", b"origin", b"referer"})


class StreamError(Exception):
    """A request on one stream the node refuses (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _RateWindow:
    """Counts events per one-second window (monotonic)."""

    __slots__ = ("count", "start")

    def __init__(self) -> None:
        self.start = 0.0
        self.count = 0

    def hit(self, t: float) -> int:
        if t - self.start >= 1.0:
            self.start, self.count = t, 0
        self.count += 1
        return self.count


class H2Connection:
    """One client connection in HTTP/2."""

    def __init__(self, http: HttpConnection, first: bytes) -> None:
        self.http = http
        self.svc = http.svc
        self.now = http.now  # the deadlines' clock (ProxyServices.clock)
        self.sock = http.sock
        # Outbound fields are the node's own (lower-case names, hop-by-hop removed, values checked
        # by the response reader): h2's outbound validation would only repeat that, at a cost.
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_BYTES,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.first = first
        self.streams: dict[int, H2Stream] = {}
        self.window_waiters: list[REvent] = []
        self._flushing = False
        self._flush_scheduled = False
        self.closed = False
        self.resets = _RateWindow()
        self.settings_frames = _RateWindow()
        self.pings = _RateWindow()
        self.last_stream = 0
        self.goaway_sent = False
        self.fatal = False  # a GOAWAY with an error: nothing more is processed

    # -- sending -------------------------------------------------------------------------------

    def flush_soon(self) -> None:
        """Send what h2 has queued once the streams ready now have run: the frames of many
        streams go out in one send instead of one each."""
        if not self._flush_scheduled and not self.closed:
            self._flush_scheduled = True
            self.svc.reactor.spawn(self._scheduled_flush(), "h2-flush")

    async def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        await self.flush()

    async def flush(self) -> None:
        """Send what h2 has queued; one flusher at a time (others' bytes go with its next round)."""
        if self._flushing or self.closed:
            return
        self._flushing = True
        try:
            while True:
                data = self.h2.data_to_send()
                if not data:
                    return
                await self.sock.send_all(data)
        except OSError:
            self.closed = True
        finally:
            self._flushing = False

    def goaway(self, code: int = h2.errors.ErrorCodes.NO_ERROR, why: str = "") -> None:
        """GOAWAY with the last stream id. NO_ERROR (draining) keeps h2's state open so streams in
        flight still answer (h2's close_connection would refuse them); an error ends it all."""
        if code != h2.errors.ErrorCodes.NO_ERROR:
            self.fatal = True
            self.svc.metrics.count("h2_goaway_" + h2.errors.ErrorCodes(code).name.lower())
            log.warning("HTTP/2 connection from %s closed: %s", self.http.client_ip, why)
            try:
                self.h2.close_connection(error_code=code, last_stream_id=self.last_stream)
            except h2.exceptions.ProtocolError:
                pass
            self.goaway_sent = True
            return
        if self.goaway_sent:
            return
        self.goaway_sent = True
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream
        frame.error_code = int(code)
        self.h2._data_to_send += frame.serialize()  # no state change: in-flight streams go on

    def wake_windows(self) -> None:
        waiters, self.window_waiters = self.window_waiters, []
        for ev in waiters:
            ev.set()

    async def wait_window(self) -> None:
        ev = self.svc.reactor.event()
        self.window_waiters.append(ev)
        await ev

    # -- the connection ------------------------------------------------------------------------

    async def serve(self) -> None:
        svc, conn = self.svc, self.http.conn
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        await self.flush()
        hook = self._drain
        svc.drain_hooks.append(hook)
        data = self.first
        try:
            while not self.closed:
                if data:
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError as exc:
                        code = getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
                        self.goaway(code, f"protocol error: {exc}")
                        await self.flush()
                        return
                    for event in events:
                        if self.fatal:
                            break
                        self._handle(event)
                    await self.flush()
                    if self.fatal or (self.goaway_sent and not self.streams):
                        return
                conn.phase = IDLE if not self.streams else UPSTREAM
                conn.deadline = self.now() + (self.http.idle_timeout if not self.streams else math.inf)
                data = await self.sock.recv()
                if not data:
                    return
        except (Timeout, Drain):
            self.goaway()
            await self.flush()
        finally:
            svc.drain_hooks.remove(hook)
            self.closed = True
            for stream in list(self.streams.values()):
                stream.cancel()
            self.wake_windows()

    def _drain(self) -> None:
        self.goaway()
        self.svc.reactor.spawn(self.flush(), "h2-goaway")

    def _handle(self, event: Any) -> None:
        kind = type(event)
        if kind is h2.events.RequestReceived:
            self.last_stream = max(self.last_stream, event.stream_id)
            if self.goaway_sent:
                try:
                    self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                except h2.exceptions.ProtocolError:
                    pass
                return
            stream = H2Stream(self, event.stream_id, event.headers, event.stream_ended is not None)
            self.streams[event.stream_id] = stream
            stream.task = self.svc.reactor.spawn(stream.run(), "h2-stream")
        elif kind is h2.events.DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream.data(event.data, event.flow_controlled_length)
            if event.stream_ended is not None:
                stream.end()
        elif kind is h2.events.StreamEnded or kind is h2.events.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.end()
        elif kind is h2.events.StreamReset:
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None and not stream.finished:
                stream.cancel()
                if self.resets.hit(self.now()) > RESET_LIMIT:
                    self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "rapid reset: too many streams reset")
        elif kind is h2.events.WindowUpdated:
            self.wake_windows()
        elif kind is h2.events.RemoteSettingsChanged:
            self.wake_windows()  # the initial window may have grown
            if self.settings_frames.hit(self.now()) > CONTROL_LIMIT:
                self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "SETTINGS flood")
        elif kind is h2.events.PingReceived:
            if self.pings.hit(self.now()) > CONTROL_LIMIT:
                self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "PING flood")
        elif kind is h2.events.ConnectionTerminated:
            self.closed = True


class H2Stream:
    """One request stream: its body as it arrives, and its exchange as a reactor task."""

    __slots__ = (
        "body", "c", "chunks", "conn", "ended", "ex", "finished", "grpc", "h2", "headers", "id", "pending",
        "task", "waiter",
    )  # fmt: skip

    def __init__(self, c: H2Connection, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.c = c
        self.h2 = c.h2
        self.id = stream_id
        self.headers = headers
        self.chunks: list[bytes] = []
        self.pending = 0  # flow-controlled bytes received, not yet acknowledged
        self.ended = ended
        self.finished = False
        self.waiter: REvent | None = None
        self.task: Task | None = None
        self.conn = Conn()
        self.ex: Exchange | None = None
        self.grpc = False
        self.body = _StreamBody(self)

    # -- from the connection's reader ---------------------------------------------------------

    def data(self, data: bytes, flow: int) -> None:
        self.chunks.append(data)
        self.pending += flow
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def cancel(self) -> None:
        self.finished = True
        task = self.task
        if task is not None and self.conn.task is not None:
            self.c.svc.reactor.throw(task, ClientGone("the client reset the stream"))

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.set()

    # -- the exchange --------------------------------------------------------------------------

    async def run(self) -> None:
        c, svc = self.c, self.c.svc
        http = c.http
        now = c.now
        conn = self.conn
        conn.task = svc.reactor.current
        svc.conns.add(conn)
        svc.in_flight += 1
        try:
            try:
                head = self._head()
            except StreamError as exc:
                await self._send_plain(exc.status, error_body(exc.status, exc.message))
                return
            self.ex = ex = Exchange(
                svc, head, head.request_id or svc.request_ids.next(), http.listener, http.client_ip, http.proto,
                http.identity, monotonic=now,
            )  # fmt: skip
            self.grpc = grpc.is_grpc(head.get("content-type"))
            if self.grpc:
                timeout = grpc.parse_timeout(head.get("grpc-timeout"))
                if timeout is not None:
                    ex.deadline = now() + timeout
            conn.phase = UPSTREAM
            conn.deadline = now() + http.header_timeout
            await self.drive(ex.run(svc.holder.current))
        except Timeout:
            await self._timed_out()
        except (ClientGone, OSError):
            pass
        except Exception:
            log.exception("unexpected error on an HTTP/2 stream from %s", http.client_ip)
        finally:
            self.finished = True
            ex = self.ex
            if ex is not None and ex.ctx is not None and not ex.response_started:
                ex.chain.on_abort(ex.ctx)
            conn.task = None
            svc.conns.discard(conn)
            svc.in_flight -= 1
            c.streams.pop(self.id, None)
            if not c.streams:  # the connection idles now: the keep-alive timeout and draining apply
                c.http.conn.phase = IDLE
                c.http.conn.deadline = now() + c.http.idle_timeout
            if self.pending:
                try:
                    self.h2.acknowledge_received_data(self.pending, self.id)
                except (h2.exceptions.ProtocolError, KeyError):
                    pass
            c.flush_soon()

    def _head(self) -> RequestHead:
        """A RequestHead from the HTTP/2 header list (pseudo-headers checked and taken out)."""
        head = RequestHead()
        head.version = "2"
        method = path = authority = b""
        regular: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        cookies: list[bytes] = []
        for name, value in self.headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"cookie":
                cookies.append(value)
                continue
            if name in _SINGLETONS:
                if name in seen:
                    raise StreamError(400, f"more than one {name.decode()} header")
                seen.add(name)
            if name == b"host" and not authority:
                authority = value
            if name == b"content-length":
                try:
                    head.content_length = int(value)
                except ValueError:
                    raise StreamError(400, "bad Content-Length") from None
            elif name == b"x-request-id":
                head.request_id = value
            regular.append((name, value))
        if cookies:
            regular.append((b"cookie", b"; ".join(cookies)))  # RFC 9113 8.2.3: one field upstream
        head.method = method.decode("ascii", "replace")
        if head.method == "CONNECT":
            raise StreamError(405, "CONNECT is not served here")
        if not path.startswith(b"/"):
            raise StreamError(400, "bad :path")
        raw_path, _, query = path.partition(b"?")
        try:
            head.path = normalize_path(raw_path.decode("latin-1"), self.c.http.path_rules)
            head.host = authority.decode("latin-1")
            head.hostname = host_key(head.host) if head.host else ""
        except TargetError as exc:
            raise StreamError(400, str(exc)) from None
        head.query = query
        head.target = (
            path
            if head.path == raw_path.decode("latin-1")
            else (head.path.encode("latin-1") + (b"?" + query if query else b""))
        )
        if not any(n == b"host" for n, _ in regular) and authority:
            regular.append((b"host", authority))
        # Connection-specific fields are not HTTP/2 (h2 refuses them); `te: trailers` stays (gRPC).
        head.headers = [(n, v) for n, v in regular if n not in _HOP or n in (b"host", b"te")]
        head.keep_alive = True
        has_body = not self.ended or bool(self.chunks)
        head.chunked = has_body and head.content_length is None
        if not has_body:
            head.content_length = None
        return head

    async def drive(self, gen: Any) -> None:
        event: Any = None
        try:
            while True:
                try:
                    command = gen.send(event)
                except StopIteration:
                    return
                kind = type(command)
                if kind is Attempt:
                    event = await self._attempt(command)
                elif kind is Stream:
                    event = await self._stream(command)
                elif kind is Reply:
                    event = await self._reply(command)
                elif kind is ReplyLocal:
                    a = command.answer
                    headers = [(b"content-type", a.content_type)] if a.content_type and a.body else []
                    body = a.body if a.status not in (204, 304) else b""
                    event = await self._send(a.status, [*headers, *a.headers], body, a.reason)
                elif kind is Await:
                    event = await command.awaitable
                elif kind is Drop:
                    command.response.discard()
                    event = None
                elif kind is SendContinue:
                    event = None
                elif kind is Sleep:
                    await self.c.svc.reactor.sleep(command.seconds)
                    event = None
                else:  # pragma: no cover
                    raise RuntimeError(f"unknown command {command!r}")
        except ClientGone as exc:
            ex = self.ex
            if ex is not None:
                ex.record(499, 0, 0, f"aborted: {exc}")
        finally:
            gen.close()

    async def _attempt(self, a: Attempt) -> Any:
        ex = self.ex
        assert ex is not None
        try:
            if a.cluster.protocol == "http2":
                from dataplane.upstream.h2 import attempt as h2_attempt

                return await h2_attempt(ex, a, self.body, self.conn, self.c.svc.reactor)
            return await h1.attempt(ex, a, self.body, self.conn)
        except Failure as failure:
            return failure

    async def _timed_out(self) -> None:
        ex = self.ex
        if ex is None or ex.response_started:
            self._reset(h2.errors.ErrorCodes.CANCEL)
            return
        status = 504 if self.conn.phase == UPSTREAM else 408
        if status == 504:
            self.c.svc.metrics.upstream_error(ex.cluster, "timeout")
        self.conn.deadline = self.c.now() + 1.0
        try:
            gen = ex.reply(status, f"upstream {ex.upstream} did not answer in time" if status == 504
                           else "request not received in time")  # fmt: skip
            await self.drive(gen)
        except (OSError, Timeout, ClientGone):
            pass

    def _reset(self, code: int) -> None:
        try:
            self.h2.reset_stream(self.id, code)
        except (h2.exceptions.ProtocolError, KeyError):
            pass

    # -- answers ---------------------------------------------------------------------------------

    async def _reply(self, r: Reply) -> Replied:
        ex = self.ex
        assert ex is not None
        body = error_body(r.status, r.message, ex.rid)
        return await self._send(r.status, [(b"content-type", b"application/json"), *r.headers], body, r.message)

    async def _send(self, status: int, headers: list[tuple[bytes, bytes]] | tuple, body: bytes, why: str) -> Replied:
        ex = self.ex
        assert ex is not None
        if self.grpc:  # the node's own answer to a gRPC call: trailers-only, grpc-status
            out = [*grpc.trailers_only(status, why or body.decode("latin-1", "replace")[:200]),
                   (b"x-request-id", ex.rid)]  # fmt: skip
            self._headers(out, end=True)
            self.c.flush_soon()
            return Replied(0, True)
        out = [(b":status", str(status).encode()), (b"x-request-id", ex.rid)]
        out += [(n.lower(), v) for n, v in headers if n.lower() not in _HOP]
        if ex.head.method == "HEAD" or not body:
            out.append((b"content-length", str(len(body)).encode()))
            self._headers(out, end=True)
            self.c.flush_soon()
            return Replied(0, True)
        out.append((b"content-length", str(len(body)).encode()))
        self._headers(out, end=False)
        await self._data(body, end=True)
        return Replied(len(body), True)

    async def _send_plain(self, status: int, body: bytes) -> None:
        out = [(b":status", str(status).encode()), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
        self._headers(out, end=False)
        await self._data(body, end=True)

    def _headers(self, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self.h2.send_headers(self.id, headers, end_stream=end)
        except (h2.exceptions.ProtocolError, KeyError) as exc:
            raise ClientGone(f"stream closed: {exc}") from None

    async def _data(self, data: bytes, end: bool) -> None:
        """Send `data` as the window allows (waiting for WINDOW_UPDATE), END_STREAM with the last."""
        c = self.c
        view = memoryview(data)
        while True:
            if c.closed or self.finished:
                raise ClientGone("the connection or stream closed")
            try:
                window = self.h2.local_flow_control_window(self.id)
            except (h2.exceptions.ProtocolError, KeyError) as exc:
                raise ClientGone(f"stream closed: {exc}") from None
            size = min(window, self.h2.max_outbound_frame_size, len(view))
            if size <= 0 and view:
                await c.flush()
                await c.wait_window()
                continue
            last = size == len(view)
            self.h2.send_data(self.id, bytes(view[:size]), end_stream=end and last)
            view = view[size:]
            if last:
                break
        c.flush_soon()

    async def _stream(self, s: Stream) -> Streamed:
        ex = self.ex
        assert ex is not None
        self.conn.phase = RESPONDING
        response = s.response
        resp = s.head
        body_sent = getattr(response, "body_sent", 0)
        if s.upgrade:
            response.discard()
            self._reset(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return Streamed(502, body_sent, 0, True, "aborted: upgrades are HTTP/1.1 only")
        headers = [(b":status", str(resp.status).encode())]
        headers += [(n.lower(), v.strip()) for n, v in resp.headers if n.lower() not in _HOP]
        headers += [(n.lower(), v) for n, v in s.add]
        bytes_out = 0
        try:
            chunks, done = response.first()  # type: ignore[attr-defined]
            trailers = getattr(response, "trailers", ()) if done else ()
            head_only = done and not chunks and not trailers
            self._headers(headers, end=head_only)
            while True:
                if done:
                    trailers = getattr(response, "trailers", ())
                for i, piece in enumerate(chunks):
                    bytes_out += len(piece)
                    await self._data(piece, end=done and not trailers and i == len(chunks) - 1)
                if done:
                    if trailers:
                        self._headers([(n.lower(), v) for n, v in trailers], end=True)
                    elif not chunks and not head_only:
                        self.h2.end_stream(self.id)
                    self.c.flush_soon()
                    break
                chunks, done = await response.more()  # type: ignore[attr-defined]
            response.finish()  # type: ignore[attr-defined]
        except (OSError, ClientGone, h2.exceptions.ProtocolError) as exc:
            response.abort()  # type: ignore[attr-defined]
            self._reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.c.flush_soon()
            return Streamed(resp.status, body_sent, bytes_out, True, f"aborted: {exc}")
        return Streamed(resp.status, body_sent, bytes_out, True)


class _StreamBody:
    """The stream's request body for the upstream codecs (h1.RequestBody), acknowledged
    (WINDOW_UPDATE) as it is taken: the client's sending rate follows the upstream's."""

    __slots__ = ("s",)

    def __init__(self, s: H2Stream) -> None:
        self.s = s

    def take(self) -> tuple[list[bytes], bool]:
        s = self.s
        chunks, s.chunks = s.chunks, []
        if s.pending:
            try:
                s.h2.acknowledge_received_data(s.pending, s.id)
            except (h2.exceptions.ProtocolError, KeyError):
                pass
            s.pending = 0
            s.c.flush_soon()
        return chunks, s.ended and not s.chunks

    async def wait(self, state: Conn | None = None) -> None:
        s = self.s
        if s.chunks or s.ended:
            return
        if s.finished or s.c.closed:
            raise ClientGone("the client reset the stream")
        state = state or s.conn
        state.phase = BODY
        state.deadline = s.c.now() + s.c.http.body_idle
        ev = s.c.svc.reactor.event()
        s.waiter = ev
        await ev
        if s.finished:
            raise ClientGone("the client reset the stream")
        state.phase = UPSTREAM
