"""`routeByHTTPUser` of http tunnel proxies: one domain and location, a proxy per basic-auth user.

An internal policy type (`tunnel_http_route`): for a (domain, location) where agents' proxies
set `routeByHTTPUser`, the node makes one gateway route with this policy, and a cluster per
proxy (see `vhost.py`). Per request, the user of `Authorization: Basic` picks its own proxy,
else the proxy without `routeByHTTPUser` (every other user), as frp does. The chosen proxy's
`httpUser`/`httpPassword` must then match (a wrong password reaches no proxy: 401), and its
`hostHeaderRewrite`, `requestHeaders.set` and `responseHeaders.set` apply. No proxy for the
user (and none for everyone): 401 with a challenge, so a browser asks for credentials.

The request moves to the chosen proxy's cluster through `ctx.vars["cluster"]`, which the HTTP
proxy honours after the policy chain (as for a circuit breaker's fallback cluster).
"""

from __future__ import annotations

import hmac

from pydantic import BaseModel, ConfigDict

from dataplane.policies.auth.common import unauthorized
from dataplane.policies.auth.keys import _decode
from dataplane.policies.base import Policy, PolicyEnv, PolicyResult, RequestContext

TYPE = "tunnel_http_route"


class UserRoute(BaseModel):
    """One proxy of the (domain, location): the user it is for ("" = everyone else), its cluster."""

    model_config = ConfigDict(extra="forbid")
    user: str = ""
    cluster: str
    username: str = ""  # httpUser / httpPassword ("" = no password asked)
    password: str = ""
    host: str = ""  # hostHeaderRewrite
    request_headers: dict[str, str] = {}
    response_headers: dict[str, str] = {}


class TunnelHttpRouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: list[UserRoute]
    realm: str = "flux-tunnel"


class TunnelHttpRoutePolicy(Policy):
    type = TYPE

    def __init__(self, name: str, config: TunnelHttpRouteConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.routes = {r.user: r for r in config.routes}
        self.realm = config.realm

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        value = ctx.header("authorization")
        scheme, _, encoded = (value or "").strip().partition(" ")
        creds = _decode(encoded.strip()) if scheme.lower() == "basic" else None
        user, password = creds if creds is not None else ("", "")
        route = self.routes.get(user) if user else None
        if route is None:
            route = self.routes.get("")
        if route is None:
            return unauthorized("Basic", "no tunnel proxy serves this user here", realm=self.realm)
        if route.username:
            user_ok = hmac.compare_digest(user.encode(), route.username.encode())
            if not (hmac.compare_digest(password.encode(), route.password.encode()) and user_ok):
                return unauthorized("Basic", "missing or wrong credentials", realm=self.realm)
        ctx.vars["cluster"] = route.cluster
        if route.host:
            ctx.host = route.host.encode("idna")
        for name, v in route.request_headers.items():
            ctx.set_upstream_header(name, v)
        for name, v in route.response_headers.items():
            ctx.response_remove.add(name.lower().encode("latin-1"))
            ctx.add_response_header(name, v)
        return None
