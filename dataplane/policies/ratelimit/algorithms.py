"""Sans-IO rate limiters: token bucket, leaky bucket (GCRA), fixed window, sliding window (log, counter).

No I/O and no clock reads: every call gets `now` (monotonic seconds) from the
caller, so the limiters run on the request hot path and in tests with fake clocks.
`acquire(key, now, cost)` decides for one request and returns a `Decision`.

Exact semantics (T = per / rate, the time one unit of budget takes to come back):

TokenBucket(rate, per, burst)
    Capacity C = burst if burst > 0 else rate tokens; refills rate/per tokens a
    second, continuously. A request of `cost` passes when the bucket holds at
    least `cost` tokens and takes them. In any interval of length t at most
    C + t * rate/per units pass. State per key: the time the bucket will be
    full again (one float), so a key whose time has passed is the same as a
    fresh key and can be forgotten.

LeakyBucket(rate, per, burst, mode, max_delay)
    GCRA, nginx `limit_req` semantics. Requests leave the bucket at rate/per
    (one every T). The state is the theoretical arrival time TAT: the time the
    bucket will be empty. On arrival at `now`, with tat = max(TAT, now), the
    backlog after the request is new_tat - now where new_tat = tat + cost * T.
    A request fits when that backlog is at most (burst + 1) * T, i.e. at most
    `burst` units may wait ahead of the one leaving now (burst=0: one request
    per T, no bursts). Capacity (admissions in a zero-length interval) is
    burst + 1; in any interval of length t at most t * rate/per + burst + 1 units pass.
      mode "reject": a fitting request passes at once (nginx `nodelay`); the
        burst is a tolerance, not a queue.
      mode "queue": a fitting request passes with `delay` = tat - now, the
        time until its turn, so forwarded requests leave at least T * cost
        apart; it is rejected when that delay would exceed `max_delay`.
    With burst=0 queue mode never delays (nothing may wait), like nginx.

FixedWindow(rate, per)
    Windows [k*per, (k+1)*per) aligned on the clock's zero (Unix time in
    Redis, the monotonic clock's origin locally); at most `rate`
    units pass per window. A window of length t can see up to 2 * rate units
    around a boundary (capacity 2 * rate for the t * rate/per + capacity bound).

SlidingWindowLog(rate, per)
    Exact (to 1e-9 s): a request passes when the units admitted in
    (now - per, now] plus its cost are at most `rate`. Keeps one timestamp per
    admitted unit (at most `rate` per key), so its key cap is lowered to keep
    the total under MAX_ENTRIES (2M) timestamps.

SlidingWindowCounter(rate, per)
    Two-window approximation (Cloudflare style): with windows aligned like
    FixedWindow and `e` the time elapsed in the current one, the previous
    window's count still weighs prev * (1 - e/per), rounded down to whole
    requests; a request passes when that + curr + cost <= rate (Cloudflare:
    "the estimate is under the limit"). Never more than `rate` per aligned
    window; in any interval of length t at most t * rate/per + rate + 1 units
    pass (capacity rate + 1: the rounding may let one request more through
    where the windows meet). The rounding is what lets a client sending at
    exactly the rate pass every time, and saturating clients get the full
    rate (with the unrounded estimate they get rate - 1 per window: half the
    rate when rate is 2).

Decision fields: `limit` is the limiter's rate; `remaining` the cost-1 requests
that would pass right now after this one; `reset_after` the seconds until the
budget is whole again (bucket full / window over / log empty); `retry_after`
the seconds until a rejected request of the same cost could pass (0 when
allowed, inf when its cost can never pass; where the bound is strict, the
request passes just after it).

Floats: comparisons allow 1e-9 (seconds or requests) so an exactly conforming
request never fails on rounding; the Redis scripts use the same formulas.

Memory: per-key state lives in a dict kept in last-use order (a key is popped
and re-inserted on each use). When a new key arrives, keys whose state has
decayed to "fresh" (idle longer than their full-refill time) are swept from
the least recently used end (at most once a second of `now`), and at most
`max_keys` (100k) keys are kept: the least recently used goes first and then
starts again with a full budget. `acquire` costs about 1.2-1.6 us (CPython
3.11), half of it building the Decision.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Decision",
    "FixedWindow",
    "LeakyBucket",
    "Limiter",
    "SlidingWindowCounter",
    "SlidingWindowLog",
    "TokenBucket",
    "make_limiter",
]

#: Float slack for comparisons (seconds or tokens): an exactly conforming request never fails on rounding.
EPS = 1e-9
INF = math.inf
DEFAULT_MAX_KEYS = 100_000
SWEEP_INTERVAL = 1.0  # seconds of `now` between sweeps of idle keys


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # the policy's rate (per window) for RateLimit-Limit
    remaining: int  # for RateLimit-Remaining
    reset_after: float  # seconds until the budget is full again / the window resets (RateLimit-Reset)
    retry_after: float  # seconds until a rejected request could pass (Retry-After); 0 when allowed
    delay: float = 0.0  # leaky bucket in queue mode: wait this long before forwarding


class Limiter(Protocol):
    rate: int

    def acquire(self, key: str, now: float, cost: int = 1) -> Decision: ...


class _Keyed:
    """Per-key state in a dict kept in last-use order, swept and capped."""

    __slots__ = ("_next_sweep", "_state", "max_keys", "per", "rate")

    def __init__(self, rate: int, per: float, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if per <= 0:
            raise ValueError("per must be positive")
        self.rate = int(rate)
        self.per = float(per)
        self.max_keys = max(1, int(max_keys))
        self._state: dict[str, Any] = {}
        self._next_sweep = -INF

    def __len__(self) -> int:
        return len(self._state)

    def _idle(self, value: Any, now: float) -> bool:  # pragma: no cover - abstract
        """Whether `value` is the same as no state at `now` (the key may be forgotten)."""
        raise NotImplementedError

    def _housekeep(self, now: float) -> None:
        """Called before a new key is added: sweep idle keys (at most once a second) and enforce the cap."""
        state = self._state
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self.sweep(now)
        while len(state) >= self.max_keys:
            del state[next(iter(state))]

    def sweep(self, now: float) -> int:
        """Forget idle keys from the least recently used end; returns how many went."""
        state = self._state
        idle = self._idle
        gone = []
        for key, value in state.items():
            if not idle(value, now):
                break
            gone.append(key)
        for key in gone:
            del state[key]
        return len(gone)


class TokenBucket(_Keyed):
    """Capacity burst (or rate when burst is 0), refilled at rate/per tokens a second."""

    __slots__ = ("_fill", "_interval", "capacity")

    def __init__(self, rate: int, per: float, burst: int = 0, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        super().__init__(rate, per, max_keys=max_keys)
        self.capacity = int(burst) if burst > 0 else self.rate
        self._interval = self.per / self.rate  # seconds per token
        self._fill = self.capacity * self._interval  # seconds to refill an empty bucket

    def _idle(self, value: Any, now: float) -> bool:
        return bool(value <= now)

    def acquire(self, key: str, now: float, cost: int = 1) -> Decision:
        state = self._state
        full_at = state.pop(key, None)
        if full_at is None:
            self._housekeep(now)
            full_at = now
        elif full_at < now:
            full_at = now
        interval = self._interval
        debt = full_at + cost * interval - now  # seconds of refill owed after taking the tokens
        if debt <= self._fill + EPS:
            state[key] = now + debt
            return Decision(True, self.rate, int((self._fill - debt) / interval + EPS), debt, 0.0)
        if full_at > now:
            state[key] = full_at
        owed = full_at - now
        retry = debt - self._fill if cost <= self.capacity else INF
        return Decision(False, self.rate, max(0, int((self._fill - owed) / interval + EPS)), owed, retry)


class LeakyBucket(_Keyed):
    """GCRA: requests leave at rate/per; up to `burst` may wait (queue) or pass early (reject)."""

    __slots__ = ("_interval", "_max_delay", "_queue", "_tolerance", "burst", "mode")

    def __init__(
        self,
        rate: int,
        per: float,
        burst: int = 0,
        mode: str = "reject",
        max_delay: float = 1.0,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        super().__init__(rate, per, max_keys=max_keys)
        if mode not in ("queue", "reject"):
            raise ValueError(f"bad leaky bucket mode {mode!r}")
        self.burst = int(burst)
        self.mode = mode
        self._queue = mode == "queue"
        self._max_delay = max(0.0, float(max_delay))
        self._interval = self.per / self.rate
        self._tolerance = (self.burst + 1) * self._interval  # the most backlog (seconds) after a request

    def _idle(self, value: Any, now: float) -> bool:
        return bool(value <= now)

    def acquire(self, key: str, now: float, cost: int = 1) -> Decision:
        state = self._state
        tat = state.pop(key, None)
        if tat is None:
            self._housekeep(now)
            tat = now
        elif tat < now:
            tat = now
        interval = self._interval
        tolerance = self._tolerance
        wait = tat - now  # backlog ahead of this request
        backlog = wait + cost * interval
        if backlog <= tolerance + EPS:
            if not self._queue:
                state[key] = now + backlog
                return Decision(True, self.rate, int((tolerance - backlog) / interval + EPS), backlog, 0.0)
            max_delay = self._max_delay
            if wait <= max_delay + EPS:
                state[key] = now + backlog
                return Decision(True, self.rate, self._remaining(backlog), backlog, 0.0, wait)
        if wait > 0.0:
            state[key] = tat
        if cost * interval > tolerance + EPS:
            retry = INF
        else:
            retry = backlog - tolerance
            if self._queue:
                retry = max(retry, wait - self._max_delay)
            retry = max(retry, 0.0)
        return Decision(False, self.rate, self._remaining(wait), wait, retry)

    def _remaining(self, backlog: float) -> int:
        """How many cost-1 requests would pass now, behind `backlog` seconds of queue."""
        interval = self._interval
        n = math.floor((self._tolerance - backlog) / interval + EPS)
        if self._queue:  # the j-th next one waits backlog + (j - 1) * interval
            n = min(n, math.floor((self._max_delay - backlog) / interval + EPS) + 1)
        return max(0, n)


class FixedWindow(_Keyed):
    """At most `rate` per aligned window [k*per, (k+1)*per)."""

    __slots__ = ()

    def _idle(self, value: Any, now: float) -> bool:
        return bool(value[0] < int(now // self.per))

    def acquire(self, key: str, now: float, cost: int = 1) -> Decision:
        state = self._state
        per = self.per
        window = int(now // per)
        entry = state.pop(key, None)
        if entry is None:
            self._housekeep(now)
            entry = [window, 0]
        elif entry[0] != window:
            entry[0] = window
            entry[1] = 0
        count = entry[1]
        reset = (window + 1) * per - now
        rate = self.rate
        state[key] = entry
        if count + cost <= rate:
            entry[1] = count = count + cost
            return Decision(True, rate, rate - count, reset, 0.0)
        return Decision(False, rate, max(0, rate - count), reset, reset if cost <= rate else INF)


class SlidingWindowLog(_Keyed):
    """Exact: at most `rate` units in every trailing window (now - per, now]."""

    __slots__ = ()

    #: Total timestamps the log may hold over all keys (its key cap is lowered to fit).
    MAX_ENTRIES = 2_000_000

    def __init__(self, rate: int, per: float, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        super().__init__(rate, per, max_keys=max_keys)
        self.max_keys = max(1, min(self.max_keys, self.MAX_ENTRIES // self.rate))

    def _idle(self, value: Any, now: float) -> bool:
        return bool(not value or value[-1] <= now - self.per)

    def acquire(self, key: str, now: float, cost: int = 1) -> Decision:
        state = self._state
        per = self.per
        log = state.pop(key, None)
        if log is None:
            self._housekeep(now)
            log = deque()
        cutoff = now - per + EPS  # entries at or before now - per have left the window
        while log and log[0] <= cutoff:
            log.popleft()
        count = len(log)
        rate = self.rate
        if count + cost <= rate:
            if cost == 1:
                log.append(now)
            else:
                log.extend([now] * cost)
            state[key] = log
            return Decision(True, rate, rate - count - cost, per, 0.0)
        if count:
            state[key] = log
            reset = log[-1] + per - now
        else:
            reset = 0.0
        retry = log[count + cost - rate - 1] + per - now if cost <= rate else INF
        return Decision(False, rate, rate - count, reset, retry)


class SlidingWindowCounter(_Keyed):
    """Two-window estimate: floor(prev * (1 - elapsed/per)) + curr + cost <= rate."""

    __slots__ = ()

    def _idle(self, value: Any, now: float) -> bool:
        return bool(value[0] < int(now // self.per) - 1)

    def acquire(self, key: str, now: float, cost: int = 1) -> Decision:
        state = self._state
        per = self.per
        window = int(now // per)
        entry = state.pop(key, None)
        if entry is None:
            self._housekeep(now)
            entry = [window, 0, 0]
        elif entry[0] != window:
            entry[1] = entry[2] if entry[0] == window - 1 else 0
            entry[2] = 0
            entry[0] = window
        prev = entry[1]
        curr = entry[2]
        elapsed = now - window * per
        left = per - elapsed  # until the window ends
        used = int(prev * (left / per) + EPS) + curr  # whole requests of the previous window still counted
        rate = self.rate
        state[key] = entry
        if used + cost <= rate:
            entry[2] = curr + cost
            return Decision(True, rate, rate - used - cost, left + per, 0.0)
        reset = (left + per) if curr else left
        if cost > rate:
            retry = INF
        else:
            room = rate - curr - cost  # the most the weighted previous count may be
            if room >= 0:  # within this window, once prev * (1 - e/per) < room + 1 (prev > room here)
                retry = max(0.0, per * (1.0 - (room + 1) / prev) - elapsed)
            else:  # in the next window, where curr becomes prev
                need = rate - cost
                retry = left + max(0.0, per * (1.0 - (need + 1) / curr))
        return Decision(False, rate, max(0, rate - used), reset, retry)


def make_limiter(
    algorithm: str,
    rate: int,
    per: float,
    burst: int = 0,
    *,
    leaky_mode: str = "reject",
    max_delay: float = 1.0,
    sliding_mode: str = "counter",
    max_keys: int = DEFAULT_MAX_KEYS,
) -> TokenBucket | LeakyBucket | FixedWindow | SlidingWindowLog | SlidingWindowCounter:
    """The limiter for a RateLimitConfig's algorithm (per and max_delay in seconds)."""
    if algorithm == "token_bucket":
        return TokenBucket(rate, per, burst, max_keys=max_keys)
    if algorithm == "leaky_bucket":
        return LeakyBucket(rate, per, burst, leaky_mode, max_delay, max_keys=max_keys)
    if algorithm == "fixed_window":
        return FixedWindow(rate, per, max_keys=max_keys)
    if algorithm == "sliding_window":
        if sliding_mode == "log":
            return SlidingWindowLog(rate, per, max_keys=max_keys)
        return SlidingWindowCounter(rate, per, max_keys=max_keys)
    raise ValueError(f"unknown rate limit algorithm {algorithm!r}")
