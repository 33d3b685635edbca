"""Property tests of the endpoint health state machine (active thresholds, passive ejection)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dataplane.balancing import EndpointState
from dataplane.health import (
    ActiveCheckPolicy,
    OutlierPolicy,
    may_eject,
    next_release,
    record_check,
    record_request,
    release_ejections,
    reset_checks,
)

FAST = settings(max_examples=150, deadline=None)


def make_eps(n: int) -> list[EndpointState]:
    return [EndpointState(f"10.0.0.{i + 1}", 8000) for i in range(n)]


def assert_available_invariant(eps: Sequence[EndpointState]) -> None:
    for ep in eps:
        assert ep.available == (ep.healthy and not ep.draining and ep.ejected_until == 0.0), ep.as_dict()


# ---------------------------------------------------------------- active checks


def reference_health(results: list[bool], start: bool, healthy_t: int, unhealthy_t: int) -> list[bool]:
    """Health after each check: flips when the run of equal results ending there is long enough."""
    runs = [len(list(g)) for _, g in itertools.groupby(results)]
    run_len: list[int] = []
    for length in runs:
        run_len.extend(range(1, length + 1))
    out, healthy = [], start
    for ok, length in zip(results, run_len, strict=True):
        if ok and length >= healthy_t:
            healthy = True
        elif not ok and length >= unhealthy_t:
            healthy = False
        out.append(healthy)
    return out


@given(
    results=st.lists(st.booleans(), max_size=80),
    start=st.booleans(),
    healthy_t=st.integers(1, 6),
    unhealthy_t=st.integers(1, 6),
    draining=st.booleans(),
)
@FAST
def test_active_checks_match_reference(
    results: list[bool], start: bool, healthy_t: int, unhealthy_t: int, draining: bool
) -> None:
    ep = EndpointState("10.0.0.1", 80, draining=draining, healthy=start)
    policy = ActiveCheckPolicy(healthy_threshold=healthy_t, unhealthy_threshold=unhealthy_t)
    expected = reference_health(results, start, healthy_t, unhealthy_t)
    prev, last_flip = start, None
    for i, (ok, want) in enumerate(zip(results, expected, strict=True)):
        changed = record_check(ep, ok, policy, detail=f"check {i}")
        assert ep.healthy == want
        assert changed == (ep.healthy != prev)
        assert ep.last_check == f"check {i}"
        assert_available_invariant([ep])
        if changed:
            # no flapping: the flip needs a full streak after the previous flip
            if last_flip is not None:
                assert i - last_flip >= (healthy_t if ep.healthy else unhealthy_t)
            last_flip = i
        prev = ep.healthy


def test_active_check_thresholds_example() -> None:
    ep = EndpointState("10.0.0.1", 80)
    policy = ActiveCheckPolicy()  # 2 up, 3 down
    assert [record_check(ep, False, policy) for _ in range(3)] == [False, False, True]
    assert not ep.healthy and not ep.available and ep.last_check == "failed"
    assert record_check(ep, True, policy) is False
    assert record_check(ep, False, policy) is False  # streak broken
    assert [record_check(ep, True, policy) for _ in range(2)] == [False, True]
    assert ep.available and ep.last_check == "ok"


def test_reset_checks() -> None:
    ep = EndpointState("10.0.0.1", 80, healthy=False)
    ep.checks_failed = 7
    assert reset_checks(ep) is True
    assert ep.healthy and ep.available and ep.checks_failed == 0
    assert reset_checks(ep) is False


# ---------------------------------------------------------------- passive ejection


def test_ejection_at_exactly_consecutive_failures() -> None:
    eps = make_eps(4)
    ep = eps[0]
    policy = OutlierPolicy(consecutive_failures=3, max_ejection_percent=100)
    assert record_request(ep, False, 10.0, policy, eps) is False
    assert record_request(ep, False, 10.0, policy, eps) is False
    assert record_request(ep, True, 10.0, policy, eps) is False  # success resets the streak
    assert record_request(ep, False, 11.0, policy, eps) is False
    assert record_request(ep, False, 11.0, policy, eps) is False
    assert record_request(ep, False, 12.0, policy, eps) is True
    assert ep.ejected_until == 12.0 + 30.0 and ep.ejections == 1 and not ep.available
    # failures of requests still in flight do not extend the ejection
    for _ in range(10):
        assert record_request(ep, False, 13.0, policy, eps) is False
    assert ep.ejected_until == 42.0
    assert (ep.total_requests, ep.total_failures) == (16, 15)


def test_backoff_doubles_and_caps_then_decays() -> None:
    eps = make_eps(2)
    ep = eps[0]
    policy = OutlierPolicy(consecutive_failures=1, base_ejection_s=10.0, max_ejection_s=60.0)
    now = 100.0
    durations = []
    for _ in range(6):
        assert record_request(ep, False, now, policy, eps) is True
        durations.append(ep.ejected_until - now)
        assert next_release(eps) == ep.ejected_until
        assert release_ejections(eps, ep.ejected_until - 0.001) == []
        now = ep.ejected_until
        assert release_ejections(eps, now) == [ep]
        assert ep.available and next_release(eps) is None
    assert durations == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    # a success soon after the release keeps the back-off ...
    record_request(ep, True, now + 60.0, policy, eps)
    assert ep.ejections == 6
    # ... one more than max_ejection_s after it forgets it
    record_request(ep, True, now + 60.5, policy, eps)
    assert ep.ejections == 0
    assert record_request(ep, False, now + 61.0, policy, eps) is True
    assert ep.ejected_until == now + 71.0


def test_release_uses_ejected_until_only() -> None:
    eps = make_eps(4)
    policy = OutlierPolicy(consecutive_failures=1, base_ejection_s=5.0, max_ejection_percent=100)
    record_request(eps[0], False, 0.5, policy, eps)
    record_request(eps[1], False, 2.0, policy, eps)
    assert next_release(eps) == 5.5
    assert release_ejections(eps, 5.49) == []
    assert release_ejections(eps, 6.0) == [eps[0]]
    assert next_release(eps) == 7.0
    assert release_ejections(eps, 100.0) == [eps[1]]
    assert next_release(eps) is None
    assert_available_invariant(eps)


@pytest.mark.parametrize(
    ("size", "percent", "allowed"),
    [(1, 50, 0), (1, 100, 1), (2, 50, 1), (2, 10, 1), (2, 100, 2), (3, 50, 1), (4, 50, 2), (10, 30, 3), (5, 0, 0)],
)
def test_max_ejection_percent(size: int, percent: int, allowed: int) -> None:
    eps = make_eps(size)
    policy = OutlierPolicy(consecutive_failures=1, max_ejection_percent=percent)
    ejected = [record_request(ep, False, 1.0, policy, eps) for ep in eps]
    assert sum(ejected) == allowed
    # a refused ejection is retried on the next failure once there is room
    if 0 < allowed < size:
        release_ejections(eps, 1000.0)
        assert record_request(eps[-1], False, 1000.0, policy, eps) is True


def test_draining_and_unhealthy_stay_unavailable_after_release() -> None:
    eps = make_eps(2)
    policy = OutlierPolicy(consecutive_failures=1)
    record_request(eps[0], False, 1.0, policy, eps)
    eps[0].update_config(1, draining=True)
    release_ejections(eps, 100.0)
    assert not eps[0].available and eps[0].ejected_until == 0.0
    eps[0].update_config(1, draining=False)
    assert eps[0].available


@dataclass
class Shadow:
    """Reference model of one endpoint's passive health."""

    streak: int = 0
    until: float = 0.0
    ejections: int = 0
    released_at: float = 0.0


