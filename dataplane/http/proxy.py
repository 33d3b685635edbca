"""The HTTP/1.1 front end: one reactor task per client connection.

Per connection: an optional TLS handshake (https listeners), then requests one after another
(keep-alive, pipelining): the head is parsed (httptools, `dataplane.http.request`), and the
exchange core (`dataplane.exchange.core`) decides everything else; this module carries out
its commands on the HTTP/1.1 wire: JSON errors and policy answers, `100 Continue`, upstream
attempts through the cluster's codec (HTTP/1.1 pools, or HTTP/2), the response streamed back
(passed through, or re-chunked), upgrades piped both ways. An HTTP/2 connection preface on a
listener with `http2` hands the connection to `dataplane.http.h2_front`; forward-proxy
listeners are served by `dataplane.http.forward_proxy`.

Every failure becomes a JSON error with the right status (400/404/408/413/417/431/502/503/
504) and a log line; nothing a client or upstream sends can crash the node.

Connections run as tasks of the `dataplane.reactor` (an edge-triggered loop inside one trio
task), so a wait costs a coroutine resume instead of a trio task switch. Only reactor
awaitables may be awaited here. Timeouts move the connection's `deadline`
(`dataplane.http.services`).

Hot-path rules: few awaits (socket calls go straight to the kernel and only park when they
would block), one send for a response that arrived whole, no per-request logging except the
buffered access log.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from hyperframe.frame import GoAwayFrame, SettingsFrame

from dataplane.config.runtime import DEFAULT_LISTENER_SETTINGS
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
from dataplane.http.errors import error_response
from dataplane.http.forward_proxy import serve_forward
from dataplane.http.headers import LAST_CHUNK, chunk, client_response_head, reason
from dataplane.http.request import MESSAGE_END, HttpError, RequestHead, RequestReader
from dataplane.http.services import (
    BODY,
    IDLE,
    READING,
    RESPONDING,
    UPSTREAM,
    Conn,
    Drain,
    ProxyServices,
    ProxySettings,
    Timeout,
)
from dataplane.policies.base import LocalResponse
from dataplane.reactor import Reactor, RSock
from dataplane.tls.identity import ClientIdentity
from dataplane.tls.rsock import TlsRSock
from dataplane.upstream import h1
from dataplane.upstream.h1 import ClientGone
from fluxcommon.bytepipe import forward

if TYPE_CHECKING:
    from dataplane.upstream.h1 import H1Response

__all__ = ["HttpConnection", "ProxyServices", "ProxySettings", "serve_http", "splice"]

log = logging.getLogger("flux.proxy")
_h2c_refusal_logged = [-math.inf]  # when the last "h2c on an HTTP/1.1 listener" line was logged
# The server preface (empty SETTINGS) and GOAWAY(last stream 0, HTTP_1_1_REQUIRED = 0xd).
H2C_REFUSAL = SettingsFrame(0).serialize() + GoAwayFrame(0, last_stream_id=0, error_code=0xD).serialize()

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _body_complete(reader: RequestReader) -> bool:
    """Whether the current request's body was read in full (and consume its end marker)."""
    events = reader.events
    if events and events[0] is MESSAGE_END:
        events.popleft()
        return True
    return False


class _Body:
    """The request body as the HTTP/1.1 reader delivers it (h1.RequestBody)."""

    __slots__ = ("conn",)

    def __init__(self, conn: HttpConnection) -> None:
        self.conn = conn

    def take(self) -> tuple[list[bytes], bool]:
        events = self.conn.reader.events
        out: list[bytes] = []
        while events:
            ev = events.popleft()
            if ev is MESSAGE_END:
                return out, True
            out.append(ev)  # type: ignore[arg-type]
        return out, False

    async def wait(self, state: Conn | None = None) -> None:
        c = self.conn
        state = state or c.conn
        state.phase = BODY
        state.deadline = c.now() + c.body_idle
        data = await c.sock.recv()
        if not data:
            raise ClientGone("client closed while sending the request body")
        state.phase = UPSTREAM
        c.reader.feed(data)


