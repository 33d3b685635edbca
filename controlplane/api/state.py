"""What the API handlers need, held on `app.state.flux`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Depends, Request

from controlplane.api import access
from controlplane.api_tokens import ApiTokens
from controlplane.auth import AdminToken
from controlplane.discovery.cache import SnapshotCache
from controlplane.discovery.nodes import NodeRegistry
from controlplane.store.config_store import ConfigStore
from controlplane.tunnel_sessions import TunnelSessions

if TYPE_CHECKING:
    from controlplane.discovery.server import DiscoveryServicer
    from controlplane.registry.store import RegistryStore
    from controlplane.tracing import ConfigTracing


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
    api_tokens: ApiTokens | None = None  # None: made on the store's database
    tracing: ConfigTracing | None = None  # the OTEL_* variables asked for tracing (controlplane.tracing)

    def __post_init__(self) -> None:
        if self.api_tokens is None:
            self.api_tokens = ApiTokens(self.store.engine)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def get_cp(request: Request) -> ControlPlane:
    return request.app.state.flux  # type: ignore[no-any-return]


def require_admin(request: Request, cp: ControlPlane = Depends(get_cp)) -> str:
    """The admin role, stated at the route (the bootstrap admin token or an admin API
    token; every route is also checked by controlplane.api.access.authorize); returns who
    made the write."""
    principal = access.principal_now(request, cp)
    access.check_need(access.Need("admin"), principal)
    return access.author_of(request, principal)
