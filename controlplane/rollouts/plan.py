"""What a rollout changes and where it starts: affected groups, canary nodes, stages.

A group is affected by a write when its rendered snapshot differs between the config
before and after (rendered without registry instances, so only the config counts).
Canaries are a share of each affected group's connected nodes, at least one, picked by
a hash of the rollout id and node id (so rollouts spread over the nodes). Stages: the
canaries first (with `canary`), then each group in turn (with `by_group`); after the
last stage every node is released. Plain data: no clock, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.discovery.hold import base_node_id
from controlplane.snapshot import node_groups, render_snapshot
from controlplane.spec import ConfigSet


def affected_groups(before: ConfigSet, after: ConfigSet, known: Iterable[str] = ()) -> list[str]:
    """Groups (of either config, or `known` from connected nodes) whose snapshot changes, sorted."""
    groups = node_groups(before) | node_groups(after) | set(known)
    changed = []
    for group in sorted(groups):
        a = render_snapshot(before, 0, group).SerializeToString(deterministic=True)
        b = render_snapshot(after, 0, group).SerializeToString(deterministic=True)
        if a != b:
            changed.append(group)
    return changed


def pick_canaries(nodes_by_group: dict[str, Iterable[str]], percent: int, seed: str) -> list[str]:
    """`percent` of each group's nodes (floor, at least one), by worker-less node id, sorted."""
    picked: set[str] = set()
    for _group, ids in sorted(nodes_by_group.items()):
        bases = sorted({base_node_id(i) for i in ids})
        if not bases:
            continue
        count = max(1, len(bases) * percent // 100)
        order = sorted(bases, key=lambda n: hashlib.sha256(f"{seed}\0{n}".encode()).digest())
        picked.update(order[:count])
    return sorted(picked)


@dataclass(frozen=True)
class Stage:
    kind: str  # canary | group
    group: str = ""

    def describe(self) -> str:
        return "canary nodes" if self.kind == "canary" else f"group {self.group}"


def stages(canary: bool, by_group: bool, groups: list[str]) -> list[Stage]:
    out = [Stage("canary")] if canary else []
    if by_group:
        out += [Stage("group", g) for g in groups]
    return out
