"""RegistryView: the in-memory services and instances every registry read is served from.

What it owns
------------
The memory of the registry (services, instances, the tombstones of deleted services, the
registry index it is current to) and every read of it; replacing parts of it with database
rows (`_reload`, `_catch_up`: at start, and when another control plane wrote); applying a
committed write (`_apply`). It writes nothing to the database: writes are planned and
committed by `controlplane.registry.commits`, heartbeats by `controlplane.registry.heartbeats`.

Reads take a short lock and are safe on the event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, select

from controlplane.registry import ttl
from controlplane.registry.models import RegEventRow, RegInstanceRow, RegServiceRow
from controlplane.registry.records import Service, copy_instance, instance_from_row, service_from_row
from controlplane.registry.tx import Tx
from controlplane.registry.types import Instance, Selector, ServiceSpec
from controlplane.store.config_store import NotFound
from flux.v1 import config_pb2

log = logging.getLogger("flux.registry")

T_SVC = RegServiceRow.__table__  # type: ignore[attr-defined]
T_INST = RegInstanceRow.__table__  # type: ignore[attr-defined]
T_EV = RegEventRow.__table__  # type: ignore[attr-defined]

Key = tuple[str, str]  # (service, instance id)
CHUNK = 500


def chunks(items: list[Any], size: int = CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class RegistryView:
    """The registry's memory and its reads (`controlplane.registry.types.Registry`'s read side)."""

    def __init__(self) -> None:
        self._view_lock = threading.Lock()  # short: guards the in-memory view
        self._services: dict[str, Service] = {}
        self._instances: dict[str, dict[str, Instance]] = {}
        self._tombstones: dict[str, int] = {}  # deleted service -> index of the deletion (wakes its watches)
        self._index = 0
        self.on_drop: Callable[[Key], None] = lambda key: None  # an instance left memory (heartbeats forget it)

    # -- Registry protocol: reads ------------------------------------------------------------

    @property
    def index(self) -> int:
        return self._index

    def service_index(self, name: str) -> int:
        svc = self._services.get(name)
        return svc.modify_index if svc is not None else 0

    def watch_index(self, name: str) -> int:
        """Like `service_index`, but a deleted service keeps the index of its deletion."""
        svc = self._services.get(name)
        return svc.modify_index if svc is not None else self._tombstones.get(name, 0)

    def instances(self, service: str) -> list[Instance]:
        with self._view_lock:
            return [copy_instance(i) for _, i in sorted(self._instances.get(service, {}).items())]

    def endpoints(self, selector: Selector) -> list[Any]:
        with self._view_lock:
            svc = self._services.get(selector.service)
            if svc is None or (selector.namespace and svc.spec.namespace != selector.namespace):
                return []
            out = []
            for inst in self._instances.get(selector.service, {}).values():
                if not inst.serves or not _matches(inst, selector.tags, selector.version, selector.zone):
                    continue
                out.append(
                    config_pb2.Endpoint(
                        address=inst.address,
                        port=inst.port,
                        weight=inst.weight,
                        zone=inst.zone,
                        version=inst.version,
                        metadata=inst.metadata,
                        draining=inst.status == "draining",
                    )
                )
        out.sort(key=lambda e: (e.address, e.port, e.zone, e.version))
        return out

    # -- other reads ---------------------------------------------------------------------------

    def service(self, name: str) -> Service:
        svc = self._services.get(name)
        if svc is None:
            raise NotFound(f"service {name!r} not found")
        return svc

    def service_spec(self, name: str) -> ServiceSpec | None:
        """The spec of a service (the snapshot renderer reads its routing strategy), or None."""
        svc = self._services.get(name)
        return svc.spec if svc is not None else None

    def has_service(self, name: str) -> bool:
        return name in self._services

    def services(self, *, namespace: str = "", group: str = "", tags: Iterable[str] = ()) -> list[Service]:
        wanted = set(tags)
        with self._view_lock:
            found = [
                s
                for s in self._services.values()
                if (not namespace or s.spec.namespace == namespace)
                and (not group or s.spec.group == group)
                and wanted <= set(s.spec.tags)
            ]
        return sorted(found, key=lambda s: s.name)

    def instance(self, service: str, iid: str) -> Instance:
        with self._view_lock:
            inst = self._instances.get(service, {}).get(iid)
            if inst is None:
                self.raise_missing(service, iid)
            return copy_instance(inst)

    def select(
        self,
        service: str,
        *,
        healthy: bool | None = None,
        tags: Iterable[str] = (),
        version: str = "",
        zone: str = "",
        status: str = "",
    ) -> list[Instance]:
        """Instances of a service matching the discovery filters (`healthy=True`: those that serve)."""
        tags = tuple(tags)
        with self._view_lock:
            out = [
                copy_instance(i)
                for _, i in sorted(self._instances.get(service, {}).items())
                if (healthy is None or i.serves == healthy)
                and _matches(i, tags, version, zone)
                and (not status or i.status == status)
            ]
        return out

    def counts(self) -> dict[tuple[str, str, str], int]:
        """(service, status, health) -> number of instances, for metrics."""
        out: dict[tuple[str, str, str], int] = {}
        with self._view_lock:
            for name, insts in self._instances.items():
                for i in insts.values():
                    key = (name, i.status, i.health)
                    out[key] = out.get(key, 0) + 1
        return out

    def raise_missing(self, service: str, iid: str) -> Any:
        if service not in self._services:
            raise NotFound(f"service {service!r} not found")
        raise NotFound(f"instance {iid!r} of service {service!r} not found")

    # -- for the writer, the heartbeats and expiry -----------------------------------------------

    def staging(self) -> tuple[dict[str, Service], dict[str, dict[str, Instance]]]:
        """The live maps a write's `Tx` reads and stages against (only with the write lock held)."""
        return self._services, self._instances

    def health(self, service: str, iid: str) -> str | None:
        """The health of an instance ("healthy", "unhealthy", ...), None when unknown."""
        with self._view_lock:
            inst = self._instances.get(service, {}).get(iid)
            return inst.health if inst is not None else None

    def has_instance(self, key: Key) -> bool:
        with self._view_lock:
            return key[1] in self._instances.get(key[0], {})

    def touch(self, service: str, iid: str, now: float) -> Instance:
        """Merge a heartbeat at `now` into an instance and return a copy; NotFound when unknown."""
        with self._view_lock:
            inst = self._instances.get(service, {}).get(iid)
            if inst is None:
                self.raise_missing(service, iid)
            inst.last_heartbeat = ttl.merge_heartbeat(inst.last_heartbeat, now)
            return copy_instance(inst)

    def merge_heartbeats(self, beats: Mapping[Key, float]) -> None:
        """Heartbeat times learnt from the database (other control planes received them)."""
        with self._view_lock:
            for (svc, iid), hb in beats.items():
                inst = self._instances.get(svc, {}).get(iid)
                if inst is not None:
                    inst.last_heartbeat = ttl.merge_heartbeat(inst.last_heartbeat, hb)

    def expired(self, now: float) -> list[Key]:
        """The ephemeral instances whose TTL ran out by `now`, as memory has them."""
        with self._view_lock:
            return [(i.service, i.id) for insts in self._instances.values() for i in ttl.expired(insts.values(), now)]

    # -- from the database and from commits ---------------------------------------------------

    def catch_up(self, conn: Connection, upto: int) -> set[str]:
        """Bring memory from `self._index` to `upto` using the events in between (write lock held)."""
        known = self._index
        if upto <= known:
            return set()
        rows = conn.execute(
            select(T_EV.c.registry_index, T_EV.c.service).where(
                T_EV.c.registry_index > known, T_EV.c.registry_index <= upto
            )
        ).all()
        if len({r[0] for r in rows}) != upto - known:  # retention dropped some: reload everything
            log.info("registry: events %d..%d not all kept; reloading everything", known + 1, upto)
            changed = self.reload(conn, None, upto)
        else:
            names = {r[1] for r in rows}
            self.reload(conn, names, upto)
            changed = names
        self._index = upto
        return changed

    def reload(self, conn: Connection, names: set[str] | None, index: int) -> set[str]:
        """Replace the memory of `names` (None: of everything) with the database rows, current
        to registry index `index`."""
        svc_rows: list[Mapping[str, Any]] = []
        inst_rows: list[Mapping[str, Any]] = []
        if names is None:
            svc_rows = [r._mapping for r in conn.execute(select(T_SVC))]
            inst_rows = [r._mapping for r in conn.execute(select(T_INST))]
        else:
            for part in chunks(sorted(names)):
                svc_rows += [r._mapping for r in conn.execute(select(T_SVC).where(T_SVC.c.name.in_(part)))]
                inst_rows += [r._mapping for r in conn.execute(select(T_INST).where(T_INST.c.service.in_(part)))]
        services = {m["name"]: service_from_row(m) for m in svc_rows}
        instances: dict[str, dict[str, Instance]] = {}
        for m in inst_rows:
            if m["service"] in services:
                inst = instance_from_row(m)
                instances.setdefault(inst.service, {})[inst.id] = inst
        with self._view_lock:
            scope = set(self._services) | set(services) if names is None else names
            for name in scope:
                old = self._instances.get(name, {})
                if name in services:
                    self._services[name] = services[name]
                    self._tombstones.pop(name, None)
                    fresh = instances.get(name, {})
                    for iid, inst in fresh.items():
                        prev = old.get(iid)
                        if prev is not None:
                            inst.last_heartbeat = ttl.merge_heartbeat(inst.last_heartbeat, prev.last_heartbeat)
                    self._instances[name] = fresh
                    for iid in set(old) - set(fresh):
                        self.on_drop((name, iid))
                else:
                    if name in self._services:
                        self._tombstones[name] = index
                    self._services.pop(name, None)
                    for iid in self._instances.pop(name, {}):
                        self.on_drop((name, iid))
            self._index = index
        return scope

    def apply(self, tx: Tx, index: int) -> None:
        with self._view_lock:
            for name, svc in tx.services.items():
                if svc is None:
                    self._services.pop(name, None)
                    for iid in self._instances.pop(name, {}):
                        self.on_drop((name, iid))
                    self._tombstones[name] = index
                else:
                    self._services[name] = svc
                    self._tombstones.pop(name, None)
            for (name, iid), inst in tx.instances.items():
                current = self._instances.get(name, {}).get(iid)
                if inst is None:
                    if current is not None:
                        del self._instances[name][iid]
                    self.on_drop((name, iid))
                    continue
                if current is not None and (name, iid) not in tx.reregistered:
                    # a heartbeat may have arrived while this write ran
                    inst.last_heartbeat = ttl.merge_heartbeat(inst.last_heartbeat, current.last_heartbeat)
                if name in self._services:
                    self._instances.setdefault(name, {})[iid] = inst
            self._index = index


def _matches(inst: Instance, tags: Iterable[str], version: str, zone: str) -> bool:
    return (
        (not version or inst.version == version)
        and (not zone or inst.zone == zone)
        and all(t in inst.tags for t in tags)
    )
