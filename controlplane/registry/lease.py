"""The registry leader lease: which control plane of several on one database runs expiry.

Pure rules; the store applies them with one conditional UPDATE of the `reg_state` row
(`take_condition` says the same thing in SQL), so two control planes can never both
hold the lease: the database serialises the updates on that row.

- A control plane may take the lease when nobody holds it, when it holds it already
  (renewal), or when the holder's lease has run out (`now >= until`: the holder stopped
  renewing: it crashed, hangs, or lost the database).
- Taking or renewing sets `until = now + duration`. The holder renews every tick (0.5 s),
  far more often than the lease lasts (3 s by default), and gives it up on shutdown so a
  successor takes over on its next tick instead of after the lease runs out.
- Times are the control planes' wall clocks: keep them in sync (NTP) to well under the
  lease duration.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_DURATION = 3.0


@dataclass(frozen=True)
class Lease:
    holder: str  # "" = nobody
    until: float  # unix seconds

    def held_by(self, who: str, now: float) -> bool:
        return self.holder == who and now < self.until


def may_take(lease: Lease, who: str, now: float) -> bool:
    """Whether `who` may take (or renew) `lease` at `now`."""
    return lease.holder in ("", who) or now >= lease.until


def taken(who: str, now: float, duration: float = DEFAULT_DURATION) -> Lease:
    return Lease(who, now + duration)
