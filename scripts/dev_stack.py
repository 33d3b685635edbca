"""Start the whole FLUX stack locally: control plane (SQLite) + one node + a demo upstream and route.

    python scripts/dev_stack.py [--dir .flux-dev] [--port 8080]

Everything runs in the foreground; Ctrl-C stops it all. State (database, admin
token, node cache and credentials, logs) lives under --dir, so a second start keeps
the config. On the first start the node enrols with a one-use join token made here;
later starts use the credentials it keeps.
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
    p.add_argument("--upstream-port", type=int, default=9001)
    args = p.parse_args()
    state = pathlib.Path(args.dir).resolve()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    busy = [port for port in (9080, 18000, 9901, args.port, args.upstream_port) if not _port_free(port)]
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
    try:
        spawn("upstream", [sys.executable, str(ROOT / "scripts" / "echo_upstream.py"),
                           "--port", str(args.upstream_port), "--name", "demo"])  # fmt: skip
        spawn("controlplane", [str(BIN / "flux-controlplane"), "--db", f"sqlite:///{state / 'data' / 'flux.db'}",
                               "--data-dir", str(state / "data")])  # fmt: skip
        _wait("http://127.0.0.1:9080/healthz")
        token_file = state / "data" / "admin.token"
        token = token_file.read_text().strip()
        demo = {
            "listeners": [{"name": "public", "protocol": "http", "address": "127.0.0.1", "port": args.port}],
            "clusters": [
                {
                    "name": "demo",
                    "endpoints": [{"address": "127.0.0.1", "port": args.upstream_port}],
                    "health_check": {"type": "http", "path": "/healthz", "interval": "5s"},
                }
            ],
            "routes": [{"name": "demo", "listener": "public", "path": "/", "cluster": "demo"}],
        }
        r = httpx.post(
            "http://127.0.0.1:9080/api/v1/apply",
            json=demo,
            headers={"Authorization": f"Bearer {token}", "X-Flux-Author": "dev-stack"},
            timeout=10,
        )
        r.raise_for_status()
        version = r.json()["version"]
        node = [str(BIN / "flux-node"), "--node-id", "dev-node", "--cache-dir", str(state / "cache"),
                "--access-log", str(state / "logs" / "access.log")]  # fmt: skip
        if not (state / "cache" / "node.crt").exists():  # first start: enrol with a one-use join token
            r = httpx.post(
                "http://127.0.0.1:9080/api/v1/nodes/join-tokens",
                json={"group": "default", "ttl": "10m", "uses": 1},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            r.raise_for_status()
            node += ["--join-token", r.json()["token"]]
        spawn("node", node)
        _wait("http://127.0.0.1:9901/ready")
        answer = _wait(f"http://127.0.0.1:{args.port}/")
        print(
            f"""
FLUX Gateway is running (config version {version}).

  gateway (demo route)   http://127.0.0.1:{args.port}/         -> {answer.text.strip()!r}
  control plane REST     http://127.0.0.1:9080/api/v1   (OpenAPI: http://127.0.0.1:9080/docs)
  config stream (mTLS)   127.0.0.1:18000   node credentials in {state / "cache"}/
  node admin             http://127.0.0.1:9901/ready  /metrics  /clusters  /config_dump
  admin token            {token_file}
  logs                   {state / "logs"}/

Try:
  export FLUX_ADMIN_TOKEN=$(cat {token_file})
  .venv/bin/fluxctl get routes
  .venv/bin/fluxctl nodes
  curl -s -H "Authorization: Bearer $FLUX_ADMIN_TOKEN" http://127.0.0.1:9080/api/v1/routes
  .venv/bin/fluxctl tokens create dashboards --role read    # a token that may only read
  curl -s http://127.0.0.1:{args.port}/echo

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


if __name__ == "__main__":
    sys.exit(main())
