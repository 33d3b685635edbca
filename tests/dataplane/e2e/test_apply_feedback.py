"""End-to-end: `fluxctl apply/rollback/delete` wait for the nodes and report what they did.

One control plane, two real nodes in two groups (`a`, `b`). A listener on a port the test
holds (without SO_REUSEPORT, so the node cannot share it) is one resource node-a cannot
apply: it applies the rest of the version (per-resource isolation), fluxctl prints one
FAILING line for it (node, resource, reason) and exits 2, and node-b, whose group the
version does not change, is not waited for. Later versions keep reaching node-a, which
opens the listener once the port is free.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, executable, free_port, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("feedback")
    up = UpstreamProcess("up").start()
    cp = ControlPlaneProcess(base / "cp").start()
    nodes = {
        "a": NodeProcess(base / "na", cp.grpc_addr, node_id="node-a", group="a"),
        "b": NodeProcess(base / "nb", cp.grpc_addr, node_id="node-b", group="b"),
    }
    for node in nodes.values():
        node.start(wait_ready=False)

    def connected() -> bool:
        with cp.client() as c:
            return {n["id"] for n in c.get("/api/v1/nodes").json()["items"] if n["connected"]} == {"node-a", "node-b"}

    wait_until(connected, 20, message="both nodes connected")
    try:
        yield {"cp": cp, "nodes": nodes, "up": up, "base": base}
    finally:
        for node in nodes.values():
            node.stop()
        cp.stop()
        up.stop()


def fluxctl(cp: ControlPlaneProcess, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLUX_SERVER": cp.url, "FLUX_ADMIN_TOKEN": cp.admin_token, "FLUX_TOKEN": ""}
    return subprocess.run(
        [executable("fluxctl"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def write(path: pathlib.Path, doc: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def config(up: UpstreamProcess, port_a: int, port_b: int) -> dict[str, Any]:
    return {
        "listeners": [
            {"name": "web-a", "protocol": "http", "address": "127.0.0.1", "port": port_a, "node_group": "a"},
            {"name": "web-b", "protocol": "http", "address": "127.0.0.1", "port": port_b, "node_group": "b"},
        ],
        "clusters": [{"name": "app", "endpoints": [up.endpoint()]}],
        "routes": [{"name": "all", "path": "/", "cluster": "app"}],
    }


def held_port() -> socket.socket:
    """A port the test holds (without SO_REUSEPORT): a node asked to listen on it cannot."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    return held


def http_status(port: int, path: str = "/") -> int:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code


def test_a_listener_one_node_cannot_open_blocks_nothing_else(stack: dict[str, Any]) -> None:
    """Per-resource isolation: node-a applies the version without the listener it cannot open,
    says so (fluxctl FAILING line, exit 2, /api/v1/nodes/node-a), keeps taking later versions,
    and opens the listener with the first version after the port is free."""
    cp, up, base = stack["cp"], stack["up"], stack["base"]
    port_a = free_port()
    first = write(base / "v1.yaml", config(up, port_a, free_port()))
    done = fluxctl(cp, "apply", "-f", first)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on group(s) a, b: 2 of 2 node(s) took it" in done.stdout, done.stdout
    good = cp.version()

    held = held_port()
    blocked = held.getsockname()[1]
    try:
        doc = yaml.safe_load(pathlib.Path(first).read_text())  # v1, and a listener node-a cannot open
        doc["listeners"].append(
            {"name": "blocked", "protocol": "http", "address": "127.0.0.1", "port": blocked, "node_group": "a"}
        )
        out = fluxctl(cp, "apply", "-f", write(base / "v2.yaml", doc), "--wait", "20s")
        assert out.returncode == 2, out.stdout + out.stderr
        lines = [line for line in out.stdout.splitlines() if "FAILING" in line or "REFUSED" in line]
        assert len(lines) == 1, out.stdout
        assert f"FAILING node-a (group a): listeners/blocked (not served): listener 'blocked': cannot listen on " \
               f"http 127.0.0.1:{blocked}" in lines[0], lines[0]  # fmt: skip
        assert "on group(s) a:" in out.stdout  # group b's snapshot did not change: not waited for
        assert "0 of 1 node(s) took it, 1 applied it without some of its resources" in out.stdout, out.stdout
        v2 = cp.version()
        node_a = stack["nodes"]["a"]
        node_a.wait_version(v2, 5)  # ACKed: the rest of the version runs there
        assert http_status(port_a) == 200
        with cp.client() as c:
            shown = c.get("/api/v1/nodes/node-a").json()
        assert shown["acked_version"].partition(".")[0] == str(v2) and shown["last_nack"] is None, shown
        [failing] = shown["failing_resources"]
        assert failing["kind"] == "listener" and failing["name"] == "blocked" and not failing["kept_previous"]
        assert "address already in use" in failing["message"].lower(), failing
        stats = node_a.get("/stats").json()
        assert [f["name"] for f in stats["failing_resources"]] == ["blocked"], stats
        assert 'flux_config_failing_resources{kind="listener",name="blocked"} 1.0' in node_a.get("/metrics").text

        nodes = fluxctl(cp, "nodes")
        assert nodes.returncode == 0
        row = next(line for line in nodes.stdout.splitlines() if line.startswith("node-a"))
        assert "listeners/blocked" in row and "\u2026" not in row, row
        assert "node-a: listeners/blocked (not served): listener 'blocked': cannot listen" in nodes.stdout

        # later versions keep flowing to node-a, and it tries the listener again with each
        doc["routes"] = [{"name": "all", "path": "/", "cluster": "app", "priority": 1}]
        again = fluxctl(cp, "apply", "-f", write(base / "v2b.yaml", doc), "--wait", "20s")
        assert again.returncode == 2 and "FAILING node-a" in again.stdout, again.stdout
        node_a.wait_version(cp.version(), 5)

        # a listener that moves to a port it cannot open keeps serving on its old one
        moved = yaml.safe_load(pathlib.Path(first).read_text())
        moved["listeners"][0]["port"] = blocked
        out = fluxctl(cp, "apply", "-f", write(base / "v2c.yaml", moved), "--prune", "--wait", "20s")
        assert out.returncode == 2, out.stdout
        assert "FAILING node-a (group a): listeners/web-a (keeps its previous version)" in out.stdout, out.stdout
        assert http_status(port_a) == 200
    finally:
        held.close()

    # the port is free: the next version opens the listener (node-a retries every version)
    moved["routes"] = [{"name": "all", "path": "/", "cluster": "app", "priority": 2}]
    out = fluxctl(cp, "apply", "-f", write(base / "v2d.yaml", moved), "--wait", "20s")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAILING" not in out.stdout and "2 of 2 node(s) took it" in out.stdout, out.stdout
    assert http_status(blocked) == 200
    with cp.client() as c:
        assert c.get("/api/v1/nodes/node-a").json()["failing_resources"] == []

    back = fluxctl(cp, "rollback", str(good), "--wait", "20s")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "2 of 2 node(s) took it" in back.stdout, back.stdout  # the route changed in both groups
    with_extra = yaml.safe_load(pathlib.Path(first).read_text())
    with_extra["routes"].append({"name": "extra", "path": "/extra", "cluster": "app"})
    assert fluxctl(cp, "apply", "-f", write(base / "v3.yaml", with_extra)).returncode == 0
    deleted = fluxctl(cp, "delete", "route", "extra")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "2 of 2 node(s) took it" in deleted.stdout, deleted.stdout


