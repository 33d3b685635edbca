"""Runtime state of one upstream endpoint of one cluster.

Owns `EndpointState`: the endpoint's config fields (updated in place on a config push so
health survives it), its in-flight count, its active-check and passive-ejection state, the
counters shown on the admin page, and the derived `available` flag that balancers read.

Must not: import trio, grpc, socket or any I/O library, or read the clock (the health
state machine in `dataplane.health.state` passes `now` in). Only `_refresh()` computes
`available`; whoever changes `healthy`, `draining` or `ejected_until` must call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def endpoint_key(address: str, port: int) -> str:
    """ "10.0.0.1", 80 -> "10.0.0.1:80"; "::1", 80 -> "[::1]:80"."""
    if ":" in address and not address.startswith("["):
        return f"[{address}]:{port}"
    return f"{address}:{port}"


class EndpointState:
    """Mutable state of one endpoint; kept alive across config updates."""

    __slots__ = (
        "active",
        "address",
        "available",
        "checks_failed",
        "checks_ok",
        "consecutive_5xx",
        "consecutive_failures",
        "draining",
        "ejected_until",
        "ejections",
        "healthy",
        "key",
        "last_check",
        "metadata",
        "port",
        "released_at",
        "total_failures",
        "total_requests",
        "version",
        "weight",
        "zone",
    )

    address: str
    port: int
    key: str
    weight: int
    zone: str
    version: str
    metadata: dict[str, str]
    draining: bool
    active: int
    healthy: bool
    ejected_until: float
    ejections: int
    released_at: float
    consecutive_failures: int
    consecutive_5xx: int
    checks_ok: int
    checks_failed: int
    available: bool
    total_requests: int
    total_failures: int
    last_check: str

    def __init__(
        self,
        address: str,
        port: int,
        weight: int = 1,
        zone: str = "",
        version: str = "",
        metadata: Mapping[str, str] | None = None,
        draining: bool = False,
        *,
        healthy: bool = True,
    ) -> None:
        self.address = address
        self.port = port
        self.key = endpoint_key(address, port)
        self.active = 0
        self.healthy = healthy
        self.ejected_until = 0.0
        self.ejections = 0
        self.released_at = 0.0
        self.consecutive_failures = 0
        self.consecutive_5xx = 0
        self.checks_ok = 0
        self.checks_failed = 0
        self.total_requests = 0
        self.total_failures = 0
        self.last_check = ""
        self.available = False
        self.update_config(weight, zone, version, metadata, draining)

    def update_config(
        self,
        weight: int,
        zone: str = "",
        version: str = "",
        metadata: Mapping[str, str] | None = None,
        draining: bool = False,
    ) -> None:
        """Apply the config fields of a (re)pushed endpoint; a weight below 1 counts as 1."""
        self.weight = max(1, int(weight))
        self.zone = zone
        self.version = version
        self.metadata = dict(metadata) if metadata else {}
        self.draining = bool(draining)
        self._refresh()

    @property
    def ejected(self) -> bool:
        """Passively ejected (until `release_ejections` runs at or after `ejected_until`)."""
        return self.ejected_until > 0.0

    def _refresh(self) -> None:
        """Recompute `available`; call after any change to healthy / draining / ejected_until."""
        self.available = self.healthy and not self.draining and self.ejected_until <= 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view for the admin page."""
        return {
            "key": self.key,
            "address": self.address,
            "port": self.port,
            "weight": self.weight,
            "zone": self.zone,
            "version": self.version,
            "metadata": dict(self.metadata),
            "draining": self.draining,
            "available": self.available,
            "healthy": self.healthy,
            "ejected": self.ejected,
            "ejected_until": self.ejected_until,
            "ejections": self.ejections,
            "active": self.active,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_5xx": self.consecutive_5xx,
            "checks_ok": self.checks_ok,
            "checks_failed": self.checks_failed,
            "last_check": self.last_check,
            "total_requests": self.total_requests,
            "total_failures": self.total_failures,
        }

    def __repr__(self) -> str:
        flags = "available" if self.available else "unavailable"
        return f"EndpointState({self.key!r}, weight={self.weight}, {flags}, active={self.active})"
