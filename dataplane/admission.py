"""Admission of client connections: listener limits, per-address limits, the descriptor reserve.

What this module owns
---------------------
The answer to "may this just-accepted connection be served?" and the counts
behind it. An HTTP listener asks `admit` after each accept and calls
`release` when the connection ends. Reasons to refuse:

- ``max_connections``: the listener holds its share of the limit already;
- ``max_connections_per_ip``: this client address holds its share;
- ``fd_reserve``: serving it would eat into the descriptors the node keeps for
  its admin port, its config stream and the upstream connections of requests
  already admitted (see `FdBudget`). Before refusing for this reason the
  caller closes the oldest idle connections (keep-alive connections between
  requests, and connections that have not sent a byte yet), as nginx reuses
  its idle connections when worker_connections run out.

Limits are per node; each worker holds its share (``ceil(limit / workers)``),
the way local rate limits are shared, since the kernel spreads connections
over the workers of a port (SO_REUSEPORT).

Refusals are counted per listener and reason and logged at most once a second.

What it must not do
-------------------
No I/O: the caller accepts, answers and closes; the clock is passed in.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from dataplane.config.runtime import ListenerSettings

log = logging.getLogger("flux.listeners")


@dataclass
class FdBudget:
    """The node's open-file limit and the part of it traffic may not use.

    `in_use` counts the proxy's sockets (clients, upstreams); `other` the descriptors open
    outside it (gRPC's channel and threads, trio, the admin port, logs, the tunnel), refreshed
    by the worker every second. Client connections are admitted while `in_use + other` stays
    under `limit - reserve`; upstream connections may use half the reserve more (a request
    admitted needs one to finish); the last half stays free for everything else: gRPC aborts
    the whole process when it cannot get a descriptor.
    """

    limit: int = 0  # 0: unknown, no checks
    reserve: int = 0
    other: int = 0

    @classmethod
    def for_limit(cls, limit: int) -> FdBudget:
        return cls(limit, min(1024, max(64, limit // 8)))

    def clients_ok(self, in_use: int) -> bool:
        return not self.limit or in_use + self.other < self.limit - self.reserve

    def max_upstream_sockets(self) -> int:
        """The most sockets the proxy may hold when it opens an upstream connection."""
        return max(1, self.limit - self.reserve // 2 - self.other) if self.limit else 0


@dataclass
class _ListenerCounts:
    open: int = 0
    by_ip: dict[str, int] = field(default_factory=dict)


class Admission:
    """Connection counts of one worker's HTTP listeners, and the admit/refuse decision."""

    def __init__(self, budget: FdBudget | None = None, workers: int = 1) -> None:
        self.budget = budget or FdBudget()
        self.workers = max(1, workers)
        self.counts: dict[str, _ListenerCounts] = {}
        self.refused: dict[tuple[str, str], int] = {}  # (listener, reason) -> connections refused
        self._last_log = -math.inf
        self._unlogged = 0

    def _share(self, limit: int) -> int:
        return max(1, -(-limit // self.workers)) if limit else 0

    def check(self, listener: str, ip: str, settings: ListenerSettings, *, fd: int = -1, in_use: int = 0) -> str | None:
        """Why the connection may not be served (a reason), or None. Counts nothing."""
        budget = self.budget
        if budget.limit and (not budget.clients_ok(in_use) or fd >= budget.limit - budget.reserve):
            return "fd_reserve"
        counts = self.counts.get(listener)
        if counts is None:
            return None
        limit = self._share(settings.max_connections)
        if limit and counts.open >= limit:
            return "max_connections"
        per_ip = self._share(settings.max_connections_per_ip)
        if per_ip and counts.by_ip.get(ip, 0) >= per_ip:
            return "max_connections_per_ip"
        return None

    def admit(self, listener: str, ip: str) -> None:
        """Count an admitted connection (until `release`)."""
        counts = self.counts.get(listener)
        if counts is None:
            counts = self.counts[listener] = _ListenerCounts()
        counts.open += 1
        counts.by_ip[ip] = counts.by_ip.get(ip, 0) + 1

    def release(self, listener: str, ip: str) -> None:
        counts = self.counts.get(listener)
        if counts is None:
            return
        counts.open -= 1
        left = counts.by_ip.get(ip, 0) - 1
        if left > 0:
            counts.by_ip[ip] = left
        else:
            counts.by_ip.pop(ip, None)

    def refuse(self, listener: str, ip: str, reason: str, now: float) -> None:
        """Count a refusal; log it unless one was logged less than a second ago."""
        key = (listener, reason)
        self.refused[key] = self.refused.get(key, 0) + 1
        if now - self._last_log >= 1.0:
            more = f" ({self._unlogged} more refused since the last message)" if self._unlogged else ""
            log.warning("listener %s: refused a connection from %s: %s%s", listener, ip, _WHY[reason], more)
            self._last_log = now
            self._unlogged = 0
        else:
            self._unlogged += 1


_WHY = {
    "max_connections": "the listener is at its max_connections",
    "max_connections_per_ip": "this address is at the listener's max_connections_per_ip",
    "fd_reserve": "the node is at its open-file limit less the reserve kept for its admin port and config stream "
    "(raise `ulimit -n`, or lower timeouts.idle)",
}
