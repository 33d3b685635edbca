"""The active-check threshold state machine (controlplane.registry.health_state), sans I/O."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.registry.health_state import CheckResult, InstanceHealth, State, Verdict

thresholds = st.integers(min_value=1, max_value=6)
results = st.lists(st.booleans(), max_size=80)
start_states = st.sampled_from(["unknown", "healthy", "unhealthy"])


def run(v: Verdict, seq: list[bool]) -> list[tuple[int, State]]:
    """(index, new state) of every change while feeding `seq`."""
    return [(i, new) for i, ok in enumerate(seq) if (new := v.observe(ok)) is not None]


def oracle(seq: list[bool], hi: int, lo: int, start: State) -> State:
    """The state after `seq`, from its definition: the kind of the last run that reached its threshold."""
    state = start
    run_len, kind = 0, None
    for ok in seq:
        run_len = run_len + 1 if ok == kind else 1
        kind = ok
        if run_len >= (hi if ok else lo):
            state = "healthy" if ok else "unhealthy"
    return state


@given(hi=thresholds, lo=thresholds, start=start_states, seq=results)
def test_state_matches_its_definition(hi: int, lo: int, start: State, seq: list[bool]) -> None:
    v = Verdict(hi, lo, start)
    for n, ok in enumerate(seq, 1):
        v.observe(ok)
        assert v.state == oracle(seq[:n], hi, lo, start)


@given(hi=thresholds, lo=thresholds, start=start_states, seq=results)
def test_a_change_happens_exactly_at_the_threshold(hi: int, lo: int, start: State, seq: list[bool]) -> None:
    v = Verdict(hi, lo, start)
    changes = dict(run(v, seq))
    for i, new in changes.items():
        ok = new == "healthy"
        need = hi if ok else lo
        window = seq[max(0, i - need + 1) : i + 1]
        assert len(window) == need and all(r == ok for r in window)  # `need` results of that kind in a row ...
        assert i - need < 0 or seq[i - need] != ok  # ... and not one more: the change came at the threshold
    # and conversely: every run that reaches a threshold while in the other state makes a change
    state: State = start
    streak = 0
    for i, ok in enumerate(seq):
        streak = streak + 1 if i and seq[i - 1] == ok else 1
        target: State = "healthy" if ok else "unhealthy"
        if streak == (hi if ok else lo) and state != target:
            assert changes.get(i) == target
            state = target
        elif i in changes:
            pytest.fail(f"unexpected change at {i}")


@given(hi=thresholds, lo=thresholds, start=start_states, seq=results)
def test_no_flapping_faster_than_the_thresholds(hi: int, lo: int, start: State, seq: list[bool]) -> None:
    changes = run(Verdict(hi, lo, start), seq)
    for (i, _), (j, new) in itertools.pairwise(changes):
        assert j - i >= (hi if new == "healthy" else lo)  # at least that many checks between two changes
    for (_, a), (_, b) in itertools.pairwise(changes):
        assert a != b  # every change really changes the state
    if changes and start != "unknown":
        assert changes[0][1] != start


@given(hi=thresholds, lo=thresholds, seq=results)
def test_counts_are_the_current_run(hi: int, lo: int, seq: list[bool]) -> None:
    v = Verdict(hi, lo)
    run(v, seq)
    tail = 0
    for ok in reversed(seq):
        if ok != seq[-1]:
            break
        tail += 1
    if not seq:
        assert (v.consecutive_ok, v.consecutive_fail) == (0, 0)
    elif seq[-1]:
        assert (v.consecutive_ok, v.consecutive_fail) == (tail, 0)
    else:
        assert (v.consecutive_ok, v.consecutive_fail) == (0, tail)


@given(hi=thresholds, lo=thresholds, seq=results, new_hi=thresholds, new_lo=thresholds, more=results)
def test_retune_keeps_the_state_and_restarts_counting(
    hi: int, lo: int, seq: list[bool], new_hi: int, new_lo: int, more: list[bool]
) -> None:
    v = Verdict(hi, lo)
    run(v, seq)
    before = v.state
    v.retune(new_hi, new_lo)
    assert v.state == before and (v.consecutive_ok, v.consecutive_fail) == (0, 0)
    changes = run(v, more)
    assert v.state == oracle(more, new_hi, new_lo, before)
    if changes:  # the first change after retuning needs a full run under the new thresholds
        i, new = changes[0]
        assert i + 1 >= (new_hi if new == "healthy" else new_lo)


def test_walkthrough() -> None:
    v = Verdict(healthy_threshold=2, unhealthy_threshold=3)
    assert [v.observe(ok) for ok in (True, True, True)] == [None, "healthy", None]
    assert [v.observe(ok) for ok in (False, False, True, False, False, False)] == [
        None, None, None, None, None, "unhealthy",
    ]  # fmt: skip
    assert (v.consecutive_ok, v.consecutive_fail) == (0, 3)
    with pytest.raises(ValueError):
        Verdict(0, 1)


@given(size=st.integers(min_value=1, max_value=10), seq=results)
def test_history_is_bounded_and_keeps_the_newest(size: int, seq: list[bool]) -> None:
    h = InstanceHealth(2, 2, history=size)
    for i, ok in enumerate(seq):
        h.record(CheckResult(float(i), ok, 1.0, "x"))
    kept = list(h.history)
    assert len(kept) == min(size, len(seq))
    assert [r.time for r in kept] == [float(i) for i in range(len(seq) - len(kept), len(seq))]
    assert h.last is (kept[-1] if kept else None)
