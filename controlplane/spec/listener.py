"""Listener: a socket the nodes of one group open for traffic."""

from __future__ import annotations

import ssl
from typing import Literal

from pydantic import Field, field_validator, model_validator

from controlplane.spec._pem import check_ca_bundle
from controlplane.spec._types import Address, Duration, Name, Port, Resource, Strict
from fluxcommon.netaddr import check_host_pattern, parse_port_ranges


class ListenerTimeoutsSpec(Strict):
    """How long a client may take: to send a request head (from its first byte), to go silent
    in the middle of a body (then 408), and to come back with the next request on a keep-alive
    connection."""

    header: Duration = 30_000
    body_idle: Duration = 30_000
    idle: Duration = 60_000

    @model_validator(mode="after")
    def _positive(self) -> ListenerTimeoutsSpec:
        for field in ("header", "body_idle", "idle"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field}: must be a positive duration")
        return self


class ListenerLimitsSpec(Strict):
    """Connection limits of a listener, per node (0: no limit but the node's file descriptors)."""

    max_connections: int = Field(default=0, ge=0, le=10_000_000)
    max_connections_per_ip: int = Field(default=0, ge=0, le=10_000_000)


class PathNormalizationSpec(Strict):
    """How request paths are made canonical before routing; see the README."""

    merge_slashes: bool = True
    escaped_slashes: Literal["reject", "keep", "unescape"] = "reject"


class ListenerTlsSpec(Strict):
    """TLS of an https listener: versions, TLS 1.2 ciphers, client certificates."""

    multiline_fields = Strict.multiline_fields | {"client_ca"}  # PEM

    min_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: str = ""
    client_ca: str = ""
    client_auth: Literal["required", "optional"] = "required"

    @field_validator("ciphers")
    @classmethod
    def _ciphers(cls, v: str) -> str:
        if v:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
            except ssl.SSLError:
                raise ValueError(f"{v!r} names no cipher OpenSSL knows") from None
        return v

    @field_validator("client_ca")
    @classmethod
    def _client_ca(cls, v: str) -> str:
        return check_ca_bundle(v) if v else v


class ForwardSpec(Strict):
    """Where a forward-proxy listener lets clients go (CONNECT and absolute-form requests)."""

    allow_hosts: list[str] = Field(min_length=1)
    allow_ports: str = "80,443"
    deny_private: bool = False

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return [h if h == "*" else check_host_pattern(h) for h in v]

    @field_validator("allow_ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        parse_port_ranges(v)
        return v


class ListenerSpec(Resource):
    protocol: Literal["http", "https", "tcp", "udp", "tls"] = "http"
    address: Address = "0.0.0.0"
    port: Port
    node_group: Name = "default"
    policies: list[Name] = []
    certificates: list[Name] = []
    cluster: Name | None = None
    timeouts: ListenerTimeoutsSpec | None = None
    limits: ListenerLimitsSpec | None = None
    path_normalization: PathNormalizationSpec | None = None
    tls: ListenerTlsSpec | None = None
    mode: Literal["reverse", "forward"] = "reverse"
    forward: ForwardSpec | None = None
    # HTTP/2: h2c with prior knowledge on http listeners (default off); h2 by ALPN on https (default on)
    http2: bool | None = None
    description: str = ""

    @model_validator(mode="after")
    def _protocol_fields(self) -> ListenerSpec:
        if self.protocol in ("tcp", "udp") and not self.cluster:
            raise ValueError(f"cluster: a {self.protocol} listener needs the cluster it forwards to")
        if self.protocol in ("http", "https") and self.cluster:
            raise ValueError("cluster: http listeners pick clusters by route; remove 'cluster'")
        if self.protocol == "https" and not self.certificates:
            raise ValueError("certificates: an https listener needs at least one certificate")
        if self.tls is not None and self.protocol != "https":
            raise ValueError("tls: only https listeners terminate TLS")
        if self.certificates and self.protocol != "https":
            raise ValueError("certificates: only https listeners present certificates")
        if self.mode == "forward":
            if self.protocol not in ("http", "https"):
                raise ValueError("mode: a forward proxy listener is http or https")
            if self.forward is None:
                raise ValueError("forward: a forward proxy needs forward.allow_hosts (the destinations it may reach)")
        elif self.forward is not None:
            raise ValueError("forward: only with mode: forward")
        if self.http2 and self.protocol not in ("http", "https"):
            raise ValueError("http2: only http and https listeners speak HTTP/2")
        return self

    @property
    def transport(self) -> str:
        """The socket family the port is taken in: "udp" or "tcp"."""
        return "udp" if self.protocol == "udp" else "tcp"
