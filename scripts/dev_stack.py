"""Start the whole FLUX stack locally: control plane (SQLite) + one node + a demo upstream and route.

    python scripts/dev_stack.py [--dir .flux-dev] [--port 8080] [--upstream-port 9001]
                                [--http 9080] [--grpc 18000] [--admin 9901]

Everything runs in the foreground; Ctrl-C stops it all. State (database, admin
token, node cache and credentials, logs) lives under --dir, so a second start keeps
the config, all of it: the demo listener, cluster and route are made on the first start
only (config version 0), and a later start leaves whatever the user changed or deleted.
On the first start the node enrols with a one-use join token made here; later starts use
the credentials it keeps.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait(url: str, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(url, timeout=1.0)
            if r.status_code < 500:
                return r
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {url}")
        time.sleep(0.1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=str(ROOT / ".flux-dev"), help="state directory (default .flux-dev)")
    p.add_argument("--port", type=int, default=8080, help="the demo listener's port (default 8080)")
    p.add_argument("--upstream-port", type=int, default=9001, help="the demo upstream's port (default 9001)")
    p.add_argument("--http", type=int, default=9080, help="the control plane's REST port (default 9080)")
    p.add_argument("--grpc", type=int, default=18000, help="the config stream's port (default 18000)")
    p.add_argument("--admin", type=int, default=9901, help="the node's admin port (default 9901)")
    args = p.parse_args()
    state = pathlib.Path(args.dir).resolve()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    first_start = not (state / "data" / "flux.db").exists()
    ports = [args.http, args.grpc, args.admin, args.upstream_port] + ([args.port] if first_start else [])
    busy = [port for port in ports if not _port_free(port)]
    if busy:
        print(f"ports already in use: {busy} (is another stack running?)", file=sys.stderr)
        return 1

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FLUX_ADMIN_TOKEN", None)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(state / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=state)
        procs.append((name, proc))
        return proc

    def stop_all(*_: object) -> None:
        for _name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(0)))
    # Ctrl-C stops everything even where SIGINT came ignored (a background job of a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        spawn("upstream", [sys.executable, str(ROOT / "scripts" / "echo_upstream.py"),
                           "--port", str(args.upstream_port), "--name", "demo"])  # fmt: skip
        spawn("controlplane", [str(BIN / "flux-controlplane"), "--db", f"sqlite:///{state / 'data' / 'flux.db'}",
                               "--data-dir", str(state / "data"), "--http", f"127.0.0.1:{args.http}",
                               "--grpc", f"127.0.0.1:{args.grpc}"])  # fmt: skip
        cp = f"http://127.0.0.1:{args.http}"
        _wait(f"{cp}/healthz")
        token_file = state / "data" / "admin.token"
        token = token_file.read_text().strip()
        api = httpx.Client(base_url=cp, headers={"Authorization": f"Bearer {token}", "X-Flux-Author": "dev-stack"},
                           timeout=10)  # fmt: skip
        version = _seed_demo(api, args.port, args.upstream_port)
        node = [str(BIN / "flux-node"), "--node-id", "dev-node", "--cache-dir", str(state / "cache"),
                "--control-plane", f"127.0.0.1:{args.grpc}", "--admin", f"127.0.0.1:{args.admin}",
                "--access-log", str(state / "logs" / "access.log")]  # fmt: skip
        if not (state / "cache" / "node.crt").exists():  # first start: enrol with a one-use join token
            r = api.post("/api/v1/nodes/join-tokens", json={"group": "default", "ttl": "10m", "uses": 1})
            r.raise_for_status()
            node += ["--join-token", r.json()["token"]]
        spawn("node", node)
        _wait(f"http://127.0.0.1:{args.admin}/ready")
        gateway = _gateway_lines(api)
        server = "" if args.http == 9080 else f"\n  export FLUX_SERVER={cp}"
        print(
            f"""
FLUX Gateway is running (config version {version}).

{gateway}
  control plane REST     {cp}/api/v1   (OpenAPI: {cp}/docs)
  web console            {cp}/ui/      (log in with the admin token)
  config stream (mTLS)   127.0.0.1:{args.grpc}   node credentials in {state / "cache"}/
  node admin             http://127.0.0.1:{args.admin}/ready  /metrics  /clusters  /config_dump
  admin token            {token_file}
  logs                   {state / "logs"}/

Try:
  export FLUX_ADMIN_TOKEN=$(cat {token_file}){server}
  .venv/bin/fluxctl get routes
  .venv/bin/fluxctl nodes
  curl -s -H "Authorization: Bearer $FLUX_ADMIN_TOKEN" {cp}/api/v1
  .venv/bin/fluxctl apply -f examples/policies.yaml     # a route per policy: see the README
  .venv/bin/fluxctl tokens create dashboards --role read    # a token that may only read

Ctrl-C stops everything.""",
            flush=True,
        )
        while True:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see {state / 'logs' / (name + '.log')}")
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    finally:
        stop_all()


def _seed_demo(api: httpx.Client, port: int, upstream_port: int) -> int:
    """The demo listener, cluster and route, made on the first start only (config version 0):
    a later start keeps what the user changed or deleted. Returns the config version."""
    current = api.get("/api/v1/config")
    current.raise_for_status()
    if current.json()["version"] > 0:
        return int(current.json()["version"])
    demo = {
        "listeners": [{"name": "public", "protocol": "http", "address": "127.0.0.1", "port": port}],
        "clusters": [
            {
                "name": "demo",
                "endpoints": [{"address": "127.0.0.1", "port": upstream_port}],
                "health_check": {"type": "http", "path": "/healthz", "interval": "5s"},  # the demo upstream has it
            }
        ],
        "routes": [{"name": "demo", "listener": "public", "path": "/", "cluster": "demo"}],
    }
    r = api.post("/api/v1/apply", json=demo)
    r.raise_for_status()
    return int(r.json()["version"])


def _gateway_lines(api: httpx.Client) -> str:
    """The default group's http listeners as they are now (the user may have changed them)."""
    listeners = api.get("/api/v1/listeners", params={"limit": 1000})
    listeners.raise_for_status()
    lines = []
    for lst in listeners.json()["items"]:
        if lst["protocol"] != "http" or lst["node_group"] != "default":
            continue
        host = "127.0.0.1" if lst["address"] in ("0.0.0.0", "::") else lst["address"]
        url = f"http://{f'[{host}]' if ':' in host else host}:{lst['port']}/"
        if lst.get("mode") == "forward":  # a GET / there is refused (400): say how to use it instead
            lines.append(f"  proxy ({lst['name']})".ljust(25) + f"{url}  (forward proxy: curl -x {url} http://HOST/)")
            continue
        try:
            answer = repr(_wait(url, timeout=10.0).text.strip()[:60])
        except SystemExit:
            answer = "(no answer yet)"
        lines.append(f"  gateway ({lst['name']})".ljust(25) + f"{url}  (bound to {lst['address']})  -> {answer}")
    return "\n".join(lines) or "  gateway                no http listener (fluxctl apply -f examples/gateway.yaml)"


if __name__ == "__main__":
    sys.exit(main())
