"""Sans-IO rate limiters: bounds under random arrivals (hypothesis, fake clock), Decision fields, eviction.

Capacity in the bound "admitted units in any interval of length t <= t * rate/per + capacity":
  token bucket            capacity = burst (rate when burst is 0)
  leaky bucket            capacity = burst + 1 (GCRA: burst may wait / pass early besides the one leaving)
  fixed window            capacity = 2 * rate (two windows meet at a boundary)
  sliding window counter  capacity = rate + 1 (the previous window's weight is rounded down to whole requests)
  sliding window log      capacity = rate, and exactly <= rate in every trailing window of length per
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.policies.ratelimit.algorithms import (
    SWEEP_INTERVAL,
    Decision,
    FixedWindow,
    LeakyBucket,
    SlidingWindowCounter,
    SlidingWindowLog,
    TokenBucket,
    make_limiter,
)

SLACK = 1e-6
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

rates = st.integers(min_value=1, max_value=12)
pers = st.sampled_from([0.1, 0.5, 1.0, 3.0])
bursts = st.integers(min_value=0, max_value=8)
starts = st.floats(min_value=0.0, max_value=10_000.0, allow_nan=False)
costs = st.integers(min_value=1, max_value=3)


@st.composite
def arrivals(draw: st.DrawFn, rate: int, per: float, n_max: int = 120) -> list[tuple[float, int]]:
    """(gap since the previous arrival, cost): bursts (gap 0), gaps around the emission interval, long pauses."""
    interval = per / rate
    gap = st.one_of(
        st.just(0.0),
        st.floats(min_value=0.0, max_value=interval * 2, allow_nan=False),
        st.floats(min_value=0.0, max_value=per * 2, allow_nan=False),
    )
    return draw(st.lists(st.tuples(gap, costs), min_size=1, max_size=n_max))


def run(limiter, start: float, seq: list[tuple[float, int]], key: str = "k") -> list[tuple[float, int, Decision]]:
    now = start
    out = []
    for gap, cost in seq:
        now += gap
        out.append((now, cost, limiter.acquire(key, now, cost)))
    return out


def admitted(events: list[tuple[float, int, Decision]]) -> list[tuple[float, int]]:
    return [(t, c) for t, c, d in events if d.allowed]


def max_excess(events: list[tuple[float, int]], rate_per_s: float) -> float:
    """Max over intervals [t_i, t_j] (starting and ending at admissions) of admitted units minus rate * length."""
    worst = -math.inf
    for i in range(len(events)):
        total = 0
        ti = events[i][0]
        for j in range(i, len(events)):
            total += events[j][1]
            worst = max(worst, total - rate_per_s * (events[j][0] - ti))
    return worst


# -- the generic bound ------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), rate=rates, per=pers, burst=bursts, start=starts)
def test_token_bucket_bound(data: st.DataObject, rate: int, per: float, burst: int, start: float) -> None:
    limiter = TokenBucket(rate, per, burst)
    events = run(limiter, start, data.draw(arrivals(rate, per)))
    capacity = burst if burst > 0 else rate
    assert max_excess(admitted(events), rate / per) <= capacity + SLACK


@PROPERTY
@given(data=st.data(), rate=rates, per=pers, burst=bursts, start=starts)
def test_leaky_bucket_reject_bound(data: st.DataObject, rate: int, per: float, burst: int, start: float) -> None:
    limiter = LeakyBucket(rate, per, burst, "reject")
    events = run(limiter, start, data.draw(arrivals(rate, per)))
    assert max_excess(admitted(events), rate / per) <= burst + 1 + SLACK
    assert all(d.delay == 0.0 for _t, _c, d in events)


@PROPERTY
@given(
    data=st.data(),
    rate=rates,
    per=pers,
    burst=bursts,
    start=starts,
    max_delay_frac=st.floats(min_value=0.0, max_value=1.5, allow_nan=False),
)
def test_leaky_bucket_queue_delays_and_spacing(
    data: st.DataObject, rate: int, per: float, burst: int, start: float, max_delay_frac: float
) -> None:
    max_delay = max_delay_frac * per
    limiter = LeakyBucket(rate, per, burst, "queue", max_delay)
    events = run(limiter, start, data.draw(arrivals(rate, per)))
    interval = per / rate
    passed = [(t, c, d) for t, c, d in events if d.allowed]
    assert all(0.0 <= d.delay <= max_delay + SLACK for _t, _c, d in passed)
    # forwarded (arrival + delay) requests leave at least cost * per/rate apart
    departures = [(t + d.delay, c) for t, c, d in passed]
    for (d1, c1), (d2, _c2) in itertools.pairwise(departures):
        assert d2 - d1 >= c1 * interval - SLACK
    assert max_excess(admitted(events), rate / per) <= burst + 1 + SLACK


@PROPERTY
@given(data=st.data(), rate=rates, per=pers, start=starts)
def test_fixed_window_bound(data: st.DataObject, rate: int, per: float, start: float) -> None:
    limiter = FixedWindow(rate, per)
    events = run(limiter, start, data.draw(arrivals(rate, per)))
    per_window: dict[int, int] = {}
    for t, c in admitted(events):
        w = int(t // per)
        per_window[w] = per_window.get(w, 0) + c
    assert all(n <= rate for n in per_window.values())
    assert max_excess(admitted(events), rate / per) <= 2 * rate + SLACK


@PROPERTY
@given(data=st.data(), rate=rates, per=pers, start=starts)
def test_sliding_window_log_exact(data: st.DataObject, rate: int, per: float, start: float) -> None:
    limiter = SlidingWindowLog(rate, per)
    events = admitted(run(limiter, start, data.draw(arrivals(rate, per))))
    for j, (tj, _cj) in enumerate(events):  # every trailing window (tj - per, tj] (to 1e-9 s)
        assert sum(c for t, c in events[: j + 1] if t > tj - per + 1e-9) <= rate
    assert max_excess(events, rate / per) <= rate + SLACK


@PROPERTY
@given(data=st.data(), rate=rates, per=pers, start=starts)
def test_sliding_window_counter_bound(data: st.DataObject, rate: int, per: float, start: float) -> None:
    limiter = SlidingWindowCounter(rate, per)
    events = admitted(run(limiter, start, data.draw(arrivals(rate, per))))
    per_window: dict[int, int] = {}
    for t, c in events:
        w = int(t // per)
        per_window[w] = per_window.get(w, 0) + c
    assert all(n <= rate for n in per_window.values())
    assert max_excess(events, rate / per) <= rate + 1 + SLACK


# -- saturation, keys, memory -------------------------------------------------------------------


def _all_limiters(rate: int, per: float, burst: int) -> list:
    return [
        TokenBucket(rate, per, burst),
        LeakyBucket(rate, per, burst, "reject"),
        LeakyBucket(rate, per, burst, "queue", per),
        FixedWindow(rate, per),
        SlidingWindowLog(rate, per),
        SlidingWindowCounter(rate, per),
    ]


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize(("rate", "per", "burst"), [(10, 1.0, 0), (7, 0.5, 3), (1, 0.2, 0)])
def test_long_run_throughput_converges_to_rate(index: int, rate: int, per: float, burst: int) -> None:
    limiter = _all_limiters(rate, per, burst)[index]
    duration = 200 * per
    step = per / rate / 7  # 7x the allowed rate
    n = int(duration / step)
    start = 1234.5678
    passed = sum(1 for i in range(n) if limiter.acquire("k", start + i * step).allowed)
    expected = rate / per * duration
    assert abs(passed - expected) <= 2 * rate + burst + 1, (passed, expected)


@PROPERTY
@given(
    rate=rates,
    per=pers,
    burst=bursts,
    start=starts,
    seq=st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.3, allow_nan=False), costs, st.sampled_from("abc")),
        max_size=80,
    ),
)
def test_keys_are_independent(rate: int, per: float, burst: int, start: float, seq: list) -> None:
    shared = _all_limiters(rate, per, burst)
    for i, limiter in enumerate(shared):
        alone = {k: _all_limiters(rate, per, burst)[i] for k in "abc"}
        now = start
        for gap, cost, key in seq:
            now += gap
            assert limiter.acquire(key, now, cost) == alone[key].acquire(key, now, cost)


@pytest.mark.parametrize("index", range(6))
def test_memory_is_bounded(index: int) -> None:
    rate, per = 5, 1.0
    limiter = _all_limiters(rate, per, 2)[index]
    limiter.max_keys = 50
    now = 100.0
    for i in range(5000):
        now += 0.0001
        limiter.acquire(f"ip{i}", now)
        assert len(limiter) <= 50
    # idle longer than every key's full-refill time (and a sweep interval): a new key sweeps them all
    now += 2 * per + SWEEP_INTERVAL + 1
    limiter.acquire("late", now)
    assert len(limiter) <= 1


def test_eviction_forgets_only_fresh_state() -> None:
    limiter = TokenBucket(2, 1.0)
    assert limiter.acquire("a", 10.0).allowed
    assert limiter.acquire("a", 10.0).allowed
    assert not limiter.acquire("a", 10.0).allowed
    assert limiter.sweep(10.5) == 0  # "a" still owes refill time
    assert limiter.sweep(11.0) == 1  # full again: same as a fresh key
    assert limiter.acquire("a", 11.0).remaining == 1


def test_least_recently_used_goes_first() -> None:
    limiter = FixedWindow(100, 60.0, max_keys=3)
    for key in "abc":
        limiter.acquire(key, 1.0)
    limiter.acquire("a", 1.5)  # "b" is now the least recently used
    limiter.acquire("d", 2.0)
    assert set(limiter._state) == {"a", "c", "d"}


def test_sliding_log_lowers_its_key_cap_for_big_rates() -> None:
    assert SlidingWindowLog(10, 1.0).max_keys == 100_000
    big = SlidingWindowLog(100_000, 1.0)
    assert big.max_keys * big.rate <= SlidingWindowLog.MAX_ENTRIES


# -- Decision fields --------------------------------------------------------------------------


def test_token_bucket_decisions() -> None:
    tb = TokenBucket(10, 1.0)  # capacity 10, one token per 0.1 s
    d = tb.acquire("k", 50.0)
    assert d == Decision(True, 10, 9, pytest.approx(0.1), 0.0)
    for _ in range(9):
        d = tb.acquire("k", 50.0)
    assert d.allowed and d.remaining == 0 and d.reset_after == pytest.approx(1.0)
    d = tb.acquire("k", 50.0)
    assert not d.allowed and d.remaining == 0
    assert d.retry_after == pytest.approx(0.1) and d.reset_after == pytest.approx(1.0)
    d = tb.acquire("k", 50.25)  # 2.5 tokens back
    assert d.allowed and d.remaining == 1
    assert not tb.acquire("k", 50.25, cost=2).allowed
    assert tb.acquire("k", 50.25, cost=11).retry_after == math.inf  # more than the capacity: never
    burst = TokenBucket(10, 1.0, burst=3)
    assert [burst.acquire("b", 0.0).allowed for _ in range(4)] == [True, True, True, False]


def test_leaky_bucket_reject_decisions() -> None:
    lb = LeakyBucket(10, 1.0, burst=2)  # one per 0.1 s, 2 more may pass early
    got = [lb.acquire("k", 7.0) for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got[:3]] == [2, 1, 0]
    assert got[2].reset_after == pytest.approx(0.3)
    assert got[3].retry_after == pytest.approx(0.1)
    assert lb.acquire("k", 7.1).allowed
    strict = LeakyBucket(10, 1.0)  # burst 0: one request per 0.1 s
    assert strict.acquire("s", 0.0).allowed
    assert not strict.acquire("s", 0.05).allowed
    assert strict.acquire("s", 0.1).allowed


def test_leaky_bucket_queue_decisions() -> None:
    lb = LeakyBucket(10, 1.0, burst=2, mode="queue", max_delay=0.15)
    d1, d2, d3 = (lb.acquire("k", 3.0) for _ in range(3))
    assert (d1.allowed, d1.delay) == (True, 0.0)
    assert d2.allowed and d2.delay == pytest.approx(0.1)
    assert d1.remaining == 1 and d2.remaining == 0  # the next one would wait 0.2 > max_delay
    assert not d3.allowed and d3.retry_after == pytest.approx(0.05)
    d4 = lb.acquire("k", 3.05)
    assert d4.allowed and d4.delay == pytest.approx(0.15)


def test_fixed_window_decisions() -> None:
    fw = FixedWindow(5, 1.0)
    got = [fw.acquire("k", 10.25) for _ in range(6)]
    assert [d.remaining for d in got] == [4, 3, 2, 1, 0, 0]
    assert not got[5].allowed
    assert got[5].retry_after == pytest.approx(0.75) and got[5].reset_after == pytest.approx(0.75)
    assert fw.acquire("k", 11.0).allowed  # next window


def test_sliding_window_log_decisions() -> None:
    log = SlidingWindowLog(3, 1.0)
    assert [log.acquire("k", t).allowed for t in (0.0, 0.2, 0.4)] == [True, True, True]
    d = log.acquire("k", 0.5)
    assert not d.allowed and d.remaining == 0
    assert d.retry_after == pytest.approx(0.5) and d.reset_after == pytest.approx(0.9)
    assert not log.acquire("k", 0.99).allowed
    assert log.acquire("k", 1.0).allowed  # the entry at 0.0 left the window (1.0 - 1.0, 1.0]


def test_sliding_window_counter_decisions() -> None:
    swc = SlidingWindowCounter(10, 1.0)
    assert all(swc.acquire("k", 10.5).allowed for _ in range(10))
    d = swc.acquire("k", 10.6)
    assert not d.allowed and d.remaining == 0
    assert d.reset_after == pytest.approx(1.4)  # this window's 10 weigh nothing after the next one
    assert d.retry_after == pytest.approx(0.4)  # just into the next window, floor(10 * (1 - e)) = 9
    # next window, 0.25 in: the previous 10 weigh floor(7.5) = 7, so three more pass
    got = [swc.acquire("k", 11.25) for _ in range(4)]
    assert [x.allowed for x in got] == [True, True, True, False]
    assert [x.remaining for x in got[:3]] == [2, 1, 0]
    assert got[3].retry_after == pytest.approx(0.05)  # after 11.3: floor(10 * 0.7 - tiny) = 6
    assert not swc.acquire("k", 11.29).allowed
    assert swc.acquire("k", 11.3 + 1e-6).allowed


def test_sliding_window_counter_passes_a_client_at_exactly_the_rate() -> None:
    swc = SlidingWindowCounter(10, 1.0)
    assert all(swc.acquire("k", 100.03 + i * 0.1).allowed for i in range(100))


def test_make_limiter() -> None:
    assert isinstance(make_limiter("token_bucket", 5, 1.0), TokenBucket)
    leaky = make_limiter("leaky_bucket", 5, 1.0, 2, leaky_mode="queue", max_delay=0.5)
    assert isinstance(leaky, LeakyBucket) and leaky.mode == "queue"
    assert isinstance(make_limiter("fixed_window", 5, 1.0), FixedWindow)
    assert isinstance(make_limiter("sliding_window", 5, 1.0, sliding_mode="log"), SlidingWindowLog)
    assert isinstance(make_limiter("sliding_window", 5, 1.0), SlidingWindowCounter)
    with pytest.raises(ValueError):
        make_limiter("nope", 5, 1.0)
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0)
