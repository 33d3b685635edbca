"""HTTP/2 and gRPC: flux-node against nginx (h2c and h2 with TLS, h2load) and gRPC unary calls
through the node against direct, in the same run.

    .venv/bin/python bench/h2_grpc_bench.py [--requests 40000] [--rounds 3]

- h2load -c 4 -m 20 (4 connections, 20 streams each) against an nginx reverse proxy
  (worker_processes 1, `http2` listeners, upstream keepalive) and a 1-worker flux-node
  (`http2: true` listener, an https listener offering h2), the same plain upstream behind both;
  alternating rounds, medians of requests/s.
- gRPC: a grpcio server (tests/support/grpc_echo.py) called with unary calls from 8 client
  threads, directly and through the node (a `protocol: http2` cluster); calls/s and the ratio.

Needs nginx and h2load (Debian packages nginx-light, nghttp2-client).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from node_vs_nginx import NGINX_UPSTREAM, Procs, free_port, need, wait_http  # noqa: E402

from dataplane.discovery.cache import SnapshotFile  # noqa: E402
from flux.v1 import config_pb2 as pb  # noqa: E402
from fluxcommon.tlsutil import self_signed  # noqa: E402

NGINX_PROXY = """
worker_processes 1;
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy.err warn;
events {{ worker_connections 16384; }}
http {{
  access_log {dir}/nginx-access.log;
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} http2;
    listen 127.0.0.1:{tls_port} ssl http2;
    ssl_certificate {dir}/cert.pem;
    ssl_certificate_key {dir}/key.pem;
    http2_max_concurrent_streams 128;
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def h2load(url: str, requests: int) -> float:
    out = subprocess.run(
        ["h2load", "-n", str(requests), "-c", "4", "-m", "20", url], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded", out)
    if not m or not ok or int(ok.group(1)) < requests * 0.99:
        raise SystemExit(f"h2load against {url} failed:\n{out}")
    return float(m.group(1))


def grpc_calls(target: str, seconds: float, threads: int = 8) -> float:
    import grpc

    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/flux.test.Echo/Unary")
    call(b"warm", timeout=5)
    done = [0] * threads
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        while time.monotonic() < stop:
            call(b"ping", timeout=5)
            done[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    channel.close()
    return sum(done) / (time.monotonic() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=40000, help="h2load requests per run (default 40000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--grpc-seconds", type=float, default=5.0)
    args = p.parse_args()
    nginx = need("nginx", "nginx-light")
    need("h2load", "nghttp2-client")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="flux-bench-h2-"))
    procs = Procs()
    rows: list[str] = []
    try:
        from support.grpc_echo import serve

        cert, key = self_signed("bench.test", ("127.0.0.1",))
        (tmp / "cert.pem").write_text(cert)
        (tmp / "key.pem").write_text(key)
        up, ngx, ngx_tls, flux, flux_tls, admin = (free_port() for _ in range(6))
        (tmp / "upstream.conf").write_text(NGINX_UPSTREAM.format(dir=tmp, port=up))
        procs.start([nginx, "-c", str(tmp / "upstream.conf"), "-e", str(tmp / "upstream.err")], tmp / "up.log")
        wait_http(f"http://127.0.0.1:{up}/")
        (tmp / "proxy.conf").write_text(NGINX_PROXY.format(dir=tmp, upstream=up, port=ngx, tls_port=ngx_tls))
        procs.start([nginx, "-c", str(tmp / "proxy.conf"), "-e", str(tmp / "proxy.err")], tmp / "proxy.log")
        server, grpc_port = serve()
        snap = pb.Snapshot(
            version="1",
            node_group="default",
            certificates=[pb.Certificate(name="bench", cert_pem=cert, key_pem=key)],
            listeners=[
                pb.Listener(name="h2c", protocol=pb.PROTOCOL_HTTP, address="127.0.0.1", port=flux, http2=True),
                pb.Listener(
                    name="tls", protocol=pb.PROTOCOL_HTTPS, address="127.0.0.1", port=flux_tls, certificates=["bench"]
                ),
            ],
            clusters=[
                pb.Cluster(name="upstream", endpoints=[pb.Endpoint(address="127.0.0.1", port=up, weight=1)]),
                pb.Cluster(
                    name="grpc",
                    protocol="http2",
                    endpoints=[pb.Endpoint(address="127.0.0.1", port=grpc_port, weight=1)],
                ),
            ],
            routes=[
                pb.Route(name="grpc", path="/flux.test.Echo/", path_type=pb.PATH_TYPE_PREFIX, cluster="grpc"),
                pb.Route(name="all", path="/", path_type=pb.PATH_TYPE_PREFIX, cluster="upstream"),
            ],
        )
        SnapshotFile(tmp / "cache", "default").save(snap)
        procs.start(
            [
                str(pathlib.Path(sys.executable).parent / "flux-node"),
                "--control-plane", "127.0.0.1:1", "--node-id", "bench", "--cache-dir", str(tmp / "cache"),
                "--admin", f"127.0.0.1:{admin}", "--access-log", str(tmp / "flux-access.log"),
                "--log-level", "warning",
            ],
            tmp / "flux.log",
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{admin}/ready")
        for label, targets in (
            ("h2c", {"flux": f"http://127.0.0.1:{flux}/", "nginx": f"http://127.0.0.1:{ngx}/"}),
            ("h2 (TLS)", {"flux": f"https://127.0.0.1:{flux_tls}/", "nginx": f"https://127.0.0.1:{ngx_tls}/"}),
        ):
            print(f"== {label}: h2load -n {args.requests} -c 4 -m 20")
            runs: dict[str, list[float]] = {"flux": [], "nginx": []}
            for url in targets.values():
                h2load(url, 2000)  # warm up
            for i in range(args.rounds):
                order = list(targets) if i % 2 == 0 else list(targets)[::-1]
                for name in order:
                    rps = h2load(targets[name], args.requests)
                    runs[name].append(rps)
                    print(f"   round {i + 1}: {name:5s} {rps:>9,.0f} req/s", flush=True)
            f, n = statistics.median(runs["flux"]), statistics.median(runs["nginx"])
            rows.append(f"{label}: flux {f:,.0f} req/s | nginx {n:,.0f} req/s | flux/nginx {f / n * 100:.1f}%")
            print(rows[-1])
        print(f"== gRPC unary calls, 8 client threads, {args.grpc_seconds:g} s each")
        direct = grpc_calls(f"127.0.0.1:{grpc_port}", args.grpc_seconds)
        via = grpc_calls(f"127.0.0.1:{flux}", args.grpc_seconds)
        rows.append(f"gRPC unary: through flux {via:,.0f} calls/s | direct {direct:,.0f} calls/s | "
                    f"ratio {via / direct * 100:.1f}%")  # fmt: skip
        print(rows[-1])
        server.stop(0)
    finally:
        procs.stop_all()
    print("\n== summary (medians)")
    for row in rows:
        print(row)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
