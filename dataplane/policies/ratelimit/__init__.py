"""Rate limiting: local (per worker) or shared through Redis; see `algorithms` for the exact semantics."""

from dataplane.policies.ratelimit.policy import RateLimitPolicy

__all__ = ["RateLimitPolicy"]
