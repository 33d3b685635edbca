"""HTTPS: flux-node against nginx on the same machine, in the same run, with the same certificate.

    .venv/bin/python bench/https_vs_nginx.py [--duration 8] [--rounds 3]

One upstream (nginx, plain HTTP), an nginx reverse proxy terminating TLS (worker_processes 1,
upstream keepalive, access log on) and flux-node (1 worker, an https listener, access log and
metrics on), both with one ECDSA P-256 certificate. wrk drives them in alternating rounds:

- keep-alive requests/s over TLS (wrk -c64);
- new connections/s: `Connection: close` on every request, so each request is a new TCP
  connection and TLS handshake (wrk resumes sessions where the server offers tickets, as
  browsers do; both servers are measured the same way);
- the plaintext ratio of the same run (flux http vs nginx http) for comparison.

Needs nginx and wrk (Debian packages nginx-light, wrk).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from node_vs_nginx import NGINX_UPSTREAM, Procs, compare, free_port, need, wait_http  # noqa: E402

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
    listen 127.0.0.1:{port} reuseport backlog=4096;
    listen 127.0.0.1:{tls_port} ssl reuseport backlog=4096;
    ssl_certificate {dir}/cert.pem;
    ssl_certificate_key {dir}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
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


def write_snapshot(cache: pathlib.Path, port: int, tls_port: int, upstream: int, cert: str, key: str) -> None:
    route = {"cluster": "upstream", "path": "/", "path_type": pb.PATH_TYPE_PREFIX}
    snap = pb.Snapshot(
        version="1",
        node_group="default",
        certificates=[pb.Certificate(name="bench", cert_pem=cert, key_pem=key)],
        listeners=[
            pb.Listener(name="plain", protocol=pb.PROTOCOL_HTTP, address="127.0.0.1", port=port),
            pb.Listener(
                name="tls", protocol=pb.PROTOCOL_HTTPS, address="127.0.0.1", port=tls_port, certificates=["bench"]
            ),
        ],
        clusters=[
            pb.Cluster(
                name="upstream",
                lb=pb.LB_POLICY_ROUND_ROBIN,
                endpoints=[pb.Endpoint(address="127.0.0.1", port=upstream, weight=1)],
                pool=pb.ConnectionPool(max_connections=1024, max_idle=128, idle_timeout_ms=60_000, max_pending=1024),
            )
        ],
        routes=[pb.Route(name="all", path="/", path_type=route["path_type"], cluster="upstream")],  # type: ignore[arg-type]
    )
    SnapshotFile(cache, "default").save(snap)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported (default 3)")
    p.add_argument("--connections", type=int, default=64)
    args = p.parse_args()
    nginx = need("nginx", "nginx-light")
    need("wrk", "wrk")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="flux-bench-tls-"))
    procs = Procs()
    rows: list[str] = []
    try:
        cert, key = self_signed("bench.test", ("127.0.0.1",))
        (tmp / "cert.pem").write_text(cert)
        (tmp / "key.pem").write_text(key)
        up, ngx_port, ngx_tls, flux_port, flux_tls, admin = (free_port() for _ in range(6))
        (tmp / "upstream.conf").write_text(NGINX_UPSTREAM.format(dir=tmp, port=up))
        procs.start([nginx, "-c", str(tmp / "upstream.conf"), "-e", str(tmp / "upstream.err")], tmp / "up.log")
        wait_http(f"http://127.0.0.1:{up}/")
        (tmp / "proxy.conf").write_text(NGINX_PROXY.format(dir=tmp, upstream=up, port=ngx_port, tls_port=ngx_tls))
        procs.start([nginx, "-c", str(tmp / "proxy.conf"), "-e", str(tmp / "proxy.err")], tmp / "proxy.log")
        wait_http(f"http://127.0.0.1:{ngx_port}/")
        write_snapshot(tmp / "cache", flux_port, flux_tls, up, cert, key)
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
        print(f"== plaintext, keep-alive (wrk -t2 -c{args.connections} -d{args.duration}s)")
        plain = compare(args, {"flux": f"http://127.0.0.1:{flux_port}/", "nginx": f"http://127.0.0.1:{ngx_port}/"})
        rows.append(_row("http keep-alive", plain))
        print(rows[-1])
        print("== HTTPS, keep-alive")
        tls = compare(args, {"flux": f"https://127.0.0.1:{flux_tls}/", "nginx": f"https://127.0.0.1:{ngx_tls}/"})
        rows.append(_row("https keep-alive", tls))
        print(rows[-1])
        print("== HTTPS, a new connection (and TLS handshake) per request")
        args_close = argparse.Namespace(**{**vars(args), "connections": 16})
        handshakes = compare(
            args_close,
            {"flux": f"https://127.0.0.1:{flux_tls}/", "nginx": f"https://127.0.0.1:{ngx_tls}/"},
            extra=["-H", "Connection: close"],
        )
        rows.append(_row("https new connections", handshakes))
        print(rows[-1])
    finally:
        procs.stop_all()
    print("\n== summary (medians)")
    for row in rows:
        print(row)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _row(label: str, med: dict[str, dict[str, float]]) -> str:
    f, n = med["flux"], med["nginx"]
    return (
        f"{label}: flux {f['rps']:,.0f}/s (p99 {f['p99']:.2f} ms) | nginx {n['rps']:,.0f}/s "
        f"(p99 {n['p99']:.2f} ms) | flux/nginx {f['rps'] / n['rps'] * 100:.1f}%"
    )


if __name__ == "__main__":
    sys.exit(main())
