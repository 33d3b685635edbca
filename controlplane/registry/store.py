"""RegistryStore: services and instances in the database, with an in-memory view.

The store is the registry's one public object (`controlplane.registry.types.Registry` on
SQLite or MySQL/MariaDB); each of its jobs lives in a module of its own:

- `view` (`RegistryView`, which the store is): the in-memory services and instances every read
  is served from, kept current by this process's writes and by polls of the database.
- `commits` (`Committer`): writes as plans (`controlplane.registry.plans`), group-committed
  with an index bump each; `load` at start and `poll` for other control planes' writes.
- `heartbeats` (`Heartbeats`): memory at once, the database in one batched UPDATE a second.
- `expiry` (`LeaseAndExpiry`): the leader lease, TTL expiry and event retention (leader only).
- `watch` (`ChangeHub`): change notification: `subscribe` callbacks and `wait` (long-poll /
  SSE watches) on the asyncio loop given to `bind_loop`; changes committed in worker threads
  are handed over with `call_soon_threadsafe`, coalesced into one call per loop turn.

This module adds the write API (one plan per call) and the background tasks that drive the
parts. Blocking methods (writes, flushes, ticks) must run in a worker thread; reads and
`heartbeat` only take a short in-memory lock and are safe on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from pydantic import ValidationError
from sqlalchemy import Engine, select

from controlplane.registry import lease as lease_rules
from controlplane.registry import plans
from controlplane.registry.commits import Committer
from controlplane.registry.expiry import LeaseAndExpiry
from controlplane.registry.heartbeats import Heartbeats
from controlplane.registry.models import EVENTS_KEPT, RegEventRow
from controlplane.registry.records import Event, ImportResult, Service
from controlplane.registry.types import ChangeCallback, Instance, InstanceSpec, ServiceSpec, Status
from controlplane.registry.view import RegistryView
from controlplane.registry.watch import ChangeHub
from controlplane.store.config_store import NotFound
from controlplane.validation import ConfigError, FieldError

log = logging.getLogger("flux.registry")

T_EV = RegEventRow.__table__  # type: ignore[attr-defined]


def _service_error(name: str, exc: ValidationError) -> ConfigError:
    errs = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        errs.append(FieldError(f"services/{name}", loc, str(e["msg"]).removeprefix("Value error, ")))
    return ConfigError(errs)


class RegistryStore(RegistryView):
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
        super().__init__()
        self.engine = engine
        self.node_id = node_id
        self.clock = clock
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
        self.hub = ChangeHub(self.watch_index)
        self._committer = Committer(engine, self, clock, self.counters, self._notify)
        self._heartbeats = Heartbeats(engine, self, clock, self.counters)
        self._expiry = LeaseAndExpiry(
            engine, node_id, self, self._committer, clock, self.counters,
            lease_duration=lease_duration, events_kept=events_kept,
        )  # fmt: skip

    # -- settings and state of the parts -------------------------------------------------------

    @property
    def lease_duration(self) -> float:
        return self._expiry.lease_duration

    @property
    def events_kept(self) -> int:
        return self._expiry.events_kept

    @property
    def is_leader(self) -> bool:
        """Whether this control plane held the leader lease at its last `lease_tick`."""
        return self._expiry.is_leader

    # -- the event log ---------------------------------------------------------------------------

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

    # -- loading and catching up (controlplane.registry.commits) --------------------------------

    def load(self) -> None:
        """Read everything from the database (blocking)."""
        self._committer.load()

    def db_index(self) -> int:
        return self._committer.db_index()

    def poll(self) -> set[str]:
        """Catch up with changes other control planes made (blocking); returns the services changed."""
        return self._committer.poll()

    # -- Registry protocol: writes -----------------------------------------------------------

    def put_service(self, spec: ServiceSpec, *, now: float | None = None) -> tuple[Service, bool]:
        """Create or update a service; returns (service, created)."""
        outcome, _ = self._committer.write(lambda tx: plans.put_service(tx, spec), now)
        return self.service(spec.name), outcome == "created"

    def create_service(self, spec: ServiceSpec, *, now: float | None = None) -> Service:
        """Create a service; ConfigError (409) when one of that name exists."""
        self._committer.write(lambda tx: plans.create_service(tx, spec), now)
        return self.service(spec.name)

    def delete_service(self, name: str, *, force: bool = False, now: float | None = None) -> int:
        """Delete a service; refused (409) while it has instances unless `force`. Returns the index."""
        dropped, index = self._committer.write(lambda tx: plans.delete_service(tx, name, force), now)
        self.counters["deregistered"] += dropped
        assert index is not None
        return index

    def register(
        self, service: str, spec: InstanceSpec, *, source: str = "api", now: float | None = None
    ) -> tuple[Instance, bool]:
        """Register (or re-register) an instance, creating the service if needed; returns (instance, created)."""
        self._check_service_name(service)
        (inst, outcome), index = self._committer.write(lambda tx: plans.register(tx, service, spec, source), now)
        if outcome == "registered":
            self.counters["registered"] += 1
        if index is None:  # nothing changed: it still counts as a heartbeat
            with contextlib.suppress(NotFound):
                return self.heartbeat(service, inst.id, now=inst.last_heartbeat), False
        return self.instance(service, inst.id), outcome == "registered"

    def deregister(self, service: str, iid: str, *, now: float | None = None) -> int:
        _, index = self._committer.write(lambda tx: plans.deregister(tx, service, iid), now)
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
        self._committer.write(
            lambda tx: plans.update_instance(tx, service, iid, weight=weight, metadata=metadata, tags=tags,
                                             status=status),
            now,
        )  # fmt: skip
        return self.instance(service, iid)

    def set_health(self, service: str, instance_id: str, healthy: bool, detail: str) -> None:
        current = self.health(service, instance_id)
        if current is None or current == ("healthy" if healthy else "unhealthy"):
            return  # nothing to do: spare the database
        self._committer.write(lambda tx: plans.set_health(tx, service, instance_id, healthy, detail))

    def sync_source(self, source: str, services: Mapping[str, Iterable[InstanceSpec]]) -> None:
        wanted = {name: list(specs) for name, specs in services.items()}
        for name in wanted:
            self._check_service_name(name)
        self._committer.write(lambda tx: plans.sync_source(tx, source, wanted))

    def import_services(self, items: list[tuple[ServiceSpec, list[InstanceSpec]]]) -> ImportResult:
        """Create/update many services and register their instances in one write (one index bump)."""
        result, index = self._committer.write(lambda tx: plans.import_services(tx, items))
        result.index = index if index is not None else self._index
        self.counters["registered"] += result.instances["registered"]
        return result

    def _check_service_name(self, name: str) -> None:
        try:
            ServiceSpec(name=name)
        except ValidationError as exc:
            raise _service_error(name, exc) from None

    # -- heartbeats (controlplane.registry.heartbeats) ------------------------------------------

    def heartbeat(self, service: str, iid: str, *, now: float | None = None) -> Instance:
        """Record a heartbeat (memory only; written by `flush_heartbeats`). NotFound when unknown."""
        return self._heartbeats.heartbeat(service, iid, now=now)

    def flush_heartbeats(self) -> int:
        """Write the heartbeats received since the last flush in one batch (blocking)."""
        return self._heartbeats.flush()

    # -- lease, expiry, retention (controlplane.registry.expiry) -----------------------------

    def lease_tick(self, now: float | None = None) -> bool:
        """Take or renew the leader lease; returns whether this control plane holds it (blocking)."""
        return self._expiry.lease_tick(now)

    def lease(self) -> lease_rules.Lease:
        return self._expiry.lease()

    def release_lease(self) -> None:
        """Give the lease up (on shutdown) so another control plane takes over at once (blocking)."""
        self._expiry.release_lease()

    def expire_due(self, now: float | None = None) -> list[Instance]:
        """Deregister the ephemeral instances whose TTL ran out (blocking; the leader's job)."""
        return self._expiry.expire_due(now)

    def prune_events(self) -> int:
        """Keep the newest `events_kept` events (blocking)."""
        return self._expiry.prune_events()

    def maintenance_tick(self, now: float | None = None) -> list[Instance]:
        """One tick of the leader's work: renew the lease, then expire (blocking)."""
        return self._expiry.maintenance_tick(now)

    # -- change notification and watches (controlplane.registry.watch) ----------------------

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
