"""TTL expiry of ephemeral instances: pure decisions, no clock, no I/O.

Theory of operation
-------------------
An ephemeral instance has a deadline: `last_heartbeat + ttl` (registration counts as the
first heartbeat). At a moment `now` it is

    alive    while now <= deadline   (a heartbeat that comes late, but before the deadline,
                                      simply moves the deadline: nothing else happens)
    expired  once  now >  deadline   (the registry deregisters it and writes an "expired" event)

There is no intermediate "critical" phase: an instance serves traffic until it expires.
Clients heartbeat every ttl/3, so one or two lost heartbeats are normal and marking an
instance unhealthy before its deadline would only make endpoints flap. Heartbeat times
only move forward (`merge_heartbeat`): a stale report, such as one flushed late by another
control plane, never shortens a deadline.

Persistent instances (`ephemeral=False`) have no deadline and never expire; active health
checks judge them instead.

Several control planes may share one database; only the holder of the lease (see
`controlplane.registry.lease`) runs expiry, on the registry's in-memory view first
(`expired`) and then once more on the heartbeat times the database holds for just those
candidates, because heartbeats received by another control plane reach the database
within one flush interval (1 s) and never reach this process's memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Ttl(Protocol):
    """What expiry needs of an instance (`controlplane.registry.types.Instance` has it)."""

    @property
    def ephemeral(self) -> bool: ...
    @property
    def ttl_ms(self) -> int: ...
    @property
    def last_heartbeat(self) -> float: ...


T = TypeVar("T", bound=Ttl)


def deadline(inst: Ttl) -> float | None:
    """When `inst` expires without another heartbeat (unix seconds); None if it never does."""
    if not inst.ephemeral:
        return None
    return inst.last_heartbeat + inst.ttl_ms / 1000.0


def is_expired(inst: Ttl, now: float) -> bool:
    """Whether `inst` has expired at `now`: strictly after its deadline."""
    due = deadline(inst)
    return due is not None and now > due


def expired(instances: Iterable[T], now: float) -> list[T]:
    """The instances that have expired at `now`, in the order given."""
    return [inst for inst in instances if is_expired(inst, now)]


def merge_heartbeat(known: float, reported: float) -> float:
    """The heartbeat time to keep when two reports meet: the later one."""
    return known if known >= reported else reported


def next_deadline(instances: Iterable[Ttl]) -> float | None:
    """The earliest deadline among `instances` (None when none can expire)."""
    best: float | None = None
    for inst in instances:
        due = deadline(inst)
        if due is not None and (best is None or due < best):
            best = due
    return best
