"""Sans-IO load balancers: pick one available endpoint of a cluster per request.

Owns the five algorithms a cluster may name in `lb` (round_robin, weighted_round_robin,
least_conn, consistent_hash, ip_hash) and `make_balancer`. A balancer is built once per
endpoint list (rebuild it when endpoints are added or removed); availability, weight and
in-flight changes are read live from the `EndpointState` objects, so they need no rebuild.

Must not: import trio, grpc, socket or any I/O library, read the clock, or compute
availability itself (it reads `EndpointState.available` only). `pick` runs per request:
keep it cheap, never return an unavailable endpoint, return None when none is available.
Hashes must be stable across processes, so never Python's `hash()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Sequence
from hashlib import blake2b
from typing import ClassVar

from dataplane.balancing.endpoint import EndpointState

_MASK64 = (1 << 64) - 1


def stable_hash64(text: str) -> int:
    """A 64-bit hash of `text` that is the same in every process and on every host."""
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class Balancer(ABC):
    """Picks an endpoint among `endpoints`; `key` is the hash key of hash balancers."""

    __slots__ = ("endpoints",)

    name: ClassVar[str]
    endpoints: tuple[EndpointState, ...]

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        self.endpoints = tuple(endpoints)

    @abstractmethod
    def pick(self, key: str | None = None) -> EndpointState | None:
        """An available endpoint, or None when no endpoint is available."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.endpoints)} endpoints)"


class RoundRobin(Balancer):
    """Cycles through the endpoints in order, skipping unavailable ones."""

    __slots__ = ("_next",)
    name = "round_robin"

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        super().__init__(endpoints)
        self._next = 0

    def pick(self, key: str | None = None) -> EndpointState | None:
        eps = self.endpoints
        n = len(eps)
        i = self._next
        for _ in range(n):
            if i >= n:
                i = 0
            ep = eps[i]
            i += 1
            if ep.available:
                self._next = i
                return ep
        return None


class WeightedRoundRobin(Balancer):
    """nginx's smooth weighted round robin over the available endpoints.

    Each pick adds every available endpoint's weight to its current weight, picks the
    largest and subtracts the total from it: over sum(weights) picks each endpoint is
    picked exactly `weight` times, interleaved rather than in bursts.
    """

    __slots__ = ("_current",)
    name = "weighted_round_robin"

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        super().__init__(endpoints)
        self._current = [0] * len(self.endpoints)

    def pick(self, key: str | None = None) -> EndpointState | None:
        current = self._current
        total = 0
        best = -1
        best_cw = 0
        for i, ep in enumerate(self.endpoints):
            if not ep.available:
                continue
            w = ep.weight
            cw = current[i] + w
            current[i] = cw
            total += w
            if best < 0 or cw > best_cw:
                best = i
                best_cw = cw
        if best < 0:
            return None
        current[best] = best_cw - total
        return self.endpoints[best]


class LeastConn(Balancer):
    """The available endpoint with the least `active / weight`; ties rotate."""

    __slots__ = ("_next",)
    name = "least_conn"

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        super().__init__(endpoints)
        self._next = 0

    def pick(self, key: str | None = None) -> EndpointState | None:
        eps = self.endpoints
        n = len(eps)
        start = self._next
        best: EndpointState | None = None
        best_i = 0
        best_active = 0
        best_weight = 1
        for step in range(n):
            i = start + step
            if i >= n:
                i -= n
            ep = eps[i]
            if not ep.available:
                continue
            # active / weight < best_active / best_weight, without floats
            if best is None or ep.active * best_weight < best_active * ep.weight:
                best = ep
                best_i = i
                best_active = ep.active
                best_weight = ep.weight
        if best is not None:
            self._next = best_i + 1 if best_i + 1 < n else 0
        return best


