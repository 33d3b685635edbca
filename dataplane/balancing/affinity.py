"""Cookie session persistence: map an affinity cookie to an endpoint and build Set-Cookie.

Owns the opaque endpoint id carried in the cookie (`affinity_id`), the per-cluster lookup
(`AffinityIndex`) and the `Set-Cookie` value (`set_cookie_header`). The id is a short hash
of the endpoint's "address:port" key, so it is stable across processes and config pushes
and reveals nothing about the upstream address.

Must not: import trio, grpc, socket or any I/O library, or read the clock. It never picks
an endpoint itself: when `find` returns None the caller asks the balancer and resets the
cookie.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from hashlib import blake2b

from dataplane.balancing.endpoint import EndpointState

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_PATH = re.compile(r"[;\x00-\x1f\x7f]")


def affinity_id(ep: EndpointState) -> str:
    """16 hex characters identifying `ep` in an affinity cookie."""
    return blake2b(ep.key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class AffinityIndex:
    """Affinity ids of one cluster's endpoints; rebuild it when the endpoint list changes."""

    __slots__ = ("_by_id", "ids")

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        self._by_id: dict[str, EndpointState] = {}
        self.ids: dict[str, str] = {}  # endpoint key -> affinity id
        for ep in endpoints:
            aid = affinity_id(ep)
            self._by_id[aid] = ep
            self.ids[ep.key] = aid

    def find(self, cookie_value: str) -> EndpointState | None:
        """The endpoint named by the cookie if it exists and is available, else None."""
        ep = self._by_id.get(cookie_value.strip())
        if ep is None or not ep.available:
            return None
        return ep

    def set_cookie_header(self, name: str, ep: EndpointState, ttl_ms: int = 0, path: str = "/") -> str:
        """Same as the module-level `set_cookie_header`."""
        return set_cookie_header(name, ep, ttl_ms, path)

    def __len__(self) -> int:
        return len(self._by_id)


def set_cookie_header(name: str, ep: EndpointState, ttl_ms: int = 0, path: str = "/") -> str:
    """The `Set-Cookie` value pinning a client to `ep`.

    HttpOnly and SameSite=Lax always; Max-Age (whole seconds, rounded up) only when
    `ttl_ms` > 0, otherwise a session cookie. ValueError when `name` is not a cookie token or
    `path` contains ';' or control characters.
    """
    if not _TOKEN.match(name):
        raise ValueError(f"cookie name {name!r} is not a token")
    path = path or "/"
    if _BAD_PATH.search(path):
        raise ValueError(f"cookie path {path!r} must not contain ';' or control characters")
    parts = [f"{name}={affinity_id(ep)}", f"Path={path}"]
    if ttl_ms > 0:
        parts.append(f"Max-Age={math.ceil(ttl_ms / 1000)}")
    parts.append("HttpOnly")
    parts.append("SameSite=Lax")
    return "; ".join(parts)
