"""The rollout cores without I/O: load arithmetic, canary analysis, planning, node answers, pinning."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.discovery.cache import SnapshotCache
from controlplane.discovery.hold import Hold, base_node_id
from controlplane.discovery.nodes import NodeState
from controlplane.rollouts.analysis import Criteria, judge
from controlplane.rollouts.answers import answer, answers, config_version, resource_of, summary
from controlplane.rollouts.load import Load, total
from controlplane.rollouts.plan import affected_groups, pick_canaries, stages
from controlplane.spec import ConfigSet
from controlplane.spec.configset import KINDS
from flux.v1 import config_pb2

BOUNDS = (0.01, 0.1, 1.0)


def load(requests: int, errors: int = 0, counts: tuple[int, ...] | None = None) -> Load:
    return Load(requests, errors, BOUNDS, counts if counts is not None else (requests, 0, 0, 0), 0.0)


def config(**kinds: list[dict[str, object]]) -> ConfigSet:
    cfg = ConfigSet()
    for plural, items in kinds.items():
        for raw in items:
            cfg = cfg.with_put(plural, KINDS[plural].spec.model_validate(raw))
    return cfg


# -- load -----------------------------------------------------------------------------------


def test_since_takes_differences_and_survives_a_restart() -> None:
    later, earlier = load(100, 7, (90, 10, 0, 0)), load(40, 2, (38, 2, 0, 0))
    d = later.since(earlier)
    assert (d.requests, d.server_errors, d.counts) == (60, 5, (52, 8, 0, 0))
    assert later.since(load(500, 0)) == later  # counters went down: the node restarted, all is new
    assert later.since(None) == later


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), max_size=6))
def test_total_adds_counts(pairs: list[tuple[int, int]]) -> None:
    loads = [load(r + e, e, (r, e, 0, 0)) for r, e in pairs]
    summed = total(loads)
    assert summed.requests == sum(r + e for r, e in pairs)
    assert summed.server_errors == sum(e for _, e in pairs)
    if pairs:
        assert sum(summed.counts) == summed.requests


def test_quantile_interpolates_within_a_bucket() -> None:
    assert load(0).quantile(0.9) is None
    assert load(10, counts=(10, 0, 0, 0)).quantile(0.5) == pytest.approx(0.005)
    assert load(10, counts=(0, 10, 0, 0)).quantile(0.9) == pytest.approx(0.01 + 0.09 * 0.9)
    assert load(10, counts=(0, 0, 0, 10)).quantile(0.9) == 1.0  # the overflow bucket: the last bound


# -- analysis -------------------------------------------------------------------------------


def test_a_canary_with_many_5xx_fails_against_the_rest() -> None:
    verdict = judge(load(50, 30), load(50, 0), Criteria(), final=False)
    assert verdict.outcome == "fail"
    assert "5xx rate of the canaries 60.0% (30/50) against 0.0% (0/50)" in verdict.reason


def test_small_error_differences_and_too_little_traffic_do_not_fail() -> None:
    assert judge(load(100, 3), load(100, 0), Criteria(), final=True).outcome == "pass"
    verdict = judge(load(5, 5), load(100, 0), Criteria(), final=True)
    assert verdict.outcome == "inconclusive" and "5 request(s)" in verdict.reason


def test_latency_fails_only_at_the_end_and_only_when_much_slower() -> None:
    slow = load(100, 0, (0, 0, 100, 0))  # p90 about 0.91 s
    fast = load(100, 0, (100, 0, 0, 0))  # p90 9 ms
    assert judge(slow, fast, Criteria(), final=False).outcome == "pass"
    verdict = judge(slow, fast, Criteria(), final=True)
    assert verdict.outcome == "fail" and "p90 latency of the canaries" in verdict.reason
    near = load(100, 0, (0, 100, 0, 0))  # p90 91 ms: slower, but within the 50 ms slack of 9 ms * 1.5? no
    assert judge(near, near, Criteria(), final=True).outcome == "pass"


def test_without_reference_traffic_a_broken_canary_still_fails() -> None:
    verdict = judge(load(40, 40), load(0), Criteria(), final=True)
    assert verdict.outcome == "fail" and "too little traffic" in verdict.reason


def test_criteria_round_trip_ignores_unknown_keys() -> None:
    c = Criteria(min_requests=5, ack_timeout=3.0)
    assert Criteria.of({**c.as_dict(), "extra": 1}) == c


# -- planning -------------------------------------------------------------------------------


def test_canaries_are_a_share_of_each_group_at_least_one() -> None:
    nodes = {"a": [f"a{i}" for i in range(8)], "b": ["b1"], "c": []}
    picked = pick_canaries(nodes, 25, "r-1")
    assert len([n for n in picked if n.startswith("a")]) == 2
    assert [n for n in picked if n.startswith("b")] == ["b1"]
    assert pick_canaries(nodes, 25, "r-1") == picked  # deterministic per rollout


def test_workers_of_one_node_count_once() -> None:
    assert base_node_id("edge-1/w3") == "edge-1" and base_node_id("edge/web") == "edge/web"
    assert pick_canaries({"a": ["n/w0", "n/w1", "m/w0", "m/w1"]}, 50, "x") in (["m"], ["n"])


def test_affected_groups_are_those_whose_snapshot_changes() -> None:
    before = config(
        listeners=[
            {"name": "a", "protocol": "http", "address": "127.0.0.1", "port": 8001, "node_group": "a"},
            {"name": "b", "protocol": "tcp", "address": "127.0.0.1", "port": 8002, "node_group": "b",
             "cluster": "c"},
        ],
        clusters=[{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9000}]}],
    )  # fmt: skip
    after = before.with_put(
        "listeners",
        KINDS["listeners"].spec.model_validate(
            {"name": "a", "protocol": "http", "address": "127.0.0.1", "port": 8003, "node_group": "a"}
        ),
    )
    assert affected_groups(before, after, {"idle"}) == ["a"]
    assert affected_groups(before, before, {"a", "b"}) == []


def test_stages() -> None:
    assert [s.describe() for s in stages(True, True, ["a", "b"])] == ["canary nodes", "group a", "group b"]
    assert stages(False, False, ["a"]) == []


# -- answers --------------------------------------------------------------------------------


def test_answers_read_acks_nacks_and_the_resource_at_fault() -> None:
    acked = NodeState("n1", "g", acked_version="12.40")
    nacked = NodeState(
        "n2", "g", acked_version="11", last_nack_version="12",
        last_nack_message="listener 'web': cannot listen on http 0.0.0.0:80: Permission denied",
    )  # fmt: skip
    old_nack = NodeState("n3", "g", acked_version="11", last_nack_version="10", last_nack_message="old")
    gone = NodeState("n4", "g", connected=False)
    other = NodeState("n5", "h")
    assert answer(acked, 12).state == "acked" and answer(acked, 13).state == "pending"
    refused = answer(nacked, 12)
    assert (refused.state, refused.resource) == ("refused", "listeners/web")
    assert refused.reason == "cannot listen on http 0.0.0.0:80: Permission denied"
    assert answer(old_nack, 12).state == "pending"
    assert [a.node_id for a in answers([acked, nacked, old_nack, gone, other], 12, ["g"])] == ["n1", "n2", "n3"]
    assert config_version("") == -1 and config_version("7.3") == 7
    assert resource_of("policy 'rl': bad") == ("policies/rl", "bad")
    assert resource_of("snapshot does not parse") == ("", "snapshot does not parse")


def test_a_node_that_set_a_resource_aside_answers_failing() -> None:
    blocked = {"kind": "listener", "name": "web", "message": "listener 'web': cannot listen", "kept_previous": True}
    partial = NodeState("n1", "g", acked_version="12.40", failing_resources=[blocked])
    a = answer(partial, 12)
    assert (a.state, a.resource, a.reason) == ("failing", "listeners/web", "listener 'web': cannot listen")
    assert a.as_dict()["failing_resources"] == [blocked]
    assert answer(partial, 13).state == "pending"
    assert summary([a, answer(NodeState("n2", "g", acked_version="12"), 12)]) == {
        "acked": 1, "failing": 1, "refused": 0, "pending": 0,
    }  # fmt: skip


# -- pinning in the snapshot cache ----------------------------------------------------------


def test_the_cache_keeps_held_nodes_on_the_version_before() -> None:
    web = {"name": "web", "protocol": "http", "address": "127.0.0.1", "port": 8001}
    old = config(listeners=[web])
    new = config(listeners=[{**web, "port": 8002}])

    async def scenario() -> None:
        cache = SnapshotCache()
        cache.publish(1, old)
        cache.set_hold(Hold("r", 1, old, frozenset({"default"}), released_nodes=frozenset({"canary"})))
        seq_before = cache.group_seq("default")
        cache.publish(2, new)
        assert cache.node_version("default", "canary/w0") == "2"
        assert cache.node_version("default", "other") == "1"
        assert cache.node_version("edge", "other") == "2"  # a group the rollout does not hold
        _, version, packed = await cache.node_snapshot("default", "other")
        snap = config_pb2.Snapshot()
        packed.Unpack(snap)
        assert version == "1" and snap.listeners[0].port == 8001
        _, version, packed = await cache.node_snapshot("default", "canary")
        packed.Unpack(snap)
        assert version == "2" and snap.listeners[0].port == 8002
        seq = cache.group_seq("default")
        assert seq > seq_before
        cache.set_hold(Hold("r", 1, old, frozenset({"default"}), released_nodes=frozenset({"canary"})))
        assert cache.group_seq("default") == seq  # the same pins: nothing moves
        cache.set_hold(None)
        assert cache.group_seq("default") > seq and cache.node_version("default", "other") == "2"

    asyncio.run(scenario())


def test_cores_import_no_network_library() -> None:
    code = (
        "import sys, controlplane.rollouts.analysis, controlplane.rollouts.load, controlplane.rollouts.plan; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'trio', 'httpx', 'fastapi', 'uvicorn'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