class ConsistentHash(Balancer):
    """A ketama-style hash ring; a key without an available owner walks to the next one.

    Each endpoint gets about `VNODES * weight / mean_weight` points (at least one), labelled
    by its "address:port" key, so the ring does not depend on the order of the endpoints
    and, with equal weights, adding or removing one of N endpoints remaps about 1/N of the
    keys (removing one moves only the keys it owned). A key of None (the header, cookie...
    the key comes from is missing) falls back to smooth weighted round robin, so weights
    still hold.
    """

    __slots__ = ("_fallback", "_owners", "_points")
    name = "consistent_hash"

    VNODES: ClassVar[int] = 160

    def __init__(self, endpoints: Sequence[EndpointState], weights: Sequence[int] | None = None) -> None:
        super().__init__(endpoints)
        self._fallback = WeightedRoundRobin(self.endpoints)
        ring: list[tuple[int, str, EndpointState]] = []
        if self.endpoints:
            # `weights`: the weights a new snapshot brings, which the endpoints take only on commit
            ws = list(weights) if weights is not None else [ep.weight for ep in self.endpoints]
            mean = sum(ws) / len(ws)
            for ep, weight in zip(self.endpoints, ws, strict=True):
                count = max(1, round(self.VNODES * weight / mean))
                for label in range((count + 3) // 4):
                    digest = blake2b(f"{ep.key}-{label}".encode("utf-8", "surrogatepass"), digest_size=32).digest()
                    for part in range(min(4, count - label * 4)):
                        point = int.from_bytes(digest[part * 8 : part * 8 + 8], "big")
                        ring.append((point, ep.key, ep))
        ring.sort(key=lambda item: (item[0], item[1]))
        self._points = [point for point, _, _ in ring]
        self._owners = [ep for _, _, ep in ring]

    def pick(self, key: str | None = None) -> EndpointState | None:
        if key is None:
            return self._fallback.pick()
        points = self._points
        m = len(points)
        if m == 0:
            return None
        i = bisect_right(points, stable_hash64(key))
        if i == m:
            i = 0
        owners = self._owners
        ep = owners[i]
        if ep.available:
            return ep
        if not any(e.available for e in self.endpoints):
            return None
        while True:  # terminates: some owner on the ring is available
            i += 1
            if i == m:
                i = 0
            ep = owners[i]
            if ep.available:
                return ep


class IpHash(Balancer):
    """Stable hash of the key modulo the endpoint count, rehashing past unavailable ones.

    The same key maps to the same endpoint while it is available; when it is not, a
    deterministic rehash sequence (then a linear scan) spreads its keys over the others,
    and they come back once it is available again. A key of None falls back to round robin.
    """

    __slots__ = ("_fallback",)
    name = "ip_hash"

    REHASH_TRIES: ClassVar[int] = 20

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        super().__init__(endpoints)
        self._fallback = RoundRobin(self.endpoints)

    def pick(self, key: str | None = None) -> EndpointState | None:
        if key is None:
            return self._fallback.pick()
        eps = self.endpoints
        n = len(eps)
        if n == 0:
            return None
        h = stable_hash64(key)
        first = h % n
        ep = eps[first]
        if ep.available:
            return ep
        for _ in range(self.REHASH_TRIES):
            h = (h * 6364136223846793005 + 1442695040888963407) & _MASK64
            ep = eps[(h >> 16) % n]
            if ep.available:
                return ep
        for step in range(1, n):
            i = first + step
            ep = eps[i - n if i >= n else i]
            if ep.available:
                return ep
        return None


BALANCERS: dict[str, type[Balancer]] = {
    cls.name: cls for cls in (RoundRobin, WeightedRoundRobin, LeastConn, ConsistentHash, IpHash)
}


def make_balancer(lb: str, endpoints: Sequence[EndpointState], weights: Sequence[int] | None = None) -> Balancer:
    """The balancer named `lb` over `endpoints`; ValueError for an unknown name.

    `weights` (same order) override the endpoints' current weights where a balancer fixes
    them at construction (consistent hash); the others read weights live."""
    try:
        cls = BALANCERS[lb]
    except KeyError:
        raise ValueError(f"unknown load balancer {lb!r}; expected one of {', '.join(BALANCERS)}") from None
    if cls is ConsistentHash:
        return ConsistentHash(endpoints, weights)
    return cls(endpoints)
