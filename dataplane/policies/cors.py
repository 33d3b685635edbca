"""CORS: answer preflights at the node and label actual cross-origin responses.

Allowed origins are exact (`https://app.example.com`), wildcard subdomains
(`https://*.example.com`), regexes (`~^https://.*\\.example\\.org$`) or `*`.
A preflight (OPTIONS with Origin and Access-Control-Request-Method) never
reaches the upstream: allowed ones get 204 with the Access-Control-* headers,
others 403. Actual requests from an allowed origin get Access-Control-Allow-Origin
(plus credentials and exposed headers); requests from other origins pass
unlabelled (the browser then blocks them: CORS is not authentication).
`Vary: Origin` is set whenever the answer depends on the origin.
"""

from __future__ import annotations

import re

from dataplane.policies.base import LocalResponse, Policy, PolicyEnv, PolicyResult, RequestContext
from fluxcommon.policy_config import CorsConfig


class CorsPolicy(Policy):
    type = "cors"

    def __init__(self, name: str, config: CorsConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.any_origin = "*" in config.allow_origins
        self.exact = frozenset(
            o.rstrip("/").lower() for o in config.allow_origins if "*" not in o and not o.startswith("~")
        )
        self.wildcards = tuple(
            (o.split("*.", 1)[0].lower(), "." + o.split("*.", 1)[1].rstrip("/").lower())
            for o in config.allow_origins
            if "*." in o and not o.startswith("~")
        )
        self.regexes = tuple(re.compile(o[1:]) for o in config.allow_origins if o.startswith("~"))
        self.methods = ", ".join(m.upper() for m in config.allow_methods)
        self.method_set = frozenset(m.upper() for m in config.allow_methods)
        self.headers = ", ".join(config.allow_headers)
        self.expose = ", ".join(config.expose_headers)
        self.credentials = config.allow_credentials
        self.max_age = str(config.max_age // 1000) if config.max_age else ""
        self.preflights = 0
        self.denied = 0

    def origin_allowed(self, origin: str) -> bool:
        low = origin.rstrip("/").lower()
        if self.any_origin or low in self.exact:
            return True
        for scheme, suffix in self.wildcards:
            if low.startswith(scheme) and low.endswith(suffix) and len(low) > len(scheme) + len(suffix):
                return True
        return any(r.fullmatch(origin) for r in self.regexes)

    def _allow_origin(self, origin: str) -> str:
        # "*" cannot be combined with credentials: echo the origin then.
        return "*" if self.any_origin and not self.credentials else origin

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        origin = ctx.header("origin")
        if origin is None:
            return None
        allowed = self.origin_allowed(origin)
        if ctx.head.method == "OPTIONS":
            wanted = ctx.header("access-control-request-method")
            if wanted is not None:
                return self._preflight(ctx, origin, allowed, wanted)
        if allowed:
            ctx.add_response_header("Access-Control-Allow-Origin", self._allow_origin(origin))
            if self.credentials:
                ctx.add_response_header("Access-Control-Allow-Credentials", "true")
            if self.expose:
                ctx.add_response_header("Access-Control-Expose-Headers", self.expose)
        if not (self.any_origin and not self.credentials):
            ctx.add_response_header("Vary", "Origin")
        return None

    def _preflight(self, ctx: RequestContext, origin: str, allowed: bool, wanted: str) -> LocalResponse:
        vary = (b"Vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        if not allowed or wanted.upper() not in self.method_set:
            self.denied += 1
            what = f"origin {origin!r}" if not allowed else f"method {wanted!r}"
            return LocalResponse.error(403, "cors_denied", f"CORS preflight refused: {what} is not allowed", [vary])
        self.preflights += 1
        headers = [
            (b"Access-Control-Allow-Origin", self._allow_origin(origin).encode("latin-1")),
            (b"Access-Control-Allow-Methods", self.methods.encode()),
            vary,
        ]
        requested = self.headers or (ctx.header("access-control-request-headers") or "")
        if requested:
            headers.append((b"Access-Control-Allow-Headers", requested.encode("latin-1")))
        if self.credentials:
            headers.append((b"Access-Control-Allow-Credentials", b"true"))
        if self.max_age:
            headers.append((b"Access-Control-Max-Age", self.max_age.encode()))
        return LocalResponse(204, b"", headers, reason="cors_preflight", content_type=b"")
