"""The one interface of external registry adapters, and the machinery every adapter shares.

An adapter connects one `registries` resource (`RegistrySourceSpec`) to this registry:

- **Import** (`import: true`, the default). `watch(publish)` connects to the external
  registry, calls `publish` with the complete set of instances it sees there, then again
  after every change, and returns or raises when its connection ends. `publish` keeps the
  services the resource asks for (`services`, empty = every one), drops what this very
  source exported (metadata `flux-exported-by`), and hands the rest to
  `Registry.sync_source("<type>:<name>", ...)`, which makes the instances of that source
  exactly these (persistent: they never TTL-expire; they leave when the external registry
  drops them). A set equal to the last one synced is not written again.
- **Export** (`export: true`). The registry's own instances (source `api`: registered
  through REST or the client library, not imported), of the services in `export_services`
  (empty = every one), that take traffic (status `up`, not unhealthy, weight > 0) are
  written into the external registry by `export_put`, rewritten when they change, removed
  by `export_delete` when they stop qualifying, and kept alive by `export_keepalive` every
  `keepalive_interval` (leases, TTL checks, heartbeats). A backend that finds its entries
  were lost (lease expired, session expired, 404 on a heartbeat) calls `invalidate_exports`
  and everything is written again. `withdraw` removes every exported entry; the manager
  calls it when the resource is deleted or changed and on shutdown, not when this control
  plane merely loses the leader lease (the new leader writes the same entries).
- **Status.** `status()` is what `GET /api/v1/registries/status` shows per source.

Both halves run under one supervisor each: an error or a lost connection is recorded
(`last_error`), then retried after a backoff (0.2 s doubling up to min(5 s, interval)),
forever, until the manager cancels the adapter. Imported instances stay in the registry
while the external registry is unreachable.

What an adapter must not do: block the event loop (blocking client libraries, pyetcd and
kazoo, run in worker threads, their callbacks come back with `call_soon_threadsafe`);
write to the registry other than through `publish`; read a clock for anything but status
and pacing.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import ValidationError

from controlplane.registry.types import NAME_PATTERN, Instance, InstanceSpec
from controlplane.spec.registry_source import RegistrySourceSpec
from fluxcommon.wire import text_problem

log = logging.getLogger("flux.registry.adapters")

EXPORT_MARK = "flux-exported-by"
"""Metadata key on every exported entry; its value is the exporting source ("etcd:main")."""

BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
EXPORT_COALESCE = 0.02  # seconds: registry changes inside this window make one export round

Imported = dict[str, list[InstanceSpec]]


class Publish(Protocol):
    async def __call__(self, found: Mapping[str, Iterable[InstanceSpec]], unusable: int = 0) -> None:
        """`found`: every instance the external registry holds now, by service; `unusable`: entries
        of it that could not be read (bad JSON, address or port), shown in the status."""


_NAME = re.compile(NAME_PATTERN)
_ID_BAD = re.compile(r"[^A-Za-z0-9._:@-]")


class SourceRegistry(Protocol):
    """What an adapter needs of the registry (`RegistryStore` implements it)."""

    def services(self) -> list[Any]:
        """Services (objects with a `.name`)."""

    def instances(self, service: str) -> list[Instance]: ...

    def sync_source(self, source: str, services: Mapping[str, Iterable[InstanceSpec]]) -> None: ...


# -- conversions shared by the backends --------------------------------------------------------


def valid_service_name(name: str) -> bool:
    return bool(_NAME.match(name))


def safe_instance_id(raw: object) -> str | None:
    """An external instance id made fit for the registry (None: let it default to address:port)."""
    if raw is None:
        return None
    text = _ID_BAD.sub("_", str(raw)).strip("._:@-")[:128]
    return text or None


def string_map(value: object) -> dict[str, str]:
    """Metadata from an external registry as str -> str (non-dict: empty; "@class" markers and
    entries holding control characters, which the registry refuses, dropped)."""
    if not isinstance(value, dict):
        return {}
    out = {str(k): v if isinstance(v, str) else str(v) for k, v in value.items() if k != "@class" and v is not None}
    return {k: v for k, v in out.items() if not (text_problem(k) or text_problem(v))}


def make_instance(**fields: Any) -> InstanceSpec | None:
    """An InstanceSpec, or None when the external entry is not usable (bad address, port, ...)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    meta = fields.get("metadata") or {}
    fields.setdefault("version", meta.get("version", ""))
    fields.setdefault("zone", meta.get("zone", ""))
    if "weight" not in fields and re.fullmatch(r"[0-9]{1,6}", str(meta.get("weight", ""))):
        fields["weight"] = int(meta["weight"])  # ASCII digits only ("²".isdigit() is true, int() fails)
    fields["ephemeral"] = False
    try:
        return InstanceSpec(**fields)
    except (ValidationError, TypeError, ValueError) as exc:
        log.debug("skipping external instance %r: %s", fields, exc)
        return None


def exportable(inst: Instance) -> bool:
    """Whether one of our instances is exported: registered here (not imported) and taking traffic."""
    return inst.source == "api" and inst.status == "up" and inst.health != "unhealthy" and inst.weight > 0


