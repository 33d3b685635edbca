"""Who may call what under `/api/v1`: one place for authentication (401) and roles (403).

Every request to a path under `/api/v1` needs `Authorization: Bearer <token>`, the
bootstrap admin token (controlplane.auth) or an API token (controlplane.api_tokens).
`/healthz`, `/metrics`, `/docs`, `/redoc` and `/openapi.json` stay open: they carry no
config (the OpenAPI document describes the API, not its data).

Two layers, so that no route can be forgotten:

- `AccessGuard`, the outermost ASGI middleware, authenticates every `/api/v1` request
  before routing (a path with no route answers 401 to a caller without a token, 404 only
  to one with a token) and keeps the principal in the ASGI scope.
- `authorize`, a dependency of the whole FastAPI application (every route of every
  router gets it), decides from the matched route's path template, the method and the
  path parameters which role the request needs (`need_for`), and answers 403 naming it.

The heartbeat fast path (controlplane.api.heartbeats), which answers before FastAPI
routes, asks `need_for` the same question. `require_admin` (controlplane.api.state) stays
for routes that want the admin role stated at the route as well.

The rules (`need_for`):

- `GET` of anything: `read` (a `registry` token may GET its own services' paths,
  `/api/v1/services/{name}...`); `/api/v1/tokens` and `/api/v1/nodes/join-tokens` are
  admin only, GET included (`ADMIN_ONLY`).
- `POST /api/v1/apply?dry_run=true` (`fluxctl apply --diff`) commits nothing: `read`.
- `POST /api/v1/auth/token/verify` (whether a JWT would be taken) commits nothing: `read`.
- register, heartbeat, patch, deregister an instance: `registry` for that service.
- everything else: `admin`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from controlplane.api_tokens import BOOTSTRAP_ADMIN, Principal, TokenRefused

if TYPE_CHECKING:
    from controlplane.api.state import ControlPlane

API_PREFIX = "/api/v1"
SCOPE_KEY = "flux.principal"
"""Where AccessGuard keeps the authenticated principal in the ASGI scope."""

SERVICE_PATH = "/api/v1/services/{name}"
HEARTBEAT_PATH = "/api/v1/services/{name}/instances/{iid}/heartbeat"
INSTANCE_WRITES = frozenset(
    {
        ("POST", "/api/v1/services/{name}/instances"),
        ("PATCH", "/api/v1/services/{name}/instances/{iid}"),
        ("DELETE", "/api/v1/services/{name}/instances/{iid}"),
        ("PUT", HEARTBEAT_PATH),
    }
)
VERIFY_PATH = "/api/v1/auth/token/verify"
ADMIN_ONLY = ("/api/v1/tokens", "/api/v1/nodes/join-tokens")
"""Route templates (prefixes) that only the admin may call, GET included."""
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})


def guarded(path: str) -> bool:
    """Whether `path` is under /api/v1 (and so needs a token)."""
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


class Refusal(Exception):
    """A 401: no token, or one that is wrong, unknown, revoked or expired."""

    def __init__(self, message: str, challenge: str = "Bearer") -> None:
        super().__init__(message)
        self.message = message
        self.challenge = challenge

    def http(self) -> HTTPException:
        return HTTPException(401, self.message, headers={"WWW-Authenticate": self.challenge})


_INVALID = 'Bearer error="invalid_token"'


def _presented(authorization: str) -> str:
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Refusal("missing token: send 'Authorization: Bearer <token>' (the admin token or an API token)")
    return presented.strip()


def _bootstrap_or_cached(cp: ControlPlane, presented: str) -> Principal | None:
    """The principal when no database read is needed, else None; raises Refusal."""
    if cp.token.matches(presented):
        return BOOTSTRAP_ADMIN
    if cp.api_tokens is None or not cp.api_tokens.looks_like(presented):
        raise Refusal("wrong admin token", _INVALID)
    try:
        return cp.api_tokens.cached(presented)
    except TokenRefused as exc:
        raise Refusal(str(exc), _INVALID) from None


def _check(cp: ControlPlane, presented: str) -> Principal:
    assert cp.api_tokens is not None
    try:
        return cp.api_tokens.check(presented)
    except TokenRefused as exc:
        raise Refusal(str(exc), _INVALID) from None


def authenticate_now(cp: ControlPlane, authorization: str) -> Principal:
    """The caller of a request with this Authorization header; may read the database."""
    presented = _presented(authorization)
    return _bootstrap_or_cached(cp, presented) or _check(cp, presented)


async def authenticate(cp: ControlPlane, authorization: str) -> Principal:
    """`authenticate_now` for the event loop: a database read, if any, runs in a thread."""
    presented = _presented(authorization)
    found = _bootstrap_or_cached(cp, presented)
    if found is not None:
        return found
    return await run_in_threadpool(_check, cp, presented)


def _authorization(scope: Mapping[str, Any]) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return bytes(value).decode("latin-1")
    return ""


async def scope_principal(scope: dict[str, Any], cp: ControlPlane) -> Principal:
    """The principal AccessGuard found, or found now (and kept in the scope)."""
    principal = scope.get(SCOPE_KEY)
    if principal is None:
        principal = await authenticate(cp, _authorization(scope))
        scope[SCOPE_KEY] = principal
    return principal  # type: ignore[no-any-return]


def principal_now(request: Request, cp: ControlPlane) -> Principal:
    """Sync form of `scope_principal`, for sync dependencies (run in a worker thread)."""
    principal = request.scope.get(SCOPE_KEY)
    if principal is None:
        try:
            principal = authenticate_now(cp, request.headers.get("authorization", ""))
        except Refusal as exc:
            raise exc.http() from None
        request.scope[SCOPE_KEY] = principal
    return principal  # type: ignore[no-any-return]


# -- roles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """What a request needs: a role, and for registry work the service it touches."""

    role: str  # "read", "registry" or "admin"
    service: str = ""

    def allows(self, p: Principal) -> bool:
        if p.role == "admin":
            return True
        if p.role == "registry":
            return self.role in ("read", "registry") and bool(self.service) and self.service in p.services
        return p.role == "read" and self.role == "read"

    def refusal(self, p: Principal) -> str:
        if self.role == "admin":
            wanted = "the admin role"
        elif self.role == "registry":
            wanted = f"the admin role, or the registry role for service {self.service!r}"
        elif self.service:
            wanted = f"the read or admin role, or the registry role for service {self.service!r}"
        else:
            wanted = "the read or admin role"
        extra = f" (limited to services {', '.join(sorted(p.services))})" if p.role == "registry" else ""
        return f"this needs {wanted}; {p.label()} has not{extra}"


def need_for(method: str, route_path: str, params: Mapping[str, Any], query: Mapping[str, str]) -> Need:
    """The role a request needs: `route_path` is the matched route's template
    ("/api/v1/services/{name}/instances"), `params` its path parameters."""
    if route_path.startswith(ADMIN_ONLY):
        return Need("admin")
    service = str(params.get("name", "")) if route_path.startswith(SERVICE_PATH) else ""
    if (method, route_path) in INSTANCE_WRITES:
        return Need("registry", service)
    if method in ("GET", "HEAD"):
        return Need("read", service)
    if method == "POST" and route_path == "/api/v1/apply" and query.get("dry_run", "").lower() in _TRUE:
        return Need("read")
    if method == "POST" and route_path == VERIFY_PATH:
        return Need("read")
    return Need("admin")


def check_need(need: Need, principal: Principal) -> None:
    if not need.allows(principal):
        raise HTTPException(403, need.refusal(principal))


_BEARER = HTTPBearer(auto_error=False, description="the admin token, or an API token (`POST /api/v1/tokens`)")


async def authorize(
    request: Request,
    _credentials: HTTPAuthorizationCredentials | None = Security(_BEARER),  # the OpenAPI document's "Authorize"
) -> Principal | None:
    """The dependency of every route: 401 without a valid token, 403 without the role."""
    if not guarded(request.scope["path"]):
        return None  # /healthz, /metrics
    cp: ControlPlane = request.app.state.flux
    try:
        principal = await scope_principal(request.scope, cp)
    except Refusal as exc:
        raise exc.http() from None
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    check_need(need_for(request.method, template, request.path_params, request.query_params), principal)
    return principal


def author_of(request: Request, principal: Principal) -> str:
    """Who made a write, for the config history: X-Flux-Author (if sent), the token and the client."""
    author = request.headers.get("x-flux-author", "").strip()[:100]
    client = request.client.host if request.client else "?"
    if principal.bootstrap:
        return f"{author or 'admin'}@{client}"
    return f"{author}@{client} via token {principal.name}" if author else f"token {principal.name}@{client}"


async def principal_of(request: Request) -> Principal:
    """The caller of this request (as AccessGuard found it); 401 without a valid token."""
    try:
        return await scope_principal(request.scope, request.app.state.flux)
    except Refusal as exc:
        raise exc.http() from None


async def author(request: Request) -> str:
    """Dependency: who makes this write (its role was checked by `authorize`)."""
    return author_of(request, await principal_of(request))


# -- the middleware ------------------------------------------------------------------------


async def _answer_401(send: Any, refusal: Refusal) -> None:
    body = json.dumps({"error": "unauthorized", "message": refusal.message}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", refusal.challenge.encode()),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AccessGuard:
    """ASGI middleware: every /api/v1 request carries a valid token, or answers 401 here."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or not guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        cp = scope["app"].state.flux
        try:
            await scope_principal(scope, cp)
        except Refusal as refusal:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _answer_401(send, refusal)
            return
        await self.app(scope, receive, send)
