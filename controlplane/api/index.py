"""`GET /api/v1`: an index of the API, so that the URL `scripts/up` prints answers something useful.

It lists every config kind (path, how many exist, what the methods do) and the other
collections and actions, with the current config version. Reading it needs the read role,
as every GET under /api/v1 does.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from controlplane.api.state import ControlPlane, get_cp
from controlplane.spec import KINDS

router = APIRouter(tags=["index"])

PREFIX = "/api/v1"

OTHER: dict[str, str] = {
    "apply": "POST /api/v1/apply (JSON or YAML; ?dry_run=true, ?prune=true): many resources in one version",
    "config": "GET /api/v1/config, /config/history, /config/export; POST /config/rollback {version}",
    "services": "the service registry: /api/v1/services[/{name}[/instances]], POST /services:import, /events",
    "service_info": "GET /api/v1/service/info: what the gateway serves now, by listener, route and node group",
    "nodes": "GET /api/v1/nodes; POST /nodes/join-tokens; DELETE /nodes/{id} (revoke)",
    "tunnels": "GET /api/v1/tunnels/sessions, /tunnels/proxies; POST /tunnels/{name}/agent-config",
    "tokens": "API tokens with roles: /api/v1/tokens (admin)",
    "auth": "POST /api/v1/auth/token {consumer} (issue a JWT), POST /auth/token/verify {token}",
    "docs": "/docs (OpenAPI), /redoc, /openapi.json",
}


def _kind(plural: str, count: int) -> dict[str, Any]:
    singular = KINDS[plural].singular
    return {
        "path": f"{PREFIX}/{plural}",
        "count": count,
        "methods": {
            "GET": f"list ({PREFIX}/{plural}?limit=&offset=), or one {singular} ({PREFIX}/{plural}/NAME)",
            "POST": f"create a {singular} (409 when the name exists)",
            "PUT": f"create or replace a {singular} ({PREFIX}/{plural}/NAME)",
            "DELETE": f"delete a {singular} (409 while in use)",
        },
    }


@router.get(PREFIX, summary="Index: the config kinds and the other collections of the API")
def index(cp: ControlPlane = Depends(get_cp)) -> dict[str, Any]:
    version, cfg = cp.store.current()
    return {
        "api": "v1",
        "version": version,
        "kinds": {plural: _kind(plural, len(cfg[plural])) for plural in KINDS},
        "other": OTHER,
    }
