"""Property tests of the sans-IO load balancers and EndpointState."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.balancing import (
    BALANCERS,
    ConsistentHash,
    EndpointState,
    IpHash,
    LeastConn,
    RoundRobin,
    WeightedRoundRobin,
    make_balancer,
    stable_hash64,
)

LBS = ["round_robin", "weighted_round_robin", "least_conn", "consistent_hash", "ip_hash"]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# 0 = available; the others are the three ways to be unavailable.
AVAILABLE, DRAINING, UNHEALTHY, EJECTED = range(4)
states = st.integers(min_value=0, max_value=3)
hash_keys = st.one_of(st.none(), st.text(max_size=24))


def make_eps(n: int, weights: list[int] | None = None, prefix: str = "10.0") -> list[EndpointState]:
    weights = weights or [1] * n
    return [EndpointState(f"{prefix}.{i // 250}.{i % 250 + 1}", 8000 + i, weights[i]) for i in range(n)]


def set_state(ep: EndpointState, state: int) -> None:
    ep.update_config(ep.weight, ep.zone, ep.version, ep.metadata, draining=state == DRAINING)
    ep.healthy = state != UNHEALTHY
    ep.ejected_until = 100.0 if state == EJECTED else 0.0
    ep._refresh()


def set_available(ep: EndpointState, available: bool) -> None:
    set_state(ep, AVAILABLE if available else UNHEALTHY)


def rand_keys(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [f"k{rng.getrandbits(64):x}" for _ in range(count)]


# ---------------------------------------------------------------- EndpointState


def test_endpoint_key_and_ipv6() -> None:
    assert EndpointState("10.0.0.1", 80).key == "10.0.0.1:80"
    assert EndpointState("::1", 8080).key == "[::1]:8080"
    assert EndpointState("api.internal", 443).key == "api.internal:443"


def test_update_config_keeps_runtime_state() -> None:
    ep = EndpointState("10.0.0.1", 80, weight=3, zone="a")
    ep.healthy = False
    ep.ejections = 2
    ep.active = 4
    ep._refresh()
    ep.update_config(weight=0, zone="b", version="v2", metadata={"x": "y"}, draining=False)
    assert (ep.weight, ep.zone, ep.version, ep.metadata) == (1, "b", "v2", {"x": "y"})
    assert ep.healthy is False and ep.ejections == 2 and ep.active == 4
    assert ep.available is False
    json.dumps(ep.as_dict())  # JSON-ready


def test_endpoint_has_slots() -> None:
    ep = EndpointState("10.0.0.1", 80)
    with pytest.raises(AttributeError):
        ep.nonexistent = 1  # type: ignore[attr-defined]


@given(st.lists(st.tuples(states, st.booleans()), min_size=1, max_size=30))
@FAST
def test_available_tracks_inputs(changes: list[tuple[int, bool]]) -> None:
    ep = EndpointState("10.0.0.1", 80)
    for state, via_config in changes:
        if via_config:
            ep.update_config(ep.weight, draining=state == DRAINING)
        else:
            set_state(ep, state)
        assert ep.available == (ep.healthy and not ep.draining and not ep.ejected)


# ---------------------------------------------------------------- contract, all balancers


def test_make_balancer_names() -> None:
    assert set(BALANCERS) == set(LBS)
    for lb in LBS:
        assert make_balancer(lb, make_eps(3)).name == lb
    with pytest.raises(ValueError):
        make_balancer("random", make_eps(3))


@pytest.mark.parametrize("lb", LBS)
def test_empty_cluster(lb: str) -> None:
    bal = make_balancer(lb, [])
    assert bal.pick() is None
    assert bal.pick("key") is None


@pytest.mark.parametrize("lb", LBS)
@given(n=st.integers(1, 12), keys=st.lists(hash_keys, min_size=1, max_size=20))
@FAST
def test_none_when_all_unavailable(lb: str, n: int, keys: list[str | None]) -> None:
    eps = make_eps(n)
    for i, ep in enumerate(eps):
        set_state(ep, 1 + i % 3)
    bal = make_balancer(lb, eps)
    for key in keys:
        assert bal.pick(key) is None


@pytest.mark.parametrize("lb", LBS)
@given(
    pattern=st.lists(states, min_size=1, max_size=12),
    weights=st.lists(st.integers(1, 20), min_size=12, max_size=12),
    actives=st.lists(st.integers(0, 10), min_size=12, max_size=12),
    keys=st.lists(hash_keys, min_size=1, max_size=30),
)
@FAST
def test_only_available_picked(
    lb: str, pattern: list[int], weights: list[int], actives: list[int], keys: list[str | None]
) -> None:
    eps = make_eps(len(pattern), weights)
    for ep, state, active in zip(eps, pattern, actives, strict=False):
        set_state(ep, state)
        ep.active = active
    bal = make_balancer(lb, eps)
    any_available = any(s == AVAILABLE for s in pattern)
    for key in keys:
        ep = bal.pick(key)
        if any_available:
            assert ep is not None and ep.available and ep in eps
        else:
            assert ep is None


@pytest.mark.parametrize("lb", LBS)
@given(
    n=st.integers(1, 10),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("set"), st.integers(0, 9), states),
            st.tuples(st.just("pick"), hash_keys, st.booleans()),
        ),
        max_size=60,
    ),
)
@FAST
def test_availability_changes_between_picks(lb: str, n: int, ops: list[tuple]) -> None:
    eps = make_eps(n)
    bal = make_balancer(lb, eps)
    for op in ops:
        if op[0] == "set":
            set_state(eps[op[1] % n], op[2])
        else:
            ep = bal.pick(op[1])
            if any(e.available for e in eps):
                assert ep is not None and ep.available
                if op[2]:  # the proxy holds the request open
                    ep.active += 1
            else:
                assert ep is None


# ---------------------------------------------------------------- round robin


@given(pattern=st.lists(st.booleans(), min_size=1, max_size=15), k=st.integers(1, 5), warmup=st.integers(0, 7))
@FAST
def test_round_robin_exact_shares(pattern: list[bool], k: int, warmup: int) -> None:
    eps = make_eps(len(pattern))
    bal = RoundRobin(eps)
    for _ in range(warmup):
        bal.pick()
    for ep, a in zip(eps, pattern, strict=True):
        set_available(ep, a)
    avail = [ep for ep in eps if ep.available]
    counts = Counter(bal.pick() for _ in range(k * len(avail)))
    assert counts == Counter({ep: k for ep in avail})


def test_round_robin_order() -> None:
    eps = make_eps(4)
    set_available(eps[2], False)
    bal = RoundRobin(eps)
    assert [bal.pick() for _ in range(6)] == [eps[0], eps[1], eps[3], eps[0], eps[1], eps[3]]


# ---------------------------------------------------------------- weighted round robin


@given(
    weights=st.lists(st.integers(1, 20), min_size=1, max_size=10),
    pattern=st.lists(st.booleans(), min_size=10, max_size=10),
    cycles=st.integers(1, 3),
)
@FAST
def test_wrr_whole_cycles_exact(weights: list[int], pattern: list[bool], cycles: int) -> None:
    eps = make_eps(len(weights), weights)
    for ep, a in zip(eps, pattern, strict=False):
        set_available(ep, a)
    avail = [ep for ep in eps if ep.available]
    bal = WeightedRoundRobin(eps)
    total = sum(ep.weight for ep in avail)
    counts = Counter(bal.pick() for _ in range(cycles * total))
    assert counts == Counter({ep: cycles * ep.weight for ep in avail})


@given(weights=st.lists(st.integers(1, 20), min_size=2, max_size=10), picks=st.integers(1, 400))
@FAST
def test_wrr_proportional_and_spread(weights: list[int], picks: int) -> None:
    eps = make_eps(len(weights), weights)
    index = {ep: i for i, ep in enumerate(eps)}
    bal = WeightedRoundRobin(eps)
    total = sum(weights)
    seq = [index[bal.pick()] for _ in range(picks)]
    counts = Counter(seq)
    for i, w in enumerate(weights):
        # every prefix stays within 2 picks of the exact proportional share
        assert abs(counts[i] - picks * w / total) < 2
    for i, run in itertools.groupby(seq):
        w = weights[i]
        if w < total:
            # smooth: runs are at most twice the unavoidable ceil(w / (total - w))
            assert len(list(run)) <= 2 * math.ceil(w / (total - w))


def test_wrr_smooth_example() -> None:
    a, b, c = eps = make_eps(3, [5, 1, 1])
    bal = WeightedRoundRobin(eps)
    assert [bal.pick() for _ in range(7)] == [a, a, b, a, c, a, a]


def test_wrr_weight_update_in_place() -> None:
    eps = make_eps(2, [1, 1])
    bal = WeightedRoundRobin(eps)
    eps[0].update_config(weight=3)
    counts = Counter(bal.pick() for _ in range(4 * 10))
    assert counts[eps[0]] == 30 and counts[eps[1]] == 10


# ---------------------------------------------------------------- least conn


@given(
    loads=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 10), st.booleans()), min_size=1, max_size=12),
    rounds=st.integers(1, 5),
)
@FAST
def test_least_conn_picks_minimum(loads: list[tuple[int, int, bool]], rounds: int) -> None:
    eps = make_eps(len(loads), [w for _, w, _ in loads])
    for ep, (active, _, a) in zip(eps, loads, strict=True):
        ep.active = active
        set_available(ep, a)
    bal = LeastConn(eps)
    for _ in range(rounds):
        ep = bal.pick()
        avail = [e for e in eps if e.available]
        if not avail:
            assert ep is None
            return
        assert ep is not None and ep.available
        best = min(Fraction(e.active, e.weight) for e in avail)
        assert Fraction(ep.active, ep.weight) == best
        ep.active += 1


@given(n=st.integers(1, 12), active=st.integers(0, 5), k=st.integers(1, 4))
@FAST
def test_least_conn_rotates_on_ties(n: int, active: int, k: int) -> None:
    eps = make_eps(n)
    for ep in eps:
        ep.active = active
    bal = LeastConn(eps)
    counts = Counter(bal.pick() for _ in range(k * n))  # nobody holds the requests open
    assert counts == {ep: k for ep in eps}


def test_least_conn_spreads_held_requests() -> None:
    eps = make_eps(3, [1, 2, 1])
    bal = LeastConn(eps)
    for _ in range(40):
        ep = bal.pick()
        assert ep is not None
        ep.active += 1
    assert [ep.active for ep in eps] == [10, 20, 10]


# ---------------------------------------------------------------- consistent hash


def owners(bal: ConsistentHash, keys: list[str]) -> list[str]:
    out = []
    for k in keys:
        ep = bal.pick(k)
        assert ep is not None
        out.append(ep.key)
    return out


@given(n=st.integers(1, 12), keys=st.lists(st.text(max_size=30), min_size=1, max_size=40), seed=st.randoms())
@FAST
def test_consistent_hash_stable_and_order_independent(n: int, keys: list[str], seed: random.Random) -> None:
    eps = make_eps(n)
    bal = ConsistentHash(eps)
    first = owners(bal, keys)
    assert owners(bal, keys) == first
    shuffled = list(eps)
    seed.shuffle(shuffled)
    rebuilt = ConsistentHash([EndpointState(e.address, e.port) for e in shuffled])
    assert owners(rebuilt, keys) == first


def test_hashes_are_stable_across_processes() -> None:
    # pinned values: the ring and the key hash never use Python's (per-process) hash()
    assert stable_hash64("user-1") == 0x9AAC5A8621EAE188
    eps = make_eps(5)
    ring, mod = ConsistentHash(eps), IpHash(eps)
    assert [ring.pick(f"user-{k}").key for k in range(6)] == [  # type: ignore[union-attr]
        "10.0.0.3:8002",
        "10.0.0.2:8001",
        "10.0.0.1:8000",
        "10.0.0.1:8000",
        "10.0.0.2:8001",
        "10.0.0.2:8001",
    ]
    assert [mod.pick(f"user-{k}").key for k in range(6)] == [  # type: ignore[union-attr]
        "10.0.0.4:8003",
        "10.0.0.4:8003",
        "10.0.0.5:8004",
        "10.0.0.4:8003",
        "10.0.0.1:8000",
        "10.0.0.1:8000",
    ]


@given(n=st.integers(3, 20), seed=st.integers(0, 2**32), prefix=st.sampled_from(["10.0", "172.16", "192.168"]))
@SLOW
def test_consistent_hash_add_moves_about_one_share(n: int, seed: int, prefix: str) -> None:
    keys = rand_keys(seed, 5000)
    eps = make_eps(n + 1, prefix=prefix)
    before = owners(ConsistentHash(eps[:n]), keys)
    after = owners(ConsistentHash(eps), keys)
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    # every moved key moved to the new endpoint
    assert all(a == eps[n].key for _, a in moved)
    share = len(moved) / len(keys)
    assert 0.2 / (n + 1) < share < 2.5 / (n + 1)


@given(n=st.integers(3, 20), seed=st.integers(0, 2**32), data=st.data())
@SLOW
def test_consistent_hash_remove_moves_only_its_keys(n: int, seed: int, data: st.DataObject) -> None:
    keys = rand_keys(seed, 5000)
    eps = make_eps(n)
    gone = data.draw(st.integers(0, n - 1))
    before = owners(ConsistentHash(eps), keys)
    after = owners(ConsistentHash(eps[:gone] + eps[gone + 1 :]), keys)
    for b, a in zip(before, after, strict=True):
        if b != eps[gone].key:
            assert a == b
        else:
            assert a != b


@given(n=st.integers(2, 10), seed=st.integers(0, 2**32))
@SLOW
def test_consistent_hash_even_distribution(n: int, seed: int) -> None:
    keys = rand_keys(seed, 5000)
    counts = Counter(owners(ConsistentHash(make_eps(n)), keys))
    assert len(counts) == n
    assert max(counts.values()) <= 2.5 * len(keys) / n


@pytest.mark.parametrize("weights", [[1, 2], [1, 1, 2], [1, 2, 4], [3, 1, 1, 1], [5, 1]])
def test_consistent_hash_respects_weights(weights: list[int]) -> None:
    keys = rand_keys(7, 20000)
    eps = make_eps(len(weights), weights)
    counts = Counter(owners(ConsistentHash(eps), keys))
    total = sum(weights)
    for ep, w in zip(eps, weights, strict=True):
        ratio = counts[ep.key] / len(keys) / (w / total)
        assert 0.6 < ratio < 1.5, (ep.key, ratio)


@given(n=st.integers(2, 12), seed=st.integers(0, 2**32), data=st.data())
@FAST
def test_consistent_hash_unavailable_owner_walks_and_returns(n: int, seed: int, data: st.DataObject) -> None:
    keys = rand_keys(seed, 200)
    eps = make_eps(n)
    bal = ConsistentHash(eps)
    before = owners(bal, keys)
    down = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    for i in down:
        set_available(eps[i], False)
    down_keys = {eps[i].key for i in down}
    during = owners(bal, keys)
    for b, d in zip(before, during, strict=True):
        if b in down_keys:
            assert d not in down_keys
        else:
            assert d == b  # keys of available endpoints never move
    for i in down:
        set_available(eps[i], True)
    assert owners(bal, keys) == before


def test_consistent_hash_none_key_round_robins() -> None:
    eps = make_eps(3)
    bal = ConsistentHash(eps)
    assert [bal.pick(None) for _ in range(6)] == eps + eps


# ---------------------------------------------------------------- ip hash


@given(n=st.integers(1, 16), ips=st.lists(st.ip_addresses().map(str), min_size=1, max_size=30), data=st.data())
@FAST
def test_ip_hash_stable_skip_and_return(n: int, ips: list[str], data: st.DataObject) -> None:
    eps = make_eps(n)
    bal = IpHash(eps)
    original = {ip: bal.pick(ip) for ip in ips}
    assert all(bal.pick(ip) is original[ip] for ip in ips)
    down = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    for i in down:
        set_available(eps[i], False)
    for ip in ips:
        ep = bal.pick(ip)
        if len(down) == n:
            assert ep is None
            continue
        assert ep is not None and ep.available
        assert bal.pick(ip) is ep  # deterministic while availability is unchanged
        if original[ip].available:  # type: ignore[union-attr]
            assert ep is original[ip]
    for i in down:
        set_available(eps[i], True)
    assert all(bal.pick(ip) is original[ip] for ip in ips)


def test_ip_hash_spreads_a_failed_endpoints_keys() -> None:
    eps = make_eps(10)
    bal = IpHash(eps)
    keys = rand_keys(3, 2000)
    victims = [k for k in keys if bal.pick(k) is eps[0]]
    set_available(eps[0], False)
    spread = Counter(bal.pick(k) for k in victims)
    assert None not in spread and eps[0] not in spread
    assert len(spread) >= 5  # not all dumped on one neighbour


def test_ip_hash_none_key_round_robins() -> None:
    eps = make_eps(3)
    bal = IpHash(eps)
    assert [bal.pick() for _ in range(6)] == eps + eps