ops = st.one_of(
    st.tuples(st.just("req"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("burst"), st.integers(0, 9), st.integers(1, 6)),  # failures in a row
    # time passes (in units of max_ejection_s), then maybe the caller's release timer fires
    st.tuples(st.just("tick"), st.floats(0.0, 1.5), st.booleans()),
    st.tuples(st.just("release")),
    st.tuples(st.just("drain"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("check"), st.integers(0, 9), st.booleans()),
)


@given(
    size=st.integers(1, 10),
    k=st.integers(1, 5),
    base=st.floats(1.0, 60.0),
    cap_factor=st.floats(1.0, 20.0),
    percent=st.integers(0, 100),
    script=st.lists(ops, min_size=5, max_size=80),
)
@FAST
def test_passive_ejection_matches_reference(
    size: int, k: int, base: float, cap_factor: float, percent: int, script: list[tuple]
) -> None:
    eps = make_eps(size)
    policy = OutlierPolicy(
        consecutive_failures=k, base_ejection_s=base, max_ejection_s=base * cap_factor, max_ejection_percent=percent
    )
    checks = ActiveCheckPolicy(healthy_threshold=1, unhealthy_threshold=1)
    shadow = [Shadow() for _ in eps]
    now = 1.0
    steps: list[tuple] = []
    for op in script:
        if op[0] == "burst":
            steps.extend([("req", op[1], False)] * op[2])
        elif op[0] == "tick" and op[2]:
            steps.extend([op, ("release",)])
        else:
            steps.append(op)
    for op in steps:
        if op[0] == "tick":
            now += op[1] * policy.max_ejection_s
        elif op[0] == "release":
            released = release_ejections(eps, now)
            want = [ep for ep, s in zip(eps, shadow, strict=True) if 0.0 < s.until <= now]
            assert released == want
            if want:
                event("released")
            for ep in want:
                s = shadow[eps.index(ep)]
                s.until, s.released_at, s.streak = 0.0, now, 0
        elif op[0] == "drain":
            ep = eps[op[1] % size]
            ep.update_config(ep.weight, draining=op[2])
        elif op[0] == "check":
            record_check(eps[op[1] % size], op[2], checks)
        else:
            i = op[1] % size
            ep, s = eps[i], shadow[i]
            got = record_request(ep, op[2], now, policy, eps)
            want = False
            if op[2]:
                s.streak = 0
                if s.ejections and s.until == 0.0 and now - s.released_at > policy.max_ejection_s:
                    event("back-off forgotten")
                    s.ejections = 0
            else:
                s.streak += 1
                out = sum(1 for x in shadow if x.until > 0.0)
                if s.until == 0.0 and s.streak >= k and not may_eject(out, size, percent):
                    event("ejection refused by max_ejection_percent")
                if s.until == 0.0 and s.streak >= k and may_eject(out, size, percent):
                    event("ejected")
                    want = True
                    s.until = now + min(policy.max_ejection_s, base * 2**s.ejections)
                    s.ejections += 1
                    s.streak = 0
            assert got == want
        # invariants after every step
        assert [ep.ejected_until for ep in eps] == pytest.approx([s.until for s in shadow])
        assert [ep.ejections for ep in eps] == [s.ejections for s in shadow]
        assert [ep.consecutive_failures for ep in eps] == [s.streak for s in shadow]
        assert_available_invariant(eps)
        out = sum(1 for ep in eps if ep.ejected)
        assert out * 100 <= percent * size or (out == 1 and size >= 2 and percent > 0)
        for ep in eps:
            if ep.ejected:
                assert ep.ejected_until - now <= policy.max_ejection_s + 1e-9
        times = [s.until for s in shadow if s.until > 0.0]
        assert next_release(eps) == (pytest.approx(min(times)) if times else None)


@given(ejected=st.integers(0, 20), size=st.integers(0, 20), percent=st.integers(0, 100))
@FAST
def test_may_eject_rule(ejected: int, size: int, percent: int) -> None:
    ok = may_eject(ejected, size, percent)
    if ok:
        after = ejected + 1
        assert after * 100 <= percent * size or (after == 1 and size >= 2 and percent > 0)
    elif ejected == 0 and size >= 2:
        assert percent == 0
