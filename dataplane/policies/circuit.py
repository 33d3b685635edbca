"""Circuit breaker core: the sans-IO state machine behind the `circuit_breaker` policy.

One `CircuitBreaker` guards one cluster or route. The caller asks `allow(now)` before
each upstream call and hands every call it was allowed to make back exactly once, to
`record` (an outcome worth counting) or `release` (no outcome: the client went away).
What to send while the breaker fails fast (`config.fallback`: a degradation response or
a fallback cluster) is the caller's business; this module only decides.

Must not: import trio or any I/O library, read the clock, or start timers. `now` is
monotonic seconds, `duration` is seconds; the config's `window`, `open_for` and
`slow_call_ms` are milliseconds.

Permits
    `allow(now)` returns a permit: a positive int (truthy) to go ahead, or `REJECTED`
    (0, falsy) to fail fast, so `if permit := breaker.allow(now): ...` reads as a bool.
    Permits increase; every state change starts a new generation and makes every
    permit handed out before it stale. A stale permit's `record`/`release` is ignored:
    an outcome is judged in the state its call started in, and that state is gone
    (a late success from before a trip cannot close the breaker, a late failure from
    the closed state cannot count as a failed half-open probe). `record`/`release` of
    `REJECTED`, of an unknown permit, or of a probe already settled is ignored too.
    A probe permit never settled holds its slot for good: settle every permit (finally).

States and edges (the only ones)
    closed -> open
        on `record` of a counted call, when either
        - `failure_threshold` > 0 and the failures in a row reach it (a success,
          `ok=True`, ends the run; slowness does not matter), or
        - the window holds at least `min_requests` calls and
          `error_rate` > 0 and failures / calls >= `error_rate`, or
          `slow_call_ms` > 0, at least one slow call, and slow / calls >= `slow_call_rate`
          (so `slow_call_rate` 0 means "any slow call, once there are min_requests").
        A call is slow when `duration * 1000 > slow_call_ms` (strictly slower), whether
        it succeeded or failed; a slow failure counts as a failure and as slow.
    open -> half_open
        once `now >= tripped_at + open_for / 1000`; noticed lazily by `allow`,
        `advance` and `snapshot` (the half-open state's `since` is that instant, not
        the moment it was noticed). Until then every `allow` is rejected.
    half_open -> closed
        when `half_open_requests` probes have succeeded (ok and not slow). Probe
        slots: a slot is taken by an admitted probe and kept by its success, so at
        most `half_open_requests` probes are in flight and no more are admitted than
        can still be needed; `release` gives a slot back. Closing resets the window
        and the failure run (which is otherwise kept, to be shown while open).
    half_open -> open
        on the first probe that fails or is slow (when `slow_call_ms` > 0), with a
        fresh `open_for` counted from that `record`.

Sliding window
    `window` ms is cut into `WINDOW_BUCKETS` time buckets; bucket index
    `floor(now * 1000 * WINDOW_BUCKETS / window)`. The window at `now` is the current
    bucket and the `WINDOW_BUCKETS - 1` before it (so it spans between 0.9 and 1 times
    `window`). Memory is O(1); `record` does amortized O(1) work. Every state change
    empties the window: only calls made in the current closed period count. A window
    of 0 is taken as 1 ms.

`state` is the state as of the last call; `advance(now)` applies the time-based edge
first. `snapshot(now)` gives the JSON-ready view for the node's admin page.
"""

from __future__ import annotations

import math
from typing import Any

from fluxcommon.policy_config import CircuitBreakerConfig

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

REJECTED = 0
"""What `allow` returns to fail fast (falsy)."""

WINDOW_BUCKETS = 10
_BUCKET_SCALE = 1000.0 * WINDOW_BUCKETS


