"""Listener: a socket the nodes of one group open for traffic."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from controlplane.spec._types import Address, Name, Port, Resource


class ListenerSpec(Resource):
    protocol: Literal["http", "https", "tcp", "udp"] = "http"
    address: Address = "0.0.0.0"
    port: Port
    node_group: Name = "default"
    policies: list[Name] = []
    certificates: list[Name] = []
    cluster: Name | None = None
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
