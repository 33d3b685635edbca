"""Which nodes took a config version: ACKed it (or a later one), refused it, or not yet.

A node that ACKed it but set resources aside (a port it cannot bind: per-resource isolation,
dataplane.config.isolation) answered `failing`: the rest of the version serves there.

`fluxctl apply/rollback/delete` wait on this (GET /api/v1/config/versions/{v}/nodes), and
so do rollouts for the nodes they release. A node refused a version when its last NACK is
of that version or a later one and it has not ACKed one since. The resource at fault is
read from the node's reason ("listener 'public': cannot listen on ...").
Plain data: no clock, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from controlplane.discovery.nodes import NodeState

State = Literal["acked", "failing", "refused", "pending"]

_RESOURCE = re.compile(
    r"^(?:version \S+: )?(listener|route|cluster|policy|consumer|certificate|tunnel)s? '([^']+)'[:,]?\s*(.*)$", re.S
)
_PLURAL = {"policy": "policies"}


def config_version(snapshot_version: str | None) -> int:
    """42 of "42" or "42.1037"; -1 for none."""
    head = (snapshot_version or "").partition(".")[0]
    return int(head) if head.isdigit() else -1


def resource_of(reason: str) -> tuple[str, str]:
    """("listeners/public", "cannot listen on ...") from a node's reason; ("", reason) when none is named."""
    m = _RESOURCE.match(reason.strip())
    if not m:
        return "", reason
    kind, name, rest = m.groups()
    return f"{_PLURAL.get(kind, kind + 's')}/{name}", rest or reason


@dataclass(frozen=True)
class Answer:
    node_id: str
    group: str
    state: State
    acked_version: str
    resource: str = ""
    reason: str = ""
    failing: tuple[dict[str, Any], ...] = ()  # resources set aside: kind, name, message, kept_previous

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "group": self.group,
            "state": self.state,
            "acked_version": self.acked_version,
            "resource": self.resource,
            "reason": self.reason,
            "failing_resources": [dict(f) for f in self.failing],
        }


def answer(node: NodeState, version: int) -> Answer:
    acked = config_version(node.acked_version)
    if acked >= version:
        failing = tuple(node.failing_resources or ())
        if failing:
            first = failing[0]
            return Answer(
                node.node_id, node.node_group, "failing", node.acked_version,
                f"{_PLURAL.get(first['kind'], first['kind'] + 's')}/{first['name']}", first["message"], failing,
            )  # fmt: skip
        return Answer(node.node_id, node.node_group, "acked", node.acked_version)
    if node.last_nack_message and config_version(node.last_nack_version) >= version:
        resource, reason = resource_of(node.last_nack_message)
        return Answer(node.node_id, node.node_group, "refused", node.acked_version, resource, reason)
    return Answer(node.node_id, node.node_group, "pending", node.acked_version)


def answers(nodes: Iterable[NodeState], version: int, groups: Iterable[str] | None = None) -> list[Answer]:
    """The answers of the connected nodes of `groups` (every group: None) to `version`."""
    wanted = set(groups) if groups is not None else None
    return [answer(n, version) for n in nodes if n.connected and (wanted is None or n.node_group in wanted)]


def summary(items: list[Answer]) -> dict[str, int]:
    out = {"acked": 0, "failing": 0, "refused": 0, "pending": 0}
    for a in items:
        out[a.state] += 1
    return out