class CircuitBreaker:
    """Breaker state of one cluster or route; see the module docstring for the rules."""

    __slots__ = (
        "_b_calls",
        "_b_fails",
        "_b_slow",
        "_calls",
        "_epoch",
        "_error_rate",
        "_fails",
        "_head",
        "_min_requests",
        "_open_s",
        "_open_until",
        "_probe_ok",
        "_probes",
        "_probes_max",
        "_seq",
        "_slow",
        "_slow_rate",
        "_slow_s",
        "_threshold",
        "_window_ms",
        "config",
        "failures_in_a_row",
        "last_trip",
        "opens",
        "rejected",
        "since",
        "state",
    )

    def __init__(self, config: CircuitBreakerConfig, now: float = 0.0) -> None:
        self.config = config
        self._threshold = config.failure_threshold
        self._error_rate = config.error_rate
        self._min_requests = max(1, config.min_requests)
        self._window_ms = float(max(1, config.window))
        self._slow_s = config.slow_call_ms / 1000.0 if config.slow_call_ms > 0 else math.inf
        self._slow_rate = config.slow_call_rate
        self._open_s = config.open_for / 1000.0
        self._probes_max = max(1, config.half_open_requests)

        self.state = CLOSED
        self.since = now
        self.failures_in_a_row = 0
        self.opens = 0  # closed/half_open -> open transitions so far
        self.rejected = 0  # allow() calls answered REJECTED so far
        self.last_trip: str | None = None  # why the breaker last opened

        self._seq = 0  # last permit handed out
        self._epoch = 0  # permits <= _epoch are stale (issued before the last state change)
        self._open_until = 0.0
        self._probes: set[int] = set()  # half-open probes in flight
        self._probe_ok = 0  # half-open probes that succeeded

        self._b_calls = [0] * WINDOW_BUCKETS
        self._b_fails = [0] * WINDOW_BUCKETS
        self._b_slow = [0] * WINDOW_BUCKETS
        self._calls = self._fails = self._slow = 0
        self._head = self._bucket(now)

    # ------------------------------------------------------------------ per request

    def allow(self, now: float) -> int:
        """A permit (> 0) to make the call now, or `REJECTED` (0) to fail fast.

        In half-open a permit takes a probe slot. Every permit must later go to exactly
        one of `record` or `release`.
        """
        state = self.state
        if state == CLOSED:
            self._seq += 1
            return self._seq
        if state == OPEN:
            if now < self._open_until:
                self.rejected += 1
                return REJECTED
            self._enter_half_open()
        if len(self._probes) + self._probe_ok >= self._probes_max:
            self.rejected += 1
            return REJECTED
        self._seq += 1
        self._probes.add(self._seq)
        return self._seq

    def record(self, now: float, ok: bool, duration: float, permit: int) -> None:
        """The outcome of the call made under `permit`: `ok` or failed, `duration` seconds."""
        if permit <= self._epoch or permit > self._seq:
            return  # stale (or not a permit): judged in a state that is gone
        slow = duration > self._slow_s
        if self.state == CLOSED:
            self._count(now, ok, slow)
        elif permit in self._probes:  # half-open: current permits are probes
            self._probes.discard(permit)
            if ok and not slow:
                self._probe_ok += 1
                if self._probe_ok >= self._probes_max:
                    self._enter_closed(now)
            else:
                self._enter_open(now, "probe_slow" if ok else "probe_failed")

    def release(self, now: float, permit: int) -> None:
        """The call made under `permit` ended without an outcome worth counting.

        Frees its half-open probe slot; nothing else changes.
        """
        if permit > self._epoch and self.state == HALF_OPEN:
            self._probes.discard(permit)

    # ------------------------------------------------------------------ inspection

    def advance(self, now: float) -> str:
        """Apply the time-based edge (open -> half_open) and return the state."""
        if self.state == OPEN and now >= self._open_until:
            self._enter_half_open()
        return self.state

    @property
    def next_probe_at(self) -> float | None:
        """When an open breaker lets probes through (monotonic seconds); None unless open."""
        return self._open_until if self.state == OPEN else None

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready state for the admin page (applies the time-based edge first)."""
        state = self.advance(now)
        if state == CLOSED:
            self._roll(self._bucket(now))
        calls, fails, slow = self._calls, self._fails, self._slow
        next_probe = self.next_probe_at
        return {
            "state": state,
            "since": self.since,
            "in_state_s": max(0.0, now - self.since),
            "failures_in_a_row": self.failures_in_a_row,
            "window": {"length_ms": self.config.window, "calls": calls, "failures": fails, "slow": slow},
            "error_rate": fails / calls if calls else 0.0,
            "slow_rate": slow / calls if calls else 0.0,
            "opens": self.opens,
            "last_trip": self.last_trip,
            "rejected": self.rejected,
            "next_probe_at": next_probe,
            "next_probe_in_s": max(0.0, next_probe - now) if next_probe is not None else None,
            "probes": {
                "in_flight": len(self._probes),
                "succeeded": self._probe_ok,
                "required": self._probes_max,
            },
        }

    # ------------------------------------------------------------------ internals

    def _bucket(self, now: float) -> int:
        return math.floor(now * _BUCKET_SCALE / self._window_ms)

    def _roll(self, bucket: int) -> None:
        """Move the window's head to `bucket`, emptying the buckets that fall out."""
        head = self._head
        if bucket <= head:
            return  # same bucket (or the clock went back: count in the newest bucket)
        calls, fails, slow = self._b_calls, self._b_fails, self._b_slow
        if bucket - head >= WINDOW_BUCKETS:
            for i in range(WINDOW_BUCKETS):
                calls[i] = fails[i] = slow[i] = 0
            self._calls = self._fails = self._slow = 0
        else:
            for b in range(head + 1, bucket + 1):
                i = b % WINDOW_BUCKETS
                self._calls -= calls[i]
                self._fails -= fails[i]
                self._slow -= slow[i]
                calls[i] = fails[i] = slow[i] = 0
        self._head = bucket

    def _count(self, now: float, ok: bool, slow: bool) -> None:
        """Count one closed-state call and trip if a rule says so."""
        self._roll(self._bucket(now))
        i = self._head % WINDOW_BUCKETS
        self._b_calls[i] += 1
        self._calls += 1
        if ok:
            self.failures_in_a_row = 0
        else:
            self._b_fails[i] += 1
            self._fails += 1
            self.failures_in_a_row += 1
            if self._threshold and self.failures_in_a_row >= self._threshold:
                self._enter_open(now, "consecutive_failures")
                return
        if slow:
            self._b_slow[i] += 1
            self._slow += 1
        calls = self._calls
        if calls < self._min_requests:
            return
        if self._error_rate > 0.0 and self._fails / calls >= self._error_rate:
            self._enter_open(now, "error_rate")
        elif self._slow and self._slow / calls >= self._slow_rate:
            self._enter_open(now, "slow_call_rate")

    def _reset_window(self, now: float) -> None:
        for i in range(WINDOW_BUCKETS):
            self._b_calls[i] = self._b_fails[i] = self._b_slow[i] = 0
        self._calls = self._fails = self._slow = 0
        self._head = self._bucket(now)

    def _new_generation(self, state: str, since: float) -> None:
        self.state = state
        self.since = since
        self._epoch = self._seq
        self._probes.clear()
        self._probe_ok = 0

    def _enter_open(self, now: float, reason: str) -> None:
        self._new_generation(OPEN, now)
        self._open_until = now + self._open_s
        self.opens += 1
        self.last_trip = reason
        self._reset_window(now)

    def _enter_half_open(self) -> None:
        self._new_generation(HALF_OPEN, self._open_until)

    def _enter_closed(self, now: float) -> None:
        self._new_generation(CLOSED, now)
        self.failures_in_a_row = 0
        self._reset_window(now)
