"""NodeWorker: one trio process of `flux-node`, wiring every part together.

Start-up: open the admin port, apply the cached snapshot if there is one (so
the node serves at once, even with no control plane), then subscribe to the
control plane. Each snapshot is compiled, its new sockets bound, and only then
swapped in as one reference. A failure of one resource on this node (a port
taken, a certificate that does not load) sets that resource aside and the rest
applies (dataplane.config.isolation; the ACK lists it); anything else refuses
the version whole (NACK) and the previous config keeps serving. SIGTERM/SIGINT: stop accepting,
let in-flight requests finish up to the drain deadline, exit 0.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dataplane.accesslog import AccessLog
from dataplane.admin import AdminServer, json_body, masked_snapshot
from dataplane.admission import FdBudget
from dataplane.config.compiler import CompileError, EndpointRegistry, compile_snapshot
from dataplane.config.isolation import MAX_ISOLATED, Failure, Fault, set_aside
from dataplane.config.runtime import ConfigHolder
from dataplane.discovery.cache import SnapshotFile
from dataplane.discovery.client import DiscoveryClient
from dataplane.discovery.credentials import CredentialSource, CredentialStore, Renewer
from dataplane.discovery.load import LoadReporter
from dataplane.exchange.trace import RequestTracer
from dataplane.health.checker import HealthService
from dataplane.http.proxy import ProxyServices, ProxySettings
from dataplane.http.request import RequestHead
from dataplane.listeners import ListenerManager, ListenError
from dataplane.metrics import Metrics
from dataplane.policies.base import PolicyEnv, SharedServices
from dataplane.policies.breaker import admin_state
from dataplane.reactor import Reactor
from dataplane.tls.contexts import TICKET_KEY_LIFETIME
from dataplane.tunnel.manager import TunnelConfigError, TunnelManager
from dataplane.tunnel.reporter import TunnelReporter
from dataplane.tunnel.vhost import PREFIX as TUNNEL_PREFIX
from dataplane.tunnel.vhost import overlay
from dataplane.upstream.pool import PoolRegistry
from flux.v1 import config_pb2, discovery_pb2
from fluxcommon.tracing.metrics import trace_metric_families
from fluxcommon.tracing.tracer import Tracing
from fluxcommon.version import package_version

log = logging.getLogger("flux.node")

BUILD_VERSION = package_version()  # what nodes report (Node.build_version)


@dataclass
class NodeOptions:
    control_planes: list[str]
    node_id: str
    group: str = "default"
    zone: str = ""
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    cache_dir: str | None = None
    drain_timeout: float = 10.0
    access_log_fd: int | None = 1
    worker_index: int = 0
    workers: int = 1
    settings: ProxySettings = field(default_factory=ProxySettings)
    tracing: Tracing | None = None  # from the OTEL_* variables (None: off)


def _tune_gc() -> None:
    """What start-up built (modules, config) is frozen out of every cyclic GC pass;
    request objects die by reference counting anyway."""
    gc.collect()
    gc.freeze()


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit (like nginx's
    worker_rlimit_nofile): each client and upstream connection takes one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class NodeWorker:
    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.holder = ConfigHolder()
        self.metrics = Metrics()
        self.access_log = AccessLog(opts.access_log_fd)
        self.reactor = Reactor()
        self.pools = PoolRegistry(self.reactor)
        self.services = SharedServices()  # policy helpers kept across snapshots (JWKS, Redis, caches)
        self.endpoints = EndpointRegistry()
        self.health = HealthService(self.holder)
        self.tracing = opts.tracing
        self.svc = ProxyServices(
            holder=self.holder,
            metrics=self.metrics,
            access_log=self.access_log,
            passive_health=self.health.passive,
            reactor=self.reactor,
            settings=opts.settings,
            tracer=RequestTracer(opts.tracing.settings.sampler, opts.tracing.exporter.submit) if opts.tracing else None,
        )
        self.listeners = ListenerManager(self.svc)
        # Tunnel servers run in the first worker only: agents keep one connection to one process.
        self.tunnels = TunnelManager(self._tunnels_changed, enabled=opts.worker_index == 0)
        self.pools.openers[TUNNEL_PREFIX] = self.tunnels.endpoints.open
        self._snapshot: config_pb2.Snapshot | None = None  # the last applied snapshot, as received
        self._applied: config_pb2.Snapshot | None = None  # what of it runs (resources set aside: not)
        self.failing: list[Failure] = []  # resources of the current version set aside on this node
        self._reapply_pending = False
        self.cache = SnapshotFile(opts.cache_dir, opts.group)
        self.discovery: DiscoveryClient | None = None
        self.credentials = CredentialSource(CredentialStore(opts.cache_dir) if opts.cache_dir else None)
        self.renewer: Renewer | None = None
        self.ready = False
        self.draining = False
        self.last_error: str | None = None
        self.admin = AdminServer(
            {
                "/ready": self._ready,
                "/healthz": lambda _h: (200, "application/json", json_body({"status": "alive"})),
                "/metrics": lambda _h: (200, "text/plain; version=0.0.4", self.metrics.render()),
                "/config_dump": self._config_dump,
                "/clusters": self._clusters,
                "/stats": self._stats,
                "/listeners": lambda _h: (200, "application/json", json_body(self.listeners.ports())),
                "/circuit_breakers": self._breakers,
                "/tunnels": lambda _h: (200, "application/json", json_body(self.tunnels.describe())),
            }
        )
        self.metrics.gauges.append(self._pool_gauges)
        self.metrics.gauges.append(self._admission_metrics)
        self.metrics.gauges.append(self.tunnels.collect)
        self.metrics.gauges.append(lambda: trace_metric_families(self.tracing.exporter if self.tracing else None))

    # -- applying config -------------------------------------------------------------

    async def apply(self, snap: config_pb2.Snapshot) -> str | None:
        """Compile and swap in `snap`; None on success, else why it was refused."""
        error = self._swap(snap)
        if error is not None:
            return self._refuse(snap, error)
        self._snapshot = snap
        self.metrics.config_version = snap.version
        self.metrics.config_applied += 1
        self.last_error = None
        if not self.ready:
            log.info("node ready")
        self.ready = True
        self.cache.save(snap)
        log.info(
            "applied config version %s: %d listeners, %d routes, %d clusters",
            snap.version, len(snap.listeners), len(snap.routes), len(snap.clusters),
        )  # fmt: skip
        return None

    def _swap(self, snap: config_pb2.Snapshot) -> str | None:
        """Apply `snap`, setting aside the resources that fail on this node alone.

        The snapshot is tried whole; when an error belongs to one listener, cluster or tunnel
        (a port taken here, a certificate that does not load), that resource keeps its
        previous version or is left out (dataplane.config.isolation) and the rest is tried
        again. None on success (`self.failing` lists what was set aside); otherwise why the
        version is refused, with nothing changed."""
        failures: dict[Fault, Failure] = {}
        work = snap
        while True:
            error, fault = self._try_swap(work)
            if error is None:
                self.failing = list(failures.values())
                self.metrics.config_failing = [(f.kind, f.name) for f in self.failing]
                self._applied = work
                for f in self.failing:
                    kept = "keeps its previous version" if f.kept_previous else "is not served"
                    log.error("config version %s: %s %r %s on this node: %s", snap.version, f.kind, f.name, kept,
                              f.message)  # fmt: skip
                return None
            if fault is None or len(failures) >= MAX_ISOLATED:
                return error
            first_time = fault not in failures
            if not first_time and not failures[fault].kept_previous:
                return error  # set aside already and it still fails: a bug, refuse the version
            # first failure: its previous version if it had one; that failing too: leave it out
            work, kept = set_aside(work, fault, self._applied, use_previous=first_time)
            message = error if first_time else failures[fault].message
            failures[fault] = Failure(fault.kind, fault.name, message, kept)

    def _try_swap(self, snap: config_pb2.Snapshot) -> tuple[str | None, Fault | None]:
        """Compile `snap` with the tunnel servers' routes, bind what it adds, swap it in.

        (None, None) on success; otherwise (why, the resource at fault if one is), with
        nothing changed."""
        try:
            tunnel_plan = self.tunnels.prepare(snap)
        except TunnelConfigError as exc:
            return str(exc), exc.fault
        servers = [s for s, _ in tunnel_plan.update] + tunnel_plan.start
        env = PolicyEnv(services=self.services, reactor=self.reactor, workers=self.opts.workers)
        try:
            full = overlay(snap, servers)
            compiled = compile_snapshot(full, self.endpoints, self.pools.get, env, zone=self.opts.zone)
            plan = self.listeners.prepare(compiled.config)
        except (CompileError, ListenError) as exc:
            self.tunnels.discard(tunnel_plan)
            return str(exc), exc.fault
        except Exception as exc:  # a bug must cost a NACK, never the node
            self.tunnels.discard(tunnel_plan)
            log.exception("compiling config version %s failed", snap.version)
            return f"internal error while compiling: {exc!r}", None
        self.holder.current = compiled.config
        compiled.commit(self.endpoints)
        self.listeners.commit(plan)
        self.tunnels.commit(tunnel_plan)
        self.pools.reconcile(
            {(c.name, ep.address, ep.port) for c in compiled.config.clusters.values() for ep in c.endpoints}
        )
        self.health.reconcile(compiled.config)
        return None, None

    def _tunnels_changed(self) -> None:
        """An http tunnel proxy came or went: rebuild the routes soon (changes coalesce)."""
        if self._reapply_pending or self._snapshot is None or self.services.nursery is None:
            return
        self._reapply_pending = True
        self.services.nursery.start_soon(self._reapply)

    async def _reapply(self) -> None:
        await trio.sleep(0.01)
        self._reapply_pending = False
        snap = self._snapshot
        if snap is None:
            return
        error = self._swap(snap)
        if error is not None:
            log.error("tunnel routes could not be applied on version %s: %s", snap.version, error)

    def _refuse(self, snap: config_pb2.Snapshot, reason: str) -> str:
        self.metrics.config_rejected += 1
        self.last_error = f"version {snap.version}: {reason}"
        log.error("refusing config version %s: %s", snap.version, reason)
        return reason

    # -- admin handlers --------------------------------------------------------------

    def _ready(self, _head: RequestHead) -> tuple[int, str, bytes]:
        cfg = self.holder.current
        body = {
            "ready": self.ready and not self.draining,
            "version": cfg.version if cfg else None,
            "draining": self.draining,
        }
        return (200 if body["ready"] else 503), "application/json", json_body(body)

    def _config_dump(self, _head: RequestHead) -> tuple[int, str, bytes]:
        cfg = self.holder.current
        if cfg is None:
            return 503, "application/json", json_body({"error": "no config applied yet"})
        body = {
            "version": cfg.version,
            "node": {"id": self.opts.node_id, "group": self.opts.group, "worker": self.opts.worker_index},
            "snapshot": masked_snapshot(cfg.snapshot),
            "skipped_listeners": self.listeners.unsupported,
        }
        return 200, "application/json", json_body(body)

    def _clusters(self, _head: RequestHead) -> tuple[int, str, bytes]:
        cfg = self.holder.current
        out = []
        for cluster in cfg.clusters.values() if cfg else []:
            eps = []
            for ep in cluster.endpoints:
                d = ep.as_dict()
                pool = cluster.pools.get(ep.key)
                if pool is not None:
                    d["pool"] = {"idle": len(pool.idle), "in_use": pool.in_use, "reused": pool.stats_reused}
                eps.append(d)
            out.append(
                {
                    "name": cluster.name,
                    "lb": cluster.balancer.name,
                    "health_check": cluster.health_check.type if cluster.health_check else None,
                    "available": sum(1 for ep in cluster.endpoints if ep.available),
                    "endpoints": eps,
                }
            )
        return 200, "application/json", json_body({"version": cfg.version if cfg else None, "clusters": out})

    def _breakers(self, _head: RequestHead) -> tuple[int, str, bytes]:
        now = time.monotonic()
        out = [
            {"policy": key[1], "scope": key[3], **admin_state(breaker, now)}
            for key, breaker in self.services.items()
            if isinstance(key, tuple) and key and key[0] == "breaker"
        ]
        return (
            200,
            "application/json",
            json_body({"circuit_breakers": sorted(out, key=lambda b: (b["policy"], b["scope"]))}),
        )

    def _stats(self, _head: RequestHead) -> tuple[int, str, bytes]:
        d = self.discovery
        body: dict[str, Any] = {
            "node": self.opts.node_id,
            "group": self.opts.group,
            "version": self.holder.current.version if self.holder.current else None,
            "ready": self.ready,
            "draining": self.draining,
            "last_error": self.last_error,
            # resources of this version set aside here (a port taken, a certificate that does not load)
            "failing_resources": [f.as_dict() for f in self.failing],
            "downstream_connections": self.metrics.downstream_active,
            "requests_in_flight": self.svc.in_flight,
            "access_log": {"written": self.access_log.written, "dropped": self.access_log.dropped},
            "tracing": self._tracing_stats(),
            "discovery": {
                "connected_to": d.connected_to if d else None,
                "streams_opened": d.streams_opened if d else 0,
                "snapshots_received": d.snapshots_received if d else 0,
                "nacks_sent": d.nacks_sent if d else 0,
                "certificate": self._certificate(),
            },
        }
        return 200, "application/json", json_body(body)

    def _tracing_stats(self) -> dict[str, Any] | None:
        tracing = self.tracing
        if tracing is None:
            return None
        exporter = tracing.exporter
        return {
            "endpoint": tracing.settings.endpoint,
            "sampler": tracing.settings.sampler.description,
            "queued": len(exporter.queue),
            "exported": exporter.exported,
            "dropped": exporter.drops(),
            "last_error": exporter.last_error or None,
        }

    def _certificate(self) -> dict[str, Any] | None:
        creds = self.credentials.current()
        if creds is None:
            return None
        return {
            "node_id": creds.node_id,
            "group": creds.group,
            "serial": creds.serial,
            "not_after": creds.not_after.isoformat(timespec="seconds"),
            "renewed": self.renewer.renewed if self.renewer else 0,
        }

    def _count_other_fds(self) -> None:
        """Descriptors open outside the proxy's sockets (see FdBudget)."""
        budget = self.svc.admission.budget
        try:
            total = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
        except OSError:
            return
        budget.other = max(0, total - self.reactor.open_sockets)
        self.reactor.max_sockets = budget.max_upstream_sockets()

    async def _watch_fds(self) -> None:
        while True:
            await trio.sleep(1.0)
            self._count_other_fds()

    def _admission_metrics(self) -> Iterator[Any]:
        refused = CounterMetricFamily(
            "flux_downstream_connections_refused",
            "Client connections closed at accept: over a listener limit, or short of descriptors",
            labels=["listener", "reason"],
        )
        for (listener, reason), n in sorted(self.svc.admission.refused.items()):
            refused.add_metric([listener, reason], n)
        yield refused
        failed = CounterMetricFamily("flux_accept_fd_exhausted", "accept() calls that found no free descriptor")
        failed.add_metric([], self.reactor.fd_exhausted)
        yield failed
        yield GaugeMetricFamily(
            "flux_open_sockets", "Sockets of the HTTP proxy open now (clients, upstreams, listeners)",
            value=self.reactor.open_sockets,
        )  # fmt: skip
        expiry = GaugeMetricFamily(
            "flux_certificate_expiry_seconds", "Seconds until a served certificate expires", labels=["name"]
        )
        cfg = self.holder.current
        seen: set[str] = set()
        for lst in cfg.listeners.values() if cfg is not None else ():
            if lst.tls is not None:
                for info in lst.tls.current.certs:
                    if info.name not in seen:
                        seen.add(info.name)
                        expiry.add_metric([info.name], info.expires_in)
        yield expiry

    async def _rotate_ticket_keys(self) -> None:
        """New TLS contexts (new session-ticket keys) for every https listener, every few hours."""
        while True:
            await trio.sleep(TICKET_KEY_LIFETIME)
            cfg = self.holder.current
            for lst in cfg.listeners.values() if cfg is not None else ():
                if lst.tls is not None:
                    try:
                        lst.tls.current = lst.tls.current.rotated()
                    except Exception:  # the same settings built fine an hour ago; keep serving the old ones
                        log.exception("listener %s: could not renew its TLS contexts", lst.name)

    def _pool_gauges(self) -> Iterator[Any]:
        cfg = self.holder.current
        conns = GaugeMetricFamily(
            "flux_upstream_connections", "Upstream connections by cluster and state", labels=["cluster", "state"]
        )
        health = GaugeMetricFamily(
            "flux_endpoint_available", "1 when the endpoint takes traffic", labels=["cluster", "endpoint"]
        )
        for cluster in cfg.clusters.values() if cfg else []:
            idle = sum(len(p.idle) for p in cluster.pools.values())
            busy = sum(p.in_use for p in cluster.pools.values())
            conns.add_metric([cluster.name, "idle"], idle)
            conns.add_metric([cluster.name, "active"], busy)
            for ep in cluster.endpoints:
                health.add_metric([cluster.name, ep.key], 1 if ep.available else 0)
        yield conns
        yield health
        yield from self._policy_gauges()

    def _policy_gauges(self) -> Iterator[Any]:
        cfg = self.holder.current
        fallbacks = CounterMetricFamily(
            "flux_ratelimit_fallbacks", "Rate-limit decisions made without Redis (on_redis_error)", labels=["policy"]
        )
        for name, policy in sorted((cfg.policies if cfg else {}).items()):
            if hasattr(policy, "fallbacks"):
                fallbacks.add_metric([name], policy.fallbacks)
        yield fallbacks
        redis_up = GaugeMetricFamily(
            "flux_ratelimit_redis_up", "1 while the shared rate-limit Redis answers", labels=["redis"]
        )
        redis_calls = CounterMetricFamily(
            "flux_ratelimit_redis_calls", "Rate-limit decisions asked of Redis", labels=["redis", "result"]
        )
        breakers = GaugeMetricFamily(
            "flux_circuit_breaker_state", "1 for the state each breaker is in", labels=["policy", "scope", "state"]
        )
        now = time.monotonic()
        for key, obj in self.services.items():
            if hasattr(obj, "pipelines") and hasattr(obj, "safe_url"):
                redis_up.add_metric([obj.safe_url], 1 if obj.state == "up" else 0)
                redis_calls.add_metric([obj.safe_url, "ok"], obj.calls - obj.failed_calls)
                redis_calls.add_metric([obj.safe_url, "failed"], obj.failed_calls)
            elif isinstance(key, tuple) and key and key[0] == "breaker":
                state = obj.advance(now)
                for s in ("closed", "open", "half_open"):
                    breakers.add_metric([key[1], key[3], s], 1 if s == state else 0)
        yield redis_up
        yield redis_calls
        yield breakers

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        opts = self.opts
        node = discovery_pb2.Node(
            id=opts.node_id,
            group=opts.group,
            build_version=BUILD_VERSION,
            hostname=socket.gethostname(),
            metadata={"worker": str(opts.worker_index), "workers": str(opts.workers), "zone": opts.zone},
        )
        limit = raise_fd_limit()
        budget = FdBudget.for_limit(limit)
        self.svc.admission.budget = budget
        self.svc.admission.workers = opts.workers
        self._count_other_fds()
        if limit < 16384:
            log.warning(
                "open-file limit is %d (%d kept in reserve for the admin port and config stream): "
                "raise it (ulimit -n) to hold more connections",
                limit,
                budget.reserve,
            )
        if self.tracing is not None:
            self.tracing.start()  # the exporter's thread
        async with trio.open_nursery() as services:
            async with trio.open_nursery() as connections:
                await services.start(self.reactor.run)
                services.start_soon(self._watch_fds)
                services.start_soon(self._rotate_ticket_keys)
                self.services.nursery = services
                self.listeners.bind(services, connections)
                self.tunnels.bind(services)
                self.health.start(services)
                try:
                    admin_port = await services.start(self.admin.serve, opts.admin_address, opts.admin_port)
                except OSError as exc:  # name the flag: the node's other sockets fail per resource
                    where = f"{opts.admin_address}:{opts.admin_port}"
                    raise OSError(exc.errno, f"--admin {where}: {exc.strerror}") from None
                log.info("admin endpoint on http://%s:%d", opts.admin_address, admin_port)
                cached = self.cache.load()
                version = ""
                if cached is not None:
                    log.info("starting from cached config version %s (%s)", cached.version, self.cache.path)
                    if await self.apply(cached) is None:
                        version = cached.version
                discovery = self.discovery = DiscoveryClient(
                    opts.control_planes,
                    node,
                    self.apply,
                    failing=lambda: self.failing,  # reported with each ACK
                    version=version,
                    credentials=self.credentials.current,
                    load=LoadReporter(self.metrics),  # request counters for config canaries
                    tracer=self.tracing.tracer if self.tracing else None,  # "apply config version N" spans
                )
                services.start_soon(discovery.run)
                self.renewer = Renewer(
                    self.credentials,
                    lambda: [discovery.connected_to] if discovery.connected_to else discovery.addresses,
                    discovery.reconnect,
                )
                services.start_soon(self.renewer.run)
                if self.tunnels.enabled:
                    reporter = TunnelReporter(
                        self.tunnels,
                        node,
                        lambda: discovery.connected_to or discovery.addresses[0],
                        credentials=self.credentials.current,
                    )
                    services.start_soon(reporter.run)
                services.start_soon(self.pools.run_sweeper)
                services.start_soon(self.access_log.run)
                services.start_soon(self.svc.run_reaper)
                _tune_gc()
                task_status.started(admin_port)
                # the receiver stays open through the drain: a second SIGTERM (systemd signals every
                # process of the unit while the supervisor forwards its own; Ctrl-C reaches a whole
                # process group) must not end the process by the default action mid-drain
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    await self._wait_for_stop(signals)
                    async with trio.open_nursery() as draining:
                        draining.start_soon(self._ignore_while_draining, signals)
                        await self._drain()
                        draining.cancel_scope.cancel()
                connections.cancel_scope.cancel()
            services.cancel_scope.cancel()
        self.pools.close_all()
        if self.tracing is not None:  # the spans of the last requests, within a few seconds
            await trio.to_thread.run_sync(self.tracing.shutdown, 3.0)
        log.info("node stopped")

    async def _wait_for_stop(self, signals: Any) -> None:
        async for sig in signals:
            log.info("received %s: draining (up to %gs)", signal.Signals(sig).name, self.opts.drain_timeout)
            return

    async def _ignore_while_draining(self, signals: Any) -> None:
        async for sig in signals:
            log.info("received %s again: still draining (up to %gs)", signal.Signals(sig).name, self.opts.drain_timeout)

    async def _drain(self) -> None:
        self.draining = True
        self.listeners.close_all()
        self.svc.start_draining()
        with trio.move_on_after(self.opts.drain_timeout) as scope:
            while self.svc.in_flight or self.metrics.downstream_active:
                self.svc.start_draining()
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            log.warning("drain deadline passed with %d requests in flight", self.svc.in_flight)
        await self.access_log.flush()