class HttpConnection:
    """Serves one client connection: `await HttpConnection(...).serve()`."""

    __slots__ = (
        "body", "body_idle", "client_ip", "conn", "ex", "header_timeout", "http2", "identity", "idle_timeout",
        "listener", "now", "path_rules", "proto", "reader", "sock", "svc",
    )  # fmt: skip

    def __init__(self, svc: ProxyServices, sock: RSock, peer: tuple[str, int], listener: str, proto: bytes) -> None:
        self.svc = svc
        self.now = svc.clock  # the deadlines' clock, bound once per connection
        self.sock = sock
        self.client_ip = peer[0]
        self.listener = listener
        self.proto = proto
        self.conn = Conn()
        settings = svc.settings
        cfg = svc.holder.current
        lst = cfg.listeners.get(listener) if cfg is not None else None
        ls = lst.settings if lst is not None else DEFAULT_LISTENER_SETTINGS  # fixed for the connection's life
        self.header_timeout = ls.header_timeout or settings.header_timeout
        self.body_idle = ls.body_idle_timeout or settings.body_idle_timeout
        self.idle_timeout = ls.idle_timeout or settings.idle_timeout
        self.http2 = ls.http2
        self.path_rules = ls.path_rules
        self.reader = RequestReader(
            max_header_bytes=settings.max_header_bytes,
            body_limit=settings.max_body_bytes,
            path_rules=ls.path_rules,
            forward=lst is not None and lst.forward is not None,
        )
        self.body = _Body(self)
        self.ex: Exchange | None = None
        self.identity: ClientIdentity | None = None  # from a verified client certificate

    async def _handshake(self, sock: TlsRSock) -> bool:
        """TLS handshake within the header timeout; the client's certificate identity, if any."""
        self.conn.deadline = self.now() + self.header_timeout
        try:
            await sock.handshake()
        except OSError as exc:  # ssl.SSLError included: a bad client hello, no or a bad certificate
            self.svc.metrics.count("tls_handshake_failed")
            log.debug("TLS handshake with %s failed: %s", self.client_ip, exc)
            return False
        der = sock.peer_der()
        if der:
            try:
                self.identity = ClientIdentity.from_der(der)
            except ValueError:
                self.identity = None
        return True

    async def serve(self) -> None:
        svc, conn, sock, now = self.svc, self.conn, self.sock, self.now
        conn.task = svc.reactor.current
        metrics = svc.metrics
        metrics.downstream_active += 1
        metrics.downstream_total += 1
        svc.conns.add(conn)
        events = self.reader.events
        feed = self.reader.feed
        served = 0
        try:
            if type(sock) is TlsRSock:
                if not await self._handshake(sock):
                    return
                if sock.alpn == "h2":
                    await self._serve_h2(b"")
                    return
            while not svc.draining or events:
                if not events:
                    t = now()
                    conn.phase = IDLE
                    conn.idle_since = t
                    # The first request's head must come within the header timeout of the accept;
                    # later ones within the idle timeout, then the header timeout from their first byte.
                    conn.deadline = t + (self.idle_timeout if served else self.header_timeout)
                    while not events:
                        data = sock.try_recv()  # usually there: no coroutine for the common case
                        if data is None:
                            data = await sock.recv()
                        if not data:
                            return
                        if conn.phase == IDLE:
                            if not served and data[:3] == b"PRI":
                                data = await self._maybe_h2c(data)
                                if data is None:
                                    return  # served as HTTP/2, or told to use HTTP/1.1
                            conn.phase = READING
                            if served:
                                conn.deadline = now() + self.header_timeout
                        feed(data)
                head = events.popleft()
                svc.in_flight += 1
                try:
                    keep = await self.exchange(head)  # type: ignore[arg-type]
                finally:
                    svc.in_flight -= 1
                self.ex = None
                served += 1
                if not keep:
                    return
        except Timeout:
            await self._timed_out()
        except Drain:
            pass
        except HttpError as exc:
            metrics.count(f"bad_request_{exc.status}")
            try:
                await sock.send_all(error_response(exc.status, exc.message, close=True))
            except OSError:
                pass
        except OSError:
            pass  # the client went away
        except Exception:
            log.exception("unexpected error on a connection from %s", self.client_ip)
        finally:
            ex = self.ex
            if ex is not None and ex.ctx is not None:
                ex.chain.on_abort(ex.ctx)  # a request that ended without a status: breakers free its permit
            conn.task = None
            svc.conns.discard(conn)
            sock.close()
            metrics.downstream_active -= 1

    async def _maybe_h2c(self, data: bytes) -> bytes | None:
        """An HTTP/2 connection preface (h2c with prior knowledge) is served as HTTP/2 (None);
        anything else is HTTP/1.1 after all: the bytes read, for the HTTP/1.1 reader."""
        while len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
            more = await self.sock.recv()
            if not more:
                return data
            data += more
        if not data.startswith(H2_PREFACE):
            return data
        if not self.http2:
            await self._refuse_h2c()
            return None
        await self._serve_h2(data)
        return None

    async def _refuse_h2c(self) -> None:
        """HTTP/2 with prior knowledge on a listener without `http2: true`: answer in HTTP/2 that
        HTTP/1.1 is required (GOAWAY HTTP_1_1_REQUIRED, RFC 9113 7), so the client says why."""
        self.svc.metrics.count("h2c_refused")
        now_s = self.now()
        if now_s - _h2c_refusal_logged[0] >= 60.0:
            _h2c_refusal_logged[0] = now_s
            log.warning(
                "listener %s: an HTTP/2 (h2c, prior knowledge) connection from %s; the listener serves "
                "HTTP/1.1 only: set http2: true on it to serve h2c (logged once a minute)",
                self.listener, self.client_ip,
            )  # fmt: skip
        try:
            await self.sock.send_all(H2C_REFUSAL)
        except OSError:
            pass

    async def _serve_h2(self, first: bytes) -> None:
        from dataplane.http.h2_front import H2Connection

        self.conn.phase = READING
        await H2Connection(self, first).serve()

    async def _timed_out(self) -> None:
        ex = self.ex
        phase = self.conn.phase
        if ex is None:
            if phase == READING:  # part of a head came, the rest did not
                self.svc.metrics.count("client_header_timeout")
                self.conn.deadline = self.now() + 1.0
                try:
                    await self.sock.send_all(error_response(408, "request head not received in time", close=True))
                except (OSError, Timeout):
                    pass
            return  # idle keep-alive expired (or nothing was sent): just close
        if ex.response_started:
            return  # cut mid-response: just close
        if phase == BODY:
            self.svc.metrics.count("client_body_timeout")
        status = 504 if phase == UPSTREAM else 408
        message = f"upstream {ex.upstream} did not answer in time" if status == 504 else "request not received in time"
        if status == 504:
            self.svc.metrics.upstream_error(ex.cluster, "timeout")
            log.warning("%s %s -> %s (%s): %s", ex.head.method, ex.head.path, ex.upstream, ex.cluster, message)
        self.conn.deadline = self.now() + 1.0
        try:
            await self._reply_error(status, message, close=True)
        except (OSError, Timeout):
            pass

    # -- one request ---------------------------------------------------------------------

    async def exchange(self, head: RequestHead) -> bool:
        svc = self.svc
        ex = self.ex = Exchange(
            svc, head, head.request_id or svc.request_ids.next(), self.listener, self.client_ip, self.proto,
            self.identity, monotonic=self.now,
        )  # fmt: skip
        cfg = svc.holder.current
        listener = cfg.listeners.get(self.listener) if cfg is not None else None
        if listener is not None and listener.forward is not None:
            return await serve_forward(self, head, listener)
        return await self.drive(ex.run(cfg))

    async def drive(self, gen: Any) -> bool:
        """Carry out the core's commands on this connection until it returns (keep-alive or not)."""
        event: Any = None
        try:
            while True:
                try:
                    command = gen.send(event)
                except StopIteration as stop:
                    return bool(stop.value)
                kind = type(command)
                if kind is Attempt:
                    event = await self._attempt(command)
                elif kind is Stream:
                    event = await self._stream(command)
                elif kind is Reply:
                    event = await self._send_error(command)
                elif kind is ReplyLocal:
                    event = await self._send_local(command.answer)
                elif kind is Await:
                    event = await command.awaitable
                elif kind is Drop:
                    command.response.discard()
                    event = None
                elif kind is SendContinue:
                    reader = self.reader
                    if not (reader.events and reader.events[0] is MESSAGE_END):
                        await self.sock.send_all(CONTINUE)
                    event = None
                elif kind is Sleep:
                    await self.svc.reactor.sleep(command.seconds)
                    event = None
                else:  # pragma: no cover - a command this front end does not know
                    raise RuntimeError(f"unknown command {command!r}")
        except ClientGone as exc:
            ex = self.ex
            if ex is not None:
                ex.record(499, 0, 0, f"aborted: {exc}")
            return False
        finally:
            gen.close()

    async def _attempt(self, a: Attempt) -> Any:
        ex = self.ex
        assert ex is not None
        try:
            if a.cluster.protocol == "http2":
                from dataplane.upstream.h2 import attempt as h2_attempt

                return await h2_attempt(ex, a, self.body, self.conn, self.svc.reactor)
            return await h1.attempt(ex, a, self.body, self.conn)
        except Failure as failure:
            return failure

    # -- answers ----------------------------------------------------------------------------

    async def _send_error(self, r: Reply) -> Replied:
        ex = self.ex
        assert ex is not None
        head = ex.head
        keep = not r.close and head.keep_alive and _body_complete(self.reader) and not self.svc.draining
        data = error_response(r.status, r.message, ex.rid, close=not keep, head_only=head.method == "HEAD",
                              headers=r.headers)  # fmt: skip
        await self.sock.send_all(data)
        return Replied(len(data), keep)

    async def _send_local(self, answer: LocalResponse) -> Replied:
        """Send a response a policy made (401, 403, 429, a CORS preflight, a redirect...)."""
        ex = self.ex
        assert ex is not None
        head = ex.head
        keep = head.keep_alive and _body_complete(self.reader) and not self.svc.draining
        parts = [b"HTTP/1.1 %d %b\r\n" % (answer.status, reason(answer.status))]
        if answer.content_type and answer.body:
            parts.append(b"Content-Type: " + answer.content_type + b"\r\n")
        if answer.status not in (204, 304):
            parts.append(b"Content-Length: %d\r\n" % len(answer.body))
        parts.append(b"X-Request-Id: " + ex.rid + b"\r\n")
        for name, value in answer.headers:
            parts += (name, b": ", value, b"\r\n")
        if not keep:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if head.method != "HEAD" and answer.status not in (204, 304):
            parts.append(answer.body)
        data = b"".join(parts)
        await self.sock.send_all(data)
        return Replied(len(data), keep)

    async def _reply_error(self, status: int, message: str, *, close: bool = False) -> bool:
        """A JSON error outside the core's run (timeouts, the forward proxy); recorded by the core."""
        ex = self.ex
        assert ex is not None
        return await self.drive(ex.reply(status, message, close=close))

    async def _reply_local(self, answer: LocalResponse) -> bool:
        ex = self.ex
        assert ex is not None
        return await self.drive(ex.reply_local(answer))

    # -- the response -------------------------------------------------------------------------

    async def _stream(self, s: Stream) -> Streamed:
        """The client sees bytes from here on: the head (rewritten), the body as it comes."""
        ex = self.ex
        assert ex is not None
        svc, state = self.svc, self.conn
        state.phase = RESPONDING
        response = s.response
        resp = s.head
        head = ex.head
        body_sent = getattr(response, "body_sent", 0)
        if s.upgrade:
            state.deadline = math.inf
            return await self._tunnel(response, s)  # type: ignore[arg-type]
        if resp.content_length is not None:
            chunked_out = False
            close_client = not head.keep_alive or svc.draining
        elif head.version == "1.1":
            chunked_out = True
            close_client = not head.keep_alive or svc.draining
        else:
            chunked_out = False
            close_client = True
        trailers = ()
        bytes_out = 0
        try:
            chunks, done = response.first()  # type: ignore[attr-defined]
            out = [client_response_head(resp, chunked=chunked_out, close=close_client, add=s.add)]
            for c in chunks:
                out.append(chunk(c) if chunked_out else c)
            if done:
                trailers = getattr(response, "trailers", ())
                if chunked_out:
                    out.append(_last_chunk(trailers))
            data = b"".join(out)
            bytes_out = len(data)
            sock = self.sock
            sent = sock.try_send(data)
            if sent < bytes_out:
                await sock.send_all(memoryview(data)[sent:])
            while not done:
                chunks, done = await response.more()  # type: ignore[attr-defined]
                out = [chunk(c) for c in chunks] if chunked_out else chunks
                if done and chunked_out:
                    out.append(_last_chunk(getattr(response, "trailers", ())))
                if out:
                    data = b"".join(out) if len(out) > 1 else out[0]
                    bytes_out += len(data)
                    await sock.send_all(data)
            response.finish()  # type: ignore[attr-defined]
        except OSError as exc:
            # The client went away, or the upstream failed mid-response: the client has part of it.
            response.abort()  # type: ignore[attr-defined]
            return Streamed(resp.status, body_sent, 0, False, f"aborted: {exc}")
        return Streamed(resp.status, body_sent, bytes_out, not close_client)

    async def _tunnel(self, response: H1Response, s: Stream) -> Streamed:
        """Switch protocols (WebSocket and friends): pass the 101 on, then pipe bytes both ways."""
        resp = s.head
        parts = [b"HTTP/1.1 101 ", resp.reason or b"Switching Protocols", b"\r\n"]
        if resp.block:
            parts += (resp.block, b"\r\n")
        parts += (b"Connection: Upgrade\r\nUpgrade: ", resp.upgrade or b"websocket", b"\r\n\r\n",
                  response.reader.tail)  # fmt: skip
        await self.sock.send_all(b"".join(parts))
        try:
            counts = await splice(self.svc.reactor, self.sock, response.sock)
        finally:
            response.abort()  # the pool forgets the connection (splice closed it)
        return Streamed(101, counts[0], counts[1], False)


