"""SnapshotCache: the current config version and its per-group snapshots.

Knows nothing of gRPC (as go-control-plane's cache): `publish` sets a new
config version, `registry_changed` marks the groups whose registry services
changed, and both wake the subscribed streams. `snapshot(group)` renders a
group once per change (in a worker thread) and shares the bytes between every
stream of that group.

Versions: a group's snapshot version is the config version ("42"), or, for a
group whose clusters take instances from the registry, "42.1037" (the highest
modify index of those services), so the same database state names the same
version on every control plane. Streams decide what to send by a local,
monotonic sequence number per group (`group_seq`), which moves whenever the
group's snapshot may have changed.

Per-node pinning: while a rollout runs, `set_hold(Hold)` (controlplane.discovery.hold)
keeps the nodes of the groups it changes on the version before, except the nodes and
groups it released; streams ask `node_version` / `node_snapshot` with their node id.
Held groups are rendered from the held config, once per change, like the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from google.protobuf import any_pb2

from controlplane.discovery.hold import Hold
from controlplane.snapshot import SNAPSHOT_TYPE_URL, RegistryView, render_snapshot, select, snapshot_version
from controlplane.spec import ConfigSet
from flux.v1 import config_pb2

log = logging.getLogger("flux.discovery")

Renderer = Callable[[ConfigSet, str, str, RegistryView | None], config_pb2.Snapshot]

REGISTRY_COALESCE = 0.05  # seconds: registry changes inside this window make one push


class SnapshotCache:
    def __init__(self, renderer: Renderer = render_snapshot, registry: RegistryView | None = None) -> None:
        self._renderer = renderer
        self.registry = registry
        self.version = -1
        self._config: ConfigSet | None = None
        self._rendered: dict[str, asyncio.Future[tuple[str, any_pb2.Any]]] = {}
        self._services: dict[str, frozenset[str]] = {}  # group -> registry services it uses
        self._subscribers: set[asyncio.Event] = set()
        self._seq = 0
        self._base_seq = 0
        self._group_seq: dict[str, int] = {}
        self._pending: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None
        self.renders = 0
        self.last_render_ms = 0.0
        self.hold: Hold | None = None
        self._held: dict[str, asyncio.Future[tuple[str, any_pb2.Any]]] = {}  # renders of the held config
        self._held_services: dict[str, frozenset[str]] = {}

    @property
    def ready(self) -> bool:
        return self._config is not None

    def publish(self, version: int, config: ConfigSet) -> None:
        if version == self.version:
            return
        self.version = version
        self._config = config
        self._rendered = {}
        self._services = {}
        self._seq += 1
        self._base_seq = self._seq
        self._group_seq = {}
        self._wake()

    def registry_changed(self, services: Iterable[str]) -> None:
        """Services whose instances changed; the affected groups are re-rendered shortly
        (changes within REGISTRY_COALESCE seconds make one push)."""
        self._pending.update(services)
        if self._flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._apply_registry_changes()
                return
            self._flush = loop.call_later(REGISTRY_COALESCE, self._apply_registry_changes)

    def _apply_registry_changes(self) -> None:
        self._flush = None
        changed, self._pending = self._pending, set()
        if not changed or self._config is None:
            return
        touched = False
        for group in list(self._known_groups()):
            if (self.services(group) | self._services_held(group)) & changed:
                self._seq += 1
                self._group_seq[group] = self._seq
                self._rendered.pop(group, None)
                self._held.pop(group, None)
                touched = True
        if touched:
            self._wake()

    def _known_groups(self) -> set[str]:
        return set(self._services) | set(self._rendered) | set(self._group_seq) | set(self._held)

    def refresh(self) -> None:
        """Re-render every group (e.g. the registry was reloaded from the database)."""
        self._seq += 1
        self._base_seq = self._seq
        self._group_seq = {}
        self._rendered = {}
        self._held = {}
        self._wake()

    def set_hold(self, hold: Hold | None) -> None:
        """Pin nodes to an earlier version while a rollout runs (None: every node gets the current one)."""
        old = self.hold
        if (hold is None and old is None) or (hold is not None and hold.same_pins(old)):
            self.hold = hold
            return
        if old is None or hold is None or old.version != hold.version:
            self._held = {}
            self._held_services = {}
        self.hold = hold
        self._seq += 1
        for group in (old.groups if old else frozenset()) | (hold.groups if hold else frozenset()):
            self._group_seq[group] = self._seq
        self._wake()

    def holds(self, group: str, node_id: str) -> bool:
        return self.hold is not None and self.hold.holds(group, node_id)

    def _services_held(self, group: str) -> frozenset[str]:
        hold = self.hold
        if hold is None or group not in hold.groups:
            return frozenset()
        found = self._held_services.get(group)
        if found is None:
            found = self._held_services[group] = frozenset(select(hold.config, group).services)
        return found

    def _wake(self) -> None:
        for event in self._subscribers:
            event.set()

    def subscribe(self, event: asyncio.Event) -> None:
        self._subscribers.add(event)

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._subscribers.discard(event)

    # -- per-group state -----------------------------------------------------------------------

    def services(self, group: str) -> frozenset[str]:
        found = self._services.get(group)
        if found is None:
            assert self._config is not None
            found = self._services[group] = frozenset(select(self._config, group).services)
        return found

    def group_seq(self, group: str) -> int:
        """Moves whenever `group`'s snapshot may have changed (streams compare it with what they sent)."""
        return self._group_seq.get(group, self._base_seq)

    def group_version(self, group: str) -> str:
        """The version the group's snapshot has now ("42" or "42.1037")."""
        return snapshot_version(self.version, self.services(group), self.registry)

    def node_version(self, group: str, node_id: str) -> str:
        """The version node `node_id` of `group` should run now (held by a rollout, or the group's)."""
        hold = self.hold
        if hold is not None and hold.holds(group, node_id):
            return snapshot_version(hold.version, self._services_held(group), self.registry)
        return self.group_version(group)

    async def node_snapshot(self, group: str, node_id: str) -> tuple[int, str, any_pb2.Any]:
        """(sequence, version, packed snapshot) node `node_id` of `group` should run now."""
        hold = self.hold
        if hold is None or not hold.holds(group, node_id):
            return await self.snapshot(group)
        seq = self.group_seq(group)
        fut = self._held.get(group)
        if fut is None:
            version = self.node_version(group, node_id)
            fut = asyncio.get_running_loop().create_future()
            self._held[group] = fut
            try:
                packed = await asyncio.to_thread(self._render, hold.config, version, group)
            except BaseException as exc:
                fut.set_exception(exc)
                if self._held.get(group) is fut:
                    self._held.pop(group, None)
                raise
            fut.set_result((version, packed))
        version, packed = await asyncio.shield(fut)
        return seq, version, packed

    async def snapshot(self, group: str) -> tuple[int, str, any_pb2.Any]:
        """(sequence, version, packed snapshot) of `group` as it is now."""
        config = self._config
        assert config is not None, "snapshot() before the first publish()"
        seq = self.group_seq(group)
        fut = self._rendered.get(group)
        if fut is None:
            version = self.group_version(group)
            fut = asyncio.get_running_loop().create_future()
            self._rendered[group] = fut
            try:
                packed = await asyncio.to_thread(self._render, config, version, group)
            except BaseException as exc:
                fut.set_exception(exc)
                if self._rendered.get(group) is fut:
                    self._rendered.pop(group, None)
                raise
            fut.set_result((version, packed))
        version, packed = await asyncio.shield(fut)
        return seq, version, packed

    def _render(self, config: ConfigSet, version: str, group: str) -> any_pb2.Any:
        start = time.perf_counter()
        snap = self._renderer(config, version, group, self.registry)
        packed = any_pb2.Any(type_url=SNAPSHOT_TYPE_URL, value=snap.SerializeToString(deterministic=True))
        self.renders += 1
        self.last_render_ms = (time.perf_counter() - start) * 1000
        log.debug("rendered group %s at version %s in %.1f ms", group, version, self.last_render_ms)
        return packed
