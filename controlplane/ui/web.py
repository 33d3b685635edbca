"""Plumbing shared by the console's pages: the logged-in session, the API client, forms, rendering.

`page(request)` (a FastAPI dependency) finds the session from the cookie and gives a `Page`
with the session and an `Api` acting as its token; without a live session it raises
`LoginRequired`, which `install` turns into a redirect to the login page. `Page.form()`
reads a POSTed form and checks its CSRF token and origin. `Page.render()` renders a template
with what every page shows (user, role, CSRF token, messages) and the security headers:
a strict Content-Security-Policy (nothing but this origin; no inline script), no framing,
no caching.
"""

from __future__ import annotations

import datetime as dt
import pathlib
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from controlplane.secretbox import SecretBox, SecretKey
from controlplane.ui.apiclient import AUTHOR, BOOTSTRAP_AUTHOR, Api
from controlplane.ui.kinds import UI_KINDS, cell
from controlplane.ui.sessions import COOKIE, Session, SessionStore, check_write

HERE = pathlib.Path(__file__).resolve().parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["cell"] = cell
templates.filters["urlpart"] = lambda v: quote(str(v), safe="")
templates.globals["ui_kinds"] = UI_KINDS


def ago(ts: Any, now: float | None = None) -> str:
    """ "12s ago" from unix seconds or an ISO time; "—" for nothing."""
    if ts in (None, "", 0):
        return "—"
    if isinstance(ts, str):
        try:
            ts = dt.datetime.fromisoformat(ts).timestamp()
        except ValueError:
            return ts
    seconds = max(0, int((now or time.time()) - float(ts)))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


templates.filters["ago"] = ago


class LoginRequired(Exception):
    """No live session (or its token was refused): go to the login page."""

    def __init__(self, next_path: str = "/ui/", message: str = "") -> None:
        super().__init__(message)
        self.next_path = next_path
        self.message = message


def store(request: Request) -> SessionStore:
    """The console's sessions, kept in the control plane's database (made on first use)."""
    sessions: SessionStore | None = getattr(request.app.state, "console_sessions", None)
    if sessions is None:
        config = request.app.state.flux.store
        box = config.secrets or SecretBox(SecretKey.generate())  # no secret key (a test's store): this process's
        sessions = request.app.state.console_sessions = SessionStore(config.engine, box)
    return sessions


def origin_of(request: Request) -> str:
    """This console's origin as the browser sees it (scheme and Host of the request)."""
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def client_of(request: Request) -> tuple[str, int]:
    return (request.client.host, request.client.port) if request.client else ("127.0.0.1", 0)


@dataclass
class Page:
    """One console request of a logged-in session."""

    request: Request
    session: Session
    api: Api

    async def form(self) -> dict[str, str]:
        """The POSTed form (url-encoded), after the CSRF and origin checks."""
        fields = await read_form(self.request)
        check_write(
            self.session, fields.get("csrf_token", ""), self.request.headers.get("origin", ""), origin_of(self.request)
        )
        return fields

    def flash(self, message: str, kind: str = "ok") -> None:
        """A message for the next page this browser sees (kept with the session)."""
        self.session.flashes.append((kind, message))
        store(self.request).save_flashes(self.session)

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        flashes, self.session.flashes = self.session.flashes, []
        if flashes:
            store(self.request).save_flashes(self.session)
        return render(
            template,
            status,
            session=self.session,
            csrf=self.session.csrf,
            can_write=self.session.can_write,
            flashes=flashes,
            path=self.request.url.path,
            **values,
        )


def render(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    values.setdefault("session", None)
    values.setdefault("flashes", [])
    values.setdefault("path", "")
    html = templates.get_template(template).render(**values)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


async def message_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    """An error page, with the menu when the request has a live session."""
    session = await run_in_threadpool(store(request).get, request.cookies.get(COOKIE, ""), time.time())
    if session is None:
        return render("message.html", status, title=title, message=message)
    author = BOOTSTRAP_AUTHOR if session.principal.bootstrap else AUTHOR
    p = Page(request, session, Api(request.app, session.token, client_of(request), author))
    return p.render("message.html", status, title=title, message=message)


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded body (read whatever the Content-Type says: the API's JsonByDefault
    middleware relabels forms as JSON; BodySizeLimit bounds it); the last value of a repeated
    name wins."""
    body = await request.body()
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def page(request: Request) -> Page:
    """Dependency of every page behind the login."""
    session = await run_in_threadpool(store(request).get, request.cookies.get(COOKIE, ""), time.time())
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target if request.method == "GET" else "/ui/")
    author = BOOTSTRAP_AUTHOR if session.principal.bootstrap else AUTHOR
    return Page(request, session, Api(request.app, session.token, client_of(request), author))
