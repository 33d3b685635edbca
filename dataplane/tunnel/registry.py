"""Which agent serves what on a tunnel server: ports, virtual hosts, secret proxies and groups.

Pure bookkeeping, no sockets: the tunnel server asks it whether a NEW_PROXY may be served,
opens a public port when a claim creates a group, and picks the agent for each user
connection. Rules (frp's, made explicit):

- A tcp or udp port, an http(s) domain + location, or a secret proxy name is served by one
  proxy, or by a load-balancing group: proxies with the same `group` whose `group_key`
  matches the group's. A second proxy without that group is refused, naming the holder.
- Members of a group must be of one type; connections go round robin among them.
- Virtual hosts match the exact domain first, then the longest wildcard (`*.example.com`
  matches `a.example.com` and `a.b.example.com`), then the longest location prefix.
- http and tcpmux proxies with `route_by_http_user` (frp's routeByHTTPUser) claim their domain
  (and location) for that basic-auth user only: keys ``("http", domain, location, user)`` and
  ``("tcpmux", domain, user)``; without it, ``("http", domain, location)`` and
  ``("tcpmux", domain)`` serve every other user. A request picks its user's proxy first, then
  the one for everyone (`route_user`, `find_tcpmux`).
- Owners (tunnel users, "" for shared-token agents; see `ownership.py`): a group has one
  owner, and an http/https domain belongs to one owner whatever the location: a claim is
  refused when another owner's domain covers it (same name, or a wildcard over it), so a
  domain or location is never shared with nor taken over by another user.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dataplane.tunnel.ownership import covers
from fluxcommon.netaddr import host_of, port_in_ranges
from fluxcommon.tunnel.protocol.proxies import ProxyOptions


class ClaimError(Exception):
    """A proxy the server cannot serve as asked; the message goes back to the agent."""


@dataclass(eq=False)
class ProxyRef:
    """One registered proxy of one agent session."""

    session: Any  # the AgentConn serving it
    name: str
    type: str
    options: ProxyOptions
    remote_port: int = 0
    connections: int = 0
    total_connections: int = 0
    bytes_in: int = 0  # from users to the agent
    bytes_out: int = 0  # from the agent to users
    since: float = 0.0
    static: bool = False
    local_addr: str = ""  # static mappings: the agent's local address
    owner: str = ""  # the tunnel user of its agent ("" for a shared token)

    @property
    def group(self) -> str:
        return self.options.group

    def describe(self) -> dict[str, Any]:
        o = self.options
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "connections": self.connections,
            "total_connections": self.total_connections,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        if self.remote_port:
            out["remote_port"] = self.remote_port
        if o.custom_domains or o.subdomain:
            out["domains"] = list(o.custom_domains) + ([o.subdomain] if o.subdomain else [])
        if o.locations:
            out["locations"] = list(o.locations)
        if o.group:
            out["group"] = o.group
        if o.bandwidth_limit:
            out["bandwidth_limit"] = o.bandwidth_limit
        if self.static:
            out["static"] = True
            out["local"] = self.local_addr
        return out


@dataclass(eq=False)
class Group:
    """Proxies serving one key together (a group of one for ungrouped proxies)."""

    key: tuple[str, ...]
    type: str
    group: str
    group_key: str
    members: list[ProxyRef] = field(default_factory=list)
    _next: int = 0
    owner: str = ""

    def pick(self) -> ProxyRef | None:
        """The next member, round robin (None when empty)."""
        if not self.members:
            return None
        self._next = (self._next + 1) % len(self.members)
        return self.members[self._next]

    def holder(self) -> str:
        first = self.members[0] if self.members else None
        return f"proxy {first.name!r}" if first else "another proxy"


def _domain_match(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


class ProxyRegistry:
    """Every claim on one tunnel server (see the module docstring)."""

    def __init__(self, allow_ports: list[tuple[int, int]], subdomain_host: str = "") -> None:
        self.allow_ports = allow_ports
        self.subdomain_host = subdomain_host.lower().strip(".")
        self.groups: dict[tuple[str, ...], Group] = {}
        self._claims: dict[int, list[tuple[str, ...]]] = {}  # id(ref) -> keys

    # -- claims --------------------------------------------------------------------------

    def domains_of(self, ref: ProxyRef) -> list[str]:
        o = ref.options
        out = list(o.custom_domains)
        if o.subdomain:
            if not self.subdomain_host:
                raise ClaimError("subdomain: this node has no subdomain_host configured")
            out.append(f"{o.subdomain}.{self.subdomain_host}")
        return out

    def keys_for(self, ref: ProxyRef, port: int = 0) -> list[tuple[str, ...]]:
        """The keys `ref` would claim (port: the remote port for tcp/udp)."""
        t = ref.type
        if t in ("tcp", "udp"):
            return [(t, str(port))]
        user = (ref.options.route_by_http_user,) if ref.options.route_by_http_user else ()
        if t == "http":
            locations = ref.options.locations or ("/",)
            # dict.fromkeys: a domain or location listed twice (or "" and "/") is one key, claimed once
            domains = self.domains_of(ref)
            return list(dict.fromkeys(("http", d, loc or "/", *user) for d in domains for loc in locations))
        if t == "https":
            return list(dict.fromkeys(("https", d) for d in self.domains_of(ref)))
        if t == "tcpmux":
            return list(dict.fromkeys(("tcpmux", d, *user) for d in self.domains_of(ref)))
        return [("secret", ref.name)]  # stcp, sudp, xtcp: visitors find them by name

    def check_port(self, port: int) -> None:
        if not port_in_ranges(port, self.allow_ports):
            raise ClaimError(f"remote_port: {port} is not allowed on this node (allowed: {self._ranges()})")

    def _ranges(self) -> str:
        return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in self.allow_ports)

    def free_port_candidates(
        self, proto: str, count: int = 64, rng: random.Random | None = None, ranges: list[tuple[int, int]] | None = None
    ) -> list[int]:
        """Random allowed ports not claimed yet (the server then tries to bind them); `ranges`
        narrows `allow_ports` (a tunnel user's own ports)."""
        rng = rng or random.Random()
        allowed = self.allow_ports if ranges is None else ranges
        total = sum(b - a + 1 for a, b in allowed)
        if total <= 0:
            return []
        out: list[int] = []
        seen: set[int] = set()
        for _ in range(count * 4):
            if len(out) >= count or len(seen) >= total:
                break
            n = rng.randrange(total)
            for a, b in allowed:
                if n <= b - a:
                    port = a + n
                    break
                n -= b - a + 1
            if port in seen:
                continue
            seen.add(port)
            if (proto, str(port)) not in self.groups:
                out.append(port)
        return out

    def can_claim(self, ref: ProxyRef, keys: Iterable[tuple[str, ...]]) -> None:
        """Raise `ClaimError` if any key is held by someone `ref` may not join."""
        for key in keys:
            if key[0] in _DOMAIN_KINDS:
                self._check_domain_owner(ref, key)
            group = self.groups.get(key)
            if group is None or not group.members:
                continue
            if group.owner != ref.owner:
                raise ClaimError(
                    f"{_describe(key)} is already served by another tunnel user; it is not shared or taken over"
                )
            if not ref.group or ref.group != group.group:
                raise ClaimError(f"{_describe(key)} is already served by {group.holder()}")
            if group.type != ref.type:
                raise ClaimError(f"group {ref.group!r} serves {group.type} proxies, not {ref.type}")
            if ref.options.group_key != group.group_key:
                raise ClaimError(f"group {ref.group!r}: the group key does not match")

    def claim(self, ref: ProxyRef, keys: list[tuple[str, ...]]) -> list[Group]:
        """Record `ref` under `keys` (checked first); returns the groups it created."""
        self.can_claim(ref, keys)
        created = []
        for key in keys:
            group = self.groups.get(key)
            if group is None or not group.members:
                group = self.groups[key] = Group(key, ref.type, ref.group, ref.options.group_key, owner=ref.owner)
                created.append(group)
            group.members.append(ref)
        self._claims[id(ref)] = list(keys)
        return created

    def _check_domain_owner(self, ref: ProxyRef, key: tuple[str, ...]) -> None:
        """A domain (http or https, any location) another owner holds, or covers, is refused;
        a name `ref`'s owner already holds stays its own (a broader wildcard came later)."""
        domain = key[1]
        vhosts = [(k, g) for k, g in self.groups.items() if k[0] in _DOMAIN_KINDS and g.members]
        if any(k[1] == domain and g.owner == ref.owner for k, g in vhosts):
            return
        for other, group in vhosts:
            if group.owner != ref.owner and covers(other[1], domain):
                raise ClaimError(
                    f"custom_domains: {domain} is already served by another tunnel user; a domain and its "
                    "locations belong to one user and are not shared or taken over"
                )

    def release(self, ref: ProxyRef) -> list[Group]:
        """Forget `ref`; returns the groups now empty (their ports/routes should close)."""
        emptied = []
        for key in self._claims.pop(id(ref), []):
            group = self.groups.get(key)
            if group is None:
                continue
            if ref in group.members:
                group.members.remove(ref)
            if not group.members:
                del self.groups[key]
                emptied.append(group)
        return emptied

    # -- lookups -------------------------------------------------------------------------

    def port_group(self, proto: str, port: int) -> Group | None:
        return self.groups.get((proto, str(port)))

    def secret(self, name: str) -> Group | None:
        return self.groups.get(("secret", name))

    def find_https(self, host: str) -> Group | None:
        host = host.lower().rstrip(".")
        exact = self.groups.get(("https", host))
        if exact is not None:
            return exact
        best: Group | None = None
        for key, group in self.groups.items():
            wildcard = key[0] == "https" and key[1].startswith("*.") and _domain_match(key[1], host)
            if wildcard and (best is None or len(key[1]) > len(best.key[1])):
                best = group
        return best

    def find_http(self, host: str, path: str) -> Group | None:
        """The http group for a request (exact domain, then longest wildcard; longest location)."""
        host = host_of(host.lower().rstrip("."))  # no port ("[v6]:port" -> "v6")
        best: tuple[int, int, Group] | None = None
        for key, group in self.groups.items():
            if key[0] != "http" or not _domain_match(key[1], host):
                continue
            location = key[2]
            if not (location == "/" or path == location or path.startswith(location.rstrip("/") + "/")):
                continue
            rank = (0 if key[1].startswith("*.") else 1_000, len(key[1]))
            score = (rank[0] + rank[1], len(location))
            if best is None or score > best[:2]:
                best = (score[0], score[1], group)
        return best[2] if best else None

    def find_tcpmux(self, host: str, user: str) -> Group | None:
        """The tcpmux group for `CONNECT host` by basic-auth `user`: the exact domain, then the
        longest wildcard; at each, `user`'s own proxy first, then the one for every user."""
        host = host.lower().rstrip(".")
        domains = sorted(
            {k[1] for k, g in self.groups.items() if k[0] == "tcpmux" and g.members and _domain_match(k[1], host)},
            key=lambda d: (d == host, len(d)),
            reverse=True,
        )
        for domain in domains:
            for key in (("tcpmux", domain, user) if user else None, ("tcpmux", domain)):
                group = self.groups.get(key) if key is not None else None
                if group is not None and group.members:
                    return group
        return None

    def http_groups(self) -> list[Group]:
        return [g for k, g in sorted(self.groups.items()) if k[0] == "http" and g.members]


def route_user(key: tuple[str, ...]) -> str:
    """The basic-auth user an http or tcpmux key is for ("" = every user)."""
    return key[3] if key[0] == "http" and len(key) > 3 else key[2] if key[0] == "tcpmux" and len(key) > 2 else ""


_DOMAIN_KINDS = ("http", "https", "tcpmux")  # a domain belongs to one owner across these


def _describe(key: tuple[str, ...]) -> str:
    kind = key[0]
    user = f" for user {route_user(key)!r}" if route_user(key) else ""
    if kind in ("tcp", "udp"):
        return f"remote_port: {kind} port {key[1]}"
    if kind == "http":
        return f"custom_domains: http {key[1]}{key[2] if key[2] != '/' else ''}{user}"
    if kind == "tcpmux":
        return f"custom_domains: tcpmux {key[1]}{user}"
    if kind == "https":
        return f"custom_domains: https {key[1]}"
    return f"secret proxy {key[1]!r}"
