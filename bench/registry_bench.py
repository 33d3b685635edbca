"""Service registry benchmark of the control plane.

    .venv/bin/python bench/registry_bench.py [--db sqlite|mysql] [--services 1000] [--instances 10]
                                              [--concurrency 32] [--seconds 10]

Starts `flux-controlplane` as a child process (SQLite in a temp dir, or a fresh database
on the MariaDB server at 127.0.0.1:3306), then drives its REST API from this process with
its own small HTTP/1.1 load generator (keep-alive connections, one request in flight per
connection; httpx costs more CPU per request than the control plane does, and both share
the machine):

1. registration: services x instances `POST /api/v1/services/{name}/instances`
   (ephemeral, ttl 60s) over `--concurrency` connections: registrations/s.
2. heartbeats: `PUT .../instances/{id}/heartbeat` round-robin over every instance for
   `--seconds` seconds, as fast as the control plane answers: heartbeats/s sustained,
   latency percentiles, errors, and the heartbeat times the once-a-second batched flush
   wrote (one per instance per flush, from /metrics).
3. a check that no instance expired and the registry index did not move during the
   heartbeat phase (heartbeats must not bump it).

Prints a table with PASS/FAIL against the target (2,000 heartbeats/s on MariaDB; the
same figure is shown for SQLite) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.processes import ControlPlaneProcess, mariadb_database, mariadb_unreachable  # noqa: E402

TARGET_HEARTBEATS = 2000.0


# -- a minimal HTTP/1.1 client ---------------------------------------------------------------


class Conn:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Length: {len(body)}\r\n"
            + ("Content-Type: application/json\r\n" if body else "")
            + "\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


@dataclass
class Phase:
    name: str
    done: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p / 100 * len(data)))] * 1000


def instance_keys(services: int, instances: int) -> list[tuple[str, int]]:
    return [(f"svc-{s:04d}", i) for s in range(services) for i in range(instances)]


async def register_all(cp: ControlPlaneProcess, keys: list[tuple[str, int]], concurrency: int) -> Phase:
    phase = Phase("registration")
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for k in keys:
        queue.put_nowait(k)

    async def worker() -> None:
        conn = Conn(cp.host, cp.http_port, cp.token)
        try:
            while not queue.empty():
                svc, i = queue.get_nowait()
                body = json.dumps(
                    {
                        "address": f"10.{i}.{int(svc[4:]) // 250}.{int(svc[4:]) % 250 + 1}",
                        "port": 8000 + i,
                        "version": "v1",
                        "zone": f"z{i % 3}",
                        "tags": ["bench"],
                        "ttl": "60s",
                    }
                ).encode()
                t0 = time.perf_counter()
                status, payload = await conn.request("POST", f"/api/v1/services/{svc}/instances", body)
                phase.latencies.append(time.perf_counter() - t0)
                if status in (200, 201):
                    phase.done += 1
                else:
                    phase.errors += 1
                    phase.first_error = phase.first_error or f"{status} {payload[:200]!r}"
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - t0
    return phase


async def heartbeat_loop(cp: ControlPlaneProcess, paths: list[str], concurrency: int, seconds: float) -> Phase:
    phase = Phase("heartbeats")
    deadline = time.perf_counter() + seconds
    cursor = 0

    async def worker() -> None:
        nonlocal cursor
        conn = Conn(cp.host, cp.http_port, cp.token)
        try:
            while time.perf_counter() < deadline:
                path = paths[cursor % len(paths)]
                cursor += 1
                t0 = time.perf_counter()
                status, payload = await conn.request("PUT", path)
                phase.latencies.append(time.perf_counter() - t0)
                if status == 200:
                    phase.done += 1
                else:
                    phase.errors += 1
                    phase.first_error = phase.first_error or f"{status} {payload[:200]!r}"
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - t0
    return phase


def metric(cp: ControlPlaneProcess, name: str) -> float:
    import httpx

    text = httpx.get(f"{cp.url}/metrics", timeout=10).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def cpu_seconds(pid: int) -> float:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


@contextlib.contextmanager
def database(kind: str) -> Iterator[str | None]:
    if kind == "sqlite":
        yield None
        return
    reason = mariadb_unreachable()
    if reason:
        raise SystemExit(reason)
    with mariadb_database("flux_bench_") as url:
        yield url


async def run(args: argparse.Namespace) -> int:
    keys = instance_keys(args.services, args.instances)
    with tempfile.TemporaryDirectory(prefix="flux-regbench-") as tmp, database(args.db) as url:
        cp = ControlPlaneProcess(pathlib.Path(tmp) / "cp", url, extra_args=("--log-level", "warning"))
        with cp:
            reg = await register_all(cp, keys, args.concurrency)
            index_before = metric(cp, "flux_registry_index")
            flushed_before = metric(cp, "flux_registry_heartbeats_flushed_total")
            paths = [f"/api/v1/services/{svc}/instances/{_iid(svc, i)}/heartbeat" for svc, i in keys]
            cpu0 = cpu_seconds(cp.pid)
            hb = await heartbeat_loop(cp, paths, args.concurrency, args.seconds)
            cpu = cpu_seconds(cp.pid) - cpu0
            await asyncio.sleep(1.5)  # one more flush
            flushed = metric(cp, "flux_registry_heartbeats_flushed_total") - flushed_before
            index_after = metric(cp, "flux_registry_index")
            expired = metric(cp, "flux_registry_expirations_total")
            instances = metric_sum(cp, "flux_registry_instances")
    print_report(args, reg, hb, flushed, index_before, index_after, expired, instances, cpu)
    return 0


def _iid(svc: str, i: int) -> str:
    n = int(svc[4:])
    return f"10.{i}.{n // 250}.{n % 250 + 1}:{8000 + i}"


def metric_sum(cp: ControlPlaneProcess, name: str) -> float:
    import httpx

    text = httpx.get(f"{cp.url}/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def print_report(
    args: argparse.Namespace,
    reg: Phase,
    hb: Phase,
    flushed: float,
    index_before: float,
    index_after: float,
    expired: float,
    instances: float,
    cpu: float,
) -> None:
    total = args.services * args.instances
    db = "MariaDB" if args.db == "mysql" else "SQLite"
    print()
    print(f"FLUX registry benchmark ({db}; {args.services} services x {args.instances} instances = {total}; "
          f"{args.concurrency} connections; {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs)")  # fmt: skip
    print()
    rows = [
        ("phase", "done", "errors", "seconds", "rate/s", "p50 ms", "p99 ms"),
        *[
            (p.name, str(p.done), str(p.errors), f"{p.seconds:.2f}", f"{p.rate:,.0f}", f"{p.pct(50):.1f}",
             f"{p.pct(99):.1f}")
            for p in (reg, hb)
        ],
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print()
    print(f"  instances registered at the end: {instances:.0f} of {total}; expired: {expired:.0f}")
    print(f"  heartbeat times written by the batched flush (one per instance a flush): {flushed:.0f}"
          f" for {hb.done} heartbeats received")  # fmt: skip
    print(f"  registry index during heartbeats: {index_before:.0f} -> {index_after:.0f} (heartbeats bump nothing)")
    if hb.seconds:
        print(f"  control plane CPU during heartbeats: {cpu / hb.seconds * 100:.0f}% of one core")
    for p in (reg, hb):
        if p.first_error:
            print(f"  first {p.name} error: {p.first_error}")
    print()
    ok = hb.rate >= TARGET_HEARTBEATS and hb.errors == 0
    target = f"{TARGET_HEARTBEATS:,.0f} heartbeats/s on MariaDB"
    if args.db == "mysql":
        print(f"  target {target}: {hb.rate:,.0f}/s  {'PASS' if ok else 'FAIL'}")
    else:
        print(f"  target {target} (shown for SQLite): {hb.rate:,.0f}/s  {'PASS' if ok else 'FAIL'}")
    print(f"  registration: {reg.rate:,.0f}/s ({reg.errors} errors)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "mysql"], default="sqlite")
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--instances", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
