"""The shared health verdict and success rule (fluxcommon.health), and the node, control plane
and agent agreeing on them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.registry.health_state import InstanceHealth
from controlplane.registry.health_state import Verdict as RegistryVerdict
from dataplane.balancing import EndpointState
from dataplane.health.state import ActiveCheckPolicy, record_check
from fluxcommon.health import HTTP_2XX, HTTP_2XX_3XX, State, StatusRule, Thresholds, Verdict, judge

FAST = settings(max_examples=200, deadline=None)

thresholds = st.integers(min_value=1, max_value=6)
results = st.lists(st.booleans(), max_size=60)
states = st.sampled_from(["unknown", "healthy", "unhealthy"])


def by_definition(start: State, healthy: int, unhealthy: int, seq: list[bool]) -> list[State]:
    """The state after each result: the kind of the last run that reached its threshold."""
    out: list[State] = []
    state, run, kind = start, 0, None
    for ok in seq:
        run = run + 1 if ok == kind else 1
        kind = ok
        if ok and run >= healthy:
            state = "healthy"
        elif not ok and run >= unhealthy:
            state = "unhealthy"
        out.append(state)
    return out


@given(start=states, hi=thresholds, lo=thresholds, seq=results)
@FAST
def test_judge_follows_the_definition(start: State, hi: int, lo: int, seq: list[bool]) -> None:
    state, n_ok, n_fail = start, 0, 0
    for ok, want in zip(seq, by_definition(start, hi, lo, seq), strict=True):
        before = state
        state, n_ok, n_fail, changed = judge(state, n_ok, n_fail, ok, Thresholds(hi, lo))
        assert state == want
        assert changed == (state != before)
        assert (n_ok, n_fail) == ((n_ok, 0) if ok else (0, n_fail))  # one run counted at a time
        assert (n_ok if ok else n_fail) >= 1


@given(start=states, hi=thresholds, lo=thresholds, seq=results)
@FAST
def test_no_faster_flapping_than_the_thresholds(start: State, hi: int, lo: int, seq: list[bool]) -> None:
    v = Verdict(hi, lo, start)
    last: int | None = None
    for i, ok in enumerate(seq):
        new = v.observe(ok)
        if new is not None:
            if last is not None:
                assert i - last >= (hi if new == "healthy" else lo)
            last = i


@given(start=st.booleans(), hi=thresholds, lo=thresholds, seq=results)
@FAST
def test_node_registry_and_agent_share_one_verdict(start: bool, hi: int, lo: int, seq: list[bool]) -> None:
    """The node's endpoint state, the registry's instance health and the agent's verdict move
    together on the same results."""
    ep = EndpointState("10.0.0.1", 80, healthy=start)
    instance = InstanceHealth(hi, lo, "healthy" if start else "unhealthy")
    shared = Verdict(hi, lo, "healthy" if start else "unhealthy")
    for ok in seq:
        node_changed = record_check(ep, ok, ActiveCheckPolicy(hi, lo))
        assert (shared.observe(ok) is not None) == node_changed
        instance.verdict.observe(ok)
        assert ep.healthy == (shared.state == "healthy") == (instance.verdict.state == "healthy")
        assert (ep.checks_ok, ep.checks_failed) == (shared.consecutive_ok, shared.consecutive_fail)


@given(max_failed=thresholds, seq=results)
@FAST
def test_the_agents_rule_is_the_verdict_with_one_success_to_recover(max_failed: int, seq: list[bool]) -> None:
    """frp's healthCheck: withdrawn after `maxFailed` failures in a row, back after one success."""
    v = Verdict(1, max_failed, "healthy")
    failures = 0
    for ok in seq:
        failures = 0 if ok else failures + 1
        v.observe(ok)
        assert (v.state == "unhealthy") == (failures >= max_failed)


def test_retune_keeps_the_state_and_restarts_the_counts() -> None:
    v = Verdict(2, 2)
    assert [v.observe(False), v.observe(False)] == [None, "unhealthy"]
    v.observe(True)
    v.retune(3, 1)
    assert (v.state, v.consecutive_ok, v.consecutive_fail) == ("unhealthy", 0, 0)
    assert [v.observe(True) for _ in range(3)] == [None, None, "healthy"]
    assert v.observe(False) == "unhealthy"


def test_thresholds_below_one_are_refused() -> None:
    for hi, lo in ((0, 1), (1, 0), (-1, 3)):
        with pytest.raises(ValueError):
            Thresholds(hi, lo)
        with pytest.raises(ValueError):
            Verdict(hi, lo)
    assert RegistryVerdict is Verdict  # the registry holds no verdict of its own


# -- the success rule ------------------------------------------------------------------------


def test_the_documented_defaults() -> None:
    assert [s for s in (100, 199, 200, 204, 299, 301, 399, 400, 404, 500) if HTTP_2XX_3XX.accepts(s)] == [
        200, 204, 299, 301, 399,
    ]  # fmt: skip
    assert [s for s in (199, 200, 204, 299, 300, 302, 404) if HTTP_2XX.accepts(s)] == [200, 204, 299]
    assert (str(HTTP_2XX_3XX), str(HTTP_2XX)) == ("200-399", "200-299")


@given(expected=st.lists(st.integers(100, 599), max_size=5), status=st.integers(0, 999))
@FAST
def test_expected_statuses_replace_the_default(expected: list[int], status: int) -> None:
    for default in (HTTP_2XX_3XX, HTTP_2XX):
        rule = StatusRule.of(expected, default)
        if expected:
            assert rule.accepts(status) == (status in expected)
            assert str(rule) == ",".join(map(str, expected))
        else:
            assert rule is default
