"""What every client connection of a worker shares, and the per-connection state the worker
sees: settings, request ids, admission counts, the set of live connections with their phase
and deadline, the reaper that enforces deadlines, and draining.

Timeouts: each connection (an HTTP/1.1 connection, or an HTTP/2 stream) has a `Conn` whose
`deadline` the front end moves as it goes (the listener's keep-alive idle, header and
body-idle timeouts, the cluster's upstream read timeout, the route's total timeout). The
reaper (a trio task) raises `Timeout` in tasks whose deadline passed, at the await where
they wait. Setting a float per phase costs nothing, where a timer per request and per phase
would cost more than routing.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from dataplane.accesslog import AccessLog
from dataplane.admission import Admission
from dataplane.config.runtime import ConfigHolder
from dataplane.exchange.trace import RequestTracer
from dataplane.metrics import Metrics
from dataplane.reactor import Reactor, Task

# Connection phases (what a timeout means). IDLE: waiting for the first byte of a request
# (a connection the node may close when it runs short of descriptors); READING: the head;
# UPSTREAM: waiting on the upstream; RESPONDING: sending the response; BODY: the client's
# body, sent upstream as it comes.
IDLE, READING, UPSTREAM, RESPONDING, BODY = 0, 1, 2, 3, 4


class Timeout(Exception):
    """Raised in a connection whose deadline passed."""


class Drain(Exception):
    """Raised in an idle keep-alive connection when the node drains."""


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


PassiveHealth = Callable[..., None]  # (cluster, endpoint, ok, status=0): dataplane.health.checker


class Conn:
    """Per-connection (or per-HTTP/2-stream) state the reaper and the drain logic can see."""

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
    drain_hooks: list[Callable[[], None]] = field(default_factory=list)  # e.g. HTTP/2 connections' GOAWAY
    tracer: RequestTracer | None = None  # None: tracing is off (dataplane.exchange.trace)
    # Monotonic seconds: the clock of connection deadlines, the reaper, and the exchanges' route
    # deadlines. Each connection binds it once (HttpConnection.now): no lookup per read.
    clock: Callable[[], float] = time.monotonic

    def start_draining(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their request."""
        self.draining = True
        for conn in list(self.conns):
            if conn.phase == IDLE and conn.task is not None:
                self.reactor.throw(conn.task, Drain())
        for hook in list(self.drain_hooks):
            hook()

    def reclaim_idle(self) -> bool:
        """Close the oldest idle connection (between requests, or no byte sent yet) to make room
        for a new one when descriptors run short; False when none is idle. A scan of every
        connection finds the oldest 64 at once, so a burst of new connections costs one scan."""
        for _ in range(2):
            pool = self._reclaimable
            while pool:
                conn = pool.pop()
                if conn.phase == IDLE and conn.task is not None and conn in self.conns:
                    self.reactor.throw(conn.task, Drain())
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
            self.reap()

    def reap(self) -> int:
        """One pass of the reaper: throw `Timeout` into the connections whose deadline passed
        by `clock`; how many."""
        t = self.clock()
        n = 0
        for conn in self.conns:  # throw() only schedules: the set does not change under us
            if conn.deadline <= t and conn.task is not None:
                conn.deadline = math.inf
                self.reactor.throw(conn.task, Timeout())
                n += 1
        return n
