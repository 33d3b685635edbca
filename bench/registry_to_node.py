"""Registry-to-node propagation benchmark: from an instance change to every node serving it.

    .venv/bin/python bench/registry_to_node.py [--nodes 3] [--changes 50] [--polls 50]
                                               [--db sqlite|mysql|URL] [--instances 5]

1. Starts `flux-controlplane` as a child process (SQLite in a temp dir; `--db mysql` makes a
   fresh database on the MariaDB server at 127.0.0.1:3306 and drops it after, any other
   value is used as the SQLAlchemy URL, e.g. mysql+pymysql://root@127.0.0.1:3306/test) and
   N `flux-node` processes, registers `--instances` instances of one service over REST and
   applies a listener, a route and a cluster with `service: bench` through REST.
2. Makes K instance changes over REST, one at a time, cycling through register a new
   instance, change an instance's weight, and deregister an instance. For each it measures
   the time from sending the REST request to the moment the LAST node's admin `/clusters`
   shows the change (every node's `/clusters` is polled back to back from this process,
   so the figures include up to one poll round trip, about 1 ms).
3. Long-poll wake-up: P times, a blocking query `GET .../instances?index=N&wait=10s` is
   left waiting, then an instance's weight is changed; measures the time from sending the
   change to the long-poll's answer (and from the change's own answer).

Prints a table with PASS/FAIL against the targets (change -> every node < 1 s at p99;
long-poll wake-up < 100 ms at p99) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.node import NodeProcess  # noqa: E402
from support.processes import ControlPlaneProcess, free_port, mariadb_database, mariadb_unreachable  # noqa: E402

TARGET_NODE_S = 1.0
TARGET_POLL_MS = 100.0
SERVICE = "bench"
BASE_PORT = 20000  # instance ports: nothing listens there, the nodes only list them

Check = Callable[[dict[str, dict[str, Any]]], bool]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@contextlib.contextmanager
def database(db: str, workdir: pathlib.Path) -> Iterator[str]:
    if db == "sqlite":
        yield f"sqlite:///{workdir / 'flux.db'}"
    elif db == "mysql":
        reason = mariadb_unreachable()
        if reason:
            raise SystemExit(reason)
        with mariadb_database("flux_bench_") as url:
            yield url
    else:
        yield db


# -- watching the nodes ----------------------------------------------------------------------


async def endpoints(client: httpx.AsyncClient, admin: str) -> dict[str, dict[str, Any]]:
    r = await client.get(f"{admin}/clusters")
    for cluster in r.json()["clusters"]:
        if cluster["name"] == SERVICE:
            return {e["key"]: e for e in cluster["endpoints"]}
    return {}


async def wait_node(client: httpx.AsyncClient, admin: str, check: Check, limit_s: float) -> float:
    """perf_counter() of the first poll of `admin`/clusters that passes `check`."""
    deadline = time.perf_counter() + limit_s
    while True:
        try:
            eps = await endpoints(client, admin)
        except httpx.TransportError:  # the node's admin port is not open yet (a node still starting)
            if time.perf_counter() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        now = time.perf_counter()
        if check(eps):
            return now
        if now > deadline:
            raise TimeoutError(f"{admin} did not show the change within {limit_s}s: {sorted(eps)}")
        await asyncio.sleep(0)


async def wait_all(client: httpx.AsyncClient, nodes: list[NodeProcess], check: Check, limit_s: float = 10) -> float:
    """perf_counter() at which the last node showed the change."""
    return max(await asyncio.gather(*(wait_node(client, n.admin, check, limit_s) for n in nodes)))


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Result:
    node_ms: dict[str, list[float]]  # kind of change -> latencies
    write_ms: list[float]
    poll_ms: list[float]  # change sent -> long-poll answered
    poll_after_write_ms: list[float]  # change answered -> long-poll answered (negative: before)
    pushes: list[int]
    setup_s: float


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    """The response and the perf_counter() at which it arrived."""
    r = await request
    return r, time.perf_counter()


def key(port: int) -> str:
    return f"127.0.0.1:{port}"


async def run(cp: ControlPlaneProcess, nodes: list[NodeProcess], args: argparse.Namespace) -> Result:
    headers = {"Authorization": f"Bearer {cp.token}"}
    instances = f"/api/v1/services/{SERVICE}/instances"
    async with (
        httpx.AsyncClient(base_url=cp.url, headers=headers, timeout=30) as api,
        httpx.AsyncClient(timeout=10) as admin,
    ):
        t0 = time.perf_counter()
        live = {BASE_PORT + i: 1 for i in range(args.instances)}  # port -> weight
        for port in live:
            r = await api.post(instances, json={"address": "127.0.0.1", "port": port, "ephemeral": False})
            r.raise_for_status()
        doc = {
            "listeners": [{"name": "bench", "protocol": "http", "address": "127.0.0.1", "port": free_port()}],
            "clusters": [{"name": SERVICE, "service": SERVICE}],
            "routes": [{"name": "bench", "listener": "bench", "cluster": SERVICE, "path": "/"}],
        }
        (await api.post("/api/v1/apply", json=doc, params={"prune": True})).raise_for_status()
        await wait_all(admin, nodes, lambda eps: set(eps) == {key(p) for p in live}, 30)
        setup_s = time.perf_counter() - t0
        before = [(await admin.get(f"{n.admin}/stats")).json()["discovery"]["snapshots_received"] for n in nodes]

        node_ms: dict[str, list[float]] = {"register": [], "weight": [], "deregister": []}
        write_ms: list[float] = []
        next_port = BASE_PORT + args.instances
        for i in range(args.changes):
            kind = ("register", "weight", "deregister")[i % 3]
            if kind == "register":
                port, next_port = next_port, next_port + 1
                live[port] = 1
                send = api.post(instances, json={"address": "127.0.0.1", "port": port, "ephemeral": False})
                check: Check = lambda eps, p=port: key(p) in eps  # noqa: E731
            elif kind == "weight":
                port = min(live)
                live[port] = live[port] % 50 + 2
                send = api.patch(f"{instances}/{key(port)}", json={"weight": live[port]})
                check = lambda eps, p=port, w=live[port]: eps.get(key(p), {}).get("weight") == w  # noqa: E731
            else:
                port = min(live)
                del live[port]
                send = api.delete(f"{instances}/{key(port)}")
                check = lambda eps, p=port: key(p) not in eps  # noqa: E731
            sent = time.perf_counter()
            r = await send
            write_ms.append((time.perf_counter() - sent) * 1000)
            r.raise_for_status()
            reached = await wait_all(admin, nodes, check)
            node_ms[kind].append((reached - sent) * 1000)
            await asyncio.sleep(0.02)
        after = [(await admin.get(f"{n.admin}/stats")).json()["discovery"]["snapshots_received"] for n in nodes]

        poll_ms: list[float] = []
        poll_after_write_ms: list[float] = []
        port = min(live)
        index = int((await api.get(instances)).headers["x-flux-index"])
        for i in range(args.polls):
            waiting = asyncio.create_task(api.get(instances, params={"index": index, "wait": "10s"}))
            await asyncio.sleep(0.05)  # the blocking query is parked on the control plane
            assert not waiting.done(), "the long-poll answered before any change"
            sent = time.perf_counter()
            write = asyncio.create_task(timed(api.patch(f"{instances}/{key(port)}", json={"weight": 2 + i % 40})))
            answer = await waiting
            woke = time.perf_counter()
            r, written = await write
            r.raise_for_status()
            index = int(answer.headers["x-flux-index"])
            assert index == int(r.headers["x-flux-index"]), (index, r.headers["x-flux-index"])
            poll_ms.append((woke - sent) * 1000)
            poll_after_write_ms.append((woke - written) * 1000)
    pushes = [a - b for a, b in zip(after, before, strict=True)]
    return Result(node_ms, write_ms, poll_ms, poll_after_write_ms, pushes, setup_s)


# -- report ----------------------------------------------------------------------------------


def row(name: str, values: list[float], target: float | None = None, unit: str = "ms") -> tuple[str, str, str, str]:
    p50, p95, p99, top = (percentile(values, 50), percentile(values, 95), percentile(values, 99), max(values))
    text = f"p50 {p50:.1f} / p95 {p95:.1f} / p99 {p99:.1f} / max {top:.1f} {unit}"
    if target is None:
        return (name, text, "", "")
    return (name, text, f"p99 < {target:.0f} {unit}", "PASS" if p99 < target else "FAIL")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--changes", type=int, default=50, help="instance changes (register / weight / deregister)")
    p.add_argument("--polls", type=int, default=50, help="long-poll wake-up samples")
    p.add_argument("--instances", type=int, default=5, help="instances registered before the changes")
    p.add_argument("--db", default="sqlite", help="sqlite (default), mysql (fresh MariaDB database) or a URL")
    args = p.parse_args()

    db_label = "SQLite" if args.db == "sqlite" else "MariaDB" if args.db == "mysql" else args.db
    print(f"FLUX registry -> node benchmark: {args.nodes} nodes, {args.changes} changes, {args.polls} long-polls, "
          f"db={db_label}")  # fmt: skip
    print(f"host: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp, database(args.db, pathlib.Path(tmp)) as url:
        base = pathlib.Path(tmp)
        cp = ControlPlaneProcess(base / "cp", url, extra_args=("--log-level", "warning"))
        cp.start()
        nodes = [
            NodeProcess(
                base / f"n{i}",
                cp.grpc_addr,
                node_id=f"bench-node-{i}",
                extra_args=("--log-level", "warning", "--access-log", "off"),
            )
            for i in range(args.nodes)
        ]
        try:
            for node in nodes:
                node.start(wait_ready=False)
            res = asyncio.run(run(cp, nodes, args))
        finally:
            for node in nodes:
                node.stop()
            cp.stop()

    every = [x for values in res.node_ms.values() for x in values]
    rows = [
        ("setup (register, apply, all nodes serving)", f"{res.setup_s * 1000:.0f} ms", "", ""),
        row("REST write (request -> response)", res.write_ms),
        *(row(f"  change -> every node: {kind} ({len(v)})", v) for kind, v in res.node_ms.items() if v),
        row(f"change -> every node ({len(every)} changes, {args.nodes} nodes)", every, TARGET_NODE_S * 1000),
        ("snapshots pushed per node (min / max)", f"{min(res.pushes)} / {max(res.pushes)}", f"<= {args.changes}", ""),
        row(f"long-poll wake-up after change sent ({len(res.poll_ms)})", res.poll_ms, TARGET_POLL_MS),
        row("  long-poll answer, after the change's own answer", res.poll_after_write_ms),
    ]
    widths = [max(len(r[i]) for r in [*rows, ("metric", "result", "target", "")]) for i in range(4)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(("metric", "result", "target", ""), widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    sys.exit(0)


if __name__ == "__main__":
    main()
