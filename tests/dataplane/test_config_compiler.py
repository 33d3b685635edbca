"""The snapshot compiler: endpoint state kept across versions, and balancers built from the
version being applied (not from the live endpoints, which change only on commit)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from dataplane.config.compiler import EndpointRegistry, compile_snapshot
from flux.v1 import config_pb2 as pb


def _snap(version: str, weights: dict[int, int], lb: int = pb.LB_POLICY_CONSISTENT_HASH) -> pb.Snapshot:
    return pb.Snapshot(
        version=version,
        node_group="default",
        listeners=[pb.Listener(name="l", protocol=pb.PROTOCOL_HTTP, address="127.0.0.1", port=18080)],
        clusters=[
            pb.Cluster(
                name="c",
                lb=lb,
                hash_on="path",
                endpoints=[pb.Endpoint(address="127.0.0.1", port=port, weight=w) for port, w in weights.items()],
            )
        ],
        routes=[pb.Route(name="r", listener="l", path="/", path_type=pb.PATH_TYPE_PREFIX, cluster="c")],
    )


def _pools(cluster: str, address: str, port: int, limits: Any) -> object:
    return object()


def _shares(snapshot: pb.Snapshot, registry: EndpointRegistry) -> Counter[int]:
    compiled = compile_snapshot(snapshot, registry, _pools)  # type: ignore[arg-type]
    balancer = compiled.config.clusters["c"].balancer
    picks = Counter(balancer.pick(f"/key/{i}").port for i in range(4000))  # type: ignore[union-attr]
    compiled.commit(registry)
    return picks


def test_consistent_hash_ring_uses_the_weights_being_applied() -> None:
    registry = EndpointRegistry()
    first = _shares(_snap("1", {9001: 1, 9002: 1}), registry)
    assert 0.4 < first[9001] / 4000 < 0.6
    # The same endpoints come back with new weights: the ring of version 2 must already use them,
    # although the kept endpoint states take the new weights only when version 2 commits.
    second = _shares(_snap("2", {9001: 1, 9002: 3}), registry)
    assert 0.65 < second[9002] / 4000 < 0.85


def test_a_refused_version_leaves_live_weights_alone() -> None:
    registry = EndpointRegistry()
    _shares(_snap("1", {9001: 1, 9002: 1}), registry)
    compile_snapshot(_snap("2", {9001: 5, 9002: 1}), registry, _pools)  # type: ignore[arg-type]  # never committed
    weights = sorted(ep.weight for ep in registry.states.values())
    assert weights == [1, 1]


def test_listener_edge_settings_and_canonical_route_paths() -> None:
    snap = _snap("1", {9001: 1})
    lst = snap.listeners[0]
    lst.timeouts.CopyFrom(pb.ListenerTimeouts(header_ms=5000, body_idle_ms=2000, idle_ms=0))
    lst.limits.CopyFrom(pb.ListenerLimits(max_connections=10, max_connections_per_ip=2))
    lst.path_normalization.CopyFrom(
        pb.PathNormalization(merge_slashes=False, escaped_slashes=pb.ESCAPED_SLASHES_UNESCAPE)
    )
    snap.routes[0].path = "/caf\u00e9/%61pi/./v1"
    compiled = compile_snapshot(snap, EndpointRegistry(), _pools)  # type: ignore[arg-type]
    settings = compiled.config.listeners["l"].settings
    assert (settings.header_timeout, settings.body_idle_timeout, settings.idle_timeout) == (5.0, 2.0, 0.0)
    assert (settings.max_connections, settings.max_connections_per_ip) == (10, 2)
    assert not settings.path_rules.merge_slashes and settings.path_rules.escaped_slashes == "unescape"
    route = compiled.config.listeners["l"].matcher.match("h", "/caf%C3%A9/api/v1/x", "GET", {})
    assert route is not None and route.target.match_prefix == "/caf%C3%A9/api/v1"  # type: ignore[attr-defined]


def test_listener_defaults_are_the_node_defaults() -> None:
    compiled = compile_snapshot(_snap("1", {9001: 1}), EndpointRegistry(), _pools)  # type: ignore[arg-type]
    settings = compiled.config.listeners["l"].settings
    assert settings.header_timeout == 0 and settings.path_rules.merge_slashes
    assert settings.path_rules.escaped_slashes == "reject"
