"""Starts, changes and stops a node's tunnel servers as snapshots come and go.

`prepare(snapshot)` checks every tunnel's settings (TLS identity, client CA) and binds the
control ports of new or rebound servers before the swap, changing nothing that runs: a bad
setting or a port conflict refuses the snapshot (like a listener's) and every running server
keeps serving. A server whose TLS identity changes on the same address and port takes over a
duplicate of the running server's listening socket, so the control port never closes (a
change of address keeping the port number needs that port free). `commit()` starts the new
servers, stops the ones they replace and the ones the snapshot dropped, and updates the rest
in place (tokens, users, allowed ports, mappings, heartbeats need no restart; agents stay
connected); `discard()` closes only what `prepare()` opened. Each server also learns the
hosts of the gateway routes on an http listener its vhost port shares (`gateway_hosts`), so
agents' domains do not shadow them.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dataplane.config.isolation import Fault
from dataplane.tunnel.ownership import gateway_hosts
from dataplane.tunnel.server import BindError, TunnelMetrics, TunnelServer
from dataplane.tunnel.vhost import TunnelEndpoints
from flux.v1 import config_pb2 as pb
from fluxcommon.tlsutil import self_signed, server_context
from fluxcommon.tunnel.protocol.binding import own_end_point

log = logging.getLogger("flux.tunnel")

# Settings whose change needs a new server (a new control port or TLS identity).
_REBIND_FIELDS = ("bind_port", "bind_address", "tls_force", "tls_certificate", "tls_client_ca_pem",
                  "vhost_https_port", "tcpmux_httpconnect_port", "subdomain_host")  # fmt: skip


class TunnelConfigError(Exception):
    """A tunnel server this node cannot start (`fault`: that tunnel)."""

    def __init__(self, message: str, tunnel: str) -> None:
        super().__init__(message)
        self.fault = Fault("tunnel", tunnel)


def _rebind_key(spec: pb.Tunnel, certs: dict[str, pb.Certificate]) -> tuple[Any, ...]:
    cert = certs.get(spec.tls_certificate)
    return (*(getattr(spec, f) for f in _REBIND_FIELDS), cert.cert_pem if cert else "")


@dataclass
class TunnelPlan:
    start: list[TunnelServer] = field(default_factory=list)
    stop: list[TunnelServer] = field(default_factory=list)
    update: list[tuple[TunnelServer, pb.Tunnel]] = field(default_factory=list)
    keys: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    gateway_hosts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


class TunnelManager:
    def __init__(self, on_http_change: Callable[[], None], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.on_http_change = on_http_change
        self.metrics = TunnelMetrics()
        self.servers: dict[str, TunnelServer] = {}
        self.endpoints = TunnelEndpoints()
        self._keys: dict[str, tuple[Any, ...]] = {}
        self._nursery: trio.Nursery | None = None
        self._self_signed: tuple[str, str] | None = None

    def bind(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def _tls(self, spec: pb.Tunnel, certs: dict[str, pb.Certificate]) -> tuple[ssl.SSLContext, str]:
        """The server's TLS context and its channel binding (see fluxcommon.tunnel.protocol.binding)."""
        if spec.tls_certificate:
            cert = certs.get(spec.tls_certificate)
            if cert is None:
                raise TunnelConfigError(
                    f"tunnel {spec.name!r}: unknown certificate {spec.tls_certificate!r}", spec.name
                )
            pem, key = cert.cert_pem, cert.key_pem
        else:
            if self._self_signed is None:
                self._self_signed = self_signed("flux-tunnel")
                log.info("tunnel TLS: no certificate configured, using a self-signed one")
            pem, key = self._self_signed
        try:
            return server_context(pem, key, spec.tls_client_ca_pem), own_end_point(pem)
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise TunnelConfigError(f"tunnel {spec.name!r}: bad TLS settings: {exc}", spec.name) from None

    def prepare(self, snap: pb.Snapshot) -> TunnelPlan:
        """Bind what the snapshot adds; TunnelConfigError (nothing kept open) if it cannot."""
        plan = TunnelPlan()
        if not self.enabled:
            return plan
        certs = {c.name: c for c in snap.certificates}
        wanted = {t.name: t for t in snap.tunnels}
        try:
            for name, spec in wanted.items():
                key = _rebind_key(spec, certs)
                plan.keys[name] = key
                plan.gateway_hosts[name] = gateway_hosts(snap, spec.vhost_http_port)
                current = self.servers.get(name)
                if current is not None and self._keys.get(name) == key and current.listening:
                    plan.update.append((current, spec))
                    continue
                ctx, binding = self._tls(spec, certs)  # may refuse: nothing is changed before this
                server = TunnelServer(spec, ctx, self.metrics, self.on_http_change, binding=binding)
                try:
                    server.bind(take_over=current)  # the running server keeps serving until commit()
                except BindError as exc:
                    raise TunnelConfigError(f"tunnel {name!r}: {exc.strerror}", name) from None
                plan.start.append(server)
                if current is not None:
                    plan.stop.append(current)
        except TunnelConfigError:
            self.discard(plan)
            raise
        plan.stop += [s for n, s in self.servers.items() if n not in wanted]
        return plan

    def commit(self, plan: TunnelPlan) -> None:
        assert self._nursery is not None
        for server in plan.stop:
            server.stop()
            self.servers.pop(server.name, None)
            self.endpoints.servers.pop(server.name, None)
            log.info("tunnel server %r stopped", server.name)
        for server, spec in plan.update:
            server.update(spec)
        for server in [s for s, _ in plan.update] + plan.start:
            server.gateway_hosts = plan.gateway_hosts.get(server.name, [])
        for server in plan.start:
            self.servers[server.name] = server
            self.endpoints.servers[server.name] = server
            self._nursery.start_soon(server.run)
        self._keys = plan.keys
        if plan.start or plan.stop:
            self.on_http_change()

    def discard(self, plan: TunnelPlan) -> None:
        """The snapshot was refused after prepare: close what it bound (running servers are untouched)."""
        for server in plan.start:
            server.stop()

    # -- status ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"tunnels": [s.describe() for s in self.servers.values()]}

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        sessions = GaugeMetricFamily("flux_tunnel_sessions", "Connected tunnel agents", labels=["tunnel"])
        proxies = GaugeMetricFamily("flux_tunnel_proxies", "Tunnel proxies served", labels=["tunnel", "type"])
        conns = GaugeMetricFamily(
            "flux_tunnel_proxy_active_connections", "Open user connections per proxy", labels=["tunnel", "proxy"]
        )
        total = CounterMetricFamily(
            "flux_tunnel_proxy_connections", "User connections per proxy", labels=["tunnel", "proxy"]
        )
        traffic = CounterMetricFamily(
            "flux_tunnel_proxy_bytes", "Bytes through tunnel proxies", labels=["tunnel", "proxy", "direction"]
        )
        for server in self.servers.values():
            agents = server.agents()
            sessions.add_metric([server.name], len(agents))
            by_type: dict[str, int] = {}
            for conn in agents:
                for ref in conn.refs.values():
                    by_type[ref.type] = by_type.get(ref.type, 0) + 1
                    conns.add_metric([server.name, ref.name], ref.connections)
                    total.add_metric([server.name, ref.name], ref.total_connections)
                    traffic.add_metric([server.name, ref.name, "in"], ref.bytes_in)
                    traffic.add_metric([server.name, ref.name, "out"], ref.bytes_out)
            for t, n in sorted(by_type.items()):
                proxies.add_metric([server.name, t], n)
        yield sessions
        yield proxies
        yield conns
        yield total
        yield traffic
        events = CounterMetricFamily("flux_tunnel_events", "Tunnel server events", labels=["event"])
        for name in ("logins", "login_failures", "proxy_refusals", "connections", "connect_failures",
                     "vhost_misses", "visitor_refusals"):  # fmt: skip
            events.add_metric([name], getattr(m, name))
        yield events
