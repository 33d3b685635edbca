"""Tunnel agents connected to the nodes, as the nodes report them (`ReportTunnels`).

Each node sends its full list every few seconds; a list not refreshed within `STALE_AFTER`
is dropped (the node went away). Per proxy the control plane also keeps running totals
(connections, bytes) that survive agent reconnects: each report adds what grew since the
previous report of the same session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flux.v1 import discovery_pb2

STALE_AFTER = 15.0


@dataclass
class ProxyTotals:
    tunnel: str
    proxy: str
    type: str = ""
    connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    agents: set[str] = field(default_factory=set)
    last_seen: float = 0.0

    def describe(self, active: int) -> dict[str, Any]:
        return {
            "tunnel": self.tunnel,
            "proxy": self.proxy,
            "type": self.type,
            "active_connections": active,
            "total_connections": self.connections,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "agents": sorted(self.agents),
            "last_seen": self.last_seen,
        }


class TunnelSessions:
    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self.reports: dict[str, tuple[float, discovery_pb2.ReportTunnelsRequest]] = {}
        self.totals: dict[tuple[str, str], ProxyTotals] = {}
        self._last: dict[tuple[str, str, str, str], tuple[int, int, int]] = {}  # node, run id, tunnel, proxy

    def report(self, request: discovery_pb2.ReportTunnelsRequest) -> None:
        now = self.clock()
        node = request.node.id
        self.reports[node] = (now, request)
        seen = set()
        for s in request.sessions:
            for p in s.proxies:
                key = (node, s.run_id, s.tunnel, p.name)
                seen.add(key)
                last = self._last.get(key, (0, 0, 0))
                cur = (p.total_connections, p.bytes_in, p.bytes_out)
                delta = [c - prev if c >= prev else c for c, prev in zip(cur, last, strict=True)]
                self._last[key] = cur
                totals = self.totals.setdefault((s.tunnel, p.name), ProxyTotals(s.tunnel, p.name))
                totals.type = p.type
                totals.connections += delta[0]
                totals.bytes_in += delta[1]
                totals.bytes_out += delta[2]
                totals.agents.add(s.agent)
                totals.last_seen = now
        for key in [k for k in self._last if k[0] == node and k not in seen]:
            del self._last[key]

    def _fresh(self) -> list[tuple[str, discovery_pb2.ReportTunnelsRequest]]:
        now = self.clock()
        for node in [n for n, (t, _) in self.reports.items() if now - t > STALE_AFTER]:
            del self.reports[node]
        return [(node, req) for node, (_, req) in sorted(self.reports.items())]

    def sessions(self, *, tunnel: str = "", agent: str = "") -> list[dict[str, Any]]:
        out = []
        for node, req in self._fresh():
            for s in req.sessions:
                if (tunnel and s.tunnel != tunnel) or (agent and s.agent != agent):
                    continue
                out.append(
                    {
                        "node": node,
                        "node_group": req.node.group,
                        "tunnel": s.tunnel,
                        "agent": s.agent,
                        "session": s.run_id,  # nodes report a short hash of the run id, never the run id
                        "version": s.version,
                        "address": s.address,
                        "tls": s.tls,
                        "connected_since": s.connected_since,
                        "bytes_in": s.bytes_in,
                        "bytes_out": s.bytes_out,
                        "connections": s.connections,
                        "proxies": [
                            {
                                "name": p.name,
                                "type": p.type,
                                **({"remote_port": p.remote_port} if p.remote_port else {}),
                                **({"domains": list(p.domains)} if p.domains else {}),
                                **({"group": p.group} if p.group else {}),
                                **({"static": True} if p.static else {}),
                                "connections": p.connections,
                                "total_connections": p.total_connections,
                                "bytes_in": p.bytes_in,
                                "bytes_out": p.bytes_out,
                            }
                            for p in s.proxies
                        ],
                        "visitors": list(s.visitors),
                    }
                )
        return out

    def proxies(self) -> list[dict[str, Any]]:
        active: dict[tuple[str, str], int] = {}
        for _, req in self._fresh():
            for s in req.sessions:
                for p in s.proxies:
                    active[(s.tunnel, p.name)] = active.get((s.tunnel, p.name), 0) + p.connections
        return [t.describe(active.get(k, 0)) for k, t in sorted(self.totals.items())]
