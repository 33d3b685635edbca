"""End-to-end: a config canary across two control planes on one MariaDB database.

node-1 streams from control plane A, node-2 from B (each also lists the other for fail-over).
A canary applied through A pins the held node on whichever control plane serves it; A is then
killed in the middle of the bake, and B takes the rollout over once A's lease runs out and
promotes it. Traffic flows through both nodes all along.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, free_port, mariadb_database, mariadb_unreachable, wait_until

pytestmark = [pytest.mark.mysql, pytest.mark.slow]


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = mariadb_unreachable()
    if reason:
        pytest.skip(reason)
    up = UpstreamProcess("up").start()
    with mariadb_database() as url:
        a = ControlPlaneProcess(tmp_path_factory.mktemp("cp-a"), url, token="ha-canary", cp_id="cp-a").start()
        b = ControlPlaneProcess(tmp_path_factory.mktemp("cp-b"), url, token="ha-canary", cp_id="cp-b").start()
        nodes = [
            NodeProcess(tmp_path_factory.mktemp("n1"), f"{a.grpc_addr},{b.grpc_addr}", node_id="ha-1"),
            NodeProcess(tmp_path_factory.mktemp("n2"), f"{b.grpc_addr},{a.grpc_addr}", node_id="ha-2"),
        ]
        try:
            yield {"a": a, "b": b, "nodes": nodes, "up": up}
        finally:
            for node in nodes:
                node.stop()
            a.stop()
            b.stop()
            up.stop()


def config(port: int, up: UpstreamProcess, tag: str) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
        "clusters": [{"name": "app", "endpoints": [up.endpoint()]}],
        "routes": [{"name": "all", "listener": "web", "path": "/", "cluster": "app", "policies": ["tag"]}],
        "policies": [{"name": "tag", "type": "request_rewrite", "config": {"headers": {"set": {"X-Tag": tag}}}}],
    }


def hit(port: int) -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: ha\r\nConnection: close\r\n\r\n")
            return int(sock.recv(64).split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return 0


def test_another_control_plane_takes_over_a_canary_and_promotes_it(stack: dict[str, Any]) -> None:
    a, b, nodes, up = stack["a"], stack["b"], stack["nodes"], stack["up"]
    port = free_port()
    with a.client() as c:
        assert c.post("/api/v1/apply", json=config(port, up, "v1")).status_code == 200
    for node in nodes:
        node.start(timeout=20)
    v1 = a.version()
    for node in nodes:
        node.wait_version(v1, 10)
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            statuses.append(hit(port))
            time.sleep(0.005)  # stays: the pace of the background traffic (not a wait)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        with a.client() as c:
            r = c.post("/api/v1/apply", json=config(port, up, "v2"), params={"canary": 50, "bake": "8s"})
            assert r.status_code == 200, r.text
            rollout = r.json()["rollout"]
        rid, canary = rollout["id"], rollout["canaries"][0]
        held = next(n for n in nodes if n.node_id != canary)
        wait_until(lambda: any(n.version() == str(v1 + 1) for n in nodes), 10, message="the canary took v2")
        with b.client() as c:  # B sees the rollout and serves its nodes by it
            assert c.get(f"/api/v1/rollouts/{rid}").json()["status"] == "running"
        time.sleep(1.0)  # stays: a negative check inside the 8 s bake (the held node keeps v1); costs no wall time
        assert held.version() == str(v1)
        a.kill()  # in the middle of the bake; its lease runs out within 5 s
        with b.client() as c:

            def finished() -> dict[str, Any] | None:
                doc = c.get(f"/api/v1/rollouts/{rid}").json()
                return doc if doc["status"] != "running" else None

            done = wait_until(finished, 40, interval=0.25, message="the rollout finished on B")
        assert done["status"] == "promoted", done
        assert done["owner"] == "cp-b", done
        for node in nodes:
            node.wait_version(v1 + 1, 15)
    finally:
        stop.set()
        thread.join(10)
    assert statuses.count(200) > 50, statuses[-20:]
