"""flux-node against nginx on the same machine, in the same run.

    .venv/bin/python bench/node_vs_nginx.py [--duration 8] [--rounds 3]

Starts one upstream (nginx answering 12 bytes, one worker), an nginx reverse
proxy (worker_processes 1, upstream keepalive, access log on) and flux-node (1
worker, started from a snapshot file: routing, JSON access log and metrics on),
then drives both with the same wrk settings, alternating flux and nginx each
round, and prints medians of requests/s and p50/p99 latency with the ratio.
Then the same with 2 workers each, the latency of flux at 50% of its own
maximum (hey, fixed rate), and the memory of a node holding 10,000 idle
keep-alive client connections.

With --baseline-src DIR (a checkout of an earlier commit, e.g. made with
`git worktree add /tmp/flux-base <commit>`), a second flux-node started from
that source tree joins the 1-worker rounds, so the cost of a change is
measured before and after in the same run on the same machine.

Needs nginx, wrk and hey (Debian packages nginx-light, wrk, hey).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataplane.discovery.cache import SnapshotFile  # noqa: E402
from flux.v1 import config_pb2 as pb  # noqa: E402

NGINX_UPSTREAM = """
worker_processes 1;
daemon off;
pid {dir}/upstream.pid;
error_log {dir}/upstream.err warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    keepalive_requests 1000000;
    location / {{ return 200 "hello world\\n"; }}
  }}
}}
"""

NGINX_PROXY = """
worker_processes {workers};
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy.err warn;
events {{ worker_connections 16384; }}
http {{
  access_log {access};
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if not path:
        sys.exit(f"{tool} is not installed: apt-get install {package}")
    return path


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        cmd: list[str],
        log: pathlib.Path,
        env: dict[str, str] | None = None,
        cwd: pathlib.Path | None = None,
    ) -> subprocess.Popen[bytes]:
        fh = open(log, "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        fh.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def wrk(url: str, duration: int, connections: int, extra: list[str] | None = None) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", *(extra or []), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)  # type: ignore[union-attr]
        lat[pct] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": float(errors.group(1)) if errors else 0.0}


def write_snapshot(cache: pathlib.Path, port: int, upstream: int) -> None:
    snap = pb.Snapshot(
        version="1",
        node_group="default",
        listeners=[pb.Listener(name="bench", protocol=pb.PROTOCOL_HTTP, address="127.0.0.1", port=port)],
        clusters=[
            pb.Cluster(
                name="upstream",
                lb=pb.LB_POLICY_ROUND_ROBIN,
                endpoints=[pb.Endpoint(address="127.0.0.1", port=upstream, weight=1)],
                pool=pb.ConnectionPool(max_connections=1024, max_idle=128, idle_timeout_ms=60_000, max_pending=1024),
            )
        ],
        routes=[pb.Route(name="bench", listener="bench", path="/", path_type=pb.PATH_TYPE_PREFIX, cluster="upstream")],
    )
    SnapshotFile(cache, "default").save(snap)


def start_flux(
    procs: Procs,
    tmp: pathlib.Path,
    workers: int,
    admin: int,
    *,
    src: pathlib.Path | None = None,
    tag: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """flux-node of this checkout, or (`src`) of another source tree run with the same Python;
    `env`: its whole environment (default: this process's)."""
    node = [sys.executable, "-m", "dataplane.main"] if src else [str(pathlib.Path(sys.executable).parent / "flux-node")]
    cmd = [
        *node,
        "--control-plane", "127.0.0.1:1",  # nobody: the node serves its cached snapshot
        "--node-id", "bench",
        "--cache-dir", str(tmp / f"cache{tag}"),
        "--admin", f"127.0.0.1:{admin}",
        "--access-log", str(tmp / f"flux{tag}-access.log"),
        "--workers", str(workers),
        "--log-level", "warning",
    ]  # fmt: skip
    if src:
        env = {**(env or os.environ), "PYTHONPATH": str(src)}
    proc = procs.start(cmd, tmp / f"flux{tag}-{workers}.log", env=env, cwd=src)
    wait_http(f"http://127.0.0.1:{admin}/ready")
    return proc


def start_nginx(procs: Procs, tmp: pathlib.Path, nginx: str, workers: int, port: int, upstream: int, log: bool):
    conf = tmp / f"proxy-{workers}.conf"
    access = str(tmp / "nginx-access.log") if log else "off"
    conf.write_text(NGINX_PROXY.format(dir=tmp, workers=workers, port=port, upstream=upstream, access=access))
    proc = procs.start([nginx, "-c", str(conf), "-e", str(tmp / "proxy.err")], tmp / "nginx-proxy.log")
    wait_http(f"http://127.0.0.1:{port}/")
    return proc


def compare(
    args: argparse.Namespace, targets: dict[str, str], extra: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Medians per target name; the targets take turns, in an order rotated every round."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for url in targets.values():
        wrk(url, 2, args.connections, extra)  # warm up pools and caches
    names = list(targets)
    for i in range(args.rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            result = wrk(targets[name], args.duration, args.connections, extra)
            runs[name].append(result)
            print(f"   round {i + 1}: {name:9s} {result['rps']:>9,.0f} req/s  p50 {result['p50']:.2f} ms  "
                  f"p99 {result['p99']:.2f} ms", flush=True)  # fmt: skip
    return {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}


def hey_latency(url: str, rate: float, duration: int) -> dict[str, float]:
    workers = 16
    out = subprocess.run(
        ["hey", "-z", f"{duration}s", "-c", str(workers), "-q", f"{rate / workers:.1f}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        m = re.search(rf"{pct}%+ in ([\d.]+) secs", out)
        result[pct] = float(m.group(1)) * 1000 if m else float("nan")
    return result


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_connections(port: int, pid: int, count: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 4096), hard))
    before = rss_kib(pid)
    socks = []
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        for _ in range(count):  # one request each, answered, then the connection idles (keep-alive)
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(10)
            s.sendall(request)
            data = b""
            while not data.endswith(b"hello world\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit(f"connection {len(socks)} closed early: {data[:200]!r}")
                data += chunk
            socks.append(s)
        time.sleep(1.0)
        after = rss_kib(pid)
    finally:
        for s in socks:
            s.close()
    return before, after


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported (default 3)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--nginx-access-log", choices=["on", "off"], default="on")
    p.add_argument("--skip-workers", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-idle", action="store_true")
    p.add_argument("--idle", type=int, default=10_000, help="idle keep-alive connections to hold (default 10000)")
    p.add_argument(
        "--baseline-src",
        type=pathlib.Path,
        default=None,
        help="another source tree (an earlier commit) whose flux-node joins the 1-worker rounds",
    )
    args = p.parse_args()
    nginx = need("nginx", "nginx-light")
    need("wrk", "wrk")
    if not args.skip_latency:
        need("hey", "hey")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="flux-bench-"))
    procs = Procs()
    rows: list[str] = []
    try:
        up_port, nginx_port, flux_port, admin = free_port(), free_port(), free_port(), free_port()
        (tmp / "upstream.conf").write_text(NGINX_UPSTREAM.format(dir=tmp, port=up_port))
        procs.start([nginx, "-c", str(tmp / "upstream.conf"), "-e", str(tmp / "upstream.err")], tmp / "up.log")
        wait_http(f"http://127.0.0.1:{up_port}/")
        write_snapshot(tmp / "cache", flux_port, up_port)
        log_on = args.nginx_access_log == "on"
        flux_url, nginx_url = f"http://127.0.0.1:{flux_port}/", f"http://127.0.0.1:{nginx_port}/"

        print(f"== 1 flux-node worker vs nginx worker_processes 1 (wrk -t2 -c{args.connections} -d{args.duration}s)")
        flux = start_flux(procs, tmp, 1, admin)
        ngx = start_nginx(procs, tmp, nginx, 1, nginx_port, up_port, log_on)
        targets = {"flux": flux_url, "nginx": nginx_url}
        base = None
        if args.baseline_src is not None:
            base_port, base_admin = free_port(), free_port()
            write_snapshot(tmp / "cache-base", base_port, up_port)
            base = start_flux(procs, tmp, 1, base_admin, src=args.baseline_src.resolve(), tag="-base")
            targets["baseline"] = f"http://127.0.0.1:{base_port}/"
        med = compare(args, targets)
        f1, n1 = med["flux"], med["nginx"]
        rows.append(_row("1 worker", f1, n1))
        print(rows[-1])
        if base is not None:
            b1 = med["baseline"]
            rows.append(
                f"this checkout vs baseline ({args.baseline_src}): {f1['rps']:,.0f} vs {b1['rps']:,.0f} req/s = "
                f"{f1['rps'] / b1['rps'] * 100:.1f}% (baseline/nginx {b1['rps'] / n1['rps'] * 100:.1f}%)"
            )
            print(rows[-1])
            procs.stop(base)

        if not args.skip_latency:
            rate = f1["rps"] * 0.5
            print(f"== latency of flux at 50% of its own maximum ({rate:,.0f} req/s, hey -c 16)")
            lat = hey_latency(flux_url, rate, args.duration)
            rows.append(
                f"flux at {lat['rps']:,.0f} req/s (50% of max): p50 {lat['50']:.2f} ms, p99 {lat['99']:.2f} ms "
                f"(target p99 < 5 ms: {'PASS' if lat['99'] < 5 else 'FAIL'})"
            )
            print(rows[-1])

        if not args.skip_idle:
            print(f"== memory with {args.idle:,} idle keep-alive client connections")
            before, after = idle_connections(flux_port, flux.pid, args.idle)
            grown = (after - before) / 1024
            rows.append(
                f"{args.idle:,} idle connections: node RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB "
                f"(+{grown:.0f} MiB; target < 300 MiB: {'PASS' if after / 1024 < 300 else 'FAIL'})"
            )
            print(rows[-1])
        procs.stop(flux)
        procs.stop(ngx)

        if not args.skip_workers:
            print("== 2 flux-node workers vs nginx worker_processes 2")
            flux = start_flux(procs, tmp, 2, admin)
            ngx = start_nginx(procs, tmp, nginx, 2, nginx_port, up_port, log_on)
            med = compare(args, {"flux": flux_url, "nginx": nginx_url})
            f2, n2 = med["flux"], med["nginx"]
            rows.append(_row("2 workers", f2, n2) + f"; flux scaling x{f2['rps'] / f1['rps']:.2f}")
            print(rows[-1])
            procs.stop(flux)
            procs.stop(ngx)
    finally:
        procs.stop_all()
    print("\n== summary (medians)")
    for row in rows:
        print(row)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _row(label: str, flux: dict[str, float], nginx: dict[str, float]) -> str:
    ratio = flux["rps"] / nginx["rps"] * 100
    verdict = "target >= 30%: " + ("PASS" if ratio >= 30 else "FAIL") + ("" if ratio >= 20 else " (below 20%)")
    return (
        f"{label}: flux {flux['rps']:,.0f} req/s (p50 {flux['p50']:.2f} ms, p99 {flux['p99']:.2f} ms) | "
        f"nginx {nginx['rps']:,.0f} req/s (p50 {nginx['p50']:.2f} ms, p99 {nginx['p99']:.2f} ms) | "
        f"flux/nginx {ratio:.1f}% ({verdict})"
    )


if __name__ == "__main__":
    sys.exit(main())
