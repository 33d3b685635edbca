"""Who may claim what on a tunnel server: tunnel users' allowances, and gateway routes' hosts.

Pure rules, no sockets; the tunnel server asks them before it claims anything for a proxy
(`TunnelServer.claim`) and the registry keeps one owner per domain (`ProxyRegistry`).

Owners. An agent that logged in as tunnel user U (its own token) owns what it claims as U;
agents that logged in with a shared token are one owner among themselves, "" (the
single-tenant setup). Two owners never share a port, domain or load-balancing group, and a
claim never takes traffic from another owner's claim.

Allowances (`Tenancy.check`), for a user U:

- proxy names: ``U.NAME`` only (frp's naming with ``user = U``); shared-token agents may not
  use the namespace ``U.`` of a user;
- remote ports: U's `allow_ports` (default: the tunnel's), always inside the tunnel's;
- domains: every custom domain and the full name of a subdomain must match one of U's
  `domains` patterns (none: U claims no domain); with tunnel `domains`, every agent's custom
  domains must also match one of them (subdomains of `subdomain_host` always do);
- `max_proxies`: U's proxies on this node at once (static mappings not counted).

Coverage (`covers`): ``crm.example.com`` covers itself only; ``*.example.com`` covers every name
under example.com (``a.example.com``, ``a.b.example.com``, ``*.b.example.com``), not
``example.com`` itself. A claim is refused when an existing claim of another owner covers it
(the new one would be as or more specific, so it would take that owner's traffic).

Gateway routes (`gateway_hosts`, `shadowing_route`): a tunnel's `vhost_http_port` may share an
http listener of the gateway. Unless the tunnel sets `vhost_overrides_routes`, a domain is
refused when a gateway route on that listener names a host pattern covering it: the agent's
route would be as or more specific and take the route's traffic (its policies included).
Routes for any host (no `hosts`) are the listener's fallback and do not block a domain.
"""

from __future__ import annotations

from dataclasses import dataclass

from flux.v1 import config_pb2 as pb
from fluxcommon.netaddr import parse_port_ranges, port_in_ranges

Ranges = list[tuple[int, int]]


def covers(pattern: str, host: str) -> bool:
    """Whether every name `host` stands for is one `pattern` stands for (see the module docstring)."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == host
    suffix = pattern[1:]  # ".example.com"
    bare = host[2:] if host.startswith("*.") else host
    if host.startswith("*."):  # a wildcard claim: every name under `bare`
        return bare == suffix[1:] or bare.endswith(suffix)
    return host.endswith(suffix) and len(host) > len(suffix)


@dataclass(frozen=True)
class Allowance:
    """What one owner may claim on one tunnel server."""

    user: str  # "" = agents with a shared token
    ports: Ranges
    domains: tuple[str, ...] | None  # None: no bound of the user's own
    max_proxies: int  # 0: no cap of the user's own
    bandwidth_limit: int  # bytes/s each way, all its proxies together; 0: unlimited


class Tenancy:
    """The tunnel's users and bounds, from its snapshot settings (rebuilt when they change)."""

    def __init__(self, spec: pb.Tunnel) -> None:
        self.ports = parse_port_ranges(spec.allow_ports or "1024-65535")
        self.domains = tuple(d.lower() for d in spec.domains)
        self.subdomain_host = spec.subdomain_host.lower().strip(".")
        self.users: dict[str, Allowance] = {
            u.name: Allowance(
                u.name,
                parse_port_ranges(u.allow_ports) if u.allow_ports.strip() else self.ports,
                tuple(d.lower() for d in u.domains),
                u.max_proxies,
                u.bandwidth_limit,
            )
            for u in spec.users
        }
        self.shared = Allowance("", self.ports, None, 0, 0)

    def allowance(self, user: str) -> Allowance:
        return self.users.get(user, self.shared) if user else self.shared

    def check_name(self, user: str, proxy: str) -> str | None:
        """Why `user` ("" = a shared token) may not register a proxy named `proxy`, or None."""
        if user:
            if not proxy.startswith(f"{user}."):
                return f"name: user {user!r} registers proxies named {user}.NAME only, not {proxy!r}"
            return None
        owner, dot, _ = proxy.partition(".")
        if dot and owner in self.users:
            return f"name: {owner}. is the namespace of tunnel user {owner!r}; log in as that user with its token"
        return None

    def check_port(self, user: str, port: int) -> str | None:
        allowance = self.allowance(user)
        if user and not port_in_ranges(port, allowance.ports):
            return f"remote_port: {port} is not among the ports of user {user!r} ({_ranges(allowance.ports)})"
        return None

    def check_domain(self, user: str, domain: str) -> str | None:
        """Why `user` may not claim `domain` (a custom domain, or a subdomain's full name), or None."""
        allowance = self.allowance(user)
        if allowance.domains is not None and not any(covers(p, domain) for p in allowance.domains):
            mine = ", ".join(allowance.domains) or "none"
            return f"custom_domains: {domain} is not among the domains of user {user!r} ({mine})"
        under_subdomain_host = bool(self.subdomain_host) and covers(f"*.{self.subdomain_host}", domain)
        if self.domains and not under_subdomain_host and not any(covers(p, domain) for p in self.domains):
            return f"custom_domains: {domain} is outside this tunnel's domains ({', '.join(self.domains)})"
        return None


def _ranges(ranges: Ranges) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def gateway_hosts(snap: pb.Snapshot, port: int) -> list[tuple[str, str]]:
    """(host pattern, route name) of the gateway routes on the http listener at `port`, if any."""
    shared = {lst.name for lst in snap.listeners if lst.port == port and lst.protocol == pb.PROTOCOL_HTTP}
    if not port or not shared:
        return []
    return [
        (host.lower(), route.name)
        for route in snap.routes
        if route.listener in shared or not route.listener
        for host in route.hosts
        if host and host != "*"
    ]


def shadowing_route(domain: str, hosts: list[tuple[str, str]]) -> str | None:
    """The gateway route a tunnel claim of `domain` would take traffic from, or None."""
    return next((route for pattern, route in hosts if covers(pattern, domain)), None)
