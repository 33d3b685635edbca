"""Checks that span resources: references, port conflicts, unique credentials.

`check_config` looks at a whole ConfigSet and returns every problem found, so a
write is accepted only when the config it would produce is consistent.
`referrers` answers "who uses this resource?" for refusing deletes.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass

from controlplane.spec import (
    ClusterSpec,
    ConfigSet,
    ConsumerSpec,
    ListenerSpec,
    RouteSpec,
    TunnelSpec,
)
from controlplane.spec.consumer import ApiKeyCredential, BasicAuthCredential, JwtCredential


@dataclass(frozen=True)
class FieldError:
    resource: str  # "routes/orders-api"
    field: str  # "cluster", "endpoints[0].weight"
    message: str

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.resource, self.field) if part)
        return f"{where}: {self.message}" if where else self.message

    def as_dict(self) -> dict[str, str]:
        return {"resource": self.resource, "field": self.field, "message": self.message}


class ConfigError(Exception):
    """A write that would make the config invalid; nothing was changed."""

    def __init__(self, errors: list[FieldError], status: int = 422) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors
        self.status = status


def _missing(cfg: ConfigSet, plural: str, names: list[str], where: str, field: str, what: str) -> list[FieldError]:
    return [FieldError(where, field, f"unknown {what} {n!r}") for n in names if cfg.get(plural, n) is None]


def _overlaps(a: str, b: str) -> bool:
    """Whether two bind addresses can collide (a wildcard collides with everything)."""
    if a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def _port_claims(cfg: ConfigSet) -> dict[tuple[str, str, int], list[tuple[str, str, str]]]:
    """(node_group, transport, port) -> [(resource, field, address)] for every socket the config opens."""
    claims: dict[tuple[str, str, int], list[tuple[str, str, str]]] = defaultdict(list)
    for lst in cfg["listeners"].values():
        assert isinstance(lst, ListenerSpec)
        claims[(lst.node_group, lst.transport, lst.port)].append((f"listeners/{lst.name}", "port", lst.address))
    for tun in cfg["tunnels"].values():
        assert isinstance(tun, TunnelSpec)
        where = f"tunnels/{tun.name}"
        claims[(tun.node_group, "tcp", tun.bind_port)].append((where, "bind_port", tun.bind_address))
        for field in ("vhost_http_port", "vhost_https_port", "tcpmux_httpconnect_port"):
            port = getattr(tun, field)
            # only vhost_http_port may share a port: the gateway's http listener serves its routes
            if port and not (field == "vhost_http_port" and _shares_http_listener(cfg, tun.node_group, port)):
                claims[(tun.node_group, "tcp", port)].append((where, field, tun.bind_address))
        for i, m in enumerate(tun.mappings):
            claims[(tun.node_group, m.type, m.remote_port)].append(
                (where, f"mappings[{i}].remote_port", tun.bind_address)
            )
    return claims


def _shares_http_listener(cfg: ConfigSet, group: str, port: int) -> bool:
    return any(
        isinstance(lst, ListenerSpec) and lst.node_group == group and lst.port == port and lst.protocol == "http"
        for lst in cfg["listeners"].values()
    )


def _check_ports(cfg: ConfigSet) -> list[FieldError]:
    errors = []
    for (group, transport, port), users in _port_claims(cfg).items():
        for i, (res, field, addr) in enumerate(users):
            for other_res, _other_field, other_addr in users[:i]:
                if _overlaps(addr, other_addr):
                    errors.append(
                        FieldError(
                            res,
                            field,
                            f"{transport} port {port} is already used by {other_res} in node group {group!r}",
                        )
                    )
                    break
    return errors


def _check_credentials(cfg: ConfigSet) -> list[FieldError]:
    errors = []
    keys: dict[str, str] = {}
    users: dict[str, str] = {}
    issuers: dict[str, str] = {}
    for consumer in cfg["consumers"].values():
        assert isinstance(consumer, ConsumerSpec)
        where = f"consumers/{consumer.name}"
        for i, cred in enumerate(consumer.credentials):
            if isinstance(cred, ApiKeyCredential) and cred.key_sha256:
                table, ident, what = keys, cred.key_sha256, "this api key"
            elif isinstance(cred, BasicAuthCredential):
                table, ident, what = users, cred.username, f"basic_auth user {cred.username!r}"
            elif isinstance(cred, JwtCredential):
                table, ident, what = issuers, cred.issuer, f"jwt issuer {cred.issuer!r}"
            else:
                continue
            owner = table.setdefault(ident, consumer.name)
            if owner != consumer.name:
                errors.append(FieldError(where, f"credentials[{i}]", f"{what} already belongs to consumer {owner!r}"))
    return errors


def check_config(cfg: ConfigSet) -> list[FieldError]:
    """Every cross-resource problem of `cfg`, in a stable order."""
    errors: list[FieldError] = []
    for lst in cfg["listeners"].values():
        assert isinstance(lst, ListenerSpec)
        where = f"listeners/{lst.name}"
        errors += _missing(cfg, "policies", lst.policies, where, "policies", "policy")
        errors += _missing(cfg, "certificates", lst.certificates, where, "certificates", "certificate")
        if lst.cluster:
            errors += _missing(cfg, "clusters", [lst.cluster], where, "cluster", "cluster")
    for cluster in cfg["clusters"].values():
        assert isinstance(cluster, ClusterSpec)
        errors += _missing(cfg, "policies", cluster.policies, f"clusters/{cluster.name}", "policies", "policy")
        if cluster.tls is not None and cluster.tls.certificate:
            where = f"clusters/{cluster.name}"
            errors += _missing(cfg, "certificates", [cluster.tls.certificate], where, "tls.certificate", "certificate")
    routed = {r.listener for r in cfg["routes"].values() if isinstance(r, RouteSpec) and r.listener}
    for lst in cfg["listeners"].values():
        assert isinstance(lst, ListenerSpec)
        if lst.protocol == "tls" and lst.name not in routed and not lst.cluster:
            errors.append(
                FieldError(
                    f"listeners/{lst.name}",
                    "protocol",
                    "a tls listener picks clusters by SNI from routes naming it (hosts), else sends to its"
                    " `cluster`; add such a route or a cluster",
                )
            )
    for route in cfg["routes"].values():
        assert isinstance(route, RouteSpec)
        where = f"routes/{route.name}"
        if route.listener:
            lst = cfg.get("listeners", route.listener)
            if lst is None:
                errors.append(FieldError(where, "listener", f"unknown listener {route.listener!r}"))
            elif isinstance(lst, ListenerSpec) and lst.protocol not in ("http", "https", "tls"):
                errors.append(
                    FieldError(
                        where, "listener", f"listener {lst.name!r} is {lst.protocol}; routes need http(s) or tls"
                    )
                )
        field = "cluster" if route.cluster else "clusters"
        errors += _missing(cfg, "clusters", route.cluster_names(), where, field, "cluster")
        errors += _missing(cfg, "policies", route.policies, where, "policies", "policy")
    for tun in cfg["tunnels"].values():
        assert isinstance(tun, TunnelSpec)
        if tun.tls.certificate:
            errors += _missing(
                cfg,
                "certificates",
                [tun.tls.certificate],
                f"tunnels/{tun.name}",
                "tls.certificate",
                "certificate",
            )
    errors += _check_ports(cfg)
    errors += _check_credentials(cfg)
    return errors


def referrers(cfg: ConfigSet, plural: str, name: str) -> list[str]:
    """Resources ("routes/a") that refer to `plural/name` and would break if it went."""
    out: list[str] = []
    if plural == "clusters":
        out += [f"routes/{r.name}" for r in cfg["routes"].values() if name in r.cluster_names()]  # type: ignore[attr-defined]
        out += [f"listeners/{x.name}" for x in cfg["listeners"].values() if x.cluster == name]  # type: ignore[attr-defined]
    elif plural == "listeners":
        out += [f"routes/{r.name}" for r in cfg["routes"].values() if r.listener == name]  # type: ignore[attr-defined]
    elif plural == "policies":
        for kind in ("listeners", "clusters", "routes"):
            out += [f"{kind}/{x.name}" for x in cfg[kind].values() if name in x.policies]  # type: ignore[attr-defined]
    elif plural == "certificates":
        out += [f"listeners/{x.name}" for x in cfg["listeners"].values() if name in x.certificates]  # type: ignore[attr-defined]
        out += [
            f"tunnels/{t.name}"
            for t in cfg["tunnels"].values()
            if t.tls.certificate == name  # type: ignore[attr-defined]
        ]
        out += [
            f"clusters/{c.name}"
            for c in cfg["clusters"].values()
            if c.tls is not None and c.tls.certificate == name  # type: ignore[attr-defined]
        ]
    return sorted(out)


__all__ = ["ConfigError", "FieldError", "check_config", "referrers"]
