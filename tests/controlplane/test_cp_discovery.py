"""The discovery stream (flux.v1.DiscoveryService/StreamConfig) of a real control plane process."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from support.discovery import SNAPSHOT_TYPE_URL, DiscoveryClient, Push
from support.enrolment import credentials_for
from support.processes import ControlPlaneProcess, wait_until

from dataplane.discovery.credentials import channel_options
from flux.v1 import discovery_pb2, discovery_pb2_grpc

_ids = itertools.count()


def node_id(prefix: str = "node") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns() % 100000}"


@pytest.fixture(scope="module")
def cp(module_controlplane: ControlPlaneProcess) -> ControlPlaneProcess:
    doc = {
        "listeners": [
            {"name": "pub", "port": 18080},
            {"name": "edge-l", "port": 18080, "node_group": "edge"},
        ],
        "clusters": [
            {"name": "disc", "endpoints": [{"address": "127.0.0.1", "port": 9001, "weight": 1}]},
            {"name": "edge-c", "endpoints": [{"address": "127.0.0.1", "port": 9002}]},
        ],
        "routes": [
            {"name": "disc-route", "listener": "pub", "cluster": "disc", "path": "/"},
            {"name": "edge-route", "listener": "edge-l", "cluster": "edge-c", "path": "/"},
        ],
    }
    with module_controlplane.client() as c:
        r = c.post("/api/v1/apply", json=doc)
        assert r.status_code == 200 and r.json()["committed"], r.text
    return module_controlplane


@pytest.fixture
def client(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client() as c:
        yield c


_weights = itertools.count(2)


def bump(c: httpx.Client, cluster: str = "disc") -> int:
    """One committed write (a new endpoint weight); returns the new version."""
    r = c.put(
        f"/api/v1/clusters/{cluster}",
        json={
            "name": cluster,
            "endpoints": [{"address": "127.0.0.1", "port": 9001, "weight": next(_weights)}],
        },
    )
    assert r.status_code in (200, 201), r.text  # 201 when it creates
    return int(r.headers["x-flux-config-version"])


def node_status(c: httpx.Client, nid: str) -> dict[str, Any] | None:
    r = c.get(f"/api/v1/nodes/{nid}")
    return r.json() if r.status_code == 200 else None


def wait_node(c: httpx.Client, nid: str, timeout: float = 5.0, **expect: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = node_status(c, nid)
        if st and all(st.get(k) == v for k, v in expect.items()):
            return st
        return None

    return wait_until(check, timeout, message=f"node {nid} with {expect} (now {node_status(c, nid)})")


def consistent(push: Push) -> None:
    assert push.snapshot.version == push.version
    assert push.type_url == SNAPSHOT_TYPE_URL
    assert push.nonce and push.control_plane_id


def test_subscriber_gets_the_current_snapshot_at_once(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    current = cp.version()
    nid = node_id()
    start = time.monotonic()
    with DiscoveryClient(cp.grpc_addr, nid) as node:
        first = node.wait_for_pushes(1, timeout=5)[0]
        print(f"first snapshot after {(first.received_at - start) * 1000:.1f} ms")
        consistent(first)
        assert first.version_int == current
        snap = first.snapshot
        assert snap.node_group == "default"
        assert [x.name for x in snap.listeners] == ["pub"]
        assert [r.name for r in snap.routes] == ["disc-route"]
        assert [c.name for c in snap.clusters] == ["disc"]
        st = wait_node(client, nid, acked_version=str(current))
        assert st["connected"] is True and st["in_sync"] is True and st["group"] == "default"
        assert st["hostname"] == "test-host" and st["last_nack"] is None
        assert st["sent_version"] == str(current)


def test_a_node_group_gets_its_own_snapshot(cp: ControlPlaneProcess) -> None:
    with DiscoveryClient(cp.grpc_addr, node_id("edge"), group="edge") as node:
        snap = node.wait_for_pushes(1)[0].snapshot
        assert snap.node_group == "edge"
        assert [x.name for x in snap.listeners] == ["edge-l"]
        assert [r.name for r in snap.routes] == ["edge-route"]
        assert [c.name for c in snap.clusters] == ["edge-c"]


def test_rest_writes_are_pushed_and_acked(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    nid = node_id()
    with DiscoveryClient(cp.grpc_addr, nid) as node:
        first = node.wait_for_pushes(1)[0]
        latencies = []
        for _ in range(3):
            sent = time.monotonic()
            new = bump(client)
            push = node.wait_for_version(new, timeout=3)
            latencies.append((push.received_at - sent) * 1000)
            consistent(push)
            weight = push.snapshot.clusters[0].endpoints[0].weight
            assert weight == client.get("/api/v1/clusters/disc").json()["endpoints"][0]["weight"]
        print(f"write -> push latency (ms): {[round(x, 1) for x in latencies]}")
        assert node.versions[0] == first.version_int
        assert node.versions == sorted(set(node.versions))  # increasing, never the same version twice
        st = wait_node(client, nid, acked_version=str(new))
        assert st["in_sync"] is True
        assert node.acks == [str(v) for v in node.versions]


def test_nack_is_shown_and_does_not_stop_the_next_version(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    nid = node_id()
    rejected: list[int] = []

    def nack_if(push: Push) -> str | None:
        return f"listener pub: address already in use (v{push.version})" if push.version_int in rejected else None

    with DiscoveryClient(cp.grpc_addr, nid, nack_if=nack_if) as node:
        good = node.wait_for_pushes(1)[0].version_int
        wait_node(client, nid, acked_version=str(good))

        bad = good + 1
        rejected.append(bad)
        assert bump(client) == bad
        node.wait_for_version(bad)
        st = wait_node(client, nid, acked_version=str(good), sent_version=str(bad))

        def nack_shown() -> dict | None:
            s = node_status(client, nid)
            return s if s and s["last_nack"] else None

        st = wait_until(nack_shown, 5, message="last_nack on /api/v1/nodes")
        assert st["last_nack"]["version"] == str(bad)
        assert st["last_nack"]["message"] == f"listener pub: address already in use (v{bad})"
        assert st["last_nack"]["at"]
        assert st["acked_version"] == str(good) and st["in_sync"] is False
        listed = [n for n in client.get("/api/v1/nodes").json()["items"] if n["id"] == nid]
        assert listed and listed[0]["last_nack"]["message"].startswith("listener pub")

        after = bump(client)
        push = node.wait_for_version(after)
        assert push.version_int == after
        st = wait_node(client, nid, acked_version=str(after))
        assert st["in_sync"] is True
        assert node.versions == [good, bad, after]  # the NACKed version was not sent again
        assert node.nacks == [(str(bad), f"listener pub: address already in use (v{bad})")]


def test_reconnecting_node_is_not_sent_the_version_it_holds(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    nid = node_id()
    with DiscoveryClient(cp.grpc_addr, nid) as node:
        held = node.wait_for_pushes(1)[0].version_int
    wait_node(client, nid, connected=False)

    with DiscoveryClient(cp.grpc_addr, nid, held_version=str(held)) as again:
        st = wait_node(client, nid, connected=True)
        assert st["acked_version"] == str(held)  # what it resumed on
        # The server decided what to send when the stream opened (before /nodes could show
        # it connected); only a newer version may arrive from here on.
        newer = bump(client)
        again.wait_for_version(newer)
        assert again.versions == [newer]

    # A node holding an older version gets the current one at once.
    with DiscoveryClient(cp.grpc_addr, node_id(), held_version=str(held)) as stale:
        push = stale.wait_for_pushes(1)[0]
        assert push.version_int == cp.version()


def test_an_unanswered_push_holds_back_newer_versions(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    """At most one push in flight per node: the next one is the newest after the answer."""
    nid = node_id()
    with DiscoveryClient(cp.grpc_addr, nid, auto_ack=False) as node:
        first = node.next_push()
        latest = [bump(client) for _ in range(3)][-1]
        wait_until(lambda: client.get("/healthz").json()["published_version"] == latest, 5, message="publish")
        time.sleep(0.3)  # a negative check: give a wrong push the time to arrive
        assert node.versions == [first.version_int]
        assert node_status(client, nid)["sent_version"] == first.version  # type: ignore[index]
        node.ack(first)
        second = node.next_push()
        assert second.version_int == latest  # the intermediate versions were skipped
        node.ack(second)
        wait_node(client, nid, acked_version=str(latest))
        assert node.versions == [first.version_int, latest]


def test_stale_nonce_is_ignored(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    nid = node_id()
    with DiscoveryClient(cp.grpc_addr, nid, auto_ack=False) as node:
        first = node.next_push()
        fake = Push(first.version, "not-the-nonce", first.snapshot, "", first.type_url, 0.0)
        node.ack(fake)  # an ACK for a nonce that was never sent
        time.sleep(0.3)  # stays: a negative check, time for a wrongly taken ACK to show on /nodes
        assert node_status(client, nid)["acked_version"] == ""  # type: ignore[index]
        node.ack(first)
        wait_node(client, nid, acked_version=first.version)


def test_disconnect_shows_on_nodes(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    nid = node_id()
    with DiscoveryClient(cp.grpc_addr, nid) as node:
        node.wait_for_pushes(1)
        wait_node(client, nid, connected=True)
    st = wait_node(client, nid, connected=False)
    assert st["last_seen"]


@pytest.mark.parametrize(
    "first, detail",
    [
        (discovery_pb2.StreamConfigRequest(node=discovery_pb2.Node(group="default")), "node.id"),
        (
            discovery_pb2.StreamConfigRequest(
                node=discovery_pb2.Node(id="x"), type_url="type.googleapis.com/flux.v1.Other"
            ),
            "type_url",
        ),
    ],
)
def test_bad_first_request_is_invalid_argument(cp: ControlPlaneProcess, first: Any, detail: str) -> None:
    creds = credentials_for(cp.grpc_addr, "x")  # an enrolled node, so that only the request is at fault
    with grpc.secure_channel(cp.grpc_addr, creds.channel_credentials(), options=channel_options()) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.StreamConfig(iter([first]), timeout=5))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in exc.value.details()


@pytest.mark.slow
def test_bursts_of_writes_are_coalesced(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    nodes = [DiscoveryClient(cp.grpc_addr, node_id("burst")).start() for _ in range(5)]
    try:
        start_version = cp.version()
        for n in nodes:
            n.wait_for_version(start_version)
        # 100 writes from 4 threads (one HTTP connection each), so the burst takes about a second.
        per_thread: list[list[int]] = [[] for _ in range(4)]

        def writer(out: list[int]) -> None:
            with cp.client() as c:
                for _ in range(25):
                    out.append(bump(c))

        threads = [threading.Thread(target=writer, args=(out,)) for out in per_thread]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        written = [v for out in per_thread for v in out]
        assert sorted(written) == list(range(start_version + 1, start_version + 101))
        final = start_version + 100
        for n in nodes:
            n.wait_for_version(final, timeout=10)
        counts = [len(n.pushes) - 1 for n in nodes]  # pushes caused by the burst
        print(f"100 writes in {elapsed:.2f}s; pushes per client: {counts}")
        for n in nodes:
            assert n.versions == sorted(set(n.versions))
            assert n.versions[-1] == final
            assert len(n.pushes) - 1 < 50, f"{n.node_id} got {len(n.pushes)} snapshots for 100 writes"
            assert n.error is None
    finally:
        for n in nodes:
            n.close()


@pytest.mark.slow
def test_many_clients_converge(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    nodes = [
        DiscoveryClient(cp.grpc_addr, node_id("many"), group="edge" if i % 4 == 0 else "default").start()
        for i in range(20)
    ]
    try:
        t0 = time.monotonic()
        for _ in range(10):
            final = bump(client)
        converged = []
        for n in nodes:
            push = n.wait_for_version(final, timeout=10)
            converged.append((push.received_at - t0) * 1000)
            assert push.version_int == final and push.snapshot.version == str(final)
            want = "edge" if n.group == "edge" else "default"
            assert push.snapshot.node_group == want
        median, worst = statistics.median(converged), max(converged)
        print(f"20 clients on version {final}: median {median:.0f} ms, max {worst:.0f} ms")

        def all_in_sync() -> bool:
            listed = {n["id"]: n for n in client.get("/api/v1/nodes").json()["items"]}
            return all(listed.get(n.node_id, {}).get("acked_version") == str(final) for n in nodes)

        wait_until(all_in_sync, 5, message="every node acked the final version on /api/v1/nodes")
    finally:
        for n in nodes:
            n.close()
