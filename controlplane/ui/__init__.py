"""The web console at `/ui/`: server-rendered pages on the control plane's own origin.

Design: Jinja2 templates rendered by FastAPI routes, one small script (`static/console.js`:
live refresh of the dashboard, confirmation prompts are pages, not scripts) and one style
sheet; no framework, no build step, no asset from outside (a strict Content-Security-Policy
says so to the browser). Every page reads and writes through the REST API in process
(`apiclient`), as the token the operator logged in with (`sessions`, `views_auth`), so the
console can do what that token may and nothing more, with the API's validation and masking.

    web.py              session lookup, forms with CSRF checks, rendering, security headers
    sessions.py         server-side sessions behind an HttpOnly SameSite=Strict cookie
    apiclient.py        the in-process REST client
    forms.py, kinds.py  forms made from the spec models; what each kind's pages show
    diffs.py            YAML line diffs (dry run, history)
    dashboard.py        the dashboard's data
    views_*.py          the pages; docs.py: /docs with the vendored Swagger UI

`install(app)` adds all of it to the FastAPI application (controlplane.api.app).
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from controlplane.ui import docs, views_auth, views_config, views_dashboard, views_live, views_resources
from controlplane.ui.apiclient import ApiError, TokenRefused
from controlplane.ui.sessions import COOKIE, COOKIE_PATH, CsrfRefused
from controlplane.ui.web import HERE, LoginRequired, message_page, store

__all__ = ["install"]

LIVE_HEADER = "x-console-live"
"""Sent by console.js on its background fetches: they get a 401, not a login page."""


def _to_login(request: Request, next_path: str, reason: str) -> Response:
    if request.headers.get(LIVE_HEADER):
        return JSONResponse({"error": "unauthorized", "login": "/ui/login"}, status_code=401)
    query = urlencode({"next": next_path, **({"reason": reason} if reason else {})})
    response = RedirectResponse(f"/ui/login?{query}", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


def install(app: FastAPI) -> None:
    """Serve the console under /ui/ and the API docs at /docs, both with local assets only."""
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for module in (views_auth, views_dashboard, views_resources, views_config, views_live, docs):
        app.include_router(module.router)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        reason = "expired" if request.cookies.get(COOKIE) else ""
        return _to_login(request, exc.next_path, reason)

    @app.exception_handler(TokenRefused)
    async def _refused(request: Request, _exc: TokenRefused) -> Response:
        await run_in_threadpool(store(request).end, request.cookies.get(COOKIE, ""))
        return _to_login(request, "/ui/", "refused")

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        return await message_page(request, 403, "Write refused", str(exc))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        """A read the API refused where the page has no better place to say so."""
        why = f"Your token may not see this: {exc.message}" if exc.forbidden else exc.message
        return await message_page(request, exc.status, "Not available", why)
