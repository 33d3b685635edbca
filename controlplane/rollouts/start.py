"""Starting a rollout: the row written in the same transaction as its config version.

`RolloutStart` is handed to ConfigStore.apply as `before_commit`: it sees the config
before and after the write, finds the affected groups, picks the canaries among the
nodes connected then, marks their counters, and adds the rollout row. A write that
changes no group's snapshot starts no rollout (it is an ordinary write).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlmodel import Session

from controlplane.discovery.nodes import NodeState
from controlplane.rollouts.analysis import Criteria
from controlplane.rollouts.plan import affected_groups, pick_canaries, stages
from controlplane.rollouts.store import RolloutStore, event, new_rollout_id
from controlplane.spec import ConfigSet
from controlplane.store.models import RolloutRow, utcnow


@dataclass
class RolloutStart:
    nodes: list[NodeState]  # every known node when the write began
    canary: int = 0  # percent of each affected group's nodes; 0: no canary stage
    bake_ms: int = 0
    by_group: bool = False
    criteria: Criteria = field(default_factory=Criteria)
    author: str = ""
    owner: str = ""
    rollout_id: str = field(default_factory=new_rollout_id)
    row: RolloutRow | None = None  # set when the write started a rollout

    def __call__(self, session: Session, version: int, before: ConfigSet, after: ConfigSet) -> None:
        connected = [n for n in self.nodes if n.connected]
        groups = affected_groups(before, after, {n.node_group for n in connected})
        if not groups:
            return
        in_groups = [n for n in connected if n.node_group in groups]
        canaries = (
            pick_canaries({g: [n.node_id for n in in_groups if n.node_group == g] for g in groups}, self.canary,
                          self.rollout_id)
            if self.canary else []
        )  # fmt: skip
        plan = stages(bool(self.canary), self.by_group, groups)
        now = utcnow()
        row = RolloutRow(
            rollout_id=self.rollout_id,
            status="running",
            from_version=version - 1,
            to_version=version,
            canary_percent=self.canary,
            bake_ms=self.bake_ms,
            by_group=self.by_group,
            groups=groups,
            canaries=canaries,
            stage=0,
            released_groups=[plan[0].group] if plan and plan[0].kind == "group" else [],
            stage_started_at=now,
            marks={"start": {n.node_id: n.load for n in in_groups if n.load}, "ack": {}},
            criteria=self.criteria.as_dict(),
            owner=self.owner,
            lease_until=now + timedelta(seconds=5),
            author=self.author,
            created_at=now,
            updated_at=now,
        )
        first = plan[0].describe() if plan else "every node"
        who = f" ({', '.join(canaries)})" if canaries else ""
        event(row, f"version {version} to {first}{who} of group(s) {', '.join(groups)}; the rest stay on "
                   f"version {version - 1}", now)  # fmt: skip
        RolloutStore.create_in(session, row)
        self.row = row

    def describe(self) -> dict[str, Any]:
        return {"canary": self.canary, "bake_ms": self.bake_ms, "by_group": self.by_group}
