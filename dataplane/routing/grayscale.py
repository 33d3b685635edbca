"""Grayscale release: which instance version of a route's cluster a request goes to.

Sans-IO and clock-free. A `GrayscalePlan` is compiled from the route's
`grayscale` config: rules are checked in order (all of a rule's header,
cookie and consumer-group conditions must hold) and the first match decides;
otherwise the version comes from the weights, either sticky per client (a
cookie remembering the version, or a stable hash of the client IP or a
header) or drawn afresh for each request. Weights of 0 keep a version out of
the draw (rules can still send traffic to it).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

from dataplane.balancing import stable_hash64


@dataclass(frozen=True, slots=True)
class GrayRule:
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value)
    cookies: tuple[tuple[str, str], ...]
    consumer_group: str
    version: str


@dataclass(frozen=True, slots=True)
class Choice:
    version: str
    set_cookie: str | None = None  # a Set-Cookie value to send (sticky cookie, first visit)


Lookup = Callable[[str], str | None]


class GrayscalePlan:
    __slots__ = ("cumulative", "rules", "sticky_cookie", "sticky_hash", "sticky_ttl_ms", "total", "versions")

    def __init__(
        self,
        versions: dict[str, int],
        rules: list[GrayRule] | tuple[GrayRule, ...] = (),
        *,
        sticky_cookie: str = "",
        sticky_ttl_ms: int = 0,
        sticky_hash: str = "",
    ) -> None:
        drawn = sorted((v, w) for v, w in versions.items() if w > 0)
        self.versions = tuple(v for v, _ in drawn)
        self.cumulative = tuple(accumulate(w for _, w in drawn))
        self.total = self.cumulative[-1] if self.cumulative else 0
        self.rules = tuple(rules)
        self.sticky_cookie = sticky_cookie
        self.sticky_ttl_ms = sticky_ttl_ms
        self.sticky_hash = sticky_hash

    def _weighted(self, point: int) -> str:
        return self.versions[bisect_right(self.cumulative, point % self.total)]

    def choose(
        self,
        header: Lookup,
        cookie: Lookup,
        groups: frozenset[str],
        client_ip: str,
        rng: Callable[[int], int] = random.randrange,
    ) -> Choice | None:
        """The version for a request, or None to use every instance of the cluster."""
        for rule in self.rules:
            if rule.consumer_group and rule.consumer_group not in groups:
                continue
            if any(header(name) != value for name, value in rule.headers):
                continue
            if any(cookie(name) != value for name, value in rule.cookies):
                continue
            return Choice(rule.version)
        if not self.total:
            return None
        if self.sticky_cookie:
            kept = cookie(self.sticky_cookie)
            if kept and kept in self.versions:
                return Choice(kept)
            version = self._weighted(rng(self.total))
            return Choice(version, self._cookie(version))
        if self.sticky_hash:
            key = client_ip if self.sticky_hash == "ip" else header(self.sticky_hash.partition(":")[2].lower())
            if key:
                return Choice(self._weighted(stable_hash64(key)))
        return Choice(self._weighted(rng(self.total)))

    def _cookie(self, version: str) -> str:
        parts = [f"{self.sticky_cookie}={version}", "Path=/", "HttpOnly", "SameSite=Lax"]
        if self.sticky_ttl_ms:
            parts.insert(2, f"Max-Age={max(1, self.sticky_ttl_ms // 1000)}")
        return "; ".join(parts)
