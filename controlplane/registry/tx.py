"""Staging of registry writes: what one write changes, before and while it is committed.

A write is a *plan*: a function that reads the registry through a `Tx` and stages
changes on it (put/drop a service or an instance, each with its events). Plans never
touch the database or the store's memory themselves; the store commits many plans in
one database transaction (group commit, see `RegistryStore._write`), each plan with
its own registry index, and applies them to memory in order after the commit.

Reads of a `Tx` see, in order: its own staged changes, those of the plans committed
before it in the same batch (`Batch`), and the store's memory. Everything handed out
is a copy, so a plan cannot change what an earlier plan staged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, update

from controlplane.registry.records import Service, copy_instance, instance_row, service_row
from controlplane.registry.types import Instance

Key = tuple[str, str]  # (service, instance id)


@dataclass
class Job:
    """One plan waiting to be committed, and its outcome."""

    plan: Callable[[Tx], Any]
    now: float
    done: bool = False
    result: Any = None
    index: int | None = None  # None: the plan staged nothing (no index bump)
    error: BaseException | None = None


@dataclass
class Batch:
    """The changes of the plans already run in this transaction (read-through for later ones)."""

    services: dict[str, Service | None] = field(default_factory=dict)
    instances: dict[Key, Instance | None] = field(default_factory=dict)

    def merge(self, tx: Tx) -> None:
        self.services.update(tx.services)
        self.instances.update(tx.instances)


class Tx:
    """Changes staged by one plan."""

    def __init__(
        self,
        conn: Connection,
        now: float,
        batch: Batch,
        services: Mapping[str, Service],
        instances: Mapping[str, Mapping[str, Instance]],
    ) -> None:
        self.conn = conn  # for plans that must read the database (expiry reads heartbeat times)
        self.now = now
        self._batch = batch
        self._mem_services = services
        self._mem_instances = instances
        self.services: dict[str, Service | None] = {}
        self.instances: dict[Key, Instance | None] = {}
        self.events: list[tuple[str, str, str, str]] = []
        self.touched: set[str] = set()
        self.reregistered: set[Key] = set()  # instances registered again: their heartbeat time is new

    # -- reads -----------------------------------------------------------------------------

    def service(self, name: str) -> Service | None:
        for staged in (self.services, self._batch.services):
            if name in staged:
                svc = staged[name]
                return replace(svc) if svc is not None else None
        return self._mem_services.get(name)

    def service_exists_before(self, name: str) -> bool:
        """Whether the database holds the service before this plan's rows are written."""
        if name in self._batch.services:
            return self._batch.services[name] is not None
        return name in self._mem_services

    def instance(self, service: str, iid: str) -> Instance | None:
        key = (service, iid)
        for staged in (self.instances, self._batch.instances):
            if key in staged:
                inst = staged[key]
                return copy_instance(inst) if inst is not None else None
        inst = self._mem_instances.get(service, {}).get(iid)
        return copy_instance(inst) if inst is not None else None

    def instance_exists_before(self, service: str, iid: str) -> bool:
        key = (service, iid)
        if key in self._batch.instances:
            return self._batch.instances[key] is not None
        if service in self._batch.services and self._batch.services[service] is None:
            return False  # the service (and its instances) went earlier in this batch
        return iid in self._mem_instances.get(service, {})

    def instance_ids(self, service: str) -> set[str]:
        ids = set(self._mem_instances.get(service, {}))
        if service in self._batch.services and self._batch.services[service] is None:
            ids = set()
        for staged in (self._batch.instances, self.instances):
            for (svc, iid), inst in staged.items():
                if svc == service:
                    (ids.add if inst is not None else ids.discard)(iid)
        return ids

    def keys_from_source(self, source: str) -> set[Key]:
        """(service, id) of every instance that came from `source`, as this plan sees them."""
        keys = {
            (name, iid)
            for name, insts in self._mem_instances.items()
            for iid, inst in insts.items()
            if inst.source == source
        }
        for staged in (self._batch.instances, self.instances):
            for key, inst in staged.items():
                if inst is not None and inst.source == source:
                    keys.add(key)
        return {key for key in keys if self.instance_exists_now(*key)}

    def instance_exists_now(self, service: str, iid: str) -> bool:
        key = (service, iid)
        for staged in (self.instances, self._batch.instances):
            if key in staged:
                return staged[key] is not None
        if self.service(service) is None:
            return False
        return iid in self._mem_instances.get(service, {})

    # -- changes ---------------------------------------------------------------------------

    def event(self, kind: str, service: str, instance: str = "", detail: str = "") -> None:
        self.events.append((kind, service, instance, detail[:2000]))
        self.touched.add(service)

    def put_service(self, svc: Service, kind: str, detail: str = "") -> None:
        self.services[svc.name] = svc
        self.event(kind, svc.name, "", detail)

    def drop_service(self, name: str) -> None:
        self.services[name] = None
        self.event("service_deleted", name)

    def put_instance(self, inst: Instance, changes: list[tuple[str, str]]) -> None:
        self.instances[(inst.service, inst.id)] = inst
        for kind, detail in changes:
            self.event(kind, inst.service, inst.id, detail)

    def drop_instance(self, service: str, iid: str, kind: str, detail: str = "") -> None:
        self.instances[(service, iid)] = None
        self.event(kind, service, iid, detail)

    def stamp(self, index: int) -> None:
        """Give the plan's index to every instance it staged and every service it touched."""
        for inst in self.instances.values():
            if inst is not None:
                inst.modify_index = index
        for name in self.touched:
            if name in self.services:
                svc = self.services[name]
                if svc is not None:
                    svc.modify_index = index
                continue
            current = self.service(name)
            if current is not None:
                self.services[name] = replace(current, modify_index=index)


