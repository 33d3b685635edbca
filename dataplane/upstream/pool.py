"""Upstream HTTP/1.1 connection pools: one per (cluster, endpoint), on the reactor.

A pool keeps idle keep-alive connections in a LIFO list (the most recently
used connection is the one most likely still alive and warm), opens new ones
up to `max_connections`, queues up to `max_pending` requests when full, and
closes idle connections after `idle_timeout`. The reactor notices when an
upstream closes an idle connection (EOF or reset arrive as events), so a dead
idle connection is dropped when taken; the proxy also retries idempotent
requests once when a reused connection still turns out dead.

Pools outlive config versions: `PoolRegistry.reconcile` keeps the pools of
endpoints that are still configured and closes the rest.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from dataplane.reactor import ConnectError, Reactor, REvent, RSock, connect
from dataplane.tls.contexts import UpstreamTls
from dataplane.tls.rsock import TlsRSock
from dataplane.upstream.limits import PoolLimits

if TYPE_CHECKING:
    from dataplane.upstream.bridge import ReactorEnd

log = logging.getLogger("flux.upstream")
# (reactor, address) -> a connected stream for an endpoint that is not host:port (a tunnel's)
Opener = Callable[[Reactor, str], "ReactorEnd"]


class PoolOverflow(Exception):
    """Too many requests waiting for a connection to one endpoint, or none freed in time:
    the pool is saturated (503). The endpoint did nothing wrong, so this never counts towards
    its ejection."""


class _PoolWaitTimeout(Exception):
    pass


class _HandshakeTimeout(Exception):
    pass


class UpstreamConn:
    __slots__ = ("idle_since", "pool", "requests", "sock")

    def __init__(self, sock: RSock, pool: EndpointPool) -> None:
        self.sock = sock
        self.pool = pool
        self.idle_since = 0.0
        self.requests = 0


class UpstreamTlsError(ConnectError):
    """The TLS handshake with the endpoint failed (certificate not verified, no common protocol...)."""


class EndpointPool:
    __slots__ = (
        "address", "clock", "closed", "connecting", "h2", "idle", "in_use", "limits", "opener", "port", "reactor",
        "stats_reused", "tls", "waiters",
    )  # fmt: skip

    def __init__(
        self,
        reactor: Reactor,
        address: str,
        port: int,
        limits: PoolLimits,
        tls: UpstreamTls | None = None,
        opener: Opener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reactor = reactor
        self.clock = clock  # monotonic seconds: when connections went idle and expire
        self.opener = opener  # endpoints reached another way than host:port (a tunnel), else None
        self.tls = tls  # connections are TLS with this cluster's context
        self.h2: Any = None  # the shared HTTP/2 connection of a protocol: http2 cluster (dataplane.upstream.h2)
        self.address = address
        self.port = port
        self.limits = limits
        self.idle: list[UpstreamConn] = []
        self.in_use = 0
        self.connecting = 0
        self.waiters: deque[REvent] = deque()
        self.closed = False
        self.stats_reused = 0

    @property
    def total(self) -> int:
        return len(self.idle) + self.in_use + self.connecting

    def take_idle(self) -> UpstreamConn | None:
        """An idle keep-alive connection that is still usable, or None (no await: the hot path)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.sock.still_usable() or self.clock() - conn.idle_since > self.limits.idle_timeout:
                conn.sock.close()
                continue
            self.in_use += 1
            self.stats_reused += 1
            return conn
        return None

    async def open(self, connect_timeout: float) -> RSock:
        """A new connection to the endpoint: TCP (then TLS when the cluster says so), or the opener's."""
        if self.opener is None:
            sock = await connect(self.reactor, self.address, self.port, connect_timeout)
            return await self._start_tls(sock, connect_timeout) if self.tls is not None else sock
        try:
            return self.opener(self.reactor, self.address)  # type: ignore[return-value]
        except OSError as exc:
            raise ConnectError(exc.errno or errno.ECONNREFUSED, str(exc.strerror or exc)) from None

    async def acquire(self, connect_timeout: float) -> tuple[UpstreamConn, bool]:
        """A connection to use for one request and whether it was reused."""
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn, True
            if self.total < self.limits.max_connections:
                self.connecting += 1
                try:
                    sock = await self.open(connect_timeout)
                finally:
                    self.connecting -= 1
                self.in_use += 1
                return UpstreamConn(sock, self), False
            if len(self.waiters) >= self.limits.max_pending:
                raise PoolOverflow(f"{len(self.waiters)} requests already wait for {self.address}:{self.port}")
            event = self.reactor.event()
            self.waiters.append(event)
            task = self.reactor.current
            assert task is not None
            timer = self.reactor.call_later(connect_timeout, self.reactor.throw, task, _PoolWaitTimeout())
            try:
                await event
            except _PoolWaitTimeout:
                raise PoolOverflow(
                    f"all {self.limits.max_connections} connections to {self.address}:{self.port} busy; "
                    f"none free within {connect_timeout:g}s"
                ) from None
            finally:
                timer.cancel()
                if not event.is_set:
                    try:
                        self.waiters.remove(event)
                    except ValueError:
                        pass

    async def _start_tls(self, sock: RSock, connect_timeout: float) -> TlsRSock:
        """Wrap a connected socket in TLS and shake hands within the connect timeout."""
        assert self.tls is not None
        raw = sock.detach()
        try:
            tls_sock = TlsRSock(self.reactor, self.tls.wrap(raw, self.address))
        except (OSError, ValueError) as exc:
            raw.close()
            raise UpstreamTlsError(errno.EPROTO, f"TLS to {self.address}:{self.port}: {exc}") from None
        task = self.reactor.current
        assert task is not None
        timer = self.reactor.call_later(connect_timeout, self.reactor.throw, task, _HandshakeTimeout())
        try:
            await tls_sock.handshake()
        except _HandshakeTimeout:
            tls_sock.close()
            raise UpstreamTlsError(
                errno.ETIMEDOUT, f"TLS handshake with {self.address}:{self.port} took over {connect_timeout:g}s"
            ) from None
        except ssl.SSLError as exc:
            tls_sock.close()
            why = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            raise UpstreamTlsError(errno.EPROTO, f"TLS to {self.address}:{self.port}: {why}") from None
        except BaseException:
            tls_sock.close()
            raise
        finally:
            timer.cancel()
        return tls_sock

    def release(self, conn: UpstreamConn, reusable: bool) -> None:
        """Give a connection back after a request; closes it unless `reusable`."""
        self.in_use -= 1
        conn.requests += 1
        sock = conn.sock
        if reusable and not self.closed and not sock.hup and len(self.idle) < self.limits.max_idle and _quiet(sock):
            # The response was read whole and nothing waits behind it: whatever arrives from
            # now on (EOF, reset, stray bytes) comes as a new event and marks the socket unusable.
            sock.readable = False
            conn.idle_since = self.clock()
            self.idle.append(conn)
        else:
            sock.close()
        if self.waiters:
            self.waiters.popleft().set()

    def close_expired(self, now: float) -> int:
        h2conn = self.h2
        if h2conn is not None and h2conn.expired(now, self.limits.idle_timeout):
            h2conn.close()
            self.h2 = None
        keep, closed = [], 0
        for conn in self.idle:
            if now - conn.idle_since > self.limits.idle_timeout or not conn.sock.still_usable():
                conn.sock.close()
                closed += 1
            else:
                keep.append(conn)
        self.idle = keep
        return closed

    def close(self) -> None:
        """Close idle connections now; in-use ones close when released."""
        self.closed = True
        for conn in self.idle:
            conn.sock.close()
        self.idle = []
        if self.h2 is not None:
            self.h2.close()
            self.h2 = None
        while self.waiters:
            self.waiters.popleft().set()


