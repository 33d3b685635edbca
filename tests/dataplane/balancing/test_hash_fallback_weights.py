"""Consistent hash without a key (the header or cookie it hashes is missing) still honours
the endpoints' weights (issue 14: 2:1 weights gave 87/87)."""

from __future__ import annotations

from collections import Counter

from dataplane.balancing import ConsistentHash, EndpointState, make_balancer
from dataplane.health import reset_checks


def _ep(port: int, weight: int) -> EndpointState:
    return EndpointState("127.0.0.1", port, weight)


def test_keyless_picks_follow_the_weights() -> None:
    heavy, light = _ep(9001, 2), _ep(9002, 1)
    bal = ConsistentHash([heavy, light])
    counts = Counter(bal.pick(None) for _ in range(300))
    assert counts[heavy] == 200 and counts[light] == 100


def test_keyless_picks_skip_unavailable_endpoints_and_follow_new_weights() -> None:
    a, b, c = _ep(9001, 3), _ep(9002, 1), _ep(9003, 1)
    bal = make_balancer("consistent_hash", [a, b, c])
    reset_checks(c, healthy=False)
    counts = Counter(bal.pick(None) for _ in range(400))
    assert counts == {a: 300, b: 100}
    b.update_config(3)  # weights are read live
    counts = Counter(bal.pick(None) for _ in range(600))
    assert counts == {a: 300, b: 300}
