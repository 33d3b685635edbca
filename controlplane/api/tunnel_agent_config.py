"""`POST /api/v1/tunnels/{name}/agent-config`: a ready flux-tunnel config for one tunnel user.

Admin only (it reveals that user's token; a POST needs the admin role, and the route states
it too): ``{"user": "office", "server": "gw.example.com[:7000]"}`` ->
``{"config": TOML, "ca_file": "edge-ca.pem", "ca_pem": PEM}`` (see
controlplane.tunnel_agent_config). Without `server`, the tunnel's bind address or the
addresses of its group's connected nodes are used. `fluxctl tunnels agent-config` calls it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from controlplane.api.state import ControlPlane, get_cp, require_admin
from controlplane.spec.certificate import CertificateSpec
from controlplane.spec.tunnel import TunnelSpec
from controlplane.tunnel_agent_config import default_servers, render

router = APIRouter()


class AgentConfigRequest(BaseModel):
    user: str = Field(min_length=1, max_length=63)
    server: str = Field(default="", max_length=255, description="HOST or HOST:PORT agents dial")


@router.post(
    "/api/v1/tunnels/{name}/agent-config",
    tags=["tunnels"],
    summary="A ready flux-tunnel config (frpc.toml) for one tunnel user, with its token and the node's CA (admin)",
)
def agent_config(
    name: str,
    body: AgentConfigRequest,
    cp: ControlPlane = Depends(get_cp),
    _admin: str = Depends(require_admin),
) -> dict[str, Any]:
    _, cfg = cp.store.current()
    tunnel = cfg.get("tunnels", name)
    if not isinstance(tunnel, TunnelSpec):
        raise HTTPException(404, f"tunnels/{name} not found")
    user = next((u for u in tunnel.users if u.name == body.user), None)
    if user is None:
        known = ", ".join(u.name for u in tunnel.users) or "none"
        raise HTTPException(404, f"user: tunnel {name!r} has no user {body.user!r} (its users: {known})")
    cert = cfg.get("certificates", tunnel.tls.certificate) if tunnel.tls.certificate else None
    addresses = [n.address for n in cp.nodes.list() if n.connected and n.node_group == tunnel.node_group]
    servers = [body.server] if body.server else default_servers(tunnel, addresses)
    try:
        text = render(tunnel, user, servers, cert if isinstance(cert, CertificateSpec) else None)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"config": text.config, "ca_file": text.ca_file, "ca_pem": text.ca_pem}
