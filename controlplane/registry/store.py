"""RegistryStore: services and instances in the database, with an in-memory view.

What it owns
------------
- The in-memory view (services, instances) every read is served from. It is loaded from
  the database at start and kept current by this process's own writes and by a poll of
  the `reg_state` index every `poll_interval` (another control plane on the same MySQL
  database wrote): the events written since the last known index name the services to
  reload; when retention has dropped some of them, everything is reloaded.
- Writes. A write is a plan (`controlplane.registry.plans`) staged on a `Tx`. Each runs
  in a transaction that bumps `reg_state.registry_index` (the row lock serialises control
  planes), first reads any changes other control planes made since (so the plan sees
  current state), then writes the rows and the events, and stamps the new index on the
  service and the instances it touched. A plan that changes nothing bumps nothing.
  Concurrent writes are group-committed: one transaction (one fsync) carries every plan
  queued meanwhile, each with its own index and events. Memory is updated after the
  commit, in index order.
- Heartbeats. They change `last_heartbeat` only: memory at once, the database in one
  batched UPDATE a second (`flush_heartbeats`), never the index. An unknown instance
  raises NotFound (the client re-registers).
- TTL expiry (`expire_due`, rules in `controlplane.registry.ttl`), run by the holder of
  the leader lease (`lease_tick`, rules in `controlplane.registry.lease`) every 0.5 s,
  with event retention (`prune_events`).
- Change notification: `subscribe` callbacks and `wait` (long-poll / SSE watches) run on
  the asyncio loop given to `bind_loop`; changes committed in worker threads are handed
  over with `call_soon_threadsafe`, coalesced into one call per loop turn.

Blocking methods (writes, flushes, ticks) must run in a worker thread; reads and
`heartbeat` only take a short in-memory lock and are safe on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, bindparam, delete, func, or_, select, tuple_, update
from sqlalchemy.exc import DBAPIError

from controlplane.registry import lease as lease_rules
from controlplane.registry import plans, ttl
from controlplane.registry.models import EVENTS_KEPT, RegEventRow, RegInstanceRow, RegServiceRow, RegStateRow
from controlplane.registry.records import (
    Event,
    ImportResult,
    Service,
    copy_instance,
    instance_from_row,
    service_from_row,
)
from controlplane.registry.tx import Batch, Job, Tx, write_rows
from controlplane.registry.types import ChangeCallback, Instance, InstanceSpec, Selector, ServiceSpec, Status
from controlplane.registry.watch import ChangeHub
from controlplane.store.config_store import NotFound
from controlplane.validation import ConfigError, FieldError
from flux.v1 import config_pb2
from fluxcommon.durations import format_duration_ms

log = logging.getLogger("flux.registry")

T_SVC = RegServiceRow.__table__  # type: ignore[attr-defined]
T_INST = RegInstanceRow.__table__  # type: ignore[attr-defined]
T_STATE = RegStateRow.__table__  # type: ignore[attr-defined]
T_EV = RegEventRow.__table__  # type: ignore[attr-defined]

R = TypeVar("R")
Key = tuple[str, str]  # (service, instance id)

_TABLES = {"services": T_SVC, "instances": T_INST, "events": T_EV}
_CHUNK = 500
_DEADLOCK_CODES = (1213, 1205)  # MySQL: deadlock found, lock wait timeout


_HEARTBEAT_UPDATE = (
    update(T_INST)
    .where(
        T_INST.c.service == bindparam("k_service"),
        T_INST.c.instance_id == bindparam("k_id"),
        T_INST.c.last_heartbeat < bindparam("hb"),
    )
    .values(last_heartbeat=bindparam("hb"))
)


def _mysql_heartbeat_sql(rows: int) -> str:
    values = " UNION ALL ".join(["SELECT %s AS s, %s AS i, %s AS hb"] + ["SELECT %s, %s, %s"] * (rows - 1))
    return (
        f"UPDATE reg_instances AS r JOIN ({values}) AS v ON r.service = v.s AND r.instance_id = v.i "
        "SET r.last_heartbeat = GREATEST(r.last_heartbeat, v.hb)"
    )


def _chunks(items: list[Any], size: int = _CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _service_error(name: str, exc: ValidationError) -> ConfigError:
    errs = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        errs.append(FieldError(f"services/{name}", loc, str(e["msg"]).removeprefix("Value error, ")))
    return ConfigError(errs)


# -- the store --------------------------------------------------------------------------------


class RegistryStore:
    """Implements `controlplane.registry.types.Registry` on SQLite or MySQL/MariaDB."""

    def __init__(
        self,
        engine: Engine,
        node_id: str,
        *,
        clock: Callable[[], float] = time.time,
        lease_duration: float = lease_rules.DEFAULT_DURATION,
        events_kept: int = EVENTS_KEPT,
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self.clock = clock
        self.lease_duration = lease_duration
        self.events_kept = events_kept
        self.is_leader = False
        self.counters: dict[str, int] = {
            "heartbeats": 0,
            "heartbeats_unknown": 0,
            "heartbeats_flushed": 0,
            "heartbeat_flushes": 0,
            "expired": 0,
            "registered": 0,
            "deregistered": 0,
            "writes": 0,
        }
        self._write_lock = threading.Lock()  # one batch of writes (DB transaction + memory update) at a time
        self._queue_lock = threading.Lock()
        self._queue: list[Job] = []
        self._mem = threading.Lock()  # short: guards the in-memory view
        self._services: dict[str, Service] = {}
        self._instances: dict[str, dict[str, Instance]] = {}
        self._tombstones: dict[str, int] = {}  # deleted service -> index of the deletion (wakes its watches)
        self._index = 0
        self._beats: dict[Key, float] = {}  # heartbeats not yet written
        self.hub = ChangeHub(self.watch_index)

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
        with self._mem:
            return [copy_instance(i) for _, i in sorted(self._instances.get(service, {}).items())]

    def endpoints(self, selector: Selector) -> list[Any]:
        with self._mem:
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
        with self._mem:
            found = [
                s
                for s in self._services.values()
                if (not namespace or s.spec.namespace == namespace)
                and (not group or s.spec.group == group)
                and wanted <= set(s.spec.tags)
            ]
        return sorted(found, key=lambda s: s.name)

    def instance(self, service: str, iid: str) -> Instance:
        with self._mem:
            inst = self._instances.get(service, {}).get(iid)
            if inst is None:
                self._raise_missing(service, iid)
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
        with self._mem:
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
        with self._mem:
            for name, insts in self._instances.items():
                for i in insts.values():
                    key = (name, i.status, i.health)
                    out[key] = out.get(key, 0) + 1
        return out

    def events(self, *, since: int | None = None, service: str = "", limit: int = 100) -> list[Event]:
        """Events after id `since` (oldest first), or the newest `limit` events."""
        q = select(T_EV)
        if service:
            q = q.where(T_EV.c.service == service)
        if since is not None:
            q = q.where(T_EV.c.id > since).order_by(T_EV.c.id).limit(limit)
        else:
            q = q.order_by(T_EV.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = [r._mapping for r in conn.execute(q)]
        events = [
            Event(int(m["id"]), float(m["time"]), int(m["registry_index"]), m["kind"], m["service"], m["instance"],
                  m["detail"])
            for m in rows
        ]  # fmt: skip
        return events if since is not None else events[::-1]

    def _raise_missing(self, service: str, iid: str) -> Any:
        if service not in self._services:
            raise NotFound(f"service {service!r} not found")
        raise NotFound(f"instance {iid!r} of service {service!r} not found")

    # -- loading and catching up -------------------------------------------------------------

    def load(self) -> None:
        """Read everything from the database (blocking)."""
        with self._write_lock, self.engine.connect() as conn:
            index = int(conn.execute(select(T_STATE.c.registry_index).where(T_STATE.c.id == 1)).scalar_one())
            self._reload(conn, None, index)
            self._index = index
        log.info("registry loaded: %d services, index %d", len(self._services), index)

    def db_index(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(T_STATE.c.registry_index).where(T_STATE.c.id == 1)).scalar_one())

    def poll(self) -> set[str]:
        """Catch up with changes other control planes made (blocking); returns the services changed."""
        if self.db_index() <= self._index:
            return set()
        with self._write_lock, self.engine.connect() as conn:
            index = int(conn.execute(select(T_STATE.c.registry_index).where(T_STATE.c.id == 1)).scalar_one())
            changed = self._catch_up(conn, index)
        self._notify(changed)
        return changed

    def _catch_up(self, conn: Connection, upto: int) -> set[str]:
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
            changed = self._reload(conn, None, upto)
        else:
            names = {r[1] for r in rows}
            self._reload(conn, names, upto)
            changed = names
        self._index = upto
        return changed

    def _reload(self, conn: Connection, names: set[str] | None, index: int) -> set[str]:
        """Replace the memory of `names` (None: of everything) with the database rows."""
        svc_rows: list[Mapping[str, Any]] = []
        inst_rows: list[Mapping[str, Any]] = []
        if names is None:
            svc_rows = [r._mapping for r in conn.execute(select(T_SVC))]
            inst_rows = [r._mapping for r in conn.execute(select(T_INST))]
        else:
            for part in _chunks(sorted(names)):
                svc_rows += [r._mapping for r in conn.execute(select(T_SVC).where(T_SVC.c.name.in_(part)))]
                inst_rows += [r._mapping for r in conn.execute(select(T_INST).where(T_INST.c.service.in_(part)))]
        services = {m["name"]: service_from_row(m) for m in svc_rows}
        instances: dict[str, dict[str, Instance]] = {}
        for m in inst_rows:
            if m["service"] in services:
                inst = instance_from_row(m)
                instances.setdefault(inst.service, {})[inst.id] = inst
        with self._mem:
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
                        self._beats.pop((name, iid), None)
                else:
                    if name in self._services:
                        self._tombstones[name] = index
                    self._services.pop(name, None)
                    for iid in self._instances.pop(name, {}):
                        self._beats.pop((name, iid), None)
        return scope

    # -- writing -------------------------------------------------------------------------------

    def _write(self, plan: Callable[[Tx], R], now: float | None = None) -> tuple[R, int | None]:
        """Commit `plan` with its own index bump (none if it stages nothing); returns (result, index).

        Group commit: the thread that gets the write lock commits every plan queued so far in
        one transaction (one fsync), each plan with its own index and events; threads whose
        plan it committed find theirs done when they get the lock in turn.
        """
        job = Job(plan, self.clock() if now is None else now)
        changed: set[str] = set()
        with self._queue_lock:
            self._queue.append(job)
        with self._write_lock:
            if not job.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._run_batch(batch, changed)
        self._notify(changed)  # outside the lock: a subscriber without a loop may write again
        if job.error is not None:
            raise job.error
        return job.result, job.index

    def _run_batch(self, batch: list[Job], changed: set[str]) -> None:
        for attempt in range(3):
            try:
                self._commit_batch(batch, changed)
                return
            except DBAPIError as exc:
                if len(batch) > 1:  # find the one that fails: commit them one by one
                    for job in batch:
                        self._run_batch([job], changed)
                    return
                code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
                if code in _DEADLOCK_CODES and attempt < 2:
                    log.info("registry write hit a deadlock; retrying")
                    continue
                self._fail(batch, exc)
                return
            except BaseException as exc:
                self._fail(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                return

    def _fail(self, batch: list[Job], exc: BaseException) -> None:
        for job in batch:
            job.error, job.done = exc, True

    def _commit_batch(self, batch: list[Job], changed: set[str]) -> None:
        """One transaction for `batch`; adds the services it (or a catch-up) changed to `changed`."""
        caught: set[str] = set()
        staged: list[tuple[Tx, int]] = []
        for job in batch:
            job.result, job.index, job.error = None, None, None
        with self.engine.connect() as conn:
            try:
                conn.execute(
                    update(T_STATE).where(T_STATE.c.id == 1).values(registry_index=T_STATE.c.registry_index + 1)
                )  # the row lock serialises writers of every control plane on this database
                first = int(conn.execute(select(T_STATE.c.registry_index).where(T_STATE.c.id == 1)).scalar_one())
                if first - 1 > self._index:  # another control plane wrote since we last looked
                    caught = self._catch_up(conn, first - 1)
                index = first - 1
                done = Batch()
                for job in batch:
                    tx = Tx(conn, job.now, done, self._services, self._instances)
                    try:
                        job.result = job.plan(tx)
                    except DBAPIError:
                        raise
                    except Exception as exc:  # NotFound, ConfigError: this plan only
                        job.error = exc
                        continue
                    if tx.events:
                        index += 1
                        tx.stamp(index)
                        write_rows(conn, tx, index, _TABLES)
                        done.merge(tx)
                        job.index = index
                        staged.append((tx, index))
                if not staged:
                    conn.rollback()
                else:
                    if index != first:
                        conn.execute(update(T_STATE).where(T_STATE.c.id == 1).values(registry_index=index))
                    conn.commit()
            except BaseException:
                conn.rollback()
                changed |= caught
                raise
        changed |= caught
        for tx, idx in staged:
            self._apply(tx, idx)
            changed |= tx.touched
        self.counters["writes"] += len(staged)
        for job in batch:
            job.done = True

    def _apply(self, tx: Tx, index: int) -> None:
        with self._mem:
            for name, svc in tx.services.items():
                if svc is None:
                    self._services.pop(name, None)
                    for iid in self._instances.pop(name, {}):
                        self._beats.pop((name, iid), None)
                    self._tombstones[name] = index
                else:
                    self._services[name] = svc
                    self._tombstones.pop(name, None)
            for (name, iid), inst in tx.instances.items():
                current = self._instances.get(name, {}).get(iid)
                if inst is None:
                    if current is not None:
                        del self._instances[name][iid]
                    self._beats.pop((name, iid), None)
                    continue
                if current is not None and (name, iid) not in tx.reregistered:
                    # a heartbeat may have arrived while this write ran
                    inst.last_heartbeat = ttl.merge_heartbeat(inst.last_heartbeat, current.last_heartbeat)
                if name in self._services:
                    self._instances.setdefault(name, {})[iid] = inst
            self._index = index

    # -- Registry protocol: writes -----------------------------------------------------------

    def put_service(self, spec: ServiceSpec, *, now: float | None = None) -> tuple[Service, bool]:
        """Create or update a service; returns (service, created)."""
        outcome, _ = self._write(lambda tx: plans.put_service(tx, spec), now)
        return self.service(spec.name), outcome == "created"

    def create_service(self, spec: ServiceSpec, *, now: float | None = None) -> Service:
        """Create a service; ConfigError (409) when one of that name exists."""
        self._write(lambda tx: plans.create_service(tx, spec), now)
        return self.service(spec.name)

    def delete_service(self, name: str, *, force: bool = False, now: float | None = None) -> int:
        """Delete a service; refused (409) while it has instances unless `force`. Returns the index."""
        dropped, index = self._write(lambda tx: plans.delete_service(tx, name, force), now)
        self.counters["deregistered"] += dropped
        assert index is not None
        return index

    def register(
        self, service: str, spec: InstanceSpec, *, source: str = "api", now: float | None = None
    ) -> tuple[Instance, bool]:
        """Register (or re-register) an instance, creating the service if needed; returns (instance, created)."""
        self._check_service_name(service)
        (inst, outcome), index = self._write(lambda tx: plans.register(tx, service, spec, source), now)
        if outcome == "registered":
            self.counters["registered"] += 1
        if index is None:  # nothing changed: it still counts as a heartbeat
            with contextlib.suppress(NotFound):
                return self.heartbeat(service, inst.id, now=inst.last_heartbeat), False
        return self.instance(service, inst.id), outcome == "registered"

    def deregister(self, service: str, iid: str, *, now: float | None = None) -> int:
        _, index = self._write(lambda tx: plans.deregister(tx, service, iid), now)
        self.counters["deregistered"] += 1
        assert index is not None
        return index

    def update_instance(
        self,
        service: str,
        iid: str,
        *,
        weight: int | None = None,
        metadata: Mapping[str, str | None] | None = None,
        tags: list[str] | None = None,
        status: Status | None = None,
        now: float | None = None,
    ) -> Instance:
        """Operator changes: weight, metadata (merged; None deletes a key), tags, status."""
        self._write(
            lambda tx: plans.update_instance(tx, service, iid, weight=weight, metadata=metadata, tags=tags,
                                             status=status),
            now,
        )  # fmt: skip
        return self.instance(service, iid)

    def set_health(self, service: str, instance_id: str, healthy: bool, detail: str) -> None:
        with self._mem:
            current = self._instances.get(service, {}).get(instance_id)
            if current is None or current.health == ("healthy" if healthy else "unhealthy"):
                return  # nothing to do: spare the database
        self._write(lambda tx: plans.set_health(tx, service, instance_id, healthy, detail))

    def sync_source(self, source: str, services: Mapping[str, Iterable[InstanceSpec]]) -> None:
        wanted = {name: list(specs) for name, specs in services.items()}
        for name in wanted:
            self._check_service_name(name)
        self._write(lambda tx: plans.sync_source(tx, source, wanted))

    def import_services(self, items: list[tuple[ServiceSpec, list[InstanceSpec]]]) -> ImportResult:
        """Create/update many services and register their instances in one write (one index bump)."""
        result, index = self._write(lambda tx: plans.import_services(tx, items))
        result.index = index if index is not None else self._index
        self.counters["registered"] += result.instances["registered"]
        return result

    def _check_service_name(self, name: str) -> None:
        try:
            ServiceSpec(name=name)
        except ValidationError as exc:
            raise _service_error(name, exc) from None

    # -- heartbeats ----------------------------------------------------------------------------

    def heartbeat(self, service: str, iid: str, *, now: float | None = None) -> Instance:
        """Record a heartbeat (memory only; written by `flush_heartbeats`). NotFound when unknown."""
        now = self.clock() if now is None else now
        with self._mem:
            inst = self._instances.get(service, {}).get(iid)
            if inst is None:
                self.counters["heartbeats_unknown"] += 1
                self._raise_missing(service, iid)
            inst.last_heartbeat = ttl.merge_heartbeat(inst.last_heartbeat, now)
            self._beats[(service, iid)] = inst.last_heartbeat
            self.counters["heartbeats"] += 1
            return copy_instance(inst)

    def flush_heartbeats(self) -> int:
        """Write the heartbeats received since the last flush in one batch (blocking).

        SQLite: one executemany UPDATE. MySQL: one UPDATE ... JOIN per 1,000 instances (PyMySQL
        sends an executemany UPDATE row by row). Heartbeat times only move forward.
        """
        with self._mem:
            beats, self._beats = self._beats, {}
        if not beats:
            return 0
        rows = sorted((s, i, hb) for (s, i), hb in beats.items())  # one lock order for every writer
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "mysql":
                    for part in _chunks(rows, 1000):
                        conn.exec_driver_sql(_mysql_heartbeat_sql(len(part)), tuple(x for row in part for x in row))
                else:
                    conn.execute(_HEARTBEAT_UPDATE, [{"k_service": s, "k_id": i, "hb": hb} for s, i, hb in rows])
        except Exception:
            log.exception("could not save %d heartbeats; will retry", len(beats))
            with self._mem:
                for key, hb in beats.items():
                    if key[1] in self._instances.get(key[0], {}):
                        self._beats[key] = max(hb, self._beats.get(key, 0.0))
            return 0
        self.counters["heartbeats_flushed"] += len(beats)
        self.counters["heartbeat_flushes"] += 1
        return len(beats)

    # -- expiry, lease, retention -----------------------------------------------------------

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
        with self._mem:
            candidates = [
                (i.service, i.id) for insts in self._instances.values() for i in ttl.expired(insts.values(), now)
            ]
        if not candidates:
            return []

        def plan(tx: Tx) -> tuple[list[Instance], dict[Key, float]]:
            expired: list[Instance] = []
            refreshed: dict[Key, float] = {}
            stored: dict[Key, float] = {}
            for part in _chunks(sorted(candidates)):
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

        (expired, refreshed), _ = self._write(plan, now)
        if refreshed:
            with self._mem:
                for (svc, iid), hb in refreshed.items():
                    inst = self._instances.get(svc, {}).get(iid)
                    if inst is not None:
                        inst.last_heartbeat = ttl.merge_heartbeat(inst.last_heartbeat, hb)
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

    # -- change notification and watches ---------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop subscribers are called on and watches live on."""
        self.hub.bind_loop(loop)

    def subscribe(self, callback: ChangeCallback) -> None:
        self.hub.subscribe(callback)

    async def wait(self, service: str, index: int, max_wait: float) -> int:
        """Wait until the watch index of `service` passes `index`, at most `max_wait` seconds; return it."""
        return await self.hub.wait(service, index, max_wait)

    def _notify(self, names: set[str]) -> None:
        self.hub.notify(names)

    # -- background tasks ----------------------------------------------------------------------

    async def run_poller(self, interval: float = 0.2) -> None:
        """Catch up with other control planes' writes every `interval` seconds."""
        self.hub.bind_loop(asyncio.get_running_loop())
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.poll)
            except Exception:
                log.exception("registry poll failed; retrying")

    async def run_flusher(self, interval: float = 1.0) -> None:
        """Write heartbeats in one batch every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.flush_heartbeats)

    async def run_maintenance(self, interval: float = 0.5, prune_every: int = 20) -> None:
        """Lease renewal + TTL expiry every `interval` seconds; event retention now and then (leader only)."""
        self.hub.bind_loop(asyncio.get_running_loop())
        tick = 0
        while True:
            try:
                await asyncio.to_thread(self.maintenance_tick)
                if self.is_leader and tick % prune_every == 0:
                    await asyncio.to_thread(self.prune_events)
            except Exception:
                log.exception("registry maintenance failed; retrying")
            tick += 1
            await asyncio.sleep(interval)

    def shutdown(self) -> None:
        """Flush heartbeats and give up the lease (blocking)."""
        self.flush_heartbeats()
        try:
            if self.is_leader:
                self.release_lease()
        except Exception:
            log.exception("could not release the registry lease")


def _matches(inst: Instance, tags: Iterable[str], version: str, zone: str) -> bool:
    return (
        (not version or inst.version == version)
        and (not zone or inst.zone == zone)
        and all(t in inst.tags for t in tags)
    )
