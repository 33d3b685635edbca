"""Listener: a socket the nodes of one group open for traffic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from controlplane.spec._types import Address, Duration, Name, Port, Resource, Strict


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


class ListenerSpec(Resource):
    protocol: Literal["http", "https", "tcp", "udp"] = "http"
    address: Address = "0.0.0.0"
    port: Port
    node_group: Name = "default"
    policies: list[Name] = []
    certificates: list[Name] = []
    cluster: Name | None = None
    timeouts: ListenerTimeoutsSpec | None = None
    limits: ListenerLimitsSpec | None = None
    path_normalization: PathNormalizationSpec | None = None
    description: str = ""

    @model_validator(mode="after")
    def _protocol_fields(self) -> ListenerSpec:
        if self.protocol in ("tcp", "udp") and not self.cluster:
            raise ValueError(f"cluster: a {self.protocol} listener needs the cluster it forwards to")
        if self.protocol in ("http", "https") and self.cluster:
            raise ValueError("cluster: http listeners pick clusters by route; remove 'cluster'")
        if self.protocol == "https" and not self.certificates:
            raise ValueError("certificates: an https listener needs at least one certificate")
        return self

    @property
    def transport(self) -> str:
        """The socket family the port is taken in: "udp" or "tcp"."""
        return "udp" if self.protocol == "udp" else "tcp"
