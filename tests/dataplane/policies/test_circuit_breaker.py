"""Circuit breaker core: unit tests of every edge and property tests against a reference model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dataplane.policies.circuit import REJECTED, WINDOW_BUCKETS, CircuitBreaker
from fluxcommon.policy_config import CircuitBreakerConfig

FAST = 0.001  # seconds: never slow for the slow_call_ms used here


def make(
    *,
    failure_threshold: int = 0,
    error_rate: float = 0.0,
    min_requests: int = 1,
    window_ms: int = 1000,
    slow_call_ms: int = 0,
    slow_call_rate: float = 0.5,
    open_for_ms: int = 1000,
    half_open_requests: int = 1,
    now: float = 0.0,
) -> CircuitBreaker:
    # Ms fields read a bare number as seconds: give them "…ms" strings.
    cfg = CircuitBreakerConfig(
        failure_threshold=failure_threshold,
        error_rate=error_rate,
        min_requests=min_requests,
        window=f"{window_ms}ms",
        slow_call_ms=slow_call_ms,
        slow_call_rate=slow_call_rate,
        open_for=f"{open_for_ms}ms",
        half_open_requests=half_open_requests,
    )
    return CircuitBreaker(cfg, now)


def call(cb: CircuitBreaker, now: float, ok: bool = True, duration: float = FAST) -> int:
    permit = cb.allow(now)
    assert permit, f"rejected at {now} in state {cb.state}"
    cb.record(now, ok, duration, permit)
    return permit


def trip(cb: CircuitBreaker, now: float) -> None:
    """Fail calls until the breaker opens (it must have a failure threshold)."""
    for _ in range(100):
        call(cb, now, ok=False)
        if cb.state == "open":
            return
    raise AssertionError("never tripped")


# ---------------------------------------------------------------- closed -> open


def test_consecutive_failures_trip_and_success_resets_the_run() -> None:
    cb = make(failure_threshold=3)
    call(cb, 0.0, ok=False)
    call(cb, 0.0, ok=False)
    call(cb, 0.0, ok=True)
    assert cb.failures_in_a_row == 0
    call(cb, 0.1, ok=False)
    call(cb, 0.2, ok=False)
    assert cb.state == "closed"
    call(cb, 0.3, ok=False)
    assert cb.state == "open"
    assert cb.last_trip == "consecutive_failures"
    assert cb.opens == 1


def test_consecutive_failures_ignore_the_window() -> None:
    cb = make(failure_threshold=2, window_ms=100)
    call(cb, 0.0, ok=False)
    call(cb, 50.0, ok=False)  # long after the window: the run still counts
    assert cb.state == "open"


def test_failure_threshold_zero_is_off() -> None:
    cb = make(failure_threshold=0)
    for i in range(50):
        call(cb, i * 0.01, ok=False)
    assert cb.state == "closed"
    assert cb.failures_in_a_row == 50


def test_error_rate_waits_for_min_requests() -> None:
    cb = make(error_rate=0.5, min_requests=4)
    for _ in range(3):
        call(cb, 0.0, ok=False)
    assert cb.state == "closed"  # 3 of 3 failed, but only 3 calls
    call(cb, 0.0, ok=True)  # 3 of 4 failed: even a success can complete the sample
    assert cb.state == "open"
    assert cb.last_trip == "error_rate"


def test_error_rate_below_threshold_stays_closed() -> None:
    cb = make(error_rate=0.5, min_requests=4)
    for ok in (True, False, True, True, False, True, True):  # 2/7 at worst... never >= 0.5
        call(cb, 0.0, ok=ok)
    assert cb.state == "closed"
    call(cb, 0.0, ok=False)
    call(cb, 0.0, ok=False)  # 4 of 9 < 0.5
    assert cb.state == "closed"
    call(cb, 0.0, ok=False)  # 5 of 10 >= 0.5
    assert cb.state == "open"


def test_error_rate_forgets_calls_outside_the_window() -> None:
    cb = make(error_rate=0.5, min_requests=4, window_ms=1000)  # buckets of 100 ms
    for _ in range(3):
        call(cb, 0.0, ok=False)
    # 1.0 s later bucket 0 has left the window (bucket 10 and the nine before it: 1..10)
    call(cb, 1.0, ok=True)
    snap = cb.snapshot(1.0)
    assert snap["window"] == {"length_ms": 1000, "calls": 1, "failures": 0, "slow": 0}
    for _ in range(2):
        call(cb, 1.0, ok=True)
    call(cb, 1.0, ok=False)
    assert cb.state == "closed"  # 1 of 4


def test_window_keeps_the_last_buckets() -> None:
    cb = make(error_rate=0.5, min_requests=4, window_ms=1000)
    for _ in range(3):
        call(cb, 0.05, ok=False)  # bucket 0
    call(cb, 0.99, ok=True)  # bucket 9: bucket 0 is still inside
    assert cb.state == "open"


def test_error_rate_zero_is_off() -> None:
    cb = make(error_rate=0.0, min_requests=1)
    for _ in range(30):
        call(cb, 0.0, ok=False)
    assert cb.state == "closed"


def test_slow_calls_trip_on_rate() -> None:
    cb = make(slow_call_ms=100, slow_call_rate=0.5, min_requests=4)
    call(cb, 0.0, duration=0.5)
    call(cb, 0.0, duration=0.05)
    call(cb, 0.0, duration=0.05)
    assert cb.state == "closed"
    call(cb, 0.0, duration=0.101)  # 2 of 4 slow
    assert cb.state == "open"
    assert cb.last_trip == "slow_call_rate"


def test_slow_means_strictly_slower() -> None:
    cb = make(slow_call_ms=100, slow_call_rate=0.1, min_requests=1)
    for _ in range(10):
        call(cb, 0.0, duration=0.1)
    assert cb.state == "closed"
    assert cb.snapshot(0.0)["window"]["slow"] == 0


def test_slow_failures_count_as_failures_and_slow() -> None:
    cb = make(slow_call_ms=100, slow_call_rate=1.0, min_requests=3)
    call(cb, 0.0, ok=False, duration=1.0)
    call(cb, 0.0, ok=False, duration=1.0)
    snap = cb.snapshot(0.0)
    assert snap["window"]["failures"] == 2 and snap["window"]["slow"] == 2
    call(cb, 0.0, ok=True, duration=1.0)
    assert cb.state == "open"


def test_slow_call_ms_zero_is_off() -> None:
    cb = make(slow_call_ms=0, slow_call_rate=0.0, min_requests=1)
    for _ in range(10):
        call(cb, 0.0, duration=100.0)
    assert cb.state == "closed"


def test_slow_call_rate_zero_means_any_slow_call() -> None:
    cb = make(slow_call_ms=100, slow_call_rate=0.0, min_requests=3)
    for _ in range(5):
        call(cb, 0.0)
    assert cb.state == "closed"
    call(cb, 0.0, duration=0.2)
    assert cb.state == "open"


# ---------------------------------------------------------------- open -> half_open


def test_open_fails_fast_until_open_for() -> None:
    cb = make(failure_threshold=1, open_for_ms=500)
    trip(cb, 10.0)
    assert cb.next_probe_at == pytest.approx(10.5)
    assert cb.allow(10.0) == REJECTED
    assert cb.allow(10.499) == REJECTED
    assert cb.rejected == 2
    assert cb.state == "open"
    assert cb.allow(10.5)
    assert cb.state == "half_open"
    assert cb.since == pytest.approx(10.5)
    assert cb.next_probe_at is None


def test_advance_and_snapshot_notice_half_open() -> None:
    cb = make(failure_threshold=1, open_for_ms=500)
    trip(cb, 0.0)
    assert cb.advance(0.2) == "open"
    assert cb.snapshot(0.2)["next_probe_in_s"] == pytest.approx(0.3)
    assert cb.snapshot(0.7)["state"] == "half_open"
    assert cb.state == "half_open"
    assert cb.snapshot(0.7)["since"] == pytest.approx(0.5)


def test_open_for_zero_goes_half_open_at_once() -> None:
    cb = make(failure_threshold=1, open_for_ms=0)
    trip(cb, 3.0)
    assert cb.allow(3.0)
    assert cb.state == "half_open"


# ---------------------------------------------------------------- half_open -> closed / open


def test_half_open_admits_at_most_half_open_requests() -> None:
    cb = make(failure_threshold=1, open_for_ms=0, half_open_requests=2)
    trip(cb, 0.0)
    p1, p2 = cb.allow(0.0), cb.allow(0.0)
    assert p1 and p2
    assert cb.allow(0.0) == REJECTED
    cb.release(0.0, p1)  # the client went away: slot free again
    p3 = cb.allow(0.0)
    assert p3
    assert cb.allow(0.0) == REJECTED
    cb.record(0.1, True, FAST, p2)
    # p2's success keeps its slot: only one more success is needed and p3 is in flight
    assert cb.allow(0.1) == REJECTED
    assert cb.state == "half_open"
    cb.record(0.2, True, FAST, p3)
    assert cb.state == "closed"
    assert cb.since == pytest.approx(0.2)


def test_closing_resets_window_and_run() -> None:
    cb = make(failure_threshold=5, error_rate=0.5, min_requests=4, open_for_ms=0)
    for _ in range(3):
        call(cb, 0.0, ok=True)
    for _ in range(3):
        call(cb, 0.0, ok=False)
    assert cb.state == "open"
    call(cb, 0.0, ok=True)  # the probe
    assert cb.state == "closed"
    snap = cb.snapshot(0.0)
    assert snap["window"]["calls"] == 0
    assert snap["failures_in_a_row"] == 0
    call(cb, 0.0, ok=False)
    assert cb.state == "closed"  # 1 failure, 1 call: below min_requests


def test_probe_failure_reopens_with_fresh_open_for() -> None:
    cb = make(failure_threshold=1, open_for_ms=1000, half_open_requests=3)
    trip(cb, 0.0)
    p1 = cb.allow(1.0)
    p2 = cb.allow(1.0)
    cb.record(1.2, True, FAST, p1)
    cb.record(1.5, False, FAST, p2)
    assert cb.state == "open"
    assert cb.last_trip == "probe_failed"
    assert cb.opens == 2
    assert cb.allow(2.4) == REJECTED
    assert cb.allow(2.5)


def test_slow_probe_reopens() -> None:
    cb = make(failure_threshold=1, slow_call_ms=100, open_for_ms=0, half_open_requests=2)
    trip(cb, 0.0)
    p = cb.allow(0.0)
    cb.record(0.5, True, 0.5, p)
    assert cb.state == "open"
    assert cb.last_trip == "probe_slow"


# ---------------------------------------------------------------- stale permits


def test_late_success_from_before_the_trip_cannot_close() -> None:
    cb = make(failure_threshold=1, open_for_ms=0, half_open_requests=1)
    early = cb.allow(0.0)
    call(cb, 0.0, ok=False)
    assert cb.state == "open"
    cb.record(0.1, True, FAST, early)
    assert cb.state == "open"
    probe = cb.allow(0.1)
    assert cb.state == "half_open"
    cb.record(0.2, True, FAST, early)  # still stale in half-open
    assert cb.state == "half_open"
    assert cb.allow(0.2) == REJECTED  # the probe still holds the only slot
    cb.record(0.3, True, FAST, probe)
    assert cb.state == "closed"


def test_late_failure_from_closed_is_not_a_probe_failure() -> None:
    cb = make(failure_threshold=1, open_for_ms=0)
    early = cb.allow(0.0)
    call(cb, 0.0, ok=False)
    cb.allow(0.0)  # half-open now
    cb.record(0.1, False, FAST, early)
    assert cb.state == "half_open"
    cb.release(0.1, early)
    assert cb.allow(0.1) == REJECTED


def test_late_probe_outcome_after_reopen_is_ignored() -> None:
    cb = make(failure_threshold=1, open_for_ms=0, half_open_requests=2)
    trip(cb, 0.0)
    p1, p2 = cb.allow(0.0), cb.allow(0.0)
    cb.record(0.1, False, FAST, p1)
    assert cb.state == "open"
    q1 = cb.allow(0.1)
    assert cb.state == "half_open"
    cb.record(0.2, True, FAST, p2)  # from the previous half-open
    q2 = cb.allow(0.2)
    assert q2  # p2 took no slot of this half-open
    cb.record(0.3, True, FAST, q1)
    assert cb.state == "half_open"
    cb.record(0.3, True, FAST, q2)
    assert cb.state == "closed"


def test_permit_from_an_earlier_closed_period_is_stale() -> None:
    cb = make(failure_threshold=1, open_for_ms=0)
    old = cb.allow(0.0)
    call(cb, 0.0, ok=False)
    call(cb, 0.0, ok=True)  # the probe closes it again
    assert cb.state == "closed"
    cb.record(0.1, False, FAST, old)
    assert cb.state == "closed"
    assert cb.snapshot(0.1)["window"]["calls"] == 0


def test_rejected_and_unknown_permits_are_ignored() -> None:
    cb = make(failure_threshold=1, open_for_ms=0)
    cb.record(0.0, False, FAST, REJECTED)
    cb.record(0.0, False, FAST, 999)
    cb.release(0.0, 999)
    assert cb.state == "closed"
    assert cb.snapshot(0.0)["window"]["calls"] == 0


def test_settled_probe_cannot_be_counted_twice() -> None:
    cb = make(failure_threshold=1, open_for_ms=0, half_open_requests=2)
    trip(cb, 0.0)
    p = cb.allow(0.0)
    cb.record(0.0, True, FAST, p)
    cb.record(0.0, True, FAST, p)
    assert cb.state == "half_open"
    assert cb.snapshot(0.0)["probes"] == {"in_flight": 0, "succeeded": 1, "required": 2}


# ---------------------------------------------------------------- snapshot, memory


def test_snapshot_is_json_ready() -> None:
    cb = make(failure_threshold=2, error_rate=0.9, min_requests=10, slow_call_ms=100, now=5.0)
    call(cb, 5.0, ok=False, duration=0.3)
    call(cb, 5.1, ok=True)
    snap = cb.snapshot(5.2)
    json.dumps(snap)
    assert snap["state"] == "closed"
    assert snap["since"] == 5.0
    assert snap["in_state_s"] == pytest.approx(0.2)
    assert snap["failures_in_a_row"] == 0
    assert snap["window"] == {"length_ms": 1000, "calls": 2, "failures": 1, "slow": 1}
    assert snap["error_rate"] == 0.5 and snap["slow_rate"] == 0.5
    assert snap["opens"] == 0 and snap["next_probe_at"] is None and snap["last_trip"] is None
    call(cb, 5.2, ok=False)
    call(cb, 5.2, ok=False)
    snap = cb.snapshot(5.3)
    json.dumps(snap)
    assert snap["state"] == "open" and snap["opens"] == 1
    assert snap["next_probe_at"] == pytest.approx(6.2)
    assert snap["last_trip"] == "consecutive_failures"


def test_memory_stays_bounded() -> None:
    cb = make(error_rate=0.99, min_requests=10**9, window_ms=100)
    now = 1000.0
    for _ in range(5000):
        call(cb, now, ok=True)
        now += 0.0137
    assert len(cb._b_calls) == WINDOW_BUCKETS
    snap = cb.snapshot(now)
    assert snap["window"]["calls"] <= 10  # 100 ms of calls 13.7 ms apart (plus rounding)


# ---------------------------------------------------------------- reference model


@dataclass
class Model:
    """The rules written out plainly: a list of calls instead of buckets, generations for stale permits."""

    cfg: CircuitBreakerConfig
    state: str = "closed"
    gen: int = 0
    streak: int = 0
    tripped_at: float = 0.0
    opens: int = 0
    rejected: int = 0
    reason: str | None = None
    events: list[tuple[int, bool, bool]] = field(default_factory=list)  # (bucket, failed, slow)
    issued: dict[int, int] = field(default_factory=dict)  # permit -> generation
    probes: set[int] = field(default_factory=set)
    probe_ok: int = 0

    def bucket(self, now: float) -> int:
        return math.floor(now * (1000 * WINDOW_BUCKETS) / max(1, self.cfg.window))

    def window(self, now: float) -> tuple[int, int, int]:
        if self.state != "closed":
            return 0, 0, 0
        b = self.bucket(now)
        inside = [e for e in self.events if b - WINDOW_BUCKETS < e[0] <= b]
        return len(inside), sum(e[1] for e in inside), sum(e[2] for e in inside)

    def move(self, state: str) -> None:
        self.state = state
        self.gen += 1
        self.events = []
        self.probes = set()
        self.probe_ok = 0

    def trip(self, now: float, reason: str) -> None:
        self.move("open")
        self.tripped_at = now
        self.opens += 1
        self.reason = reason

    def advance(self, now: float) -> None:
        if self.state == "open" and now >= self.tripped_at + self.cfg.open_for / 1000:
            self.move("half_open")

    def allow(self, now: float) -> bool:
        self.advance(now)
        if self.state == "open" or (
            self.state == "half_open" and len(self.probes) + self.probe_ok >= self.cfg.half_open_requests
        ):
            self.rejected += 1
            return False
        return True

    def admitted(self, permit: int) -> None:
        self.issued[permit] = self.gen
        if self.state == "half_open":
            self.probes.add(permit)

    def record(self, now: float, permit: int, ok: bool, duration_ms: int) -> None:
        if self.issued.pop(permit) != self.gen:
            return
        slow = self.cfg.slow_call_ms > 0 and duration_ms > self.cfg.slow_call_ms
        if self.state == "closed":
            self.events.append((self.bucket(now), not ok, slow))
            self.streak = 0 if ok else self.streak + 1
            calls, fails, slows = self.window(now)
            sampled = calls >= self.cfg.min_requests
            if self.cfg.failure_threshold and self.streak >= self.cfg.failure_threshold:
                self.trip(now, "consecutive_failures")
            elif sampled and self.cfg.error_rate > 0 and fails / calls >= self.cfg.error_rate:
                self.trip(now, "error_rate")
            elif sampled and slows > 0 and slows / calls >= self.cfg.slow_call_rate:
                self.trip(now, "slow_call_rate")
        elif self.state == "half_open":
            self.probes.remove(permit)
            if ok and not slow:
                self.probe_ok += 1
                if self.probe_ok == self.cfg.half_open_requests:
                    self.move("closed")
                    self.streak = 0
            else:
                self.trip(now, "probe_slow" if ok else "probe_failed")

    def release(self, permit: int) -> None:
        if self.issued.pop(permit) == self.gen and self.state == "half_open":
            self.probes.discard(permit)


EDGES = {("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("half_open", "closed")}
OUTCOMES = ("ok", "fail", "slow_ok", "slow_fail", "edge_ok")

configs = st.builds(
    dict,
    failure_threshold=st.integers(0, 4),
    error_rate=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    min_requests=st.integers(1, 6),
    window_ms=st.sampled_from([1, 50, 100, 1000]),
    slow_call_ms=st.sampled_from([0, 0, 100]),
    slow_call_rate=st.sampled_from([0.0, 0.5, 1.0]),
    open_for_ms=st.sampled_from([0, 50, 200]),
    half_open_requests=st.integers(1, 3),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0, 1, 5, 10, 20, 49, 50, 51, 100, 250, 1500])),
        st.tuples(st.just("allow")),
        st.tuples(st.just("allow")),
        st.tuples(st.just("record"), st.integers(0, 7), st.sampled_from(OUTCOMES)),
        st.tuples(st.just("record"), st.integers(0, 7), st.sampled_from(OUTCOMES)),
        st.tuples(st.just("release"), st.integers(0, 7)),
        st.tuples(st.just("snapshot")),
    ),
    min_size=20,
    max_size=100,
)


@settings(max_examples=400, deadline=None)
@given(kw=configs, start_ms=st.integers(0, 10**7), steps=ops)
def test_breaker_matches_reference_model(kw: dict, start_ms: int, steps: list[tuple]) -> None:
    now_ms = start_ms
    cb = make(now=now_ms / 1000, **kw)
    model = Model(cb.config)
    cfg = cb.config
    outstanding: list[int] = []  # permits not yet recorded or released
    opened_at: float | None = None  # when the breaker was last seen to open
    probe_successes = 0  # successful current-generation probe records since entering half-open
    probe_gen_start = 0  # permits above this were issued in the current half-open
    max_permit = 0

    for step in steps:
        now = now_ms / 1000
        before, max_before = cb.state, max_permit
        kind = step[0]
        if kind == "advance":
            now_ms += step[1]
            continue
        if kind == "allow":
            permit = cb.allow(now)
            assert bool(permit) == model.allow(now), (before, cb.state, model.state)
            if permit:
                assert cb.state != "open"
                assert permit > max_permit
                max_permit = permit
                outstanding.append(permit)
                model.admitted(permit)
            elif cb.state == "open":
                assert opened_at is not None and now < opened_at + cfg.open_for / 1000
        elif kind in ("record", "release") and outstanding:
            permit = outstanding.pop(step[1] % len(outstanding))
            if kind == "release":
                cb.release(now, permit)
                model.release(permit)
            else:
                outcome = step[2]
                ok = outcome in ("ok", "slow_ok", "edge_ok")
                if outcome.startswith("slow"):
                    duration_ms = cfg.slow_call_ms + 1 if cfg.slow_call_ms else 5000
                elif outcome == "edge_ok":
                    duration_ms = cfg.slow_call_ms  # exactly the threshold: not slow
                else:
                    duration_ms = 1
                slow = cfg.slow_call_ms > 0 and duration_ms > cfg.slow_call_ms
                if before == "half_open" and permit > probe_gen_start and ok and not slow:
                    probe_successes += 1
                cb.record(now, ok, duration_ms / 1000, permit)
                model.record(now, permit, ok, duration_ms)
        elif kind == "snapshot":
            snap = cb.snapshot(now)
            json.dumps(snap)
            model.advance(now)
            calls, fails, slows = model.window(now)
            assert snap["window"]["calls"] == calls
            assert snap["window"]["failures"] == fails
            assert snap["window"]["slow"] == slows
            assert snap["failures_in_a_row"] == model.streak
            assert snap["opens"] == model.opens
            assert snap["rejected"] == model.rejected
            assert snap["probes"]["in_flight"] == len(model.probes)
            assert snap["probes"]["succeeded"] == model.probe_ok
            assert 0.0 <= snap["error_rate"] <= 1.0 and 0.0 <= snap["slow_rate"] <= 1.0
            for value in (snap["window"]["calls"], snap["window"]["failures"], snap["window"]["slow"]):
                assert value >= 0
            if snap["state"] == "open":
                assert snap["next_probe_at"] == pytest.approx(opened_at + cfg.open_for / 1000)
            else:
                assert snap["next_probe_at"] is None

        after = cb.state
        assert after == model.state
        assert (cb.failures_in_a_row, cb.opens, cb.rejected) == (model.streak, model.opens, model.rejected)
        assert cb.last_trip == model.reason
        if after != before:
            assert (before, after) in EDGES
            event(f"{before} -> {after}" + (f" ({cb.last_trip})" if after == "open" else ""))
            if after == "open":
                opened_at = now
            if after == "half_open":
                assert opened_at is not None and now >= opened_at + cfg.open_for / 1000
                probe_successes = 0
                probe_gen_start = max_before
            if after == "closed":
                assert probe_successes == cfg.half_open_requests
        if after == "half_open":
            in_flight = [p for p in outstanding if p > probe_gen_start]
            assert len(in_flight) <= cfg.half_open_requests
            assert len(in_flight) + probe_successes <= cfg.half_open_requests
        assert cb.failures_in_a_row >= 0 and cb.opens >= 0 and cb.rejected >= 0
        assert cb._calls >= 0 and cb._fails >= 0 and cb._slow >= 0
        assert cb._fails <= cb._calls and cb._slow <= cb._calls
