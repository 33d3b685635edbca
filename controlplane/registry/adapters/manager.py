"""RegistrySourceManager: one adapter per `registries` resource, run by the registry leader only.

What it owns
------------
- Following config: `run(store, cache)` wakes on every snapshot-cache publish (and every
  `tick`), reloads the `registries` resources when the config version moved, and reconciles.
- Leadership: adapters run only on the control plane holding the registry leader lease
  (`RegistryStore.is_leader`, renewed by the registry's maintenance task), so several
  control planes on one database import and export once. Others show `standby`.
- Reconciling (`reconcile`): starts an adapter for each resource, restarts one whose spec
  changed (the old one withdraws its exports first), stops removed ones (withdrawing their
  exports), and stops every adapter, without withdrawing, when the lease is lost (the new
  leader writes the same entries). After a config change or on taking the lease it drops
  the instances of sources no resource imports any more (`etcd:old`, or a resource
  switched to `import: false`), orphans included whose resource was deleted while no
  control plane ran.
- Fan-out of registry changes to the adapters' export side (one `subscribe` for all).
- Status (`status()`, for `GET /api/v1/registries/status`) and Prometheus metrics
  (`collect()`: per source up gauge, services/instances/exported gauges, sync and error
  counters).

It must not import or export itself (that is the adapters' job) nor write config.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from controlplane.registry.adapters.base import RegistryAdapter, SourceRegistry, describe, wait_event
from controlplane.spec.registry_source import RegistrySourceSpec

log = logging.getLogger("flux.registry.adapters")

ADAPTERS: dict[str, str] = {
    "etcd": "controlplane.registry.adapters.etcd:EtcdAdapter",
    "zookeeper": "controlplane.registry.adapters.zookeeper:ZooKeeperAdapter",
    "consul": "controlplane.registry.adapters.consul:ConsulAdapter",
    "nacos": "controlplane.registry.adapters.nacos:NacosAdapter",
    "eureka": "controlplane.registry.adapters.eureka:EurekaAdapter",
}
"""Adapter class per registry type, loaded on first use: a client library that is missing or
broken (pyetcd, kazoo) fails that source's adapter (shown in its status), not the control plane."""


def adapter_class(kind: str, adapters: Mapping[str, str | type[RegistryAdapter]] = ADAPTERS) -> type[RegistryAdapter]:
    target = adapters.get(kind)
    if target is None:
        raise ValueError(f"no adapter for type {kind!r}")
    if isinstance(target, str):
        module, _, name = target.partition(":")
        try:
            return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
        except Exception as exc:
            raise RuntimeError(f"cannot load the {kind} adapter: {describe(exc)}") from exc
    return target


STOP_TIMEOUT = 5.0  # seconds for an adapter to stop and withdraw its exports


def source_of(spec: RegistrySourceSpec) -> str:
    return f"{spec.type}:{spec.name}"


@dataclass
class _Running:
    spec: RegistrySourceSpec
    adapter: RegistryAdapter
    task: asyncio.Task[None]