def export_metadata(inst: Instance, source: str) -> dict[str, str]:
    """The metadata written with an exported instance: its own, version/zone, and the export mark."""
    meta = dict(inst.metadata)
    if inst.version:
        meta.setdefault("version", inst.version)
    if inst.zone:
        meta.setdefault("zone", inst.zone)
    meta[EXPORT_MARK] = source
    return meta


def _fingerprint(inst: Instance) -> tuple[Any, ...]:
    return (
        inst.address,
        inst.port,
        inst.weight,
        inst.version,
        inst.zone,
        tuple(inst.tags),
        tuple(sorted(inst.metadata.items())),
    )


@dataclass
class _Exported:
    inst: Instance  # as last handed to export_put
    written: bool  # False: (to be) written again


# -- status --------------------------------------------------------------------------------------


@dataclass
class PartStatus:
    """State of one half (import or export) of an adapter."""

    state: str = "starting"  # starting | connecting | synced | error
    last_sync: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    syncs: int = 0
    errors: int = 0

    def connecting(self) -> None:
        if self.state != "error":
            self.state = "connecting"

    def synced(self, now: float, *, wrote: bool) -> None:
        self.state = "synced"
        self.last_sync = now
        if wrote:
            self.syncs += 1

    def failed(self, exc: BaseException, now: float) -> None:
        self.state = "error"
        self.errors += 1
        self.last_error = describe(exc)
        self.last_error_at = now

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "last_sync": self.last_sync,
            "syncs": self.syncs,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set, at most `seconds`; whether it was set.

    (asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
    arrives as the event is set, and a cancelled adapter would then never stop.)
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}"[:500] if text and text != name else name


@dataclass
class ImportCounts:
    services: int = 0
    instances: int = 0
    skipped: int = 0  # entries seen but not usable (bad name, address, port, JSON)
    detail: dict[str, Any] = field(default_factory=dict)


# -- the interface -------------------------------------------------------------------------------


