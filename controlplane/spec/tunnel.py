"""Tunnel: the tunnel server settings of one node group, with static mappings and users.

Users are the tunnel's tenants: an agent with ``user = NAME`` in its frpc.toml logs in with
that user's token, its proxies are named ``NAME.proxy``, and it claims only the ports
(`allow_ports`), domains (`domains`) and number of proxies (`max_proxies`) its user is given
(the node enforces it: dataplane/tunnel/ownership.py). The shared `token` / `tokens` are
optional once there are users; agents that use them are one tenant among themselves.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from controlplane.spec._pem import check_ca_bundle
from controlplane.spec._types import MASK, Address, Duration, Name, Port, Resource, Strict
from fluxcommon.netaddr import check_host_pattern, parse_port_ranges, port_in_ranges
from fluxcommon.wire import host_problem, require

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([KkMm][Bb])?")


def parse_rate(value: str | int) -> int:
    """A bandwidth as frp writes it ("512KB", "1.5MB"; KB = 1024 bytes/s) or bytes/s -> bytes/s."""
    if isinstance(value, int):
        return value
    m = _RATE.fullmatch(value.strip())
    if not value.strip():
        return 0
    if not m:
        raise ValueError(f"{value!r} is not a rate: write it like '512KB' or '1MB' (KB = 1024 bytes per second)")
    unit = (m.group(2) or "").upper()
    return int(float(m.group(1)) * {"": 1, "KB": 1024, "MB": 1024 * 1024}[unit])


def _host_patterns(values: list[str]) -> list[str]:
    return [check_host_pattern(v) for v in values]


class TunnelTlsSpec(Strict):
    multiline_fields = Strict.multiline_fields | {"client_ca"}  # a PEM block

    force: bool = True  # plain-text agents are refused unless a tunnel sets force: false
    certificate: Name | None = None
    client_ca: str | None = None  # PEM CA certificates agents' client certificates must chain to

    @field_validator("client_ca")
    @classmethod
    def _client_ca(cls, v: str | None) -> str | None:
        return check_ca_bundle(v) if v else v  # checked now: a node cannot load what it refuses


class TunnelUserSpec(Strict):
    """One tenant of a tunnel server (see the module docstring)."""

    name: Name
    token: str = Field(min_length=1)
    allow_ports: str = ""  # "" = the tunnel's allow_ports
    domains: list[str] = []  # host patterns its http/https proxies may claim; [] = none
    max_proxies: int = Field(default=0, ge=0, le=4096)  # 0 = the node's default (256 per agent)
    # all its proxies together, each way, per node: "1MB", "512KB", or bytes a second (at most 1 TB/s)
    bandwidth_limit: Annotated[int, Field(ge=0, le=10**12)] | str = ""
    description: str = ""

    @field_validator("name")
    @classmethod
    def _no_dot(cls, v: str) -> str:
        if "." in v:
            raise ValueError(f"{v!r}: a user name has no '.' (its proxies are named USER.NAME)")
        return v

    @field_validator("allow_ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        if v.strip():
            parse_port_ranges(v)
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return _host_patterns(v)

    @field_validator("bandwidth_limit")
    @classmethod
    def _rate(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v < 0:
            raise ValueError("must not be negative")
        parse_rate(v)
        return v


class TunnelMappingSpec(Strict):
    name: Name
    agent: Name
    type: Literal["tcp", "udp"] = "tcp"
    remote_port: Port
    local_ip: Address = "127.0.0.1"
    local_port: Port


class TunnelSpec(Resource):
    node_group: Name = "default"
    bind_address: Address = "0.0.0.0"
    bind_port: Port = 7000
    token: str | None = Field(default=None, min_length=1)
    tokens: list[str] = []
    users: list[TunnelUserSpec] = []
    allow_ports: str = "1024-65535"
    vhost_http_port: int = Field(default=0, ge=0, le=65535)
    vhost_https_port: int = Field(default=0, ge=0, le=65535)
    # tcpmux proxies (frp's multiplexer "httpconnect"): `CONNECT name:port` picks one by domain
    tcpmux_httpconnect_port: int = Field(default=0, ge=0, le=65535)
    tcpmux_passthrough: bool = False  # pass the CONNECT request on to the local service (as frp's)
    subdomain_host: str = ""
    domains: list[str] = []  # host patterns every agent's custom domains must match; [] = any
    vhost_overrides_routes: bool = False  # may tunnel domains take hosts gateway routes name?
    tls: TunnelTlsSpec = TunnelTlsSpec()
    mappings: list[TunnelMappingSpec] = []
    heartbeat_timeout: Duration = 90_000
    description: str = ""

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in ("sessions", "proxies"):
            raise ValueError(f"{v!r} is reserved (GET /api/v1/tunnels/{v} shows live tunnel state)")
        return v

    @field_validator("allow_ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        parse_port_ranges(v)
        return v

    @field_validator("subdomain_host")
    @classmethod
    def _subdomain_host(cls, v: str) -> str:
        if v:
            require(host_problem(v, port=False))  # agents' subdomains become Host names under it
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return _host_patterns(v)

    @model_validator(mode="after")
    def _consistent(self) -> TunnelSpec:
        if not self.token and not self.tokens and not self.users:
            raise ValueError("token: a tunnel server needs a token or users agents authenticate with")
        ranges = parse_port_ranges(self.allow_ports)
        users: set[str] = set()
        for i, u in enumerate(self.users):
            if u.name in users:
                raise ValueError(f"users[{i}].name: duplicate user {u.name!r}")
            users.add(u.name)
            for lo, hi in parse_port_ranges(u.allow_ports) if u.allow_ports.strip() else []:
                if not _inside(lo, hi, ranges):
                    raise ValueError(f"users[{i}].allow_ports: {lo}-{hi} is outside the tunnel's allow_ports")
        names = set()
        for i, m in enumerate(self.mappings):
            if m.name in names:
                raise ValueError(f"mappings[{i}].name: duplicate mapping {m.name!r}")
            names.add(m.name)
            if not port_in_ranges(m.remote_port, ranges):
                raise ValueError(f"mappings[{i}].remote_port: {m.remote_port} is outside allow_ports")
        return self

    def all_tokens(self) -> list[str]:
        return ([self.token] if self.token else []) + list(self.tokens)

    secret_paths: ClassVar[tuple[str, ...]] = ("token", "tokens[]", "users[].token")

    def masked(self) -> dict[str, Any]:
        out = super().masked()
        if self.token:
            out["token"] = MASK
        out["tokens"] = [MASK for _ in self.tokens]
        for user in out.get("users", []):
            user["token"] = MASK
        return out

    def keep_secrets_from(self, old: Resource | None) -> TunnelSpec:
        prev = old if isinstance(old, TunnelSpec) else None
        update: dict[str, Any] = {}
        if self.token == MASK:
            if prev is None or not prev.token:
                raise ValueError("token: masked value but no stored token to keep")
            update["token"] = prev.token
        if MASK in self.tokens:
            if prev is None or len(prev.tokens) != len(self.tokens):
                raise ValueError("tokens: masked values must match the stored list")
            update["tokens"] = [p if t == MASK else t for t, p in zip(self.tokens, prev.tokens, strict=True)]
        if any(u.token == MASK for u in self.users):
            stored = {u.name: u.token for u in prev.users} if prev is not None else {}
            users = []
            for i, u in enumerate(self.users):
                if u.token == MASK:
                    if u.name not in stored:
                        raise ValueError(f"users[{i}].token: masked value but user {u.name!r} has no stored token")
                    u = u.model_copy(update={"token": stored[u.name]})
                users.append(u)
            update["users"] = users
        return self.model_copy(update=update) if update else self


def _inside(lo: int, hi: int, ranges: list[tuple[int, int]]) -> bool:
    """Whether every port of lo..hi is in `ranges`."""
    port = lo
    while port <= hi:
        block = next(((a, b) for a, b in ranges if a <= port <= b), None)
        if block is None:
            return False
        port = block[1] + 1
    return True
