"""RolloutManager: pins nodes while a rollout runs, and moves the rollout on.

Every control plane runs one. Each tick (and before the config watcher publishes a new
version) it reads the running rollout, if any, and sets the snapshot cache's hold: the
nodes of the affected groups that are not released stay on the version before. The
control plane holding the rollout's lease also moves it on, one stage at a time:

1. every node of the stage (the canaries, or a group) answers the new version: a NACK
   rolls the rollout back at once; no answer within `ack_timeout` too;
2. the bake: for `bake` the stage's request counters are compared with the rest's
   (controlplane.rollouts.analysis): a clearly higher 5xx rate rolls back at once, and at
   the end 5xx rate and latency decide;
3. the next stage is released; after the last, every node (promoted).

Rolling back commits the version before as a new version (the rollout's own write) and
then releases every node to it. Either way the rollout says why, in `reason` and its
events.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from controlplane.discovery.cache import SnapshotCache
from controlplane.discovery.hold import Hold, base_node_id
from controlplane.discovery.nodes import NodeRegistry, NodeState
from controlplane.rollouts.analysis import Criteria, Verdict, judge
from controlplane.rollouts.answers import answers
from controlplane.rollouts.load import Load, total
from controlplane.rollouts.plan import Stage, stages
from controlplane.rollouts.store import RolloutStore, event
from controlplane.spec import ConfigSet
from controlplane.store.config_store import ConfigStore
from controlplane.store.models import RolloutRow, utcnow
from controlplane.validation import ConfigError

log = logging.getLogger("flux.rollouts")

TICK = 0.25


def stage_of(row: RolloutRow) -> Stage | None:
    plan = stages(bool(row.canary_percent), row.by_group, row.groups)
    return plan[row.stage] if row.stage < len(plan) else None


def _loads(row: RolloutRow, nodes: list[NodeState]) -> dict[str, Any]:
    """The counters of every node of the affected groups now (a mark)."""
    return {n.node_id: n.load for n in nodes if n.node_group in row.groups and n.load}


def _in_stage(row: RolloutRow, stage: Stage, node: NodeState) -> bool:
    if node.node_group not in row.groups:
        return False
    if stage.kind == "canary":
        return base_node_id(node.node_id) in row.canaries
    return node.node_group == stage.group


class RolloutManager:
    def __init__(
        self,
        store: ConfigStore,
        rollouts: RolloutStore,
        nodes: NodeRegistry,
        cache: SnapshotCache,
        owner: str,
        *,
        tick: float = TICK,
    ) -> None:
        self.store = store
        self.rollouts = rollouts
        self.nodes = nodes
        self.cache = cache
        self.owner = owner
        self.tick = tick
        self.wake = asyncio.Event()
        self._baseline: tuple[int, ConfigSet] | None = None
        # One read-and-pin at a time: a tick that read "no rollout" just before a rollout's
        # commit must not clear the pins the watcher set for it before publishing its version.
        self._sync = asyncio.Lock()
        store.write_guards.append(rollouts.guard)

    # -- pinning (every control plane) ---------------------------------------------------

    async def sync_hold(self) -> RolloutRow | None:
        """Read the running rollout and pin the cache's nodes accordingly; the rollout, if any."""
        async with self._sync:
            return await self._sync_hold()

    async def _sync_hold(self) -> RolloutRow | None:
        row = await asyncio.to_thread(self.rollouts.active)
        if row is None:
            if self.cache.hold is not None:
                # The rollout just ended. A rollback committed a version the watcher may not have
                # loaded yet: publish it before the hold goes, or the nodes held back would be
                # sent the cache's version of the moment, the one rolled back.
                version, config = await asyncio.to_thread(self.store.current)
                if version != self.cache.version:
                    self.cache.publish(version, config)
            self.cache.set_hold(None)
            self.nodes.eager_load = False
            return None
        if self._baseline is None or self._baseline[0] != row.from_version:
            config = await asyncio.to_thread(self.store.config_at, row.from_version)
            self._baseline = (row.from_version, config)
        self.cache.set_hold(
            Hold(
                rollout=row.rollout_id,
                version=row.from_version,
                config=self._baseline[1],
                groups=frozenset(row.groups),
                released_nodes=frozenset(row.canaries),
                released_groups=frozenset(row.released_groups),
            )
        )
        self.nodes.eager_load = True
        return row

    async def run(self) -> None:
        while True:
            try:
                row = await self.sync_hold()
                if row is not None and await asyncio.to_thread(self.rollouts.claim, row.rollout_id, self.owner):
                    await self.step(row)
            except Exception:
                log.exception("rollout step failed; will retry")
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.tick)
            except TimeoutError:
                pass

    # -- moving on (the lease holder) ----------------------------------------------------

    async def step(self, row: RolloutRow, now: datetime | None = None) -> None:
        now = now or utcnow()
        stage = stage_of(row)
        if stage is None:
            await self._promote(row, "every stage passed", now)
            return
        criteria = Criteria.of(row.criteria)
        nodes = await asyncio.to_thread(self.nodes.list)
        scope = [n for n in nodes if n.connected and _in_stage(row, stage, n)]
        replies = answers(scope, row.to_version)
        # a node that could not apply a resource of the version (set it aside) counts as refusing it
        refused = [a for a in replies if a.state in ("refused", "failing")]
        if refused:
            first = refused[0]
            where = f" ({first.resource})" if first.resource else ""
            more = f" and {len(refused) - 1} more" if len(refused) > 1 else ""
            said = "refused" if first.state == "refused" else "could not apply part of"
            await self._roll_back(
                row, f"node {first.node_id}{more} {said} version {row.to_version}{where}: {first.reason}", now
            )
            return
        if row.stage_acked_at is None:
            pending = [a.node_id for a in replies if a.state == "pending"]
            if pending:
                if (now - row.stage_started_at).total_seconds() < criteria.ack_timeout:
                    await self._save(row, now)
                    return
                await self._roll_back(
                    row,
                    f"{', '.join(pending)} did not answer version {row.to_version} within {criteria.ack_timeout:g}s",
                    now,
                )
                return
            row.stage_acked_at = now
            row.marks = {**row.marks, "ack": _loads(row, nodes)}
            if not scope:
                event(row, f"{stage.describe()}: no connected node to wait for", now)
            else:
                event(row, f"{stage.describe()}: {len(scope)} node(s) took version {row.to_version}"
                           + (f"; baking {row.bake_ms / 1000:g}s" if row.bake_ms else ""), now)  # fmt: skip
            await self._save(row, now)
            return
        baked = (now - row.stage_acked_at).total_seconds() * 1000 >= row.bake_ms
        verdict = self._analyse(row, stage, nodes, criteria, final=baked)
        row.analysis = {"outcome": verdict.outcome, "reason": verdict.reason, **verdict.numbers}
        if verdict.outcome == "fail":
            await self._roll_back(row, f"{stage.describe()}: {verdict.reason}", now)
            return
        if not baked:
            await self._save(row, now)
            return
        event(row, f"{stage.describe()} passed: {verdict.reason}", now)
        row.stage += 1
        following = stage_of(row)
        if following is None:
            await self._promote(row, f"{stage.describe()}: {verdict.reason}", now)
            return
        if following.kind == "group":
            row.released_groups = [*row.released_groups, following.group]
        row.stage_started_at, row.stage_acked_at = now, None
        row.marks = {"start": _loads(row, nodes), "ack": {}}
        event(row, f"version {row.to_version} to {following.describe()}", now)
        await self._save(row, now)

    def _analyse(
        self, row: RolloutRow, stage: Stage, nodes: list[NodeState], criteria: Criteria, *, final: bool
    ) -> Verdict:
        ack: dict[str, Any] = row.marks.get("ack", {})
        start: dict[str, Any] = row.marks.get("start", {})
        ours = [n for n in nodes if n.connected and _in_stage(row, stage, n)]
        canary = total(Load.of(n.load).since(Load.of(ack.get(n.node_id))) for n in ours)
        if stage.kind == "canary":
            rest = [
                n for n in nodes
                if n.connected and n.node_group in row.groups and not _in_stage(row, stage, n)
            ]  # fmt: skip
            reference = total(Load.of(n.load).since(Load.of(ack.get(n.node_id))) for n in rest)
            if reference.requests >= criteria.min_requests:
                return judge(canary, reference, criteria, final=final, against="the other nodes")
        before = total(Load.of(start.get(n.node_id)) for n in ours)
        return judge(canary, before, criteria, final=final, against="the same nodes before the rollout")

    async def _save(self, row: RolloutRow, now: datetime) -> bool:
        saved = await asyncio.to_thread(self.rollouts.save, row, self.owner, now)
        if not saved:
            log.info("rollout %s is driven by another control plane now", row.rollout_id)
        return saved

    async def _promote(self, row: RolloutRow, why: str, now: datetime) -> None:
        row.status = "promoted"
        row.reason = f"promoted: {why}"
        row.released_groups = list(row.groups)
        row.finished_at = now
        event(row, f"promoted: version {row.to_version} to every node ({why})", now)
        if await self._save(row, now):
            log.info("rollout %s promoted version %d: %s", row.rollout_id, row.to_version, why)
        await self.sync_hold()

    async def _roll_back(self, row: RolloutRow, why: str, now: datetime, *, author: str = "") -> None:
        """Commit the version before again (the rollout's own write), then release every node to it."""
        try:
            result = await asyncio.to_thread(
                self.store.rollback,
                row.from_version,
                author=author or f"rollout {row.rollout_id}",
                rollout=row.rollout_id,
                summary=f"rollout {row.rollout_id} rolled back version {row.to_version}: {why}"[:4000],
            )
        except ConfigError as exc:  # the version before no longer validates: say so, keep trying
            log.error("rollout %s: cannot roll back to version %d: %s", row.rollout_id, row.from_version, exc)
            event(row, f"cannot roll back to version {row.from_version}: {exc}", now)
            await self._save(row, now)
            return
        row.status = "rolled_back"
        row.rollback_version = result.version
        row.reason = f"rolled back: {why}"
        row.finished_at = now
        event(row, f"rolled back: version {result.version} (the config of version {row.from_version}) to every "
                   f"node; {why}", now)  # fmt: skip
        if await self._save(row, now):
            log.warning("rollout %s rolled back version %d: %s", row.rollout_id, row.to_version, why)
        await self.sync_hold()

    # -- an operator's word (any control plane: takes the lease) ---------------------------

    async def abort(self, rollout_id: str, author: str) -> RolloutRow | None:
        if not await asyncio.to_thread(self.rollouts.claim, rollout_id, self.owner, force=True):
            return None
        row = await asyncio.to_thread(self.rollouts.get, rollout_id)
        if row is None or row.status != "running":
            return row
        await self._roll_back(row, f"aborted by {author}", utcnow(), author=author)
        return await asyncio.to_thread(self.rollouts.get, rollout_id)

    async def promote(self, rollout_id: str, author: str) -> RolloutRow | None:
        if not await asyncio.to_thread(self.rollouts.claim, rollout_id, self.owner, force=True):
            return None
        row = await asyncio.to_thread(self.rollouts.get, rollout_id)
        if row is None or row.status != "running":
            return row
        await self._promote(row, f"promoted by {author} before the stages ended", utcnow())
        return await asyncio.to_thread(self.rollouts.get, rollout_id)
