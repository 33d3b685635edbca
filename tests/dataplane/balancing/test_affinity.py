"""Tests of cookie session persistence (affinity ids, lookup, Set-Cookie)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.balancing import AffinityIndex, EndpointState, affinity_id, set_cookie_header

FAST = settings(max_examples=60, deadline=None)

endpoint_addrs = st.lists(
    st.tuples(st.ip_addresses().map(str), st.integers(1, 65535)), min_size=1, max_size=40, unique=True
)


def make(addrs: list[tuple[str, int]]) -> list[EndpointState]:
    return [EndpointState(a, p) for a, p in addrs]


def test_id_is_stable_and_opaque() -> None:
    ep = EndpointState("10.0.0.1", 8000)
    assert affinity_id(ep) == "b31c92a44e6b490f"  # pinned: same in every process
    assert affinity_id(EndpointState("10.0.0.1", 8000, weight=7, zone="z")) == affinity_id(ep)
    assert re.fullmatch(r"[0-9a-f]{16}", affinity_id(EndpointState("::1", 443)))
    assert "10.0.0.1" not in affinity_id(ep)


@given(endpoint_addrs)
@FAST
def test_ids_distinct(addrs: list[tuple[str, int]]) -> None:
    eps = make(addrs)
    ids = [affinity_id(ep) for ep in eps]
    assert len(set(ids)) == len(ids)
    index = AffinityIndex(eps)
    assert len(index) == len(eps)
    for ep, aid in zip(eps, ids, strict=True):
        assert index.find(aid) is ep
        assert index.ids[ep.key] == aid


@given(addrs=endpoint_addrs, data=st.data())
@FAST
def test_find_returns_only_available(addrs: list[tuple[str, int]], data: st.DataObject) -> None:
    eps = make(addrs)
    index = AffinityIndex(eps)
    for ep in eps:
        how = data.draw(st.sampled_from(["ok", "draining", "unhealthy", "ejected"]))
        if how == "draining":
            ep.update_config(ep.weight, draining=True)
        elif how == "unhealthy":
            ep.healthy = False
        elif how == "ejected":
            ep.ejected_until = 10.0
        ep._refresh()
    for ep in eps:
        found = index.find(affinity_id(ep))
        assert found is (ep if ep.available else None)


@given(st.text(max_size=30))
@FAST
def test_find_unknown_cookie(value: str) -> None:
    eps = make([("10.0.0.1", 80), ("10.0.0.2", 80)])
    index = AffinityIndex(eps)
    found = index.find(value)
    assert found is None or affinity_id(found) == value.strip()


def test_find_survives_config_update_and_tolerates_spaces() -> None:
    ep = EndpointState("10.0.0.1", 80)
    index = AffinityIndex([ep])
    ep.update_config(weight=5, zone="b")
    assert index.find(f" {affinity_id(ep)} ") is ep


def test_set_cookie_header_format() -> None:
    ep = EndpointState("10.0.0.1", 8000)
    aid = affinity_id(ep)
    assert set_cookie_header("FLUXSID", ep, 0, "/") == f"FLUXSID={aid}; Path=/; HttpOnly; SameSite=Lax"
    assert (
        set_cookie_header("FLUXSID", ep, 60_000, "/api")
        == f"FLUXSID={aid}; Path=/api; Max-Age=60; HttpOnly; SameSite=Lax"
    )
    # Max-Age rounds up: a sub-second ttl must not become Max-Age=0 (which deletes the cookie)
    assert "Max-Age=1;" in set_cookie_header("s", ep, 1, "/")
    assert "Max-Age=2;" in set_cookie_header("s", ep, 1500, "/")
    assert "Path=/;" in set_cookie_header("s", ep, 0, "")
    assert AffinityIndex([ep]).set_cookie_header("s", ep, 0, "/") == set_cookie_header("s", ep, 0, "/")


@pytest.mark.parametrize(("name", "path"), [("bad name", "/"), ("a;b", "/"), ("", "/"), ("ok", "/x;y"), ("ok", "/\n")])
def test_set_cookie_header_rejects_injection(name: str, path: str) -> None:
    with pytest.raises(ValueError):
        set_cookie_header(name, EndpointState("10.0.0.1", 80), 0, path)
