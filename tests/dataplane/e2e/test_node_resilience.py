"""End-to-end: a node outlives its control plane, starts from its cache, fails over,
drains on SIGTERM, and runs several workers on one port."""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, free_port, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess("a") as up:
        yield up


def put_config(cp: ControlPlaneProcess, port: int, up: UpstreamProcess, path: str = "/") -> int:
    doc = {
        "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
        "clusters": [{"name": "app", "endpoints": [up.endpoint()]}],
        "routes": [{"name": "r", "listener": "web", "path": path, "cluster": "app"}],
    }
    with cp.client() as c:
        r = c.post("/api/v1/apply", json=doc, params={"prune": True})
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def test_nodes_keep_serving_without_control_plane_and_restart_from_cache(
    tmp_path: pathlib.Path, upstream: UpstreamProcess
) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp").start()
    port = free_port()
    version = put_config(cp, port, upstream)
    node = NodeProcess(tmp_path / "node", cp.grpc_addr).start()
    node.wait_version(version)
    url = f"http://127.0.0.1:{port}/echo"
    assert httpx.get(url).status_code == 200

    cp.kill()  # the control plane dies: traffic goes on
    for _ in range(20):
        assert httpx.get(url).status_code == 200
    assert node.is_ready()

    node.stop()  # and a node restarted while it is down serves from its cache
    assert not httpx.get(node.admin + "/ready").is_success if node.running else True
    node.start()
    assert node.version() == str(version)
    assert httpx.get(url).status_code == 200

    cp.start(http_port=cp.http_port, grpc_port=cp.grpc_port)  # back: the node reconnects and follows
    newer = put_config(cp, port, upstream, path="/echo")
    node.wait_version(newer, timeout=15)
    assert httpx.get(f"http://127.0.0.1:{port}/other").status_code == 404
    stats = node.get("/stats").json()
    assert stats["discovery"]["streams_opened"] >= 1
    node.stop()
    cp.stop()


def test_node_fails_over_between_control_plane_addresses(tmp_path: pathlib.Path, upstream: UpstreamProcess) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp").start()
    port = free_port()
    version = put_config(cp, port, upstream)
    dead = f"127.0.0.1:{free_port()}"
    node = NodeProcess(tmp_path / "node", f"{dead},{cp.grpc_addr}").start()
    node.wait_version(version, timeout=15)
    assert node.get("/stats").json()["discovery"]["connected_to"] == cp.grpc_addr
    node.stop()
    cp.stop()


def _slow_request_in_flight(node: NodeProcess, port: int) -> tuple[threading.Thread, dict[str, Any]]:
    """A 1.5 s request through the node, started in a thread and in flight when this returns;
    its response lands in the dict under "r"."""
    results: dict[str, Any] = {}

    def slow() -> None:
        results["r"] = httpx.get(f"http://127.0.0.1:{port}/delay?ms=1500", timeout=10)

    t = threading.Thread(target=slow)
    t.start()
    wait_until(lambda: node.get("/stats").json()["requests_in_flight"] >= 1, 5, message="the slow request in flight")
    return t, results


def test_sigterm_drains_in_flight_requests_then_exits_zero(tmp_path: pathlib.Path, upstream: UpstreamProcess) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp").start()
    port = free_port()
    version = put_config(cp, port, upstream)
    node = NodeProcess(tmp_path / "node", cp.grpc_addr).start()
    node.wait_version(version)
    t, results = _slow_request_in_flight(node, port)
    assert node.proc is not None
    t0 = time.monotonic()
    node.proc.send_signal(15)
    wait_until(lambda: not node.is_ready() or not node.running, 3, message="node stops being ready")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/echo", timeout=2)  # no new connections
    t.join()
    assert results["r"].status_code == 200  # the in-flight one finished
    code = node.proc.wait(10)
    assert code == 0
    assert time.monotonic() - t0 < 5
    cp.stop()


def test_a_second_sigterm_while_draining_does_not_kill_the_node(
    tmp_path: pathlib.Path, upstream: UpstreamProcess
) -> None:
    """systemd sends SIGTERM to every process of the unit while the supervisor forwards its own,
    and Ctrl-C reaches a whole process group: a worker gets the signal twice. The second one
    must not end it by the default action (exit -15) with requests in flight."""
    cp = ControlPlaneProcess(tmp_path / "cp").start()
    node = None
    try:
        port = free_port()
        version = put_config(cp, port, upstream)
        node = NodeProcess(tmp_path / "node", cp.grpc_addr).start()
        node.wait_version(version)
        t, results = _slow_request_in_flight(node, port)
        assert node.proc is not None
        node.proc.send_signal(15)
        wait_until(lambda: not node.is_ready(), 3, message="the node draining")
        node.proc.send_signal(15)
        t.join()
        assert results.get("r") is not None and results["r"].status_code == 200  # the in-flight one finished
        assert node.proc.wait(10) == 0
    finally:
        if node is not None and node.running:
            node.stop()
        cp.stop()


def test_two_workers_share_the_listener(tmp_path: pathlib.Path, upstream: UpstreamProcess) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp").start()
    port = free_port()
    version = put_config(cp, port, upstream)
    node = NodeProcess(tmp_path / "node", cp.grpc_addr, node_id="multi", workers=2).start(timeout=30)
    wait_until(lambda: node.get("/ready").status_code == 200, 10)
    workers = node.get("/ready").json()["workers"]
    assert len(workers) == 2 and all(w["ready"] for w in workers)
    with httpx.Client() as c:
        for _ in range(50):
            assert c.get(f"http://127.0.0.1:{port}/echo", headers={"Connection": "close"}).status_code == 200
    with cp.client() as c:
        ids = {n["id"]: n for n in c.get("/api/v1/nodes").json()["items"]}
    assert ids["multi/w0"]["acked_version"] == str(version) and ids["multi/w1"]["acked_version"] == str(version)
    metrics = node.get("/metrics").text
    served = [line for line in metrics.splitlines() if line.startswith("flux_http_requests_total{")]
    assert {('worker="0"' in s) for s in served} == {True, False}, "both workers carried traffic"
    assert node.stop() == 0
    cp.stop()
