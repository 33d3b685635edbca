"""NodeRegistry: what this control plane knows of its connected nodes.

State changes (connect, ACK, NACK, disconnect) are kept in memory and written
to the `nodes` table in one batch a second, so a burst of ACKs never competes
with config writes for the database. `list()` merges the table (nodes of every
control plane on the same database) with this process's fresher view.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlmodel import Session

from controlplane.store.models import NodeRow

log = logging.getLogger("flux.nodes")

STALE_AFTER = timedelta(seconds=30)
FORGET_AFTER = timedelta(hours=24)  # default grace period of a disconnected node


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _row_state(row: NodeRow, now: datetime) -> NodeState:
    """Whether a row's node counts as connected, and since when it was seen: a row its control
    plane stopped updating (no touch for STALE_AFTER) is a disconnected node."""
    last_seen = _aware(row.last_seen)
    connected = bool(row.connected) and last_seen is not None and now - last_seen <= STALE_AFTER
    return NodeState(row.node_id, row.node_group, connected=connected, last_seen=last_seen)


@dataclass
class NodeState:
    node_id: str
    node_group: str
    address: str = ""
    hostname: str = ""
    build_version: str = ""
    control_plane_id: str = ""
    connected: bool = True
    acked_version: str = ""
    sent_version: str = ""
    last_nack_version: str | None = None
    last_nack_message: str | None = None
    last_nack_at: datetime | None = None
    connected_since: datetime | None = field(default_factory=_now)
    last_seen: datetime | None = field(default_factory=_now)
    load: dict[str, Any] | None = None  # the last load report (controlplane.rollouts.load)
    # Resources of the acked version the node set aside (dataplane.config.isolation): kind,
    # name, message, kept_previous. None or empty: everything applied.
    failing_resources: list[dict[str, Any]] | None = None
    load_at: datetime | None = None
    stream: int = 0

    def as_dict(self, current_version: int | str | None = None) -> dict[str, Any]:
        iso = lambda d: d.isoformat() if d else None  # noqa: E731
        return {
            "id": self.node_id,
            "group": self.node_group,
            "address": self.address,
            "hostname": self.hostname,
            "build_version": self.build_version,
            "control_plane": self.control_plane_id,
            "connected": self.connected,
            "acked_version": self.acked_version,
            "sent_version": self.sent_version,
            "in_sync": current_version is not None and self.acked_version == str(current_version),
            "config_version": self.acked_version.partition(".")[0],
            "last_nack": (
                {
                    "version": self.last_nack_version,
                    "message": self.last_nack_message,
                    "at": iso(self.last_nack_at),
                }
                if self.last_nack_message
                else None
            ),
            "failing_resources": list(self.failing_resources or []),
            "connected_since": iso(self.connected_since),
            "last_seen": iso(self.last_seen),
            "load": (
                {"requests": self.load.get("requests", 0), "server_errors": self.load.get("server_errors", 0),
                 "routes": {name: {"requests": c[0], "server_errors": c[1]}
                            for name, c in (self.load.get("routes") or {}).items()},
                 "at": iso(self.load_at)}
                if self.load else None
            ),
        }  # fmt: skip


class NodeRegistry:
    def __init__(
        self,
        engine: Engine | None,
        control_plane_id: str,
        *,
        forget_after: timedelta | None = FORGET_AFTER,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """`forget_after`: how long a disconnected node stays listed (None: for ever);
        `clock`: the current time, aware, in UTC (tests pass a fake one)."""
        self.engine = engine
        self.control_plane_id = control_plane_id
        self.forget_after = forget_after
        self._clock = clock
        self._nodes: dict[str, NodeState] = {}
        self._dirty: set[str] = set()
        self._forgotten: set[str] = set()  # revoked: their rows are deleted at the next flush
        self._lock = threading.Lock()
        self._streams = 0
        self.eager_load = False  # a rollout runs: write load reports at the next flush, not the next touch

    # -- stream events (called on the event loop) ---------------------------------

    def connect(self, node_id: str, group: str, *, address: str, hostname: str, build_version: str) -> NodeState:
        self._streams += 1
        prev = self._nodes.get(node_id)
        state = NodeState(
            node_id=node_id,
            node_group=group,
            address=address,
            hostname=hostname,
            build_version=build_version,
            control_plane_id=self.control_plane_id,
            connected_since=self._clock(),
            last_seen=self._clock(),
            stream=self._streams,
        )
        if prev is not None:  # keep what the node told us before it reconnected
            state.acked_version = prev.acked_version
            state.last_nack_version = prev.last_nack_version
            state.last_nack_message = prev.last_nack_message
            state.last_nack_at = prev.last_nack_at
            state.load, state.load_at = prev.load, prev.load_at
            state.failing_resources = prev.failing_resources
        self._set(state)
        log.info("node %s (group %s) connected from %s", node_id, group, address)
        return state

    def disconnect(self, state: NodeState) -> None:
        current = self._nodes.get(state.node_id)
        if current is None or current.stream != state.stream:
            return  # a newer stream of the same node took over
        self._set(replace(current, connected=False, last_seen=self._clock()))
        log.info("node %s disconnected", state.node_id)

    def sent(self, state: NodeState, version: str) -> None:
        self._update(state, sent_version=version)

    def ack(self, state: NodeState, version: str, failing: list[dict[str, Any]] | None = None) -> None:
        """An ACK; `failing`: the resources of that version the node could not apply."""
        for f in failing or []:
            log.warning("node %s applied version %s without %s %r: %s", state.node_id, version, f["kind"], f["name"],
                        f["message"])  # fmt: skip
        self._update(state, acked_version=version, failing_resources=failing or None)

    def nack(self, state: NodeState, version: str, message: str) -> None:
        log.warning("node %s rejected version %s: %s", state.node_id, version, message)
        self._update(state, last_nack_version=version, last_nack_message=message[:4000], last_nack_at=self._clock())

    def report_load(self, state: NodeState, load: dict[str, Any]) -> None:
        """A load report: kept at once, written with the next touch (every few seconds), or
        the next flush while `eager_load` (a rollout compares nodes' counters)."""
        current = self._nodes.get(state.node_id)
        if current is None or current.stream != state.stream:
            return
        now = self._clock()
        with self._lock:
            self._nodes[state.node_id] = replace(current, load=load, load_at=now, last_seen=now)
            if self.eager_load:
                self._dirty.add(state.node_id)

    def _update(self, state: NodeState, **changes: Any) -> None:
        current = self._nodes.get(state.node_id)
        if current is None or current.stream != state.stream:
            return
        self._set(replace(current, last_seen=self._clock(), **changes))

    def _set(self, state: NodeState) -> None:
        with self._lock:
            self._nodes[state.node_id] = state
            self._dirty.add(state.node_id)

    def get(self, node_id: str) -> NodeState | None:
        return self._nodes.get(node_id)

    def forget(self, node_id: str) -> None:
        """A revoked node: drop it and its workers (`ID/wK`) here and, at the next flush, from the table."""
        with self._lock:
            for known in [k for k in self._nodes if k == node_id or k.startswith(node_id + "/w")]:
                del self._nodes[known]
                self._dirty.discard(known)
                self._forgotten.add(known)

    # -- persistence -----------------------------------------------------------------

    def flush(self, *, touch: bool = False) -> int:
        """Write changed states (and, with `touch`, last_seen of connected ones); blocking."""
        if self.engine is None:
            return 0
        now = self._clock()
        with self._lock:
            if touch:
                for node_id, st in self._nodes.items():
                    if st.connected:
                        self._nodes[node_id] = replace(st, last_seen=now)
                        self._dirty.add(node_id)
            batch = [self._nodes[n] for n in self._dirty]
            self._dirty.clear()
            forgotten, self._forgotten = self._forgotten, set()
        if not batch and not forgotten:
            return 0
        try:
            with Session(self.engine) as s:
                if forgotten:
                    s.execute(delete(NodeRow).where(NodeRow.node_id.in_(sorted(forgotten))))  # type: ignore[attr-defined]
                existing = {
                    r.node_id: r
                    for r in s.execute(select(NodeRow).where(NodeRow.node_id.in_([b.node_id for b in batch])))  # type: ignore[attr-defined]
                    .scalars()
                    .all()
                }
                for st in batch:
                    row = existing.get(st.node_id) or NodeRow(node_id=st.node_id, node_group=st.node_group)
                    for attr in (
                        "node_group", "address", "hostname", "build_version", "control_plane_id", "connected",
                        "acked_version", "sent_version", "last_nack_version", "last_nack_message",
                        "last_nack_at", "connected_since", "last_seen", "load", "load_at", "failing_resources",
                    ):  # fmt: skip
                        setattr(row, attr, getattr(st, attr))
                    s.add(row)
                s.commit()
        except Exception:
            log.exception("could not save node status; will retry")
            with self._lock:
                self._dirty.update(b.node_id for b in batch)
                self._forgotten.update(forgotten)
            return 0
        return len(batch)

    async def run_flusher(self, interval: float = 1.0, touch_every: int = 5, prune_every: int = 60) -> None:
        tick = 0
        while True:
            await asyncio.sleep(interval)
            tick += 1
            await asyncio.to_thread(self.flush, touch=tick % touch_every == 0)
            if tick % prune_every == 0:
                try:
                    await asyncio.to_thread(self.prune)
                except Exception:
                    log.exception("could not drop long-disconnected nodes; will retry")

    # -- disconnected nodes ------------------------------------------------------------

    def _expired(self, state: NodeState, now: datetime) -> bool:
        """Disconnected for longer than forget_after (a connected node never expires)."""
        if self.forget_after is None or state.connected or state.last_seen is None:
            return False
        return now - state.last_seen > self.forget_after

    def prune(self) -> list[str]:
        """Drop the nodes disconnected for longer than `forget_after`: from memory and their rows
        from the table (those of every control plane on the database); blocking. Their ids."""
        if self.forget_after is None:
            return []
        now = self._clock()
        with self._lock:
            dropped = [k for k, v in self._nodes.items() if self._expired(v, now)]
            for node_id in dropped:
                del self._nodes[node_id]
                self._dirty.discard(node_id)
            ours = set(self._nodes)
        if self.engine is not None:
            with Session(self.engine) as s:
                rows = [
                    row.node_id
                    for row in s.execute(select(NodeRow)).scalars()
                    if row.node_id not in ours and self._expired(_row_state(row, now), now)
                ]
                if rows:
                    s.execute(delete(NodeRow).where(NodeRow.node_id.in_(rows)))  # type: ignore[attr-defined]
                    s.commit()
            dropped = sorted(set(dropped) | set(rows))
        for node_id in dropped:
            log.info("node %s forgotten: disconnected for more than %s", node_id, self.forget_after)
        return dropped

    def list(self) -> list[NodeState]:
        """Every node known to any control plane on this database; ours are freshest."""
        now = self._clock()
        merged: dict[str, NodeState] = {}
        if self.engine is not None:
            with Session(self.engine) as s:
                for row in s.execute(select(NodeRow)).scalars():
                    st = NodeState(
                        **{
                            k: getattr(row, k)
                            for k in NodeState.__dataclass_fields__
                            if k != "stream" and hasattr(row, k)
                        }
                    )
                    st.connected_since = _aware(st.connected_since)
                    st.last_seen = _aware(st.last_seen)
                    st.last_nack_at = _aware(st.last_nack_at)
                    st.load_at = _aware(st.load_at)
                    if st.connected and st.last_seen and now - st.last_seen > STALE_AFTER:
                        st.connected = False  # its control plane stopped updating it
                    merged[st.node_id] = st
        with self._lock:
            for node_id, ours in self._nodes.items():
                theirs = merged.get(node_id)
                newer_elsewhere = (
                    theirs is not None
                    and theirs.control_plane_id != self.control_plane_id
                    and theirs.connected
                    and not ours.connected
                )
                if not newer_elsewhere:
                    merged[node_id] = replace(ours)
        listed = [n for n in merged.values() if not self._expired(n, now)]
        return sorted(listed, key=lambda n: (n.node_group, n.node_id))
