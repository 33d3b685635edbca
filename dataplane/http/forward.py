"""Forward-proxy destinations: which `CONNECT host:port` and `http://host:port/...` a
forward listener (`mode: forward`) lets a client reach.

`ForwardRules.refusal(host, port)` says why a destination is refused (None: allowed):
the host must match `allow_hosts` (exact names, `*.example.com` wildcards that need at least
one more label, or `*`), the port `allow_ports` (ranges like "443,8000-9000"; default 80 and
443). With `deny_private`, addresses that are private, loopback, link-local, multicast,
reserved or unspecified are refused, both as literals and as what a name resolves to (the
proxy connects to the address it checked, so a name cannot resolve differently in between).

Sans-IO: resolving is the caller's job (`addresses_refusal` takes the resolved addresses).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flux.v1 import config_pb2 as pb
from fluxcommon.netaddr import parse_port_ranges

DEFAULT_PORTS = ((80, 80), (443, 443))


@dataclass(frozen=True, slots=True)
class ForwardRules:
    any_host: bool
    exact: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com"
    ports: tuple[tuple[int, int], ...]
    deny_private: bool

    @classmethod
    def build(cls, spec: pb.ForwardProxy) -> ForwardRules:
        hosts = [h.lower().rstrip(".") for h in spec.allow_hosts]
        ports = tuple(parse_port_ranges(spec.allow_ports)) if spec.allow_ports else DEFAULT_PORTS
        return cls(
            any_host="*" in hosts,
            exact=frozenset(h for h in hosts if not h.startswith("*")),
            suffixes=tuple(h[1:] for h in hosts if h.startswith("*.")),
            ports=ports,
            deny_private=spec.deny_private,
        )

    def refusal(self, host: str, port: int) -> str | None:
        """Why (host, port) may not be reached by name and port (None: it may)."""
        if not any(lo <= port <= hi for lo, hi in self.ports):
            return f"port {port} is not in this proxy's allow_ports"
        name = host.lower().rstrip(".").strip("[]")
        if not (
            self.any_host or name in self.exact or any(name.endswith(s) and len(name) > len(s) for s in self.suffixes)
        ):
            return f"{host} is not in this proxy's allow_hosts"
        if self.deny_private:
            literal = _ip(name)
            if literal is not None and not _public(literal):
                return f"{host} is a private or local address"
        return None

    def addresses_refusal(self, host: str, addresses: list[str]) -> str | None:
        """With deny_private: why the addresses `host` resolved to may not be reached."""
        if not self.deny_private:
            return None
        for text in addresses:
            addr = _ip(text)
            if addr is None or not _public(addr):
                return f"{host} resolves to a private or local address ({text})"
        return None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )
