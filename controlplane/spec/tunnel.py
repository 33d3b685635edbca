"""Tunnel: the tunnel server settings of one node group, with static mappings."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from controlplane.spec._types import MASK, Address, Duration, Name, Port, Resource, Strict
from fluxcommon.netaddr import parse_port_ranges, port_in_ranges
from fluxcommon.wire import host_problem, require


class TunnelTlsSpec(Strict):
    multiline_fields = Strict.multiline_fields | {"client_ca"}  # a PEM block

    force: bool = False
    certificate: Name | None = None
    client_ca: str | None = None


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
    allow_ports: str = "1024-65535"
    vhost_http_port: int = Field(default=0, ge=0, le=65535)
    vhost_https_port: int = Field(default=0, ge=0, le=65535)
    subdomain_host: str = ""
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

    @model_validator(mode="after")
    def _consistent(self) -> TunnelSpec:
        if not self.token and not self.tokens:
            raise ValueError("token: a tunnel server needs a token agents authenticate with")
        ranges = parse_port_ranges(self.allow_ports)
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

    secret_paths: ClassVar[tuple[str, ...]] = ("token", "tokens[]")

    def masked(self) -> dict[str, Any]:
        out = super().masked()
        if self.token:
            out["token"] = MASK
        out["tokens"] = [MASK for _ in self.tokens]
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
        return self.model_copy(update=update) if update else self
