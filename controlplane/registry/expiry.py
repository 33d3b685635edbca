"""LeaseAndExpiry: the leader lease of the registry, TTL expiry and event retention.

One control plane of a database holds the leader lease (`lease_tick`, rules in
`controlplane.registry.lease`); it deregisters the ephemeral instances whose TTL ran out
(`expire_due`, rules in `controlplane.registry.ttl`; heartbeats that other control planes
received and wrote are read first, so none is lost) and keeps the newest events
(`prune_events`). Everything here blocks: run it in a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine, delete, func, or_, select, tuple_, update

from controlplane.registry import lease as lease_rules
from controlplane.registry import ttl
from controlplane.registry.commits import Committer
from controlplane.registry.models import RegEventRow, RegInstanceRow, RegStateRow
from controlplane.registry.tx import Tx
from controlplane.registry.types import Instance
from controlplane.registry.view import Key, RegistryView, chunks
from fluxcommon.durations import format_duration_ms

log = logging.getLogger("flux.registry")

T_INST = RegInstanceRow.__table__  # type: ignore[attr-defined]
T_STATE = RegStateRow.__table__  # type: ignore[attr-defined]
T_EV = RegEventRow.__table__  # type: ignore[attr-defined]


class LeaseAndExpiry:
    def __init__(
        self,
        engine: Engine,
        node_id: str,
        view: RegistryView,
        committer: Committer,
        clock: Callable[[], float],
        counters: dict[str, int],
        *,
        lease_duration: float,
        events_kept: int,
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self.view = view
        self.committer = committer
        self.clock = clock
        self.counters = counters
        self.lease_duration = lease_duration
        self.events_kept = events_kept
        self.is_leader = False

    def lease_tick(self, now: float | None = None) -> bool:
        """Take or renew the leader lease; returns whether this control plane holds it (blocking)."""
        now = self.clock() if now is None else now
        with self.engine.begin() as conn:
            res = conn.execute(
                update(T_STATE)
                .where(
                    T_STATE.c.id == 1,
                    or_(
                        T_STATE.c.leader == self.node_id,
                        T_STATE.c.leader == "",
                        T_STATE.c.lease_until <= now,
                    ),
                )
                .values(leader=self.node_id, lease_until=now + self.lease_duration)
            )
        leader = res.rowcount == 1
        if leader != self.is_leader:
            log.info("registry leader lease %s by %s", "taken" if leader else "lost", self.node_id)
        self.is_leader = leader
        return leader

    def lease(self) -> lease_rules.Lease:
        with self.engine.connect() as conn:
            row = conn.execute(select(T_STATE.c.leader, T_STATE.c.lease_until).where(T_STATE.c.id == 1)).one()
        return lease_rules.Lease(row[0], float(row[1]))

    def release_lease(self) -> None:
        """Give the lease up (on shutdown) so another control plane takes over at once (blocking)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(T_STATE)
                .where(T_STATE.c.id == 1, T_STATE.c.leader == self.node_id)
                .values(leader="", lease_until=0.0)
            )
        self.is_leader = False

    def expire_due(self, now: float | None = None) -> list[Instance]:
        """Deregister the ephemeral instances whose TTL ran out (blocking; the leader's job)."""
        now = self.clock() if now is None else now
        candidates = self.view.expired(now)
        if not candidates:
            return []

        def plan(tx: Tx) -> tuple[list[Instance], dict[Key, float]]:
            expired: list[Instance] = []
            refreshed: dict[Key, float] = {}
            stored: dict[Key, float] = {}
            for part in chunks(sorted(candidates)):
                q = select(T_INST.c.service, T_INST.c.instance_id, T_INST.c.last_heartbeat).where(
                    tuple_(T_INST.c.service, T_INST.c.instance_id).in_(part)
                )
                stored.update({(r[0], r[1]): float(r[2]) for r in tx.conn.execute(q)})
            for svc, iid in candidates:
                inst = tx.instance(svc, iid)
                if inst is None:
                    continue
                inst.last_heartbeat = ttl.merge_heartbeat(inst.last_heartbeat, stored.get((svc, iid), 0.0))
                if not ttl.is_expired(inst, now):
                    refreshed[(svc, iid)] = inst.last_heartbeat  # heartbeats another control plane received
                    continue
                age = now - inst.last_heartbeat
                tx.drop_instance(svc, iid, "expired",
                                 f"no heartbeat for {age:.1f}s (ttl {format_duration_ms(inst.ttl_ms)})")  # fmt: skip
                expired.append(inst)
            return expired, refreshed

        (expired, refreshed), _ = self.committer.write(plan, now)
        if refreshed:
            self.view.merge_heartbeats(refreshed)
        if expired:
            self.counters["expired"] += len(expired)
            log.info("registry: %d instance(s) expired: %s", len(expired),
                     ", ".join(f"{i.service}/{i.id}" for i in expired[:10]))  # fmt: skip
        return expired

    def prune_events(self) -> int:
        """Keep the newest `events_kept` events (blocking)."""
        with self.engine.begin() as conn:
            top = conn.execute(select(func.max(T_EV.c.id))).scalar()
            if top is None or top <= self.events_kept:
                return 0
            return int(conn.execute(delete(T_EV).where(T_EV.c.id <= top - self.events_kept)).rowcount or 0)

    def maintenance_tick(self, now: float | None = None) -> list[Instance]:
        """One tick of the leader's work: renew the lease, then expire (blocking)."""
        if not self.lease_tick(now):
            return []
        return self.expire_due(now)
