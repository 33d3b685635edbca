"""What the API handlers need, held on `app.state.flux`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Depends, HTTPException, Request

from controlplane.auth import AdminToken
from controlplane.discovery.cache import SnapshotCache
from controlplane.discovery.nodes import NodeRegistry
from controlplane.store.config_store import ConfigStore
from controlplane.tunnel_sessions import TunnelSessions

if TYPE_CHECKING:
    from controlplane.discovery.server import DiscoveryServicer
    from controlplane.registry.store import RegistryStore


@dataclass
class ControlPlane:
    store: ConfigStore
    token: AdminToken
    nodes: NodeRegistry
    cache: SnapshotCache
    control_plane_id: str
    servicer: DiscoveryServicer | None = None
    registry: RegistryStore | None = None
    counters: dict[str, int] = field(default_factory=dict)
    tunnel_sessions: TunnelSessions = field(default_factory=TunnelSessions)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def get_cp(request: Request) -> ControlPlane:
    return request.app.state.flux  # type: ignore[no-any-return]


def require_admin(request: Request, cp: ControlPlane = Depends(get_cp)) -> str:
    """Bearer-token check of every write; returns who made the write."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise HTTPException(
            401,
            "missing admin token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not cp.token.matches(presented.strip()):
        raise HTTPException(401, "wrong admin token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    author = request.headers.get("x-flux-author", "").strip()[:100]
    client = request.client.host if request.client else "?"
    return f"{author or 'admin'}@{client}"
