"""Config propagation benchmark of the control plane.

    .venv/bin/python bench/config_propagation.py [--clients 50] [--writes 100] [--db sqlite|mysql]

1. Starts `flux-controlplane` as a child process (SQLite in a temp dir, or a fresh
   database on the MariaDB server at 127.0.0.1:3306), connects N discovery clients
   (grpc.aio, all in this process, one channel each, every snapshot ACKed at once),
   then makes W sequential REST writes (one cluster's endpoint weight). For each write
   it measures the time from sending the REST request to the moment the LAST client
   holds that version or a newer one. By default every write waits for that before the
   next one starts (an isolated latency); `--burst` sends them back to back instead.
2. Times `render_snapshot` + deterministic serialisation of a 10,000-route config
   in-process (best of 3).

Prints a table with PASS/FAIL against the targets (p99 propagation < 300 ms for 50
clients; render of 10,000 routes < 1 s) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.processes import ControlPlaneProcess, mariadb_database, mariadb_unreachable  # noqa: E402

from flux.v1 import config_pb2, discovery_pb2, discovery_pb2_grpc  # noqa: E402

SNAPSHOT_TYPE_URL = "type.googleapis.com/flux.v1.Snapshot"
TARGET_P99_MS = 300.0
TARGET_RENDER_S = 1.0
RENDER_ROUTES = 10_000


# -- discovery clients ---------------------------------------------------------------------


@dataclass
class Fleet:
    """What every client holds; wakes the writer when the slowest one moves."""

    size: int
    held: list[int] = field(default_factory=list)
    pushes: list[int] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pending: list[int] = field(default_factory=list)  # versions not yet held by all, ascending
    reached: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.held = [-1] * self.size
        self.pushes = [0] * self.size

    def record(self, idx: int, version: int) -> None:
        self.pushes[idx] += 1
        was = self.held[idx]
        self.held[idx] = max(was, version)
        if self.pending and was < self.pending[0] <= version:  # this client may have been the last one
            slowest, now = self.slowest(), time.perf_counter()
            while self.pending and self.pending[0] <= slowest:
                self.reached[self.pending.pop(0)] = now
        self.changed.set()

    def expect(self, version: int) -> None:
        """Stamp the moment every client first holds `version` (or newer) into `reached`."""
        if self.slowest() >= version:
            self.reached[version] = time.perf_counter()
        else:
            self.pending.append(version)

    def slowest(self) -> int:
        return min(self.held)

    async def wait_all(self, version: int, limit_s: float) -> float:
        """perf_counter() at which every client holds `version` or newer."""
        deadline = time.perf_counter() + limit_s
        while self.slowest() < version:
            self.changed.clear()
            if self.slowest() >= version:
                break
            left = deadline - time.perf_counter()
            if left <= 0:
                behind = sum(1 for h in self.held if h < version)
                raise TimeoutError(f"{behind} client(s) never reached version {version}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return time.perf_counter()


async def run_client(address: str, idx: int, fleet: Fleet, stop: asyncio.Event) -> None:
    requests: asyncio.Queue[discovery_pb2.StreamConfigRequest | None] = asyncio.Queue()
    await requests.put(
        discovery_pb2.StreamConfigRequest(
            node=discovery_pb2.Node(id=f"bench-{idx}", group="default", hostname="bench"),
            type_url=SNAPSHOT_TYPE_URL,
        )
    )

    async def outgoing():  # type: ignore[no-untyped-def]
        while True:
            req = await requests.get()
            if req is None:
                return
            yield req

    async with grpc.aio.insecure_channel(address) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        call = stub.StreamConfig(outgoing())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                read = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({read, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    read.cancel()
                    break
                resp = read.result()
                if resp is grpc.aio.EOF:
                    break
                snap = config_pb2.Snapshot()
                resp.resources[0].Unpack(snap)  # decode it, as a node would
                assert snap.version == resp.version_info
                await requests.put(
                    discovery_pb2.StreamConfigRequest(
                        version_info=resp.version_info, response_nonce=resp.nonce, type_url=SNAPSHOT_TYPE_URL
                    )
                )
                fleet.record(idx, int(resp.version_info))
        finally:
            stopper.cancel()
            await requests.put(None)
            call.cancel()


# -- propagation -----------------------------------------------------------------------------


@dataclass
class Propagation:
    latencies_ms: list[float]
    write_ms: list[float]
    pushes_per_client: list[int]
    connect_s: float


async def measure_propagation(cp: ControlPlaneProcess, clients: int, writes: int, burst: bool) -> Propagation:
    headers = {"Authorization": f"Bearer {cp.token}"}
    async with httpx.AsyncClient(base_url=cp.url, headers=headers, timeout=30) as http:
        doc = {
            "listeners": [{"name": "bench", "port": 18080}],
            "clusters": [{"name": "bench", "endpoints": [{"address": "127.0.0.1", "port": 9001}]}],
            "routes": [{"name": "bench", "listener": "bench", "cluster": "bench", "path": "/"}],
        }
        r = await http.post("/api/v1/apply", json=doc)
        r.raise_for_status()
        start_version = int((await http.get("/api/v1/config")).json()["version"])

        fleet = Fleet(clients)
        stop = asyncio.Event()
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(run_client(cp.grpc_addr, i, fleet, stop)) for i in range(clients)]
        await fleet.wait_all(start_version, 30)
        connect_s = time.perf_counter() - t0
        before = list(fleet.pushes)

        sent_at: dict[int, float] = {}
        write_ms: list[float] = []
        for i in range(writes):
            body = {"name": "bench", "endpoints": [{"address": "127.0.0.1", "port": 9001, "weight": 2 + i}]}
            t_send = time.perf_counter()
            r = await http.put("/api/v1/clusters/bench", json=body)
            write_ms.append((time.perf_counter() - t_send) * 1000)
            r.raise_for_status()
            version = int(r.headers["x-flux-config-version"])
            sent_at[version] = t_send
            fleet.expect(version)
            if not burst:
                await fleet.wait_all(version, 30)
        await fleet.wait_all(max(sent_at), 30)
        latencies = [(fleet.reached[v] - t_send) * 1000 for v, t_send in sorted(sent_at.items())]
        pushes = [after - b for after, b in zip(fleet.pushes, before, strict=True)]
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return Propagation(latencies, write_ms, pushes, connect_s)


# -- render ----------------------------------------------------------------------------------


def measure_render(routes: int = RENDER_ROUTES) -> tuple[float, int, float]:
    """(best render+serialise seconds, snapshot bytes, build seconds) for `routes` routes."""
    from controlplane.snapshot import render_snapshot
    from controlplane.spec import ClusterSpec, ConfigSet, ListenerSpec, RouteSpec

    t0 = time.perf_counter()
    listener = ListenerSpec(name="public", port=8080)
    clusters = {
        f"c{i}": ClusterSpec(
            name=f"c{i}",
            endpoints=[
                {"address": f"10.{i // 250}.{i % 250}.1", "port": 8000, "weight": 1},
                {"address": f"10.{i // 250}.{i % 250}.2", "port": 8000, "weight": 2},
            ],
        )
        for i in range(routes)
    }
    route_specs = {
        f"r{i}": RouteSpec(
            name=f"r{i}",
            listener="public",
            hosts=[f"svc{i % 100}.example.com"],
            path=f"/api/v{i % 3}/svc{i}",
            methods=["GET", "POST"],
            headers={"x-tenant": str(i % 7)} if i % 5 == 0 else {},
            cluster=f"c{i}",
            priority=i % 10,
        )
        for i in range(routes)
    }
    cfg = ConfigSet({"listeners": {"public": listener}, "clusters": clusters, "routes": route_specs})
    build_s = time.perf_counter() - t0
    best = float("inf")
    size = 0
    for _ in range(3):
        start = time.perf_counter()
        snap = render_snapshot(cfg, 1, "default")
        data = snap.SerializeToString(deterministic=True)
        best = min(best, time.perf_counter() - start)
        size = len(data)
        assert len(snap.routes) == routes and len(snap.clusters) == routes
    return best, size, build_s


# -- report ----------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@contextlib.contextmanager
def database(kind: str, workdir: pathlib.Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'flux.db'}"
        return
    reason = mariadb_unreachable()
    if reason:
        raise SystemExit(reason)
    with mariadb_database("flux_bench_") as url:
        yield url


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--writes", type=int, default=100)
    p.add_argument("--db", choices=["sqlite", "mysql"], default="sqlite")
    p.add_argument("--burst", action="store_true", help="send the writes back to back (no wait for convergence)")
    p.add_argument("--render-routes", type=int, default=RENDER_ROUTES)
    args = p.parse_args()

    print(
        f"FLUX config propagation benchmark: {args.clients} clients, {args.writes} writes, db={args.db}, "
        f"{'burst' if args.burst else 'one write at a time'}"
    )
    print(f"host: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp, database(args.db, pathlib.Path(tmp)) as url:
        cp = ControlPlaneProcess(pathlib.Path(tmp) / "cp", url, extra_args=("--log-level", "warning"))
        cp.start()
        try:
            prop = asyncio.run(measure_propagation(cp, args.clients, args.writes, args.burst))
        finally:
            cp.stop()
    render_s, render_bytes, build_s = measure_render(args.render_routes)

    lat = prop.latencies_ms
    p50, p90, p99 = statistics.median(lat), percentile(lat, 90), percentile(lat, 99)
    pushes = prop.pushes_per_client
    rows = [
        ("clients connected + first snapshot", f"{prop.connect_s * 1000:.0f} ms", "", ""),
        ("REST write (request -> response) median", f"{statistics.median(prop.write_ms):.1f} ms", "", ""),
        ("propagation median (write -> last client)", f"{p50:.1f} ms", "", ""),
        ("propagation p90", f"{p90:.1f} ms", "", ""),
        ("propagation max", f"{max(lat):.1f} ms", "", ""),
        (
            f"propagation p99 ({args.clients} clients)",
            f"{p99:.1f} ms",
            f"< {TARGET_P99_MS:.0f} ms",
            "PASS" if p99 < TARGET_P99_MS else "FAIL",
        ),
        (
            "pushes per client (mean / min / max)",
            f"{statistics.mean(pushes):.1f} / {min(pushes)} / {max(pushes)}",
            f"<= {args.writes}",
            "",
        ),
        (
            f"render + serialise {args.render_routes:,} routes (best of 3)",
            f"{render_s * 1000:.0f} ms",
            f"< {TARGET_RENDER_S * 1000:.0f} ms",
            "PASS" if render_s < TARGET_RENDER_S else "FAIL",
        ),
        ("  snapshot size / config build time", f"{render_bytes / 1e6:.2f} MB / {build_s:.1f} s", "", ""),
    ]
    widths = [max(len(r[i]) for r in [*rows, ("metric", "result", "target", "")]) for i in range(4)]
    line = "-+-".join("-" * w for w in widths)
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(("metric", "result", "target", ""), widths, strict=True)))
    print(line)
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if args.clients != 50:
        print(f"(the propagation target is set for 50 clients; this run used {args.clients})")
    sys.exit(0)


if __name__ == "__main__":
    main()
