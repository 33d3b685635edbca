"""Grayscale plans: rules first, then weights (sticky by cookie or hash, or drawn per request)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.routing.grayscale import GrayRule, GrayscalePlan


def no_header(_name: str) -> str | None:
    return None


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["v1", "v2", "v3", "v4"]), st.integers(1, 100), min_size=1))
def test_observed_shares_converge_to_the_weights(weights: dict[str, int]) -> None:
    plan = GrayscalePlan(weights)
    rng = random.Random(7)
    n = 20_000
    counts = Counter(plan.choose(no_header, no_header, frozenset(), "1.1.1.1", rng.randrange).version for _ in range(n))
    total = sum(weights.values())
    for version, weight in weights.items():
        expected = weight / total
        assert abs(counts[version] / n - expected) < 0.02 + 0.1 * expected, (version, counts, weights)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["v1", "v2", "v3"]), st.integers(1, 50), min_size=1),
    st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=40, unique=True),
)
def test_hash_stickiness_keeps_a_client_on_one_version(weights: dict[str, int], clients: list[str]) -> None:
    plan = GrayscalePlan(weights, sticky_hash="ip")
    first = {ip: plan.choose(no_header, no_header, frozenset(), ip).version for ip in clients}
    for _ in range(3):
        for ip in clients:
            assert plan.choose(no_header, no_header, frozenset(), ip).version == first[ip]


def test_hash_stickiness_shares_follow_the_weights() -> None:
    plan = GrayscalePlan({"v1": 90, "v2": 10}, sticky_hash="ip")
    counts = Counter(
        plan.choose(no_header, no_header, frozenset(), f"10.{i // 65536}.{i // 256 % 256}.{i % 256}").version
        for i in range(20_000)
    )
    assert 0.07 < counts["v2"] / 20_000 < 0.13


def test_rules_come_first_in_order() -> None:
    rules = [
        GrayRule(headers=(("x-canary", "true"),), cookies=(), consumer_group="", version="v2"),
        GrayRule(headers=(), cookies=(("beta", "1"),), consumer_group="", version="v3"),
        GrayRule(headers=(), cookies=(), consumer_group="testers", version="v3"),
    ]
    plan = GrayscalePlan({"v1": 100}, rules)
    headers = {"x-canary": "true"}
    assert plan.choose(headers.get, no_header, frozenset(), "1.1.1.1").version == "v2"
    cookies = {"beta": "1"}
    assert plan.choose(no_header, cookies.get, frozenset(), "1.1.1.1").version == "v3"
    assert plan.choose(no_header, no_header, frozenset({"testers"}), "1.1.1.1").version == "v3"
    assert plan.choose(no_header, no_header, frozenset({"others"}), "1.1.1.1").version == "v1"


def test_sticky_cookie_is_set_once_and_honoured() -> None:
    plan = GrayscalePlan({"v1": 50, "v2": 50}, sticky_cookie="gray", sticky_ttl_ms=3_600_000)
    first = plan.choose(no_header, no_header, frozenset(), "1.1.1.1", lambda n: 70)
    assert first.version == "v2" and first.set_cookie is not None
    assert first.set_cookie.startswith("gray=v2;") and "Max-Age=3600" in first.set_cookie
    again = plan.choose(no_header, {"gray": "v2"}.get, frozenset(), "1.1.1.1", lambda n: 0)
    assert again.version == "v2" and again.set_cookie is None
    stale = plan.choose(no_header, {"gray": "v9"}.get, frozenset(), "1.1.1.1", lambda n: 0)
    assert stale.version == "v1" and stale.set_cookie is not None  # unknown version: drawn again


def test_zero_weights_leave_a_version_to_rules_only() -> None:
    plan = GrayscalePlan(
        {"v1": 1, "v2": 0}, [GrayRule(headers=(("x-v", "2"),), cookies=(), consumer_group="", version="v2")]
    )
    assert {plan.choose(no_header, no_header, frozenset(), "1.1.1.1").version for _ in range(50)} == {"v1"}
    assert GrayscalePlan({}, []).choose(no_header, no_header, frozenset(), "1.1.1.1") is None
