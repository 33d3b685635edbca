"""What tracing costs flux-node, measured in one run: off, on with nothing sampled, 10% and 100%.

    .venv/bin/python bench/tracing_cost.py [--duration 8] [--rounds 3]

Starts one upstream (nginx answering 12 bytes), an nginx reverse proxy (the yardstick of
bench/node_vs_nginx.py) and four flux-nodes (1 worker each, from a snapshot file, access log on)
that differ only in their OTEL_* environment:

    off        no OTEL_* variable: tracing is off (`svc.tracer` is None)
    sampled 0  OTEL_TRACES_SAMPLER=always_off: trace context read and sent upstream, no span
    10%        OTEL_TRACES_SAMPLER=traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1
    100%       OTEL_TRACES_SAMPLER=always_on

The traced nodes export OTLP/HTTP to a receiver in this process that decodes and counts the spans,
so the figures include the exporter's thread. wrk drives each in turn, the order rotated every
round; medians of requests/s and p50/p99 are printed with each one's ratio to "off" and to nginx.

Needs nginx and wrk (Debian packages nginx-light, wrk).
"""

from __future__ import annotations

import argparse
import gzip
import os
import pathlib
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from node_vs_nginx import (  # noqa: E402
    NGINX_UPSTREAM,
    Procs,
    compare,
    free_port,
    need,
    start_flux,
    start_nginx,
    wait_http,
    write_snapshot,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

VARIANTS: dict[str, dict[str, str] | None] = {
    "off": None,
    "sampled 0": {"OTEL_TRACES_SAMPLER": "always_off"},
    "10%": {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    "100%": {"OTEL_TRACES_SAMPLER": "always_on"},
}


class SpanCounter:
    """An OTLP/HTTP receiver that decodes each export and counts its spans."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        self._lock = threading.Lock()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                req = ExportTraceServiceRequest.FromString(body)
                n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
                with counter._lock:
                    counter.spans += n
                    counter.exports += 1
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def start_node(procs: Procs, tmp: pathlib.Path, index: int, upstream: int, otel: dict[str, str] | None, collector: str):
    """A one-worker node from a snapshot; `otel` None: no OTEL_* variable at all (tracing off)."""
    port, admin = free_port(), free_port()
    write_snapshot(tmp / f"cache{index}", port, upstream)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if otel is not None:
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_BSP_SCHEDULE_DELAY": "1000", **otel}
    start_flux(procs, tmp, 1, admin, tag=str(index), env=env)
    return port


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    p.add_argument("--connections", type=int, default=64)
    args = p.parse_args()
    nginx = need("nginx", "nginx-light")
    need("wrk", "wrk")
    counter = SpanCounter()
    procs = Procs()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="flux-tracing-bench-"))
    try:
        upstream = free_port()
        (tmp / "upstream.conf").write_text(NGINX_UPSTREAM.format(dir=tmp, port=upstream))
        procs.start([nginx, "-c", str(tmp / "upstream.conf"), "-e", str(tmp / "upstream.err")], tmp / "up.log")
        wait_http(f"http://127.0.0.1:{upstream}/")
        nginx_port = free_port()
        start_nginx(procs, tmp, nginx, 1, nginx_port, upstream, True)
        targets = {"nginx": f"http://127.0.0.1:{nginx_port}/"}
        for index, (name, otel) in enumerate(VARIANTS.items()):
            targets[name] = f"http://127.0.0.1:{start_node(procs, tmp, index, upstream, otel, counter.url)}/"
        print(f"== 1 worker each, {args.connections} connections, {args.rounds} rounds of {args.duration}s", flush=True)
        medians = compare(args, targets)
        base = medians["off"]["rps"]
        print("\n   variant      req/s   p50 ms  p99 ms  of off  of nginx")
        for name, m in medians.items():
            print(f"   {name:9s} {m['rps']:>9,.0f} {m['p50']:7.2f} {m['p99']:7.2f} "
                  f"{m['rps'] / base:7.1%} {m['rps'] / medians['nginx']['rps']:8.1%}")  # fmt: skip
        print(f"\n   spans received: {counter.spans:,} in {counter.exports:,} exports")
        if counter.spans == 0:
            print("   (no span arrived: the traced nodes did not export)")
            return 1
        return 0
    finally:
        procs.stop_all()
        counter.server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
