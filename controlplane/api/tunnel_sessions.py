"""Live tunnel state: `GET /api/v1/tunnels/sessions` and `GET /api/v1/tunnels/proxies`.

Registered ahead of the `tunnels` resource routes, so these two names are not tunnel names.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from controlplane.api.state import ControlPlane, get_cp

router = APIRouter()


@router.get(
    "/api/v1/tunnels/sessions",
    tags=["tunnels"],
    summary="Connected tunnel agents: agent, version, address, proxies, connected since, bytes, connections",
)
def tunnel_sessions(
    tunnel: str = Query("", description="only sessions of this tunnel server"),
    agent: str = Query("", description="only this agent"),
    cp: ControlPlane = Depends(get_cp),
) -> dict[str, Any]:
    items = cp.tunnel_sessions.sessions(tunnel=tunnel, agent=agent)
    return {"items": items, "total": len(items)}


@router.get(
    "/api/v1/tunnels/proxies",
    tags=["tunnels"],
    summary="Counters per tunnel proxy, kept across agent reconnects",
)
def tunnel_proxies(cp: ControlPlane = Depends(get_cp)) -> dict[str, Any]:
    items = cp.tunnel_sessions.proxies()
    return {"items": items, "total": len(items)}
