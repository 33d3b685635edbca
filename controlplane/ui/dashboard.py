"""What the dashboard shows, gathered from the REST API in one pass.

Nodes come from `GET /api/v1/nodes` (acked version, in sync, last NACK, connected since),
tunnel agents from `/api/v1/tunnels/sessions`, registry services from `/api/v1/services`
(healthy and total instances), firing alerts from `/api/v1/alerts/status`, the config
version from `/api/v1/config`. A part the session's token may not read is shown as such.

Request and error rates per node come from the nodes' load reports (cumulative `requests`
and `server_errors` a node sends over its config stream about once a second, and the same
per route; `/api/v1/nodes` shows the last one as `load`, with its time): `RateMeter` turns
two reports of a node into per-second rates, and a route's rate is the sum of its rates on
every node. A node that sends no load reports (an older build) shows none.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Any

from controlplane.ui.apiclient import Api, ApiError


def _seconds(at: Any) -> float | None:
    if isinstance(at, int | float):
        return float(at)
    if isinstance(at, str) and at:
        try:
            return dt.datetime.fromisoformat(at).timestamp()
        except ValueError:
            return None
    return None


def counters_of(node: dict[str, Any]) -> tuple[float, float, float] | None:
    """(report time, requests, server errors) of a node's last load report, if it sent one."""
    load = node.get("load")
    if not isinstance(load, dict) or not isinstance(load.get("requests"), int | float):
        return None
    at = _seconds(load.get("at"))
    if at is None:
        return None
    return at, float(load["requests"]), float(load.get("server_errors") or 0)


@dataclass
class _Seen:
    at: float
    requests: float
    errors: float
    rate: tuple[float, float] | None = None


class RateMeter:
    """Per-second rates from cumulative counters reported at known times, per node."""

    def __init__(self, limit: int = 10_000) -> None:
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()
        self.limit = limit

    def rate(self, key: str, at: float, requests: float, errors: float) -> tuple[float, float] | None:
        """(requests/s, errors/s) between the last two reports of `key`; None until there are two
        (or after a restart of the node, whose counters start again at zero)."""
        with self._lock:
            last = self._seen.get(key)
            if last is not None and at == last.at:
                return last.rate
            rate = None
            if last is not None and at > last.at and requests >= last.requests:
                span = at - last.at
                rate = ((requests - last.requests) / span, max(0.0, errors - last.errors) / span)
            if len(self._seen) >= self.limit and key not in self._seen:
                self._seen.clear()  # a bound, not a cache policy: rates restart after one more look
            self._seen[key] = _Seen(at, requests, errors, rate)
            return rate


@dataclass
class RouteRate:
    name: str  # "" for requests no route matched
    requests: float  # per second, summed over the nodes
    errors: float
    nodes: int  # nodes that reported the route


MAX_ROUTE_ROWS = 50


def route_rates(nodes: list[dict[str, Any]], meter: RateMeter) -> list[RouteRate]:
    """Per-route rates summed over the nodes' load reports (the busiest MAX_ROUTE_ROWS)."""
    sums: dict[str, RouteRate] = {}
    for node in nodes:
        load = node.get("load")
        at = _seconds(load.get("at")) if isinstance(load, dict) else None
        routes = load.get("routes") if isinstance(load, dict) else None
        if at is None or not isinstance(routes, dict):
            continue
        for name, counts in routes.items():
            if not isinstance(counts, dict):
                continue
            requests, errors = float(counts.get("requests", 0)), float(counts.get("server_errors", 0))
            rate = meter.rate(f"{node.get('id')}\x00{name}", at, requests, errors)
            if rate is None:
                continue
            row = sums.setdefault(name, RouteRate(name, 0.0, 0.0, 0))
            row.requests += rate[0]
            row.errors += rate[1]
            row.nodes += 1
    return sorted(sums.values(), key=lambda r: (-r.requests, r.name))[:MAX_ROUTE_ROWS]


@dataclass
class Dashboard:
    config: dict[str, Any] | None = None
    nodes: list[dict[str, Any]] = field(default_factory=list)
    nodes_error: str = ""
    rates_reported: bool = False
    routes: list[RouteRate] = field(default_factory=list)  # busiest first
    sessions: list[dict[str, Any]] = field(default_factory=list)
    sessions_error: str = ""
    services: list[dict[str, Any]] = field(default_factory=list)
    services_error: str = ""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alerts_error: str = ""

    @property
    def nodes_connected(self) -> int:
        return sum(1 for n in self.nodes if n.get("connected"))

    @property
    def nodes_in_sync(self) -> int:
        return sum(1 for n in self.nodes if n.get("connected") and n.get("in_sync"))

    @property
    def agents(self) -> int:
        return len({(s.get("tunnel"), s.get("agent")) for s in self.sessions})


def _why(exc: ApiError) -> str:
    return "your token may not read this" if exc.forbidden else exc.message


async def gather(api: Api, meter: RateMeter) -> Dashboard:
    d = Dashboard()
    d.config, _ = await api.get_or_none("/api/v1/config")
    nodes, err = await api.get_or_none("/api/v1/nodes")
    if err is not None:
        d.nodes_error = _why(err)
    else:
        d.nodes = list(nodes.get("items", []))
        for node in d.nodes:
            counters = counters_of(node)
            if counters is not None:
                d.rates_reported = True
                node["rates"] = meter.rate(str(node.get("id")), *counters)
        d.routes = route_rates(d.nodes, meter)
    sessions, err = await api.get_or_none("/api/v1/tunnels/sessions")
    d.sessions, d.sessions_error = (sessions or {}).get("items", []), _why(err) if err else ""
    services, err = await api.get_or_none("/api/v1/services", limit=1000)
    d.services, d.services_error = (services or {}).get("items", []), _why(err) if err else ""
    alerts, err = await api.get_or_none("/api/v1/alerts/status")
    d.alerts, d.alerts_error = (alerts or {}).get("active", []), _why(err) if err else ""
    return d
