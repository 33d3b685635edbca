"""The HTTP/1.1 reverse proxy: one trio task per client connection.

Per request: parse the head (httptools), match a route on the config current
at that moment, pick a cluster (weighted split) and an endpoint (affinity
cookie, else the cluster's balancer), take a pooled upstream connection, send
the rewritten head and stream the body, stream the response back, then record
metrics, the access log line and passive health. Every failure becomes a JSON
error with the right status (400/404/413/417/431/502/503/504) and a log line;
nothing a client or upstream sends can crash the node.

Connections run as tasks of the `dataplane.reactor` (an edge-triggered loop
inside one trio task), so a wait costs a coroutine resume instead of a trio
task switch. Only reactor awaitables may be awaited here.

Timeouts: each connection has a `deadline` attribute that the handler moves as
it goes (the listener's keep-alive idle, header and body-idle timeouts, the
cluster's upstream read timeout, the route's total timeout). The reaper (a
trio task) raises `_Timeout` in connections whose deadline passed, at the
await where they wait. Setting a float per phase costs nothing, where a timer
per request and per phase would cost more than routing.

Hot-path rules: few awaits (socket calls go straight to the kernel and only
park when they would block), one send for a response that arrived whole, no
per-request logging except the buffered access log.
"""

from __future__ import annotations

import errno
import heapq
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from dataplane.accesslog import AccessLog
from dataplane.admission import Admission
from dataplane.balancing import EndpointState
from dataplane.config.runtime import DEFAULT_LISTENER_SETTINGS, ClusterRuntime, ConfigHolder, RouteRuntime
from dataplane.http.errors import error_response
from dataplane.http.forward_proxy import serve_forward
from dataplane.http.headers import LAST_CHUNK, chunk, client_response_head, reason, upstream_request_head
from dataplane.http.request import MESSAGE_END, HttpError, RequestHead, RequestReader
from dataplane.http.response import ResponseHead, ResponseReader, UpstreamProtocolError
from dataplane.metrics import Metrics
from dataplane.policies.base import LocalResponse, RequestContext
from dataplane.policies.chain import EMPTY_CHAIN, PolicyChain
from dataplane.reactor import ConnectError, Reactor, RSock, Task
from dataplane.tls.identity import ClientIdentity
from dataplane.tls.rsock import TlsRSock
from dataplane.upstream.pool import PoolOverflow, UpstreamConn, UpstreamTlsError

log = logging.getLogger("flux.proxy")

_now = time.monotonic  # the clock of connection deadlines (the reaper uses the same)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
RETRY_BUFFER = 64 * 1024  # request bodies up to this size are kept for a retry
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

# Connection phases (what a timeout means). IDLE: waiting for the first byte of a request
# (a connection the node may close when it runs short of descriptors); READING: the head;
# BODY: the client's body, sent upstream as it comes.
IDLE, READING, UPSTREAM, RESPONDING, BODY = 0, 1, 2, 3, 4

