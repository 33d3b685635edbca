"""Live state pages: tunnels (sessions, proxies, traffic) and the registry (services, instances,
health history, events). Read only; every number comes from the REST API."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from controlplane.ui.apiclient import ApiError
from controlplane.ui.web import Page, page

router = APIRouter(prefix="/ui", include_in_schema=False)
MAX_HEALTH_LOOKUPS = 20
"""Instances of one service whose health history the service page fetches."""


def _items(body: Any) -> list[dict[str, Any]]:
    return list((body or {}).get("items", []))


def _why(err: ApiError | None) -> str:
    if err is None:
        return ""
    return "your token may not read this" if err.forbidden else err.message


@router.get("/tunnels")
async def tunnels(p: Page = Depends(page)) -> Response:
    settings, e1 = await p.api.get_or_none("/api/v1/tunnels", limit=1000)
    sessions, e2 = await p.api.get_or_none("/api/v1/tunnels/sessions")
    proxies, e3 = await p.api.get_or_none("/api/v1/tunnels/proxies")
    return p.render(
        "tunnels.html",
        settings=_items(settings),
        sessions=_items(sessions),
        proxies=_items(proxies),
        error=_why(e1 or e2 or e3),
        title="Tunnels",
    )


@router.get("/registry")
async def registry(p: Page = Depends(page)) -> Response:
    services, e1 = await p.api.get_or_none("/api/v1/services", limit=1000)
    events, e2 = await p.api.get_or_none("/api/v1/events", limit=50)
    sources, _ = await p.api.get_or_none("/api/v1/registries/status")
    return p.render(
        "registry.html",
        services=_items(services),
        events=list(reversed(_items(events))),
        sources=_items(sources),
        error=_why(e1 or e2),
        title="Registry",
    )


@router.get("/registry/{name}")
async def service(name: str, p: Page = Depends(page)) -> Response:
    svc, err = await p.api.get_or_none(f"/api/v1/services/{quote(name, safe='')}")
    if err is not None:
        return p.render("message.html", err.status, title=f"Service {name}", message=_why(err))
    instances, _ = await p.api.get_or_none(f"/api/v1/services/{quote(name, safe='')}/instances")
    rows = list((instances or {}).get("instances", []))
    health: dict[str, Any] = {}
    for inst in rows[:MAX_HEALTH_LOOKUPS]:
        h, _ = await p.api.get_or_none(f"/api/v1/services/{quote(name)}/instances/{quote(inst['id'], safe='')}/health")
        if h is not None:
            health[inst["id"]] = h
    events, _ = await p.api.get_or_none("/api/v1/events", service=name, limit=50)
    return p.render(
        "service.html",
        svc=svc,
        instances=rows,
        health=health,
        events=list(reversed(_items(events))),
        title=f"Service {name}",
    )