class RegistrySourceManager:
    def __init__(
        self,
        registry: SourceRegistry,
        *,
        is_leader: Callable[[], bool] | None = None,
        adapters: Mapping[str, str | type[RegistryAdapter]] = ADAPTERS,
        node_id: str = "",
    ) -> None:
        self.registry = registry
        self._is_leader = is_leader or (lambda: bool(getattr(registry, "is_leader", False)))
        self.adapters = dict(adapters)
        self.node_id = node_id or str(getattr(registry, "node_id", ""))
        self.config_version = -1
        self.specs: dict[str, RegistrySourceSpec] = {}
        self._running: dict[str, _Running] = {}
        self._lock: asyncio.Lock | None = None
        self._swept = False  # orphan imports dropped since the specs / leadership last changed
        self._start_errors: dict[str, str] = {}
        self.starts = 0
        self.closed = False
        subscribe = getattr(registry, "subscribe", None)
        if subscribe is not None:
            subscribe(self.registry_changed)

    # -- inputs --------------------------------------------------------------------------------

    def set_specs(self, specs: Mapping[str, Any], version: int | None = None) -> None:
        """The `registries` resources as configured now."""
        new = {name: spec for name, spec in specs.items() if isinstance(spec, RegistrySourceSpec)}
        if new != self.specs:
            self._swept = False
        self.specs = new
        if version is not None:
            self.config_version = version

    def registry_changed(self, names: set[str]) -> None:
        for run in self._running.values():
            run.adapter.registry_changed(names)

    @property
    def leader(self) -> bool:
        return bool(self._is_leader())

    def adapter(self, name: str) -> RegistryAdapter | None:
        run = self._running.get(name)
        return run.adapter if run is not None else None

    # -- reconciling ---------------------------------------------------------------------------

    async def reconcile(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.closed:
                return
            leader = self.leader
            if not leader:
                self._swept = False
            stops = []
            for name, run in list(self._running.items()):
                spec = self.specs.get(name)
                if leader and spec == run.spec and not run.task.done():
                    continue
                stops.append(self._stop(name, withdraw=spec != run.spec))
            if stops:
                await asyncio.gather(*stops)
            if not leader:
                return
            for name, spec in sorted(self.specs.items()):
                if name not in self._running:
                    self._start(spec)
            if not self._swept:
                await self._drop_orphan_imports()
                self._swept = True

    def _start(self, spec: RegistrySourceSpec) -> None:
        try:
            adapter = adapter_class(spec.type, self.adapters)(spec, self.registry)
        except Exception as exc:
            if self._start_errors.get(spec.name) != describe(exc):
                log.error("registry source %s: cannot start: %s", spec.name, describe(exc))
            self._start_errors[spec.name] = describe(exc)
            return
        self._start_errors.pop(spec.name, None)
        task = asyncio.create_task(adapter.run(), name=f"registry-source-{spec.name}")
        self._running[spec.name] = _Running(spec, adapter, task)
        self.starts += 1
        log.info("registry source %s (%s at %s) started", spec.name, spec.type, spec.address)

    async def _stop(self, name: str, *, withdraw: bool) -> None:
        run = self._running.pop(name)
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await run.task
        if withdraw and run.spec.export:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await run.adapter.withdraw()
            except Exception as exc:
                log.warning("registry source %s: could not withdraw exports: %s", name, describe(exc))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_TIMEOUT):
                await run.adapter.close()
        log.info("registry source %s stopped%s", name, " (exports withdrawn)" if withdraw and run.spec.export else "")

    async def _drop_orphan_imports(self) -> None:
        """Remove instances imported by sources that no resource imports now."""
        wanted = {source_of(s) for s in self.specs.values() if s.import_}
        found: set[str] = set()
        for svc in self.registry.services():
            for inst in self.registry.instances(svc.name):
                kind, sep, _ = inst.source.partition(":")
                if sep and kind in self.adapters and inst.source not in wanted:
                    found.add(inst.source)
        for source in sorted(found):
            log.info("registry: dropping the instances imported by %s (no such source any more)", source)
            try:
                await asyncio.to_thread(self.registry.sync_source, source, {})
            except Exception as exc:
                log.warning("registry: could not drop the instances of %s: %s", source, describe(exc))
                self._swept = False

    async def close(self) -> None:
        """Stop every adapter, withdrawing exports (shutdown)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self.closed = True
            await asyncio.gather(*(self._stop(name, withdraw=True) for name in list(self._running)))

    async def run(self, store: Any, cache: Any, tick: float = 0.5) -> None:
        """Follow the config (`store.current()`, woken by `cache` publishes) and the leader lease."""
        wake = asyncio.Event()
        cache.subscribe(wake)
        try:
            while True:
                try:
                    seen = cache.version
                    if seen != self.config_version:
                        _, config = await asyncio.to_thread(store.current)
                        self.set_specs(config["registries"], seen)
                    await self.reconcile()
                except Exception:
                    log.exception("registry sources: reconcile failed; retrying")
                await wait_event(wake, tick)
                wake.clear()
        finally:
            cache.unsubscribe(wake)

    # -- status and metrics --------------------------------------------------------------------

    def source_status(self, name: str) -> dict[str, Any] | None:
        spec = self.specs.get(name)
        if spec is None:
            return None
        out: dict[str, Any] = {
            "name": spec.name,
            "type": spec.type,
            "address": spec.address,
            "source": source_of(spec),
        }
        run = self._running.get(name)
        if run is None:
            error = self._start_errors.get(name)
            out.update({
                "state": "failed" if error else ("standby" if not self.leader else "starting"),
                "last_sync": None,
                "services": 0,
                "instances": 0,
                "skipped": 0,
                "exported": 0,
                "last_error": error,
                "import": None,
                "export": None,
            })  # fmt: skip
            return out
        status = run.adapter.status()
        if run.task.done() and not run.task.cancelled() and run.task.exception() is not None:
            status["state"] = "failed"
            status["last_error"] = describe(run.task.exception())  # type: ignore[arg-type]
        out.update(status)
        return out

    def status(self) -> dict[str, Any]:
        items = [s for s in (self.source_status(n) for n in sorted(self.specs)) if s is not None]
        return {
            "items": items,
            "total": len(items),
            "leader": self.leader,
            "control_plane": self.node_id,
            "config_version": self.config_version,
            "time": time.time(),
        }

    def collect(self) -> Iterator[Any]:
        """Prometheus metrics (register the manager on a CollectorRegistry)."""
        labels = ["name", "type"]
        up = GaugeMetricFamily(
            "flux_registry_source_up", "1 while a registry source is connected and in sync", labels=labels
        )
        services = GaugeMetricFamily("flux_registry_source_services", "Services imported from a source", labels=labels)
        instances = GaugeMetricFamily(
            "flux_registry_source_instances", "Instances imported from a source", labels=labels
        )
        exported = GaugeMetricFamily("flux_registry_source_exported", "Instances exported to a source", labels=labels)
        last = GaugeMetricFamily(
            "flux_registry_source_last_sync_timestamp_seconds",
            "Unix time of a source's last import sync",
            labels=labels,
        )
        syncs = CounterMetricFamily(
            "flux_registry_source_syncs", "Syncs that changed something", labels=[*labels, "direction"]
        )
        errors = CounterMetricFamily(
            "flux_registry_source_errors", "Failed connections and syncs", labels=[*labels, "direction"]
        )
        for name, spec in sorted(self.specs.items()):
            key = [name, spec.type]
            run = self._running.get(name)
            adapter = run.adapter if run is not None else None
            up.add_metric(key, 1 if adapter is not None and adapter.state() == "running" else 0)
            if adapter is None:
                continue
            services.add_metric(key, adapter.counts.services)
            instances.add_metric(key, adapter.counts.instances)
            exported.add_metric(key, adapter.exported)
            if adapter.import_status.last_sync is not None:
                last.add_metric(key, adapter.import_status.last_sync)
            for direction, part, on in (
                ("import", adapter.import_status, spec.import_),
                ("export", adapter.export_status, spec.export),
            ):
                if on:
                    syncs.add_metric([*key, direction], part.syncs)
                    errors.add_metric([*key, direction], part.errors)
        yield from (up, services, instances, exported, last, syncs, errors)
