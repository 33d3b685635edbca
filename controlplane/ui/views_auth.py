"""Login and logout: an API token in, an HttpOnly SameSite=Strict session cookie out.

The token is checked by the same code the API uses for every request
(controlplane.api.access.authenticate): the bootstrap admin token or any API token, of any
role. A wrong one shows the login form again with the error (status 200, as every form the
console shows again with errors: a browser logs a 4xx page load as a console error).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from controlplane.api.access import Refusal, authenticate
from controlplane.ui.sessions import COOKIE, COOKIE_PATH, same_origin
from controlplane.ui.web import Page, origin_of, page, read_form, redirect, render, store

router = APIRouter(prefix="/ui", include_in_schema=False)

REASONS = {
    "expired": "Your session ended: log in again.",
    "refused": "The API refused your token (revoked or expired): log in with a valid one.",
    "logout": "Logged out.",
}


def _safe_next(target: str) -> str:
    """Only a console path: never another host (`//evil`, `/\\evil`, `https://...`)."""
    if target.startswith("/ui/") and not target.startswith(("//", "/\\")) and "\\" not in target:
        return target
    return "/ui/"


@router.get("/login")
async def login_form(next: str = "/ui/", reason: str = "") -> Response:
    notice = REASONS.get(reason, "")
    return render("login.html", next=_safe_next(next), error="", notice=notice)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    target = _safe_next(form.get("next", "/ui/"))
    if not same_origin(request.headers.get("origin", ""), origin_of(request)):
        return render("login.html", 403, next=target, error="Cross-origin login refused.", notice="")
    token = form.get("token", "").strip()
    if not token:
        return render("login.html", next=target, error="Enter an API token.", notice="")
    try:
        principal = await authenticate(request.app.state.flux, f"Bearer {token}")
    except Refusal:
        return render("login.html", next=target, error="Wrong token: the API does not know it.", notice="")
    session_id, _ = await run_in_threadpool(store(request).create, token, principal, time.time())
    response = redirect(target)
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=COOKIE_PATH,
    )
    return response


@router.post("/logout")
async def logout(p: Page = Depends(page)) -> Response:
    await p.form()
    await run_in_threadpool(store(p.request).end, p.request.cookies.get(COOKIE, ""))
    response = redirect("/ui/login?reason=logout")
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response