class RegistryAdapter(abc.ABC):
    """One `registries` resource connected to the registry. Subclasses implement the backend hooks."""

    kind: ClassVar[str]

    def __init__(self, spec: RegistrySourceSpec, registry: SourceRegistry) -> None:
        self.spec = spec
        self.registry = registry
        self.source = f"{spec.type}:{spec.name}"
        self.interval = spec.interval / 1000
        self.backoff_max = min(BACKOFF_MAX, max(self.interval, BACKOFF_MIN))
        self.import_status = PartStatus()
        self.export_status = PartStatus()
        self.counts = ImportCounts()
        self.started_at = time.time()
        self._last_published: dict[str, list[InstanceSpec]] | None = None
        self._exported: dict[tuple[str, str], _Exported] = {}
        self._export_wake: asyncio.Event | None = None

    # -- backend hooks -------------------------------------------------------------------------

    @abc.abstractmethod
    async def watch(self, publish: Publish) -> None:
        """Connect; publish everything, then again after each change. Return or raise when disconnected."""

    async def export_open(self) -> None:  # noqa: B027 - optional hook
        """Connect for export (called before each export session, after a failure too)."""

    async def export_put(self, inst: Instance) -> None:
        """Write (create or replace) the entry of one of our instances."""
        raise NotImplementedError(f"{self.kind}: export is not supported")

    async def export_delete(self, inst: Instance) -> None:
        """Remove an entry written by `export_put` (gone already is fine)."""
        raise NotImplementedError(f"{self.kind}: export is not supported")

    async def export_keepalive(self) -> None:  # noqa: B027 - optional hook
        """Refresh leases / TTL checks / heartbeats of what was exported."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (after the adapter was cancelled)."""

    @property
    def keepalive_interval(self) -> float:
        return self.interval

    def detail(self) -> dict[str, Any]:
        """Backend specifics for the status (revision, session, ...)."""
        return dict(self.counts.detail)

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Import and/or export until cancelled."""
        self._export_wake = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            if self.spec.import_:
                tg.create_task(self._supervise(self.import_status, self._import_session), name=f"{self.source}-import")
            if self.spec.export:
                tg.create_task(self._supervise(self.export_status, self._export_session), name=f"{self.source}-export")

    async def _supervise(self, part: PartStatus, session: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN
        while True:
            started = loop.time()
            part.connecting()
            try:
                await session()
                raise ConnectionError("the connection ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                part.failed(exc, time.time())
                log.warning("%s: %s", self.source, describe(exc))
            if loop.time() - started > 10 * self.backoff_max:
                backoff = BACKOFF_MIN
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    # -- import --------------------------------------------------------------------------------

    def wants(self, service: str) -> bool:
        """Whether a service of the external registry is imported (`services` empty: every one)."""
        return not self.spec.services or service in self.spec.services

    async def _import_session(self) -> None:
        await self.watch(self.publish)

    async def publish(self, found: Mapping[str, Iterable[InstanceSpec]], unusable: int = 0) -> None:
        """Sync the registry with what the external registry holds now (the complete set)."""
        skipped = unusable
        out: dict[str, list[InstanceSpec]] = {}
        for name, specs in found.items():
            if not self.wants(name):
                continue
            if not valid_service_name(name):
                skipped += 1
                continue
            kept = [s for s in specs if s.metadata.get(EXPORT_MARK) != self.source]
            if kept:
                by_id = {s.instance_id(): s for s in kept}
                out[name] = [by_id[k] for k in sorted(by_id)]
        wrote = out != self._last_published
        if wrote:
            await asyncio.to_thread(self.registry.sync_source, self.source, out)
            self._last_published = out
        self.counts.services = len(out)
        self.counts.instances = sum(len(v) for v in out.values())
        self.counts.skipped = skipped
        self.import_status.synced(time.time(), wrote=wrote)

    # -- export --------------------------------------------------------------------------------

    def registry_changed(self, names: set[str]) -> None:
        """Services of the registry changed (called on the event loop): export again soon."""
        if self._export_wake is None or not self.spec.export:
            return
        if not self.spec.export_services or names & set(self.spec.export_services):
            self._export_wake.set()

    def invalidate_exports(self) -> None:
        """The external registry lost our entries: write every one again on the next round."""
        for entry in self._exported.values():
            entry.written = False
        self.wake_exports()

    def rewrite(self, inst: Instance) -> None:
        """The external registry lost this entry: write it again on the next round."""
        entry = self._exported.get((inst.service, inst.id))
        if entry is not None:
            entry.written = False
            self.wake_exports()

    def wake_exports(self) -> None:
        """Run an export round now."""
        if self._export_wake is not None:
            self._export_wake.set()

    def written_exports(self) -> list[Instance]:
        """Our instances as last written to the external registry (what keepalives refresh)."""
        return [e.inst for _, e in sorted(self._exported.items()) if e.written]

    def desired_exports(self) -> dict[tuple[str, str], Instance]:
        names = self.spec.export_services or [s.name for s in self.registry.services()]
        out: dict[tuple[str, str], Instance] = {}
        for name in names:
            for inst in self.registry.instances(name):
                if exportable(inst):
                    out[(name, inst.id)] = inst
        return out

    async def _export_session(self) -> None:
        assert self._export_wake is not None
        loop = asyncio.get_running_loop()
        await self.export_open()
        self.invalidate_exports()  # a new connection: write everything again
        next_keepalive = loop.time() + self.keepalive_interval
        while True:
            self._export_wake.clear()
            wrote = await self._export_round()
            self.export_status.synced(time.time(), wrote=wrote)
            left = next_keepalive - loop.time()
            if left <= 0:
                await self.export_keepalive()
                next_keepalive = loop.time() + self.keepalive_interval
                continue
            await wait_event(self._export_wake, left)
            await asyncio.sleep(EXPORT_COALESCE)

    async def _export_round(self) -> bool:
        desired = self.desired_exports()
        wrote = False
        for key in sorted(self._exported.keys() - desired.keys()):
            await self.export_delete(self._exported[key].inst)
            del self._exported[key]
            wrote = True
        for key in sorted(desired):
            inst = desired[key]
            entry = self._exported.get(key)
            if entry is not None and entry.written and _fingerprint(entry.inst) == _fingerprint(inst):
                continue
            if entry is not None and (entry.inst.address, entry.inst.port) != (inst.address, inst.port):
                await self.export_delete(entry.inst)  # registries that key entries by address:port
                entry = None
            if entry is None:
                self._exported[key] = _Exported(inst, written=False)  # withdraw removes it even half-written
            await self.export_put(inst)
            self._exported[key] = _Exported(inst, written=True)
            wrote = True
        return wrote

    @property
    def exported(self) -> int:
        return sum(1 for e in self._exported.values() if e.written)

    async def withdraw(self) -> None:
        """Remove every exported entry from the external registry (resource deleted, shutdown)."""
        if not self._exported:
            return
        await self.export_open()
        for key in sorted(self._exported):
            await self.export_delete(self._exported[key].inst)
            del self._exported[key]

    # -- status --------------------------------------------------------------------------------

    def state(self) -> str:
        parts = [p for p, on in ((self.import_status, self.spec.import_), (self.export_status, self.spec.export)) if on]
        if any(p.state == "error" for p in parts):
            return "error"
        if any(p.state != "synced" for p in parts):
            return "connecting"
        return "running"

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state(),
            "source": self.source,
            "started_at": self.started_at,
            "last_sync": self.import_status.last_sync if self.spec.import_ else self.export_status.last_sync,
            "services": self.counts.services,
            "instances": self.counts.instances,
            "skipped": self.counts.skipped,
            "exported": self.exported,
            "last_error": _latest_error(self.import_status, self.export_status),
            "import": self.import_status.as_dict() if self.spec.import_ else None,
            "export": self.export_status.as_dict() if self.spec.export else None,
            "detail": self.detail(),
        }


def _latest_error(*parts: PartStatus) -> str | None:
    failed = [p for p in parts if p.last_error]
    if not failed:
        return None
    return max(failed, key=lambda p: p.last_error_at or 0).last_error
