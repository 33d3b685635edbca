"""What policies cost: one flux-node worker with no policy, with jwt + rate_limit (local),
with rate_limit (redis), and with jwt + rate_limit + cors + ip_acl, side by side in one run.

    .venv/bin/python bench/policy_overhead.py [--duration 6] [--rounds 3]

The node starts from a snapshot file (no control plane) with four routes on one
listener; an nginx upstream answers 12 bytes; wrk sends a valid JWT and an
Origin header on every request. Limits are set far above the offered load so
every request passes: the figures are the cost of checking. Needs nginx, wrk
and the Redis at 127.0.0.1:6379 (for the redis scenario).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import jwt

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from node_vs_nginx import NGINX_UPSTREAM, Procs, free_port, need, start_flux, wait_http, wrk  # noqa: E402

from dataplane.discovery.cache import SnapshotFile  # noqa: E402
from flux.v1 import config_pb2 as pb  # noqa: E402

SECRET = "bench-secret-bench-secret-0123456789"
ORIGIN = "https://app.example.com"


def _policy(name: str, kind: str, config: dict) -> pb.Policy:
    p = pb.Policy(name=name, type=kind)
    p.config.update(config)
    return p


def write_snapshot(cache: pathlib.Path, port: int, upstream: int, redis: str) -> None:
    huge = {"rate": 10_000_000, "per": "1s", "key": "consumer"}
    policies = [
        _policy("jwt", "jwt", {"issuer": "bench"}),
        _policy("rl-local", "rate_limit", {**huge, "algorithm": "token_bucket"}),
        _policy(
            "rl-redis",
            "rate_limit",
            {
                **huge,
                "algorithm": "token_bucket",
                "scope": "redis",
                "redis": redis,
                "key": "ip",
                "prefix": f"flux:bench:{time.time_ns()}",
            },
        ),
        _policy("cors", "cors", {"allow_origins": [ORIGIN]}),
        _policy("acl", "ip_acl", {"allow": ["127.0.0.0/8"]}),
    ]
    routes = {
        "none": [],
        "jwt-rl": ["jwt", "rl-local"],
        "redis": ["rl-redis"],
        "chain": ["jwt", "rl-local", "cors", "acl"],
    }
    snap = pb.Snapshot(
        version="1",
        node_group="default",
        listeners=[pb.Listener(name="bench", protocol=pb.PROTOCOL_HTTP, address="127.0.0.1", port=port)],
        clusters=[pb.Cluster(name="up", endpoints=[pb.Endpoint(address="127.0.0.1", port=upstream, weight=1)])],
        routes=[
            pb.Route(
                name=name,
                listener="bench",
                path=f"/{name}",
                path_type=pb.PATH_TYPE_PREFIX,
                cluster="up",
                policies=names,
            )
            for name, names in routes.items()
        ],
        policies=policies,
        consumers=[
            pb.Consumer(
                name="bench-user",
                credentials=[pb.Credential(type="jwt", issuer="bench", algorithm="HS256", secret=SECRET)],
            )
        ],
    )
    SnapshotFile(cache, "default").save(snap)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = p.parse_args()
    nginx = need("nginx", "nginx-light")
    need("wrk", "wrk")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="flux-policy-bench-"))
    procs = Procs()
    token = jwt.encode({"iss": "bench", "sub": "bench-user", "exp": int(time.time()) + 3600}, SECRET, "HS256")
    headers = ["-H", f"Authorization: Bearer {token}", "-H", f"Origin: {ORIGIN}"]
    try:
        up, port, admin = free_port(), free_port(), free_port()
        (tmp / "upstream.conf").write_text(NGINX_UPSTREAM.format(dir=tmp, port=up))
        procs.start([nginx, "-c", str(tmp / "upstream.conf"), "-e", str(tmp / "upstream.err")], tmp / "up.log")
        wait_http(f"http://127.0.0.1:{up}/")
        write_snapshot(tmp / "cache", port, up, args.redis)
        start_flux(procs, tmp, 1, admin)
        scenarios = ["none", "jwt-rl", "redis", "chain"]
        for name in scenarios:  # warm up (JWT cache, Redis scripts, pools)
            wrk(f"http://127.0.0.1:{port}/{name}", 1, args.connections, headers)
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in scenarios}
        for i in range(args.rounds):
            order = scenarios if i % 2 == 0 else scenarios[::-1]
            for name in order:
                result = wrk(f"http://127.0.0.1:{port}/{name}", args.duration, args.connections, headers)
                runs[name].append(result)
                errors = f"  non-2xx: {result['non2xx']}" if result["non2xx"] else ""
                print(
                    f"   round {i + 1}: {name:7s} {result['rps']:>9,.0f} req/s  p99 {result['p99']:.2f} ms{errors}",
                    flush=True,
                )
        med = {s: statistics.median(r["rps"] for r in rs) for s, rs in runs.items()}
        base = med["none"]
        targets = {"jwt-rl": None, "redis": 50.0, "chain": 70.0}
        print("\n== medians (one worker)")
        print(f"no policy                              {base:>9,.0f} req/s")
        labels = {"jwt-rl": "jwt + rate_limit (local)", "redis": "rate_limit (redis)",
                  "chain": "jwt + rate_limit + cors + ip_acl"}  # fmt: skip
        for name in ("jwt-rl", "redis", "chain"):
            share = med[name] / base * 100
            target = targets[name]
            verdict = "" if target is None else f"  target >= {target:.0f}%: {'PASS' if share >= target else 'FAIL'}"
            print(f"{labels[name]:<38} {med[name]:>9,.0f} req/s  {share:5.1f}% of no policy{verdict}")
        errors = sum(r["non2xx"] for rs in runs.values() for r in rs)
        if errors:
            print(f"warning: {errors:.0f} non-2xx responses (limits should never trigger here)")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
