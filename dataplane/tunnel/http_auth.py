"""`httpUser`/`httpPassword` of an http tunnel proxy: Basic auth against one fixed user.

An internal policy type (`tunnel_http_auth`): the node adds it to the routes it makes for
http tunnels; the control plane does not accept it in `policies`.
"""

from __future__ import annotations

import hmac

from pydantic import BaseModel, ConfigDict

from dataplane.policies.auth.common import unauthorized
from dataplane.policies.auth.keys import _decode
from dataplane.policies.base import Policy, PolicyEnv, PolicyResult, RequestContext

TYPE = "tunnel_http_auth"


class TunnelHttpAuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str
    password: str
    realm: str = "flux-tunnel"


class TunnelHttpAuthPolicy(Policy):
    type = TYPE

    def __init__(self, name: str, config: TunnelHttpAuthConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.username = config.username.encode()
        self.password = config.password.encode()
        self.realm = config.realm

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        value = ctx.header("authorization")
        scheme, _, encoded = (value or "").strip().partition(" ")
        creds = _decode(encoded.strip()) if scheme.lower() == "basic" else None
        if creds is not None:
            user_ok = hmac.compare_digest(creds[0].encode(), self.username)
            pass_ok = hmac.compare_digest(creds[1].encode(), self.password)
            if user_ok and pass_ok:
                return None
        return unauthorized("Basic", "missing or wrong credentials", realm=self.realm)
