"""Hold: per-node version pinning for the snapshot cache while a rollout runs.

A rollout (controlplane.rollouts) commits the new config version at once, and keeps the
nodes of the groups it changes on the version before (`version`, `config`) until it
releases them: canary nodes first (`released_nodes`), then whole groups
(`released_groups`). The cache asks `holds(group, node_id)` per stream; nothing here
knows of gRPC or of the database.

Node ids of the workers of one `flux-node --workers N` ("edge-1/w0", "edge-1/w1") count
as their node ("edge-1"): a node's workers share its listeners, so they move together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controlplane.spec import ConfigSet

_WORKER = re.compile(r"/w\d+$")


def base_node_id(node_id: str) -> str:
    """The node a worker's stream belongs to: "edge-1/w0" -> "edge-1"."""
    return _WORKER.sub("", node_id)


@dataclass(frozen=True)
class Hold:
    """Nodes of `groups` stay on config `version` unless released."""

    rollout: str
    version: int
    config: ConfigSet
    groups: frozenset[str]
    released_nodes: frozenset[str] = frozenset()
    released_groups: frozenset[str] = frozenset()

    def holds(self, group: str, node_id: str) -> bool:
        return (
            group in self.groups
            and group not in self.released_groups
            and base_node_id(node_id) not in self.released_nodes
        )

    def same_pins(self, other: Hold | None) -> bool:
        """Whether `other` pins the same nodes to the same version."""
        return (
            other is not None
            and other.version == self.version
            and other.groups == self.groups
            and other.released_nodes == self.released_nodes
            and other.released_groups == self.released_groups
        )