def _quiet(sock: RSock) -> bool:
    """No bytes or EOF already wait on a connection whose response was read whole.

    Bytes that arrived before the release (while the proxy still wrote to its client) set
    `readable` then, not later; clearing the flag without a look would hide them, and the
    next request would read them as the start of its response. The socket counts its read
    events: when none came since the last recv that returned data, nothing can wait (a recv
    takes all there is), so the usual case costs no system call.
    """
    if type(sock) is not RSock:
        # TLS: a record may wait in OpenSSL's buffer (the kernel's is polled); a bridge: its own
        return sock.quiet()  # type: ignore[attr-defined, no-any-return]
    if not sock.readable or sock.edges == sock.recv_edges:
        return True
    try:
        sock.sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # stray bytes, or b"" (EOF)


PoolKey = tuple[str, str, int]  # (cluster, address, port)


class PoolRegistry:
    """Every upstream pool of a worker, by (cluster, address, port).

    `openers` maps an address prefix ("tunnel:") to a function giving a connected socket for
    endpoints that are not host:port but reached another way (the node's tunnel manager)."""

    def __init__(
        self, reactor: Reactor, openers: dict[str, Opener] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reactor = reactor
        self.clock = clock  # monotonic seconds, given to every pool (idle expiry, the sweeper)
        self.openers: dict[str, Opener] = dict(openers or {})
        self.pools: dict[PoolKey, EndpointPool] = {}

    def opener_for(self, address: str) -> Opener | None:
        scheme, sep, _ = address.partition(":")
        if not sep or scheme.isdigit() or "." in scheme:
            return None  # host:port, an IPv6 literal or a dotted name
        return self.openers.get(scheme + sep)

    def get(
        self, cluster: str, address: str, port: int, limits: PoolLimits, tls: UpstreamTls | None = None
    ) -> EndpointPool:
        """The pool of an endpoint; a new one (the old closes) when its limits or TLS settings change."""
        key = (cluster, address, port)
        pool = self.pools.get(key)
        tls_key = tls.key if tls is not None else None
        if pool is None or pool.limits != limits or (pool.tls.key if pool.tls is not None else None) != tls_key:
            if pool is not None:
                pool.close()
            opener = self.opener_for(address)
            pool = self.pools[key] = EndpointPool(self.reactor, address, port, limits, tls, opener, self.clock)
        elif tls is not None:
            pool.tls = tls  # the same settings, the contexts of this version
        return pool

    def reconcile(self, wanted: set[PoolKey]) -> None:
        """Close and forget pools whose endpoint left the config."""
        for key in [k for k in self.pools if k not in wanted]:
            self.pools.pop(key).close()

    async def run_sweeper(self, interval: float = 5.0) -> None:
        while True:
            await trio.sleep(interval)
            now = self.clock()
            closed = sum(pool.close_expired(now) for pool in self.pools.values())
            if closed:
                log.debug("closed %d idle upstream connections", closed)

    def close_all(self) -> None:
        for pool in self.pools.values():
            pool.close()
