"""Active health checks of persistent registry instances, run by the registry leader (asyncio).

What it owns
------------
- The schedule: every persistent instance of a service with a `health_check` is checked
  every `interval` (first check at once), at most `concurrency` checks at a time. The set
  of targets follows the registry: the registry's change notifications (and a resync
  every second) add, drop and retune targets when services, instances or check specs
  change.
- The checks: HTTP (status in `expect_status`, default 200-399: the shared
  `fluxcommon.health.StatusRule`; optional body substring), TCP (connect) and the gRPC
  health protocol (`grpc.health.v1.Health/Check`, SERVING), each bounded by the check's
  `timeout`.
- Per-instance verdicts (the shared `fluxcommon.health.Verdict`) and recent history
  (`controlplane.registry.health_state`), and counters and latency histograms for /metrics.

What it must not do: decide health itself (the thresholds live in the shared verdict), or
write anything but `RegistryStore.set_health` (which writes the event, bumps the index and
so reaches the nodes' endpoints through the normal path). Only the holder of the
registry lease checks (`registry.is_leader`, renewed by the registry's maintenance task);
other control planes idle and keep no targets. History is memory of the checking
control plane only.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx

from controlplane.registry.health_state import HISTORY, CheckResult, InstanceHealth
from controlplane.registry.store import RegistryStore
from controlplane.registry.types import ServiceCheckSpec
from controlplane.store.config_store import NotFound
from fluxcommon.durations import parse_duration_ms
from fluxcommon.health import HTTP_2XX_3XX, StatusRule

log = logging.getLogger("flux.registry.health")

Key = tuple[str, str]  # (service, instance id)
CheckFn = Callable[[ServiceCheckSpec, str, int, float], Awaitable[tuple[bool, str]]]

RESYNC = 1.0  # seconds between full resyncs with the registry (changes also wake the prober at once)
FOLLOWER_POLL = 0.5  # seconds between leadership checks while idle
MIN_PERIOD_MS = 50  # floor of a check's interval and timeout ("0s" must not spin)
BODY_LIMIT = 64 << 10  # bytes of an HTTP answer read for `expect_body`
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GRPC_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
GRPC_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


# -- grpc.health.v1 by hand: HealthCheckRequest{string service = 1}, HealthCheckResponse{enum status = 1}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def grpc_health_request(service: str) -> bytes:
    """The serialized `grpc.health.v1.HealthCheckRequest` asking about `service`."""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def grpc_health_status(data: bytes) -> int:
    """The `status` of a serialized `grpc.health.v1.HealthCheckResponse` (0 when absent)."""
    status, pos = 0, 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if number == 1:
                status = value
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire} in a health response")
        if pos > len(data):
            raise ValueError("truncated health response")
    return status


# -- the checks ------------------------------------------------------------------------------


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class Checker:
    """Runs one check of any type; holds the HTTP client the HTTP checks share."""

    def __init__(self, concurrency: int) -> None:
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=0),  # a fresh connection each
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": "flux-health-check/1"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def check(self, spec: ServiceCheckSpec, address: str, port: int, seconds: float) -> tuple[bool, str]:
        if spec.type == "tcp":
            return await self.tcp(address, port, seconds)
        if spec.type == "grpc":
            return await self.grpc(spec, address, port, seconds)
        return await self.http(spec, address, port, seconds)

    async def http(self, spec: ServiceCheckSpec, address: str, port: int, seconds: float) -> tuple[bool, str]:
        path = spec.path if spec.path.startswith("/") else "/" + spec.path
        url = f"http://{_host(address)}:{port}{path}"
        try:
            async with self._http.stream("GET", url, timeout=seconds) as resp:
                rule = StatusRule.of(spec.expect_status, HTTP_2XX_3XX)
                if not rule.accepts(resp.status_code):
                    return False, f"HTTP {resp.status_code} (expected {rule})"
                if spec.expect_body is None:
                    return True, f"HTTP {resp.status_code}"
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) >= BODY_LIMIT:
                        break
        except httpx.TimeoutException:
            return False, f"HTTP timed out after {seconds:g}s"
        except httpx.HTTPError as exc:
            return False, f"HTTP {type(exc).__name__}: {exc}"[:300]
        if spec.expect_body not in body.decode("utf-8", "replace"):
            return False, f"HTTP {resp.status_code}: body does not contain {spec.expect_body!r}"
        return True, f"HTTP {resp.status_code}, body matches"

    async def tcp(self, address: str, port: int, seconds: float) -> tuple[bool, str]:
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), seconds)
        except TimeoutError:
            return False, f"TCP connect timed out after {seconds:g}s"
        except OSError as exc:
            return False, f"TCP connect failed: {exc.strerror or exc}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, "TCP connected"

    async def grpc(self, spec: ServiceCheckSpec, address: str, port: int, seconds: float) -> tuple[bool, str]:
        # One channel per check, with its own subchannels: a shared, backed-off connection would
        # keep failing a server that is back, or keep passing one that is gone.
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
        async with grpc.aio.insecure_channel(f"{_host(address)}:{port}", options=options) as channel:
            call = channel.unary_unary(GRPC_HEALTH_CHECK, request_serializer=None, response_deserializer=None)
            try:
                raw = await call(grpc_health_request(spec.grpc_service), timeout=seconds)
            except grpc.aio.AioRpcError as exc:
                return False, f"gRPC {exc.code().name}: {exc.details() or ''}"[:300]
        try:
            status = grpc_health_status(raw)
        except ValueError as exc:
            return False, f"gRPC: bad health response: {exc}"
        name = GRPC_SERVING_STATUS.get(status, str(status))
        return status == 1, f"gRPC {name}"


# -- the prober ------------------------------------------------------------------------------


@dataclass
class _Target:
    service: str
    iid: str
    address: str
    port: int
    spec: ServiceCheckSpec
    health: InstanceHealth
    due: float = 0.0  # loop time of the next check
    running: bool = False
    checks: int = 0


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break
        self.total += seconds
        self.n += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip(LATENCY_BUCKETS, self.counts, strict=True):
            running += count
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(self.n)))
        return out


def _seconds(duration: str) -> float:
    return max(parse_duration_ms(duration), MIN_PERIOD_MS) / 1000.0


class HealthProber:
    """Checks persistent instances on the leader and reports verdicts with `set_health`."""

    def __init__(
        self,
        registry: RegistryStore,
        *,
        concurrency: int = 64,
        history: int = HISTORY,
        clock: Callable[[], float] = time.time,
        check: CheckFn | None = None,
    ) -> None:
        self.registry = registry
        self.concurrency = concurrency
        self.history = history
        self.clock = clock
        self._check = check
        self._targets: dict[Key, _Target] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._resets: set[Key] = set()  # "no health check configured" writes under way
        self._wake = asyncio.Event()
        self._dirty = True
        self.active = False  # checking now (this control plane leads)
        self.checks: dict[tuple[str, str], int] = {}  # (type, "ok" | "fail") -> checks run
        self.latency: dict[str, _Histogram] = {}
        self.flips = 0

    # -- reads (REST, metrics) ---------------------------------------------------------------

    def describe(self, service: str, iid: str) -> dict[str, Any] | None:
        """Counts and history of one instance, or None when this control plane does not check it."""
        t = self._targets.get((service, iid))
        if t is None:
            return None
        v = t.health.verdict
        return {
            "state": v.state,
            "consecutive_ok": v.consecutive_ok,
            "consecutive_fail": v.consecutive_fail,
            "checks": t.checks,
            "history": [r.as_dict() for r in t.health.history],
        }

    def targets(self) -> int:
        return len(self._targets)

    # -- the loop --------------------------------------------------------------------------

    def registry_changed(self, _services: set[str]) -> None:
        """Registry subscriber (on the event loop): resync on the next turn."""
        self._dirty = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        checker = None
        if self._check is None:
            checker = Checker(self.concurrency)
            self._check = checker.check
        self.registry.subscribe(self.registry_changed)
        next_sync = 0.0
        try:
            while True:
                self._wake.clear()
                now = loop.time()
                if not self.registry.is_leader:
                    if self.active:
                        log.info("health checks stopped: not the registry leader")
                        self._stop_all()
                    await self._sleep(FOLLOWER_POLL)
                    continue
                if not self.active:
                    log.info("health checks started: this control plane leads the registry")
                    self.active, self._dirty = True, True
                if self._dirty or now >= next_sync:
                    self._dirty = False
                    next_sync = now + RESYNC
                    try:
                        self._sync(now)
                    except Exception:
                        log.exception("health checks: could not read the registry; retrying")
                self._start_due(loop, now)
                delay = next_sync - now
                if self._heap and len(self._tasks) < self.concurrency:
                    delay = min(delay, self._heap[0][0] - now)
                await self._sleep(max(delay, 0.005))
        finally:
            self._stop_all()
            if checker is not None:
                await checker.aclose()

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _stop_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._targets.clear()
        self._heap.clear()
        self.active = False

    def _schedule(self, t: _Target, due: float) -> None:
        t.due = due
        heapq.heappush(self._heap, (due, next(self._seq), (t.service, t.iid)))

    def _sync(self, now: float) -> None:
        """Make the targets match the registry's persistent instances of checked services."""
        seen: set[Key] = set()
        for svc in self.registry.services():
            spec = svc.spec.health_check
            for inst in self.registry.instances(svc.name):
                if inst.ephemeral:
                    continue
                key = (svc.name, inst.id)
                if spec is None:
                    if inst.health == "unhealthy" and key not in self._resets:
                        self._spawn(self._reset(key), key)  # unchecked instances must not stay ejected
                    continue
                seen.add(key)
                t = self._targets.get(key)
                if t is None or (t.address, t.port) != (inst.address, inst.port):
                    t = _Target(svc.name, inst.id, inst.address, inst.port, spec,
                                InstanceHealth(spec.healthy_threshold, spec.unhealthy_threshold, inst.health,
                                               self.history))  # fmt: skip
                    self._targets[key] = t
                    self._schedule(t, now)
                elif t.spec != spec:
                    t.spec = spec
                    t.health.verdict.retune(spec.healthy_threshold, spec.unhealthy_threshold)
                    if not t.running:
                        self._schedule(t, min(t.due, now + _seconds(spec.interval)))
        for key in [k for k in self._targets if k not in seen]:
            del self._targets[key]

    def _start_due(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        while self._heap and self._heap[0][0] <= now and len(self._tasks) < self.concurrency:
            due, _, key = heapq.heappop(self._heap)
            t = self._targets.get(key)
            if t is None or t.running or t.due != due:
                continue  # dropped, rescheduled, or under way
            t.running = True
            self._spawn(self._probe(t, loop), key)

    def _spawn(self, coro: Awaitable[None], key: Key) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._wake.set()

        task.add_done_callback(done)

    async def _probe(self, t: _Target, loop: asyncio.AbstractEventLoop) -> None:
        spec = t.spec
        timeout = _seconds(spec.timeout)
        started, wall = loop.time(), self.clock()
        assert self._check is not None
        try:
            ok, detail = await asyncio.wait_for(self._check(spec, t.address, t.port, timeout), timeout + 1.0)
        except TimeoutError:
            ok, detail = False, f"{spec.type} check timed out after {timeout:g}s"
        except Exception as exc:
            ok, detail = False, f"{spec.type} check failed: {type(exc).__name__}: {exc}"[:300]
        elapsed = loop.time() - started
        self.checks[(spec.type, "ok" if ok else "fail")] = self.checks.get((spec.type, "ok" if ok else "fail"), 0) + 1
        self.latency.setdefault(spec.type, _Histogram()).observe(elapsed)
        key = (t.service, t.iid)
        if self._targets.get(key) is not t:
            return  # dropped (or replaced) while it ran
        t.running = False
        t.checks += 1
        t.health.record(CheckResult(wall, ok, elapsed * 1000, detail))
        self._schedule(t, max(started + _seconds(t.spec.interval), loop.time()))
        state = t.health.verdict.state
        if state == "unknown" or not self.registry.is_leader:
            return
        try:
            current = self.registry.instance(t.service, t.iid).health
        except NotFound:
            return
        if current == state:
            return
        v = t.health.verdict
        run = v.consecutive_ok if state == "healthy" else v.consecutive_fail
        why = f"{detail} ({run} {'passed' if state == 'healthy' else 'failed'} in a row)"
        try:
            await asyncio.to_thread(self.registry.set_health, t.service, t.iid, state == "healthy", why)
            self.flips += 1
            log.info("%s/%s is %s: %s", t.service, t.iid, state, why)
        except NotFound:
            pass
        except Exception:
            log.exception("could not record the health of %s/%s; retrying after the next check", *key)

    async def _reset(self, key: Key) -> None:
        self._resets.add(key)
        try:
            await asyncio.to_thread(self.registry.set_health, key[0], key[1], True, "no health check configured")
        except NotFound:
            pass
        except Exception:
            log.exception("could not reset the health of %s/%s", *key)
        finally:
            self._resets.discard(key)
