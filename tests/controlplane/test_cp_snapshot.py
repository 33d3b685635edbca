"""Snapshot rendering (controlplane/snapshot.py) and the ConfigSet document."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.tls import self_signed

from controlplane.registry.types import Selector
from controlplane.snapshot import node_groups, render_snapshot
from controlplane.spec import (
    KINDS,
    CertificateSpec,
    ClusterSpec,
    ConfigSet,
    ConsumerSpec,
    ListenerSpec,
    PolicySpec,
    RouteSpec,
    TunnelSpec,
)
from controlplane.validation import check_config
from flux.v1 import config_pb2 as pb

GROUPS = ["default", "edge", "internal"]
_names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


@st.composite
def configs(draw: st.DrawFn) -> ConfigSet:
    """A valid ConfigSet: listeners in several groups, clusters, routes, policies, consumers, tunnels."""
    cluster_names = draw(st.lists(_names, min_size=1, max_size=6, unique=True))
    clusters = [
        ClusterSpec(
            name=n,
            lb=draw(st.sampled_from(["round_robin", "least_conn", "ip_hash"])),
            endpoints=[
                {
                    "address": f"10.0.{i}.{j + 1}",
                    "port": draw(st.integers(1, 65535)),
                    "weight": draw(st.integers(1, 50)),
                }
                for j in range(draw(st.integers(0, 3)))
            ],
        )
        for i, n in enumerate(cluster_names)
    ]
    policy_names = draw(st.lists(_names, max_size=4, unique=True))
    policies = [
        PolicySpec.model_validate(
            {
                "name": n,
                "type": "rate_limit",
                "config": {"rate": draw(st.integers(1, 1000)), "per": "1s", "key": ["ip", "route"]},
                "global": draw(st.booleans()),
            }
        )
        for n in policy_names
    ]
    listener_names = draw(st.lists(_names, max_size=5, unique=True))
    listeners = [
        ListenerSpec(
            name=n,
            port=8000 + i,  # unique, so never a port conflict
            node_group=draw(st.sampled_from(GROUPS)),
            policies=draw(st.lists(st.sampled_from(policy_names), max_size=2, unique=True)) if policy_names else [],
        )
        for i, n in enumerate(listener_names)
    ]
    routes = []
    for n in draw(st.lists(_names, max_size=8, unique=True)):
        split = draw(st.lists(st.sampled_from(cluster_names), min_size=1, max_size=3, unique=True))
        body: dict = {
            "name": n,
            "listener": draw(st.sampled_from([None, *listener_names])),
            "path": draw(st.sampled_from(["/", "/api", "/orders/"])),
            "hosts": draw(st.lists(st.sampled_from(["a.example.com", "*.example.com"]), max_size=2, unique=True)),
            "methods": draw(st.lists(st.sampled_from(["GET", "POST"]), max_size=2, unique=True)),
            "priority": draw(st.integers(-5, 5)),
            "policies": draw(st.lists(st.sampled_from(policy_names), max_size=2, unique=True)) if policy_names else [],
        }
        if len(split) == 1:
            body["cluster"] = split[0]
        else:
            body["clusters"] = [{"name": c, "weight": draw(st.integers(1, 100))} for c in split]
        routes.append(RouteSpec.model_validate(body))
    consumers = [
        ConsumerSpec(name=n, groups=["g"], credentials=[{"type": "api_key", "key": f"key-of-{n}-12345"}])
        for n in draw(st.lists(_names, max_size=3, unique=True))
    ]
    tunnels = [
        TunnelSpec(name=f"tun-{g}", node_group=g, token="tok", bind_port=7000)
        for g in draw(st.lists(st.sampled_from(GROUPS), max_size=2, unique=True))
    ]
    cfg = ConfigSet(
        {
            "clusters": {c.name: c for c in clusters},
            "policies": {p.name: p for p in policies},
            "listeners": {x.name: x for x in listeners},
            "routes": {r.name: r for r in routes},
            "consumers": {c.name: c for c in consumers},
            "tunnels": {t.name: t for t in tunnels},
        }
    )
    assert check_config(cfg) == [], check_config(cfg)
    return cfg


def shuffled(cfg: ConfigSet, rnd: random.Random) -> ConfigSet:
    """The same resources, inserted in another order (kinds and names)."""
    plurals = list(KINDS)
    rnd.shuffle(plurals)
    items = {}
    for plural in plurals:
        specs = list(cfg[plural].values())
        rnd.shuffle(specs)
        items[plural] = {s.name: s for s in specs}
    return ConfigSet(items)


def rendered(cfg: ConfigSet, version: int = 7) -> dict[str, bytes]:
    return {
        g: render_snapshot(cfg, version, g).SerializeToString(deterministic=True)
        for g in sorted(node_groups(cfg) | {"unknown-group"})
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.randoms(use_true_random=False))
def test_rendering_is_byte_identical_whatever_the_insertion_order(cfg: ConfigSet, rnd: random.Random) -> None:
    other = shuffled(cfg, rnd)
    assert other == cfg
    first = rendered(cfg)
    assert rendered(cfg) == first  # the same ConfigSet twice
    assert rendered(other) == first  # the same content, other order
    # And the document (what history stores) does not depend on order either.
    assert other.canonical_json() == cfg.canonical_json()
    assert other.digest() == cfg.digest()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_document_round_trip(cfg: ConfigSet) -> None:
    assert ConfigSet.from_document(cfg.document()) == cfg
    assert ConfigSet.from_document(json.loads(cfg.canonical_json())) == cfg
    assert ConfigSet.from_document(cfg.document()).digest() == cfg.digest()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_each_group_gets_only_its_own_resources(cfg: ConfigSet) -> None:
    for group in node_groups(cfg):
        snap = render_snapshot(cfg, 3, group)
        assert snap.version == "3" and snap.node_group == group
        own = {x.name for x in cfg["listeners"].values() if x.node_group == group}  # type: ignore[attr-defined]
        assert {x.name for x in snap.listeners} == own
        has_http = bool(own)
        expected_routes = {
            r.name
            for r in cfg["routes"].values()
            if (r.listener in own if r.listener else has_http)  # type: ignore[attr-defined]
        }
        assert {r.name for r in snap.routes} == expected_routes
        used = {c for r in snap.routes for c in ([r.cluster] if r.cluster else [w.name for w in r.clusters])}
        assert {c.name for c in snap.clusters} == used  # referenced clusters only
        referenced = {p for x in snap.listeners for p in x.policies} | {p for r in snap.routes for p in r.policies}
        global_ = {p.name for p in cfg["policies"].values() if p.global_}  # type: ignore[attr-defined]
        assert {p.name for p in snap.policies} == referenced | global_
        assert {c.name for c in snap.consumers} == set(cfg["consumers"])
        assert {t.name for t in snap.tunnels} == {
            t.name
            for t in cfg["tunnels"].values()
            if t.node_group == group  # type: ignore[attr-defined]
        }
        # Sorted by name: the order is part of the deterministic bytes.
        for seq in (snap.listeners, snap.routes, snap.clusters, snap.policies, snap.consumers):
            assert [x.name for x in seq] == sorted(x.name for x in seq)


def _example() -> ConfigSet:
    cert, key = self_signed("api.example.com")
    other_cert, other_key = self_signed("unused.example.com")
    specs: list[tuple[str, object]] = [
        ("certificates", CertificateSpec(name="api", snis=["api.example.com"], cert=cert, key=key)),
        ("certificates", CertificateSpec(name="unused", cert=other_cert, key=other_key)),
        (
            "clusters",
            ClusterSpec(name="orders", endpoints=[{"address": "10.0.0.1", "port": 80, "weight": 3}]),
        ),
        ("clusters", ClusterSpec(name="edge-only", endpoints=[{"address": "10.0.0.2", "port": 80}])),
        ("clusters", ClusterSpec(name="fallback", endpoints=[{"address": "10.0.0.3", "port": 80}])),
        ("clusters", ClusterSpec(name="orphan", endpoints=[{"address": "10.0.0.4", "port": 80}])),
        ("clusters", ClusterSpec(name="raw", endpoints=[{"address": "10.0.0.5", "port": 5432}])),
        ("clusters", ClusterSpec(name="registry", service="orders-svc")),
        ("policies", PolicySpec.model_validate({"name": "cors-all", "type": "cors", "global": True})),
        ("policies", PolicySpec(name="rl", type="rate_limit", config={"rate": 5})),
        ("policies", PolicySpec(name="unused", type="rate_limit", config={"rate": 5})),
        (
            "policies",
            PolicySpec(
                name="cb",
                type="circuit_breaker",
                config={"failure_threshold": 3, "fallback": {"cluster": "fallback"}},
            ),
        ),
        ("listeners", ListenerSpec(name="public", port=8080, policies=["rl"])),
        ("listeners", ListenerSpec(name="tls", protocol="https", port=8443, certificates=["api"])),
        ("listeners", ListenerSpec(name="pg", protocol="tcp", port=5432, cluster="raw")),
        ("listeners", ListenerSpec(name="edge-http", port=8080, node_group="edge")),
        ("routes", RouteSpec(name="orders-api", listener="public", cluster="orders", policies=["cb"])),
        ("routes", RouteSpec(name="any-http", cluster="registry", path="/reg")),
        ("routes", RouteSpec(name="edge-route", listener="edge-http", cluster="edge-only")),
        ("consumers", ConsumerSpec(name="alice", credentials=[{"type": "api_key", "key": "alice-key-1234"}])),
        ("tunnels", TunnelSpec(name="edge-tunnel", node_group="edge", token="tok", bind_port=7000)),
    ]
    cfg = ConfigSet()
    for plural, spec in specs:
        cfg = cfg.with_put(plural, spec)  # type: ignore[arg-type]
    assert check_config(cfg) == []
    return cfg


def test_group_filtering_by_example() -> None:
    cfg = _example()
    resolved: list[str] = []

    class Registry:
        def endpoints(self, selector: Selector) -> list[pb.Endpoint]:
            resolved.append(selector.service)
            return [pb.Endpoint(address="10.9.9.9", port=8000, weight=1)]

        def service_index(self, name: str) -> int:
            return 7

    default = render_snapshot(cfg, 12, "default", Registry())
    assert [x.name for x in default.listeners] == ["pg", "public", "tls"]
    assert [r.name for r in default.routes] == ["any-http", "orders-api"]  # not edge-route
    assert [c.name for c in default.clusters] == ["fallback", "orders", "raw", "registry"]
    assert [p.name for p in default.policies] == ["cb", "cors-all", "rl"]  # not "unused"
    assert [c.name for c in default.certificates] == ["api"]
    assert default.certificates[0].key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert [t.name for t in default.tunnels] == []
    assert [c.name for c in default.consumers] == ["alice"]
    assert default.consumers[0].credentials[0].key_sha256 == hashlib.sha256(b"alice-key-1234").hexdigest()
    registry = next(c for c in default.clusters if c.name == "registry")
    assert registry.endpoints[0].address == "10.9.9.9"
    assert resolved == [registry.service.name]
    orders = next(c for c in default.clusters if c.name == "orders")
    assert orders.lb == pb.LB_POLICY_ROUND_ROBIN and orders.endpoints[0].weight == 3
    assert orders.timeouts.connect_ms == 2000
    assert default.policies[1].is_global and dict(default.policies[2].config) == {"rate": 5.0}

    edge = render_snapshot(cfg, 12, "edge")
    assert [x.name for x in edge.listeners] == ["edge-http"]
    assert [r.name for r in edge.routes] == ["any-http", "edge-route"]
    assert [c.name for c in edge.clusters] == ["edge-only", "registry"]
    assert [p.name for p in edge.policies] == ["cors-all"]  # the global one only
    assert [t.name for t in edge.tunnels] == ["edge-tunnel"] and list(edge.tunnels[0].tokens) == ["tok"]
    assert list(edge.certificates) == []

    empty = render_snapshot(cfg, 12, "nobody")
    assert not empty.listeners and not empty.routes and not empty.clusters
    assert [p.name for p in empty.policies] == ["cors-all"]
    assert node_groups(cfg) == {"default", "edge"}


_RENDER_SCRIPT = textwrap.dedent(
    """
    import hashlib
    from controlplane.snapshot import render_snapshot
    from controlplane.spec import ConfigSet, ClusterSpec, ListenerSpec, RouteSpec, PolicySpec
    ep = [{"address": "10.0.0.1", "port": 1}]
    rl = {"rate": 1, "key": ["ip", "route"], "per": "1s", "burst": 3, "prefix": "x"}
    items = {
        "listeners": {n: ListenerSpec(name=n, port=8000 + i) for i, n in enumerate("abcdefgh")},
        "clusters": {n: ClusterSpec(name=n, endpoints=ep) for n in "pqrstuvw"},
        "policies": {"rl": PolicySpec(name="rl", type="rate_limit", config=rl)},
    }
    items["routes"] = {
        f"r{i}": RouteSpec(
            name=f"r{i}",
            listener="abcdefgh"[i % 8],
            policies=["rl"],
            headers={"x-a": "1", "x-b": "2", "x-c": "3"},
            clusters=[{"name": c, "weight": 1} for c in "pqrstuvw"[i % 4 :]],
        )
        for i in range(20)
    }
    snap = render_snapshot(ConfigSet(items), 1, "default")
    print(hashlib.sha256(snap.SerializeToString(deterministic=True)).hexdigest())
    """
)


def test_rendering_does_not_depend_on_hash_seed() -> None:
    """Sets and dicts iterate differently per PYTHONHASHSEED; the bytes must not."""
    digests = set()
    for seed in ("1", "2", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", _RENDER_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
