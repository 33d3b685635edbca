"""End-to-end: `fluxctl apply/rollback/delete` wait for the nodes and report refusals.

One control plane, two real nodes in two groups (`a`, `b`). A listener on a port the test
holds (without SO_REUSEPORT, so the node cannot share it) makes node-a refuse the version:
fluxctl prints one line for it (node, resource, reason) and exits 2, and node-b, whose
group the version does not change, is not waited for. `fluxctl nodes` shows the whole
NACK reason. A rollback that drops the listener is ACKed again: exit 0.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

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


def test_apply_waits_reports_a_refusing_node_and_rollback_recovers(stack: dict[str, Any]) -> None:
    cp, up, base = stack["cp"], stack["up"], stack["base"]
    first = write(base / "v1.yaml", config(up, free_port(), free_port()))
    done = fluxctl(cp, "apply", "-f", first)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on group(s) a, b: 2 of 2 node(s) took it" in done.stdout, done.stdout
    good = cp.version()

    held = socket.socket()  # the port node-a is asked to listen on: taken, and not shareable
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        doc = yaml.safe_load(pathlib.Path(first).read_text())  # v1, and a listener node-a cannot open
        doc["listeners"].append(
            {"name": "blocked", "protocol": "http", "address": "127.0.0.1", "port": held.getsockname()[1],
             "node_group": "a"}
        )  # fmt: skip
        refused = fluxctl(cp, "apply", "-f", write(base / "v2.yaml", doc), "--wait", "20s")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = [line for line in refused.stdout.splitlines() if "REFUSED" in line]
        assert len(lines) == 1, refused.stdout
        assert "node-a (group a): listeners/blocked: cannot listen on http 127.0.0.1:" in lines[0], lines[0]
        assert "on group(s) a:" in refused.stdout  # group b's snapshot did not change: not waited for
        assert "0 of 1 node(s) took it, 1 refused it" in refused.stdout

        nodes = fluxctl(cp, "nodes")
        assert nodes.returncode == 0
        row = next(line for line in nodes.stdout.splitlines() if line.startswith("node-a"))
        assert "address already in use" in row.lower() and "\u2026" not in row, row  # the whole reason

        skipped = fluxctl(cp, "apply", "-f", write(base / "v2b.yaml", {**doc, "routes": [
            {"name": "all", "path": "/", "cluster": "app", "priority": 1}]}), "--no-wait")  # fmt: skip
        assert skipped.returncode == 0, skipped.stdout + skipped.stderr
        assert "took it" not in skipped.stdout

        back = fluxctl(cp, "rollback", str(good), "--wait", "20s")
        assert back.returncode == 0, back.stdout + back.stderr
        assert "2 of 2 node(s) took it" in back.stdout, back.stdout  # the route changed in both groups
    finally:
        held.close()

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
        time.sleep(0.05)
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
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        doc["listeners"][0]["port"] = held.getsockname()[1]  # group a's listener: a port node-a cannot take
        doc["routes"][0]["priority"] = 7  # and a change for group b too
        out, seen = watch(stack, background(cp, "apply", "-f", write(base / "h2.yaml", doc), "--by-group"))
    finally:
        held.close()
    assert "ROLLED BACK" in out and "node node-a refused version" in out and "listeners/web-a" in out, out
    assert all(b != str(before + 1) for _a, b in seen), (sorted(set(seen)), out)  # group b never got it
    stack["nodes"]["b"].wait_version(str(before + 2), 10)
