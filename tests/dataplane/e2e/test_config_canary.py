"""End-to-end: config canaries with two real nodes and traffic flowing.

Both nodes serve one port (SO_REUSEPORT: the kernel spreads the test's connections over
them) and report their request counters over the config stream. `fluxctl apply --canary
50 --bake ...` sends the new version to one node first, keeps the other on the version
before, and then:

- promotes a harmless change once the bake passes (both nodes end on it, exit 0);
- rolls back a change that breaks the route (the canary answers 502, the other node 200):
  exit 3, the reason names the 5xx rate, the other node never ran the bad version, and
  both nodes end on the rollback version;
- rolls back a version the canary NACKs (a port it cannot listen on), at once.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, executable, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("canary")
    up = UpstreamProcess("up").start()
    cp = ControlPlaneProcess(base / "cp").start()
    nodes = [NodeProcess(base / f"n{i}", cp.grpc_addr, node_id=f"canary-{i}") for i in (1, 2)]
    for node in nodes:
        node.start(wait_ready=False)
    port = free_port()
    try:
        yield {"cp": cp, "nodes": nodes, "up": up, "base": base, "port": port}
    finally:
        for node in nodes:
            node.stop()
        cp.stop()
        up.stop()


def fluxctl(cp: ControlPlaneProcess, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "FLUX_SERVER": cp.url, "FLUX_ADMIN_TOKEN": cp.admin_token, "FLUX_TOKEN": ""}
    return subprocess.Popen(
        [executable("fluxctl"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def config(port: int, endpoint: dict[str, Any], header: str = "v1") -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
        "clusters": [{"name": "app", "endpoints": [endpoint], "timeouts": {"connect": "1s"}}],
        "routes": [{"name": "all", "listener": "web", "path": "/", "cluster": "app", "policies": ["tag"]}],
        "policies": [{"name": "tag", "type": "request_rewrite", "config": {"headers": {"set": {"X-Tag": header}}}}],
    }


def get_status(port: int) -> int:
    """GET / on a new connection (the kernel picks the node); the status, 0 on a failure."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: canary.test\r\nConnection: close\r\n\r\n")
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
        return int(head.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return 0


class Traffic:
    """New connections to the shared port until stopped (bounded: 120 s at most)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.statuses.append(get_status(self.port))
            time.sleep(0.002)  # stays: the pace of the background traffic (not a wait)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def converge(stack: dict[str, Any], doc: dict[str, Any]) -> int:
    path = pathlib.Path(stack["base"]) / "base.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = fluxctl(stack["cp"], "apply", "-f", str(path), "--prune")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    version = stack["cp"].version()
    for node in stack["nodes"]:
        node.wait_version(version, 15)
    return version


def rollout_of(output: str) -> str:
    word = next(w for w in output.split() if w.startswith("r-"))
    return word.rstrip(":")


def run_canary(stack: dict[str, Any], doc: dict[str, Any], name: str, *flags: str) -> tuple[int, str, list[str]]:
    """Apply `doc` as a canary while watching both nodes' versions; (exit code, output, versions seen)."""
    path = pathlib.Path(stack["base"]) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = fluxctl(stack["cp"], "apply", "-f", str(path), "--prune", "--canary", "50", *flags)
    seen: list[str] = []
    while proc.poll() is None:
        seen.append(",".join(str(n.version()) for n in stack["nodes"]))
        time.sleep(0.1)  # stays: the sampling pace of the nodes' versions while fluxctl runs (not a wait)
    out = proc.stdout.read() if proc.stdout else ""
    return proc.returncode, out, seen


def test_canary_promotes_a_good_version(stack: dict[str, Any]) -> None:
    cp, up, port = stack["cp"], stack["up"], stack["port"]
    v1 = converge(stack, config(port, up.endpoint()))
    with Traffic(port) as traffic:
        code, out, seen = run_canary(stack, config(port, up.endpoint(), header="v2"), "good", "--bake", "4s")
    assert code == 0, out
    assert "promoted" in out, out
    v2 = v1 + 1
    assert f"{v2},{v1}" in seen or f"{v1},{v2}" in seen, seen  # one canary, the other held back
    for node in stack["nodes"]:
        node.wait_version(v2, 10)
    assert traffic.statuses.count(200) > 20 and set(traffic.statuses) <= {200}, set(traffic.statuses)
    with cp.client() as c:
        rollout = c.get(f"/api/v1/rollouts/{rollout_of(out)}").json()
    assert rollout["status"] == "promoted" and len(rollout["canaries"]) == 1
    assert rollout["analysis"]["outcome"] == "pass", rollout["analysis"]
    listed, _ = fluxctl(cp, "rollouts").communicate(timeout=30)
    assert rollout["id"] in listed and "promoted" in listed, listed
    shown, _ = fluxctl(cp, "rollouts", "get", rollout["id"]).communicate(timeout=30)
    assert f"canaries: {rollout['canaries'][0]}" in shown and "analysis: canaries: 5xx 0.0%" in shown, shown
    assert f"canary): acked v{v2}" in shown and f"released): acked v{v2}" in shown, shown


def test_canary_with_5xx_is_rolled_back(stack: dict[str, Any]) -> None:
    cp, up, port = stack["cp"], stack["up"], stack["port"]
    v1 = converge(stack, config(port, up.endpoint()))
    dead = {"address": "127.0.0.1", "port": free_port(), "weight": 1}  # nothing listens: 502/503
    with Traffic(port) as traffic:
        code, out, seen = run_canary(stack, config(port, dead, header="bad"), "bad", "--bake", "20s")
    assert code == 3, out
    assert "ROLLED BACK" in out and "5xx rate of the canaries" in out, out
    rid = rollout_of(out)
    with cp.client() as c:
        rollout = c.get(f"/api/v1/rollouts/{rid}").json()
    assert rollout["status"] == "rolled_back" and rollout["rollback_version"] == v1 + 2, rollout
    canary = rollout["canaries"][0]
    other = next(n for n in stack["nodes"] if n.node_id != canary)
    index = stack["nodes"].index(other)
    # the other node never ran the bad version, not even while the rollback went out
    assert all(s.split(",")[index] != str(v1 + 1) for s in seen), (" ".join(seen), canary, out)
    for node in stack["nodes"]:
        node.wait_version(v1 + 2, 10)
    assert 200 in traffic.statuses and any(s >= 500 for s in traffic.statuses)
    assert [get_status(port) for _ in range(10)] == [200] * 10


def test_canary_nack_is_rolled_back_at_once(stack: dict[str, Any]) -> None:
    cp, up, port = stack["cp"], stack["up"], stack["port"]
    v1 = converge(stack, config(port, up.endpoint()))
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        doc = config(port, up.endpoint())
        doc["listeners"].append(
            {"name": "taken", "protocol": "http", "address": "127.0.0.1", "port": held.getsockname()[1]}
        )
        started = time.monotonic()
        code, out, _seen = run_canary(stack, doc, "nack", "--bake", "1m")
    finally:
        held.close()
    assert code == 3, out
    assert time.monotonic() - started < 30, "a NACK rolls back without waiting for the bake"
    # the listener is set aside on the canary (per-resource isolation), which counts as a refusal
    assert "could not apply part of version" in out and "listeners/taken" in out, out
    with cp.client() as c:
        assert c.get("/api/v1/config").json()["version"] == v1 + 2
        writes_ok = c.post("/api/v1/apply", json={"routes": []}, params={"dry_run": True})
        assert writes_ok.status_code == 200  # the rollout is over: writes go through again