def test_version_nodes_endpoint_names_groups_and_states(stack: dict[str, Any]) -> None:
    cp = stack["cp"]
    version = cp.version()
    with cp.client() as c:
        r = c.get(f"/api/v1/config/versions/{version}/nodes", params={"wait": "10s"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["done"] and body["refused"] == 0
        assert {n["id"] for n in body["nodes"]} <= {"node-a", "node-b"}
        assert c.get("/api/v1/config/versions/1/nodes", params={"wait": "forever"}).status_code == 422


def watch(stack: dict[str, Any], proc: subprocess.Popen[str]) -> tuple[str, list[tuple[str | None, str | None]]]:
    """Wait for a background fluxctl; its output and the (node-a, node-b) versions seen meanwhile."""
    seen = []
    while proc.poll() is None:
        seen.append((stack["nodes"]["a"].version(), stack["nodes"]["b"].version()))
        time.sleep(0.05)  # stays: the sampling pace of what the nodes hold while fluxctl runs (not a wait)
    return (proc.stdout.read() if proc.stdout else ""), seen


def background(cp: ControlPlaneProcess, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "FLUX_SERVER": cp.url, "FLUX_ADMIN_TOKEN": cp.admin_token, "FLUX_TOKEN": ""}
    return subprocess.Popen(
        [executable("fluxctl"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_by_group_rollout_releases_groups_one_after_another(stack: dict[str, Any]) -> None:
    cp, up, base = stack["cp"], stack["up"], stack["base"]
    doc = config(up, free_port(), free_port())
    assert fluxctl(cp, "apply", "-f", write(base / "g1.yaml", doc), "--prune").returncode == 0
    before = cp.version()
    doc["routes"][0]["priority"] = 5  # the route is in both groups' snapshots
    out, seen = watch(stack, background(cp, "apply", "-f", write(base / "g2.yaml", doc), "--by-group", "--bake", "2s"))
    new = str(before + 1)
    assert "promoted" in out, out
    assert (new, str(before)) in seen, seen  # group a first, group b still on the version before
    assert out.index(f"version {new} to group a") < out.index("group a passed") < out.index("to group b"), out
    for node in stack["nodes"].values():
        node.wait_version(new, 10)


def test_by_group_rollout_stops_at_a_refusing_group(stack: dict[str, Any]) -> None:
    cp, up, base = stack["cp"], stack["up"], stack["base"]
    doc = config(up, free_port(), free_port())
    assert fluxctl(cp, "apply", "-f", write(base / "h1.yaml", doc), "--prune").returncode == 0
    before = cp.version()
    held = held_port()
    try:
        doc["listeners"][0]["port"] = held.getsockname()[1]  # group a's listener: a port node-a cannot take
        doc["routes"][0]["priority"] = 7  # and a change for group b too
        out, seen = watch(stack, background(cp, "apply", "-f", write(base / "h2.yaml", doc), "--by-group"))
    finally:
        held.close()
    # node-a applies the rest and keeps web-a on its old port, but a rollout stops at that
    assert "ROLLED BACK" in out and "node node-a could not apply part of version" in out, out
    assert "listeners/web-a" in out, out
    assert all(b != str(before + 1) for _a, b in seen), (sorted(set(seen)), out)  # group b never got it
    stack["nodes"]["b"].wait_version(str(before + 2), 10)
