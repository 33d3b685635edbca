"""Access control policies: ip_acl, ua_filter, domain_acl, api_acl.

ip_acl takes the client address from the socket, or, when the socket peer is
a configured trusted proxy, from X-Forwarded-For: the rightmost address that
is not itself a trusted proxy (the first hop the node cannot vouch for). The
address it settles on is left in `ctx.vars["client_ip"]` for later policies
(rate-limit keys) and the access log.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from dataplane.policies.base import LocalResponse, Policy, PolicyEnv, PolicyResult, RequestContext
from fluxcommon.netaddr import host_of
from fluxcommon.policy_config import ApiAclConfig, DomainAclConfig, IpAclConfig, UaFilterConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(cidrs: list[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _in(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: tuple[Network, ...]) -> bool:
    return any(addr in net for net in nets)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host_of(text.strip()))  # v4, v4:port, v6, [v6]:port
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _denied(policy: Policy, reason: str, message: str) -> LocalResponse:
    policy.denied[reason] = policy.denied.get(reason, 0) + 1  # type: ignore[attr-defined]
    return LocalResponse.error(403, reason, message)


class _Counting(Policy):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.allowed = 0
        self.denied: dict[str, int] = {}


class IpAclPolicy(_Counting):
    type = "ip_acl"

    def __init__(self, name: str, config: IpAclConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.allow = _networks(config.allow)
        self.deny = _networks(config.deny)
        self.trusted = _networks(config.trusted_proxies)
        self._cache: dict[str, bool] = {}  # socket-peer decisions when no XFF is involved

    def client_address(self, ctx: RequestContext) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        peer = _address(ctx.client_ip)
        if peer is None or not self.trusted or not _in(peer, self.trusted):
            return peer
        forwarded = ctx.header("x-forwarded-for")
        if not forwarded:
            return peer
        hops = [h for h in (p.strip() for p in forwarded.split(",")) if h]
        for hop in reversed(hops):
            addr = _address(hop)
            if addr is None:
                return peer  # a malformed chain proves nothing: judge the proxy itself
            if not _in(addr, self.trusted):
                return addr
        return _address(hops[0]) if hops else peer

    def _decide(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if self.deny and _in(addr, self.deny):
            return False
        return not self.allow or _in(addr, self.allow)

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        if not self.trusted:
            ok = self._cache.get(ctx.client_ip)
            if ok is None:
                addr = _address(ctx.client_ip)
                ok = addr is not None and self._decide(addr)
                if len(self._cache) > 65536:
                    self._cache.clear()
                self._cache[ctx.client_ip] = ok
            if ok:
                self.allowed += 1
                return None
            return _denied(self, "ip_denied", "your address may not use this API")
        addr = self.client_address(ctx)
        if addr is None:
            return _denied(self, "ip_unknown", "client address not recognised")
        ctx.vars["client_ip"] = str(addr)
        if self._decide(addr):
            self.allowed += 1
            return None
        return _denied(self, "ip_denied", "your address may not use this API")


class UaFilterPolicy(_Counting):
    type = "ua_filter"

    def __init__(self, name: str, config: UaFilterConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.allow = [re.compile(p) for p in config.allow]
        self.deny = [re.compile(p) for p in config.deny]

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        ua = ctx.header("user-agent") or ""
        if any(p.search(ua) for p in self.deny):
            return _denied(self, "user_agent_denied", "this client is not allowed")
        if self.allow and not any(p.search(ua) for p in self.allow):
            return _denied(self, "user_agent_denied", "this client is not allowed")
        self.allowed += 1
        return None


def _domain_matcher(patterns: list[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    exact, suffixes = set(), []
    for p in patterns:
        p = p.strip().lower()
        if p.startswith("*."):
            suffixes.append(p[1:])  # ".example.com"
        else:
            exact.add(p)
    return frozenset(exact), tuple(suffixes)


def _domain_ok(host: str, matcher: tuple[frozenset[str], tuple[str, ...]]) -> bool:
    exact, suffixes = matcher
    host = host.lower().rstrip(".")
    return host in exact or any(host.endswith(s) and len(host) > len(s) for s in suffixes)


class DomainAclPolicy(_Counting):
    """Allowed Host values, and allowed domains in Referer/Origin (when the request has one)."""

    type = "domain_acl"

    def __init__(self, name: str, config: DomainAclConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.hosts = _domain_matcher(config.allow_hosts) if config.allow_hosts else None
        self.referers = _domain_matcher(config.allow_referers) if config.allow_referers else None

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        if self.hosts is not None:
            host = ctx.head.host
            if host[-1:] != "]" and ":" in host:
                host = host.rsplit(":", 1)[0]
            if not _domain_ok(host, self.hosts):
                return _denied(self, "host_denied", f"host {host!r} is not served here")
        if self.referers is not None:
            for header in ("origin", "referer"):
                value = ctx.header(header)
                if value:
                    domain = urlsplit(value).hostname or ""
                    if not _domain_ok(domain, self.referers):
                        return _denied(self, "referer_denied", f"{header} {domain!r} is not allowed")
        self.allowed += 1
        return None


class ApiAclPolicy(_Counting):
    """Which consumers or groups may call the route, and with which methods."""

    type = "api_acl"

    def __init__(self, name: str, config: ApiAclConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.consumers = frozenset(config.allow_consumers)
        self.groups = frozenset(config.allow_groups)
        self.deny_consumers = frozenset(config.deny_consumers)
        self.methods = frozenset(m.upper() for m in config.methods)

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        consumer = ctx.consumer
        if consumer is None and (self.consumers or self.groups):
            self.denied["unauthenticated"] = self.denied.get("unauthenticated", 0) + 1
            return LocalResponse.error(
                401, "unauthenticated", "this API needs an authenticated consumer (add an auth policy first)"
            )
        if self.methods and ctx.head.method not in self.methods:
            return _denied(self, "method_denied", f"{ctx.head.method} is not allowed here")
        if consumer is not None:
            if consumer.name in self.deny_consumers:
                return _denied(self, "consumer_denied", f"consumer {consumer.name!r} may not call this API")
            if (self.consumers or self.groups) and not (
                consumer.name in self.consumers or consumer.groups & self.groups
            ):
                return _denied(self, "consumer_denied", f"consumer {consumer.name!r} may not call this API")
        self.allowed += 1
        return None