def _last_chunk(trailers: Any) -> bytes:
    """The end of a chunked body, with trailers (gRPC over HTTP/1.1 never; kept for completeness)."""
    if not trailers:
        return LAST_CHUNK
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


async def splice(reactor: Reactor, client: RSock, upstream: RSock, first: bytes = b"") -> list[int]:
    """Pipe bytes both ways (an upgraded connection, a CONNECT tunnel) until the upstream closes
    or both sides did; half-closes are passed on. `first` goes upstream before anything else.
    Returns [bytes client->upstream, bytes upstream->client]; the upstream socket is closed."""
    counts = [0, 0]
    done = reactor.event()
    running = [2]

    async def pipe(src: RSock, dst: RSock, i: int) -> None:
        def count(n: int) -> None:
            counts[i] += n

        await forward(src.recv, dst.send_all, dst.shutdown_write, count)  # the shared loop (fluxcommon.bytepipe)
        running[0] -= 1
        if running[0] == 0 or i == 1:  # both directions done, or the upstream closed
            done.set()

    try:
        if first:
            counts[0] += len(first)
            await upstream.send_all(first)
        reactor.spawn(pipe(client, upstream, 0), "splice-up")
        reactor.spawn(pipe(upstream, client, 1), "splice-down")
        await done
    finally:
        upstream.close()  # ends the other pipe if it still runs
    return counts


async def serve_http(
    svc: ProxyServices, sock: RSock, peer: tuple[str, int], listener: str, proto: bytes = b"http"
) -> None:
    """Serve one client connection (a reactor task) until it closes, errs, idles out or the node drains."""
    await HttpConnection(svc, sock, peer, listener, proto).serve()