# Failures that are no fault of the endpoint: they never count towards its ejection.
_NOT_ENDPOINT_FAULTS = frozenset({"overflow", "local"})
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class RequestIds:
    """Fast unique request ids: a random per-process prefix and a counter."""

    __slots__ = ("_n", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._n = 0

    def next(self) -> bytes:
        self._n += 1
        return f"{self._prefix}-{self._n:010x}".encode()


@dataclass
class ProxySettings:
    """The worker's defaults; a listener's `timeouts` override the first three."""

    header_timeout: float = 30.0
    body_idle_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_header_bytes: int = 32 * 1024
    max_body_bytes: int = 0  # 0 = unlimited


PassiveHealth = Callable[[ClusterRuntime, EndpointState, bool], None]


class _Timeout(Exception):
    """Raised in a connection whose deadline passed."""


class _Drain(Exception):
    """Raised in an idle keep-alive connection when the node drains."""


class Conn:
    """Per-connection state the reaper and the drain logic can see."""

    __slots__ = ("deadline", "idle_since", "phase", "task")

    def __init__(self) -> None:
        self.task: Task | None = None
        self.deadline = math.inf
        self.phase = IDLE
        self.idle_since = 0.0  # when it last became IDLE (the oldest idle ones are closed first)


@dataclass
class ProxyServices:
    """What every connection of a worker shares."""

    holder: ConfigHolder
    metrics: Metrics
    access_log: AccessLog
    passive_health: PassiveHealth
    reactor: Reactor
    settings: ProxySettings = field(default_factory=ProxySettings)
    request_ids: RequestIds = field(default_factory=RequestIds)
    admission: Admission = field(default_factory=Admission)
    draining: bool = False
    in_flight: int = 0
    conns: set[Conn] = field(default_factory=set)
    _reclaimable: list[Conn] = field(default_factory=list)  # oldest idle first, taken by reclaim_idle

    def start_draining(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their request."""
        self.draining = True
        for conn in list(self.conns):
            if conn.phase == IDLE and conn.task is not None:
                self.reactor.throw(conn.task, _Drain())

    def reclaim_idle(self) -> bool:
        """Close the oldest idle connection (between requests, or no byte sent yet) to make room
        for a new one when descriptors run short; False when none is idle. A scan of every
        connection finds the oldest 64 at once, so a burst of new connections costs one scan."""
        for _ in range(2):
            pool = self._reclaimable
            while pool:
                conn = pool.pop()
                if conn.phase == IDLE and conn.task is not None and conn in self.conns:
                    self.reactor.throw(conn.task, _Drain())
                    conn.task = None  # thrown once
                    self.metrics.count("idle_connections_reclaimed")
                    return True
            idle = [c for c in self.conns if c.phase == IDLE and c.task is not None]
            if not idle:
                return False
            self._reclaimable = heapq.nsmallest(64, idle, key=lambda c: c.idle_since)[::-1]  # pop(): oldest
        return False

    async def run_reaper(self, interval: float = 0.1) -> None:
        """Stop connections whose deadline passed (idle, slow client, slow upstream)."""
        while True:
            await trio.sleep(interval)
            now = _now()
            for conn in self.conns:
                if conn.deadline <= now and conn.task is not None:
                    conn.deadline = math.inf
                    self.reactor.throw(conn.task, _Timeout())


class _UpstreamFailed(Exception):
    """The exchange with one endpoint failed before the client saw a byte."""

    def __init__(self, kind: str, status: int, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message
        self.retryable = retryable


class _Exchange:
    """What is known of the request in progress (for logs after a timeout)."""

    __slots__ = (
        "chain", "client_cert", "cluster", "ctx", "deadline", "head", "listener", "response_started", "rid", "route",
        "started", "upstream",
    )  # fmt: skip

    def __init__(self, head: RequestHead, rid: bytes, listener: str, started: float, client_cert: str = "") -> None:
        self.head = head
        self.client_cert = client_cert  # the verified client certificate's subject (https)
        self.rid = rid
        self.listener = listener
        self.started = started
        self.route = ""
        self.cluster = ""
        self.upstream = ""
        self.response_started = False
        self.ctx: RequestContext | None = None  # set when policies run
        self.chain: PolicyChain = EMPTY_CHAIN
        self.deadline = math.inf  # the route's total timeout, over every attempt

    @property
    def consumer(self) -> str:
        ctx = self.ctx
        return ctx.consumer.name if ctx is not None and ctx.consumer is not None else ""


def _cookie(head: RequestHead, name: str) -> str | None:
    for n, v in head.headers:
        if len(n) == 6 and n.lower() == b"cookie":
            for part in v.decode("latin-1").split(";"):
                k, sep, val = part.strip().partition("=")
                if sep and k == name:
                    return val
    return None


def _hash_key(cluster: ClusterRuntime, head: RequestHead, client_ip: str) -> str | None:
    hk = cluster.hash_on
    if hk is None:  # ip_hash
        return client_ip
    if hk.source == "header":
        return head.get(hk.name)
    if hk.source == "cookie":
        return _cookie(head, hk.name)
    if hk.source == "ip":
        return client_ip
    return head.path


def _body_complete(reader: RequestReader) -> bool:
    """Whether the current request's body was read in full (and consume its end marker)."""
    events = reader.events
    if events and events[0] is MESSAGE_END:
        events.popleft()
        return True
    return False


class HttpConnection:
    """Serves one client connection: `await HttpConnection(...).serve()`."""

    __slots__ = (
        "body_idle", "client_ip", "conn", "ex", "header_timeout", "identity", "idle_timeout", "listener", "proto",
        "reader", "sock", "svc",
    )  # fmt: skip

    def __init__(self, svc: ProxyServices, sock: RSock, peer: tuple[str, int], listener: str, proto: bytes) -> None:
        self.svc = svc
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
        self.reader = RequestReader(
            max_header_bytes=settings.max_header_bytes,
            body_limit=settings.max_body_bytes,
            path_rules=ls.path_rules,
            forward=lst is not None and lst.forward is not None,
        )
        self.ex: _Exchange | None = None
        self.identity: ClientIdentity | None = None  # from a verified client certificate

    async def _handshake(self, sock: TlsRSock) -> bool:
        """TLS handshake within the header timeout; the client's certificate identity, if any."""
        self.conn.deadline = _now() + self.header_timeout
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
        svc, conn, sock = self.svc, self.conn, self.sock
        conn.task = svc.reactor.current
        metrics = svc.metrics
        metrics.downstream_active += 1
        metrics.downstream_total += 1
        svc.conns.add(conn)
        events = self.reader.events
        feed = self.reader.feed
        served = 0
        try:
            if type(sock) is TlsRSock and not await self._handshake(sock):
                return
            while not svc.draining or events:
                if not events:
                    now = _now()
                    conn.phase = IDLE
                    conn.idle_since = now
                    # The first request's head must come within the header timeout of the accept;
                    # later ones within the idle timeout, then the header timeout from their first byte.
                    conn.deadline = now + (self.idle_timeout if served else self.header_timeout)
                    while not events:
                        data = sock.try_recv()  # usually there: no coroutine for the common case
                        if data is None:
                            data = await sock.recv()
                        if not data:
                            return
                        if conn.phase == IDLE:
                            conn.phase = READING
                            if served:
                                conn.deadline = _now() + self.header_timeout
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
        except _Timeout:
            await self._timed_out()
        except _Drain:
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

    async def _timed_out(self) -> None:
        ex = self.ex
        phase = self.conn.phase
        if ex is None:
            if phase == READING:  # part of a head came, the rest did not
                self.svc.metrics.count("client_header_timeout")
                self.conn.deadline = _now() + 1.0
                try:
                    await self.sock.send_all(error_response(408, "request head not received in time", close=True))
                except (OSError, _Timeout):
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
        self.conn.deadline = _now() + 1.0
        try:
            await self._reply_error(status, message, close=True)
        except (OSError, _Timeout):
            pass

    async def _reply_error(
        self, status: int, message: str, *, close: bool = False, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> bool:
        """Answer locally (no upstream); keeps the connection only if the request was read whole."""
        ex = self.ex
        assert ex is not None
        head = ex.head
        keep = not close and head.keep_alive and _body_complete(self.reader) and not self.svc.draining
        ctx = ex.ctx
        if ctx is not None:
            ex.chain.on_response(ctx, status)  # breakers count the failure; CORS headers still apply
            headers = (*headers, *ctx.response_add)
        data = error_response(status, message, ex.rid, close=not keep, head_only=head.method == "HEAD",
                              headers=headers)  # fmt: skip
        ex.response_started = True
        await self.sock.send_all(data)
        elapsed = time.perf_counter() - ex.started
        self.svc.metrics.request(ex.listener, ex.route, ex.cluster, status, elapsed, 0, len(data))
        self.svc.access_log.log(
            ex.rid, self.client_ip, head.method, head.host, head.path, ex.route, ex.cluster, ex.upstream, status,
            0, len(data), elapsed, consumer=ex.consumer, client_cert=ex.client_cert, error=message,
        )  # fmt: skip
        return keep

    async def _reply_local(self, answer: LocalResponse) -> bool:
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
        ctx = ex.ctx
        extra = answer.headers if ctx is None else [*answer.headers, *ctx.response_add]
        for name, value in extra:
            parts += (name, b": ", value, b"\r\n")
        if not keep:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if head.method != "HEAD" and answer.status not in (204, 304):
            parts.append(answer.body)
        data = b"".join(parts)
        ex.response_started = True
        await self.sock.send_all(data)
        elapsed = time.perf_counter() - ex.started
        self.svc.metrics.request(ex.listener, ex.route, ex.cluster, answer.status, elapsed, 0, len(data))
        self.svc.access_log.log(
            ex.rid, self.client_ip, head.method, head.host, head.path, ex.route, ex.cluster, "", answer.status,
            0, len(data), elapsed, consumer=ex.consumer, client_cert=ex.client_cert, error=answer.reason,
        )  # fmt: skip
        return keep

    # -- one request ---------------------------------------------------------------------

    async def exchange(self, head: RequestHead) -> bool:
        svc = self.svc
        identity = self.identity
        ex = self.ex = _Exchange(
            head,
            head.request_id or svc.request_ids.next(),
            self.listener,
            time.perf_counter(),
            identity.subject if identity is not None else "",
        )
        cfg = svc.holder.current
        listener = cfg.listeners.get(self.listener) if cfg is not None else None
        if listener is None:
            return await self._reply_error(503, "listener is not configured")
        if listener.forward is not None:
            return await serve_forward(self, head, listener)
        host = head.hostname
        rule = listener.matcher.match(host, head.path, head.method, head)
        if rule is None:
            return await self._reply_error(404, f"no route for {head.method} {host}{head.path}")
        route: RouteRuntime = rule.target  # type: ignore[assignment]
        ex.route = route.name
        cluster = route.pick_cluster()
        ex.cluster = cluster.name
        chain = route.chain + cluster.chain if cluster.chain.policies else route.chain
        if chain.policies:
            ctx = ex.ctx = RequestContext(head, self.client_ip, self.listener, route.name, _now())
            ex.chain = chain
            if identity is not None:  # a consumer's mtls credential names this certificate's subject
                consumer = cfg.consumers.by_subject.get(identity.key) if cfg.consumers is not None else None
                if consumer is not None:
                    ctx.consumer = consumer
                    ctx.add_upstream_header("X-Consumer-Name", consumer.name)
            answer = chain.run(ctx, svc.metrics.policy)
            if answer is not None and type(answer) is not LocalResponse:
                answer = await answer
            if answer is not None:
                return await self._reply_local(answer)
            moved = ctx.vars.get("cluster")  # a circuit breaker's fallback cluster
            if moved is not None:
                cfg_cluster = cfg.clusters.get(moved)
                if cfg_cluster is None:
                    return await self._reply_error(503, f"fallback cluster {moved!r} is not configured")
                cluster = cfg_cluster
                ex.cluster = cluster.name
        if cluster.max_requests and cluster.state.in_flight >= cluster.max_requests:
            svc.metrics.upstream_error(cluster.name, "max_requests")
            return await self._reply_error(503, f"cluster {cluster.name!r} is at its limit of concurrent requests")

        reader = self.reader
        if head.expect_continue and not (reader.events and reader.events[0] is MESSAGE_END):
            await self.sock.send_all(CONTINUE)

        retry = route.retry
        attempts = route.attempts
        retry_on = route.retry_on_idempotent if head.method in IDEMPOTENT else route.retry_on_other
        body_buffer: list[bytes] | None = [] if head.has_body else None
        avoid: EndpointState | None = None
        failure: _UpstreamFailed | None = None
        ep: EndpointState | None = None
        if route.timeout:
            ex.deadline = _now() + route.timeout
        for attempt in range(attempts):
            ep, cookies = self._pick(cluster, head, avoid, route)
            if ep is None:
                if failure is not None:
                    break
                return await self._reply_error(503, f"no healthy endpoint in cluster {cluster.name!r}")
            ex.upstream = ep.key
            last = attempt + 1 >= attempts
            try:
                return await self._forward(
                    head,
                    route,
                    cluster,
                    ep,
                    cookies,
                    body_buffer,
                    fresh=attempt > 0,
                    retry_on=(() if last else retry_on),
                )
            except _UpstreamFailed as exc:
                failure = exc
                svc.metrics.upstream_error(cluster.name, exc.kind)
                if exc.kind not in _NOT_ENDPOINT_FAULTS and (
                    exc.kind in ("connect_failure", "reset", "timeout") or exc.status in (502, 503, 504)
                ):
                    svc.passive_health(cluster, ep, False)
                if not exc.retryable or last or not _may_retry(exc.kind, retry_on):
                    break
                if head.has_body and not body_buffer:
                    break  # the body was streamed upstream and is gone
                avoid = ep
                svc.metrics.count("retries")
                if retry is not None and retry.backoff_ms:
                    await svc.reactor.sleep(retry.backoff_ms / 1000 * (2**attempt))
        assert failure is not None
        log.warning("%s %s%s -> %s (%s): %s", head.method, host, head.path, ex.upstream or "-", cluster.name,
                    failure.message)  # fmt: skip
        return await self._reply_error(failure.status, failure.message)

    def _pick(
        self, cluster: ClusterRuntime, head: RequestHead, avoid: EndpointState | None, route: RouteRuntime
    ) -> tuple[EndpointState | None, tuple[bytes, ...]]:
        """(endpoint, Set-Cookie values) for this request, or (None, ())."""
        affinity = cluster.affinity
        if affinity is not None:
            value = _cookie(head, affinity.cookie)
            if value:
                ep = affinity.index.find(value)
                if ep is not None and ep is not avoid:
                    return ep, ()
        balancer = cluster.balancer
        cookies: tuple[bytes, ...] = ()
        if route.grayscale is not None:  # a version of the cluster's instances, by rule, weight or stickiness
            ctx = self.ex.ctx if self.ex is not None else None
            groups = ctx.consumer.groups if ctx is not None and ctx.consumer is not None else frozenset()
            choice = route.grayscale.choose(head.get, lambda name: _cookie(head, name), groups, self.client_ip)
            if choice is not None:
                subset = cluster.by_version.get(choice.version)
                if subset is not None:
                    balancer = subset
                    if choice.set_cookie:
                        cookies = (choice.set_cookie.encode("latin-1"),)
        elif cluster.zone_balancer is not None:  # prefer_zone: this node's zone first
            balancer = cluster.zone_balancer
        key = _hash_key(cluster, head, self.client_ip) if cluster.keyed else None
        ep = balancer.pick(key)
        if ep is None and balancer is not cluster.balancer:
            ep = cluster.balancer.pick(key)  # nothing available in the subset: any instance
        if ep is not None and ep is avoid:  # a retry: prefer another endpoint
            for _ in range(len(cluster.endpoints)):
                other = cluster.balancer.pick(None)
                if other is not None and other is not avoid:
                    ep = other
                    break
        if ep is None:
            return None, ()
        if affinity is None:
            return ep, cookies
        pin = affinity.index.set_cookie_header(affinity.cookie, ep, affinity.ttl_ms, affinity.path).encode()
        return ep, (*cookies, pin)

    def _target(self, head: RequestHead, route: RouteRuntime, ctx: RequestContext | None = None) -> bytes:
        """The request target sent upstream: the route's prefix rewrite, then a policy's path/query rewrite."""
        path = head.path
        if route.prefix_rewrite is not None:
            path = route.prefix_rewrite + path[len(route.match_prefix) :]
            if not path.startswith("/"):
                path = "/" + path
        query = head.query
        if ctx is not None:
            if ctx.path is not None:
                path = ctx.path
            if ctx.query is not None:
                query = ctx.query
            if path is head.path and query is head.query:
                return head.target
        return path.encode("latin-1") + (b"?" + query if query else b"")

    async def _send_request(
        self, up: RSock, head_bytes: bytes, head: RequestHead, read_timeout: float,
        body_buffer: list[bytes] | None, replay: bool,
    ) -> int:  # fmt: skip
        """Send head and body upstream; returns body bytes sent. Streams the client's body chunk by chunk."""
        reader = self.reader
        if not head.has_body:
            _body_complete(reader)
            await up.send_all(head_bytes)
            return 0
        chunked = head.chunked
        if replay and body_buffer:
            await up.send_all(b"".join([head_bytes, *body_buffer]))
            return sum(len(b) for b in body_buffer)
        events = reader.events
        out = [head_bytes]
        sent = 0
        buffered = 0
        keep = body_buffer is not None
        conn = self.conn
        while True:
            done = False
            while events:
                ev = events[0]
                if ev is MESSAGE_END:
                    events.popleft()
                    if chunked:
                        out.append(LAST_CHUNK)
                        if keep:
                            body_buffer.append(LAST_CHUNK)  # type: ignore[union-attr]
                    done = True
                    break
                events.popleft()
                piece = chunk(ev) if chunked else ev  # type: ignore[arg-type]
                out.append(piece)
                sent += len(ev)  # type: ignore[arg-type]
                if keep:
                    buffered += len(piece)
                    if buffered > RETRY_BUFFER:
                        keep = False
                        body_buffer.clear()  # type: ignore[union-attr]
                    else:
                        body_buffer.append(piece)  # type: ignore[union-attr]
            if out:
                await up.send_all(b"".join(out) if len(out) > 1 else out[0])
                out = []
            if done:
                return sent
            conn.phase = BODY
            conn.deadline = _now() + self.body_idle
            data = await self.sock.recv()
            if not data:
                raise _ClientGone("client closed while sending the request body")
            conn.phase = UPSTREAM
            reader.feed(data)

    async def _forward(
        self,
        head: RequestHead,
        route: RouteRuntime,
        cluster: ClusterRuntime,
        ep: EndpointState,
        cookies: tuple[bytes, ...],
        body_buffer: list[bytes] | None,
        *,
        fresh: bool,
        retry_on: frozenset[str] | tuple[()] = (),
    ) -> bool:
        """One attempt against one endpoint. Raises _UpstreamFailed while the client saw nothing.

        `retry_on` is empty on the last attempt; otherwise a 5xx answer the retry policy names is
        dropped (raised as a failure) so the next attempt can go to another endpoint.
        """
        svc, ex, conn_state = self.svc, self.ex, self.conn
        assert ex is not None
        pool = cluster.pools[ep.key]
        framing = b"" if not head.has_body else (b"chunked" if head.chunked else str(head.content_length).encode())
        upgrade = head.get("upgrade") if head.upgrade else None
        ctx = ex.ctx
        if ctx is None:
            head_bytes = upstream_request_head(
                head,
                head.target if route.prefix_rewrite is None else self._target(head, route),
                self.client_ip,
                self.proto,
                ex.rid,
                framing,
                route.host_rewrite if route.host_rewrite is not None or head.host else ep.key.encode(),
                _extra_up(upgrade, self.identity),
            )
        else:
            add = ctx.upstream_add
            if upgrade or self.identity is not None:
                add = [*add, *_extra_up(upgrade, self.identity)]
            head_bytes = upstream_request_head(
                head,
                self._target(head, route, ctx),
                self.client_ip,
                self.proto,
                ex.rid,
                framing,
                ctx.host if ctx.host is not None else _upstream_host(head, route, ep),
                add,
                frozenset(ctx.upstream_remove),
            )
        read_timeout = cluster.read_timeout
        now = _now()
        total_deadline = ex.deadline
        retry = route.retry
        if retry is not None and retry.per_try_timeout_ms and retry_on:
            total_deadline = min(total_deadline, now + retry.per_try_timeout_ms / 1000)
        conn_state.phase = UPSTREAM
        conn_state.deadline = min(now + read_timeout, total_deadline)
        ep.active += 1
        cluster.state.in_flight += 1
        conn: UpstreamConn | None = None
        reused = False
        body_sent = 0
        resp: ResponseHead | None = None
        upstream_t0 = time.perf_counter()
        try:
            try:
                if fresh:
                    while pool.idle:  # a retry never trusts an idle connection
                        pool.idle.pop().sock.close()
                    conn = None
                else:
                    conn = pool.take_idle()
                if conn is None:
                    conn, reused = await pool.acquire(cluster.connect_timeout)
                else:
                    reused = True
            except PoolOverflow as exc:
                raise _UpstreamFailed("overflow", 503, str(exc), retryable=True) from None
            except UpstreamTlsError as exc:
                raise _UpstreamFailed("tls", 502, str(exc.strerror or exc), retryable=True) from None
            except ConnectError as exc:
                raise _UpstreamFailed(
                    "connect_failure", 502, f"upstream {ep.key} unreachable: {exc.strerror or exc}", retryable=True
                ) from None
            except OSError as exc:
                if exc.errno in _LOCAL_ERRNOS:  # this node is out of descriptors or memory, not the endpoint
                    raise _UpstreamFailed(
                        "local", 503, f"the node cannot open a connection now: {exc.strerror or exc}", retryable=False
                    ) from None
                raise _UpstreamFailed(
                    "connect_failure", 502, f"upstream {ep.key} unreachable: {exc.strerror or exc}", retryable=True
                ) from None
            up = conn.sock
            try:
                if head.has_body:
                    body_sent = await self._send_request(
                        up, head_bytes, head, read_timeout, body_buffer, replay=fresh and bool(body_buffer)
                    )
                else:
                    _body_complete(self.reader)
                    sent = up.try_send(head_bytes)
                    if sent < len(head_bytes):
                        await up.send_all(memoryview(head_bytes)[sent:])
            except OSError as exc:
                raise _UpstreamFailed("reset", 502, f"upstream {ep.key} reset the connection: {exc}",
                                      retryable=reused or not head.has_body) from None  # fmt: skip
            reader = ResponseReader(head_request=head.method == "HEAD")
            events = reader.events
            got = False
            conn_state.deadline = min(_now() + read_timeout, total_deadline)
            while reader.head is None:
                try:
                    data = await up.recv()
                except OSError as exc:
                    raise _UpstreamFailed("reset", 502, f"upstream {ep.key} reset the connection: {exc}",
                                          retryable=not got) from None  # fmt: skip
                if not data:
                    if reader.eof() and reader.head is not None:
                        break
                    raise _UpstreamFailed(
                        "reset", 502, f"upstream {ep.key} closed the connection before responding",
                        retryable=not got and (reused or head.method in IDEMPOTENT),
                    )  # fmt: skip
                got = True
                try:
                    reader.feed(data)
                except UpstreamProtocolError as exc:
                    raise _UpstreamFailed("protocol", 502, f"upstream {ep.key} sent a bad response: {exc}",
                                          retryable=False) from None  # fmt: skip
            resp = reader.head
            svc.metrics.upstream_time(cluster.name, time.perf_counter() - upstream_t0)
            if (
                retry_on
                and resp.status >= 500
                and ("5xx" in retry_on or ("gateway_error" in retry_on and resp.status in (502, 503, 504)))
            ):
                pool.release(conn, reader.done and resp.keep_alive and not resp.until_close)
                conn = None
                raise _UpstreamFailed("5xx", resp.status, f"upstream {ep.key} answered {resp.status}", True)
            if resp.status == 101 and not upgrade:
                raise _UpstreamFailed("protocol", 502, f"upstream {ep.key} switched protocols unasked", False)
            ex.response_started = True
            conn_state.phase = RESPONDING
            if resp.status == 101:
                conn_state.deadline = math.inf
                return await self._tunnel(conn, resp, reader.tail, route, cluster, ep)
            # -- the client sees bytes from here on ------------------------------------------
            if resp.content_length is not None:
                chunked_out = False
                close_client = not head.keep_alive or svc.draining
            elif head.version == "1.1":
                chunked_out = True
                close_client = not head.keep_alive or svc.draining
            else:
                chunked_out = False
                close_client = True
            rid_header = (b"X-Request-Id", ex.rid)
            add = (rid_header,) if not cookies else (rid_header, *((b"Set-Cookie", c) for c in cookies))
            if ctx is not None:
                ex.chain.on_response(ctx, resp.status)
                add = (*add, *ctx.response_add)
                if ctx.response_remove or "status" in ctx.vars:
                    resp = _rewritten(resp, ctx)
            out = [client_response_head(resp, chunked=chunked_out, close=close_client, add=add)]
            done = False
            for i in range(1, len(events)):
                ev = events[i]
                if ev is MESSAGE_END:
                    if chunked_out:
                        out.append(LAST_CHUNK)
                    done = True
                elif ev:
                    out.append(chunk(ev) if chunked_out else ev)  # type: ignore[arg-type]
            events.clear()
            data = b"".join(out)
            bytes_out = len(data)
            sent = self.sock.try_send(data)
            if sent < bytes_out:
                await self.sock.send_all(memoryview(data)[sent:])
            while not done:
                conn_state.deadline = min(_now() + read_timeout, total_deadline)
                data = await up.recv()
                if not data:
                    if not reader.eof():
                        raise ConnectionResetError("upstream closed mid-response")
                else:
                    try:
                        reader.feed(data)
                    except UpstreamProtocolError as exc:
                        raise ConnectionResetError(str(exc)) from None
                out = []
                for ev in events:
                    if ev is MESSAGE_END:
                        if chunked_out:
                            out.append(LAST_CHUNK)
                        done = True
                    elif ev:
                        out.append(chunk(ev) if chunked_out else ev)  # type: ignore[arg-type]
                events.clear()
                if out:
                    data = b"".join(out)
                    bytes_out += len(data)
                    await self.sock.send_all(data)
            pool.release(conn, resp.keep_alive and not resp.until_close)
            conn = None
            status = resp.status
            if (502 <= status <= 504) or ep.consecutive_failures or ep.ejections:
                svc.passive_health(cluster, ep, status < 502 or status > 504)
            else:  # a success with no failure streak or back-off to forget: just count it
                ep.total_requests += 1
            elapsed = time.perf_counter() - ex.started
            svc.metrics.request(ex.listener, route.name, cluster.name, status, elapsed, body_sent, bytes_out)
            svc.access_log.log(ex.rid, self.client_ip, head.method, head.host, head.path, route.name, cluster.name,
                               ep.key, status, body_sent, bytes_out, elapsed, consumer=ex.consumer,
                               client_cert=ex.client_cert)  # fmt: skip
            return not close_client
        except _Timeout:
            # A per-try timeout (the route's total deadline not reached yet) is a failed attempt;
            # a client that went silent in the middle of its body is the client's (408).
            if conn_state.phase == BODY or ex.response_started or _now() >= ex.deadline or not retry_on:
                raise
            conn_state.deadline = math.inf
            raise _UpstreamFailed("timeout", 504, f"upstream {ep.key} did not answer within the per-try timeout",
                                  retryable=not body_sent) from None  # fmt: skip
        except OSError as exc:
            # The client went away, or the upstream failed mid-response: the client has part of it.
            if not ex.response_started and not isinstance(exc, _ClientGone):
                raise _UpstreamFailed("reset", 502, f"upstream {ep.key}: {exc}", retryable=False) from None
            elapsed = time.perf_counter() - ex.started
            status = resp.status if resp is not None else 499
            svc.metrics.request(ex.listener, route.name, cluster.name, status, elapsed, body_sent, 0)
            svc.access_log.log(ex.rid, self.client_ip, head.method, head.host, head.path, route.name, cluster.name,
                               ep.key, status, body_sent, 0, elapsed, error=f"aborted: {exc}",
                               client_cert=ex.client_cert)  # fmt: skip
            return False
        finally:
            ep.active -= 1
            cluster.state.in_flight -= 1
            if conn is not None:
                pool.release(conn, False)

    async def _tunnel(
        self,
        conn: UpstreamConn,
        resp: ResponseHead,
        tail: bytes,
        route: RouteRuntime,
        cluster: ClusterRuntime,
        ep: EndpointState,
    ) -> bool:
        """Switch protocols (WebSocket and friends): pass the 101 on, then pipe bytes both ways."""
        ex = self.ex
        assert ex is not None
        parts = [b"HTTP/1.1 101 ", resp.reason or b"Switching Protocols", b"\r\n"]
        if resp.block:
            parts += (resp.block, b"\r\n")
        parts += (b"Connection: Upgrade\r\nUpgrade: ", resp.upgrade or b"websocket", b"\r\n\r\n", tail)
        await self.sock.send_all(b"".join(parts))
        self.conn.deadline = math.inf
        counts = await splice(self.svc.reactor, self.sock, conn.sock)
        elapsed = time.perf_counter() - ex.started
        self.svc.metrics.request(ex.listener, route.name, cluster.name, 101, elapsed, counts[0], counts[1])
        self.svc.access_log.log(ex.rid, self.client_ip, ex.head.method, ex.head.host, ex.head.path, route.name,
                                cluster.name, ep.key, 101, counts[0], counts[1], elapsed,
                                client_cert=ex.client_cert)  # fmt: skip
        return False


class _ClientGone(ConnectionResetError):
    pass


async def splice(reactor: Reactor, client: RSock, upstream: RSock, first: bytes = b"") -> list[int]:
    """Pipe bytes both ways (an upgraded connection, a CONNECT tunnel) until the upstream closes
    or both sides did; half-closes are passed on. `first` goes upstream before anything else.
    Returns [bytes client->upstream, bytes upstream->client]; the upstream socket is closed."""
    counts = [0, 0]
    done = reactor.event()
    running = [2]

    async def pipe(src: RSock, dst: RSock, i: int) -> None:
        try:
            while True:
                data = await src.recv()
                if not data:
                    break
                counts[i] += len(data)
                await dst.send_all(data)
        except OSError:
            pass
        try:
            dst.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
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


def _extra_up(upgrade: str | None, identity: ClientIdentity | None) -> tuple[tuple[bytes, bytes], ...]:
    """Headers the node adds upstream for a protocol upgrade and a verified client certificate."""
    extra: tuple[tuple[bytes, bytes], ...] = ()
    if upgrade:
        extra = ((b"Connection", b"Upgrade"), (b"Upgrade", upgrade.encode("latin-1")))
    if identity is not None:
        extra = (*extra, (b"X-Forwarded-Client-Cert", identity.xfcc()))
    return extra


def _upstream_host(head: RequestHead, route: RouteRuntime, ep: EndpointState) -> bytes | None:
    """The Host to send upstream instead of the client's: the route's rewrite, or for a request
    that came without one (HTTP/1.0), the endpoint's address (an HTTP/1.1 request needs a Host)."""
    if route.host_rewrite is not None or head.host:
        return route.host_rewrite
    return ep.key.encode()


def _may_retry(kind: str, retry_on: frozenset[str]) -> bool:
    """Whether a failed attempt of `kind` may go again under the route's `retry_on`."""
    if kind == "5xx":
        return True  # only raised when retry_on asked for it
    if kind == "timeout":
        return "5xx" in retry_on or "gateway_error" in retry_on
    return kind in retry_on


def _rewritten(resp: ResponseHead, ctx: RequestContext) -> ResponseHead:
    """The response head after response_rewrite policies: headers removed, status replaced."""
    out = ResponseHead()
    out.status = ctx.vars.get("status", resp.status)
    out.reason = resp.reason if out.status == resp.status else b""
    out.version = resp.version
    out.content_length = resp.content_length
    out.chunked = resp.chunked
    out.keep_alive = resp.keep_alive
    drop = ctx.response_remove
    out.block = b"\r\n".join(
        line for line in resp.block.split(b"\r\n") if line and line.partition(b":")[0].strip().lower() not in drop
    )
    return out


async def serve_http(
    svc: ProxyServices, sock: RSock, peer: tuple[str, int], listener: str, proto: bytes = b"http"
) -> None:
    """Serve one client connection (a reactor task) until it closes, errs, idles out or the node drains."""
    await HttpConnection(svc, sock, peer, listener, proto).serve()
