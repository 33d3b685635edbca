"""The dashboard (`/ui/`) and its live part (`/ui/live`, an HTML fragment that console.js
fetches every few seconds and swaps in, so the page refreshes without reloading)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse, Response

from controlplane.ui.dashboard import RateMeter, gather
from controlplane.ui.web import Page, page, render

router = APIRouter(prefix="/ui", include_in_schema=False)
REFRESH_MS = 2000
_meter = RateMeter()


@router.get("")
async def root() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/")
async def dashboard(p: Page = Depends(page)) -> Response:
    d = await gather(p.api, _meter)
    return p.render("dashboard.html", d=d, refresh_ms=REFRESH_MS, title="Dashboard")


@router.get("/live")
async def live(p: Page = Depends(page)) -> Response:
    d = await gather(p.api, _meter)
    return render("_dashboard_live.html", d=d, can_write=p.session.can_write)
