"""Authentication policies: jwt, oauth2 (token introspection), api_key, basic_auth.

Each sets `ctx.consumer` on success and passes `X-Consumer-Name` (and `X-Consumer-Groups`)
upstream; failures answer 401 with a `WWW-Authenticate` challenge, a missing scope 403.
"""

from dataplane.policies.auth.jwt_policy import JwtPolicy
from dataplane.policies.auth.keys import ApiKeyPolicy, BasicAuthPolicy
from dataplane.policies.auth.oauth2 import OAuth2Policy

__all__ = ["ApiKeyPolicy", "BasicAuthPolicy", "JwtPolicy", "OAuth2Policy"]