def write_rows(conn: Connection, tx: Tx, index: int, tables: Mapping[str, Table]) -> None:
    """Write what `tx` staged, and its events, in the open transaction of `conn`."""
    t_svc, t_inst, t_ev = tables["services"], tables["instances"], tables["events"]
    gone_services = sorted(n for n, s in tx.services.items() if s is None and tx.service_exists_before(n))
    new_services, old_services = [], []
    for name, svc in sorted(tx.services.items()):
        if svc is None:
            continue
        if tx.service_exists_before(name):
            old_services.append({**service_row(svc), "k_name": name})
        else:
            new_services.append(service_row(svc))
    gone, new, old = [], [], []
    for (svc_name, iid), inst in sorted(tx.instances.items()):
        exists = tx.instance_exists_before(svc_name, iid)
        if inst is None:
            if exists:
                gone.append({"k_service": svc_name, "k_id": iid})
        elif exists:
            old.append({**instance_row(inst), "k_service": svc_name, "k_id": iid})
        else:
            new.append(instance_row(inst))
    key = (t_inst.c.service == bindparam("k_service")) & (t_inst.c.instance_id == bindparam("k_id"))
    if gone:
        conn.execute(delete(t_inst).where(key), gone)
    if gone_services:
        conn.execute(delete(t_inst).where(t_inst.c.service.in_(gone_services)))  # what is left (forced delete)
        conn.execute(delete(t_svc).where(t_svc.c.name.in_(gone_services)))
    if new_services:
        conn.execute(t_svc.insert(), new_services)
    if old_services:
        conn.execute(update(t_svc).where(t_svc.c.name == bindparam("k_name")), old_services)
    if new:
        conn.execute(t_inst.insert(), new)
    if old:
        conn.execute(update(t_inst).where(key), old)
    conn.execute(
        t_ev.insert(),
        [
            {"time": tx.now, "registry_index": index, "kind": k, "service": s, "instance": i, "detail": d}
            for k, s, i, d in tx.events
        ],
    )
