"""Two control planes on one MariaDB database: writes through either reach nodes of both."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from support.discovery import DiscoveryClient
from support.processes import ControlPlaneProcess, mariadb_database, mariadb_unreachable, wait_until

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

_weights = itertools.count(2)


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, ControlPlaneProcess]]:
    reason = mariadb_unreachable()
    if reason:
        pytest.skip(reason)
    with mariadb_database() as url:
        token = "ha-shared-token"
        a = ControlPlaneProcess(tmp_path_factory.mktemp("cp-a"), url, token=token, cp_id="cp-a").start()
        try:
            b = ControlPlaneProcess(tmp_path_factory.mktemp("cp-b"), url, token=token, cp_id="cp-b").start()
        except BaseException:
            a.stop()
            raise
        try:
            with a.client() as c:
                doc = {
                    "listeners": [{"name": "pub", "port": 18080}],
                    "clusters": [{"name": "ha", "endpoints": [{"address": "10.0.0.1", "port": 80}]}],
                    "routes": [{"name": "ha", "listener": "pub", "cluster": "ha"}],
                }
                assert c.post("/api/v1/apply", json=doc).json()["committed"]
            yield a, b
        finally:
            b.stop()
            a.stop()


def bump(c: httpx.Client) -> int:
    body = {"name": "ha", "endpoints": [{"address": "10.0.0.1", "port": 80, "weight": next(_weights)}]}
    r = c.put("/api/v1/clusters/ha", json=body)
    assert r.status_code in (200, 201), r.text  # 201 when it creates
    return int(r.headers["x-flux-config-version"])


def test_a_write_through_a_reaches_a_node_of_b_within_a_second(
    pair: tuple[ControlPlaneProcess, ControlPlaneProcess],
) -> None:
    a, b = pair
    with DiscoveryClient(b.grpc_addr, "node-on-b") as node, a.client() as ca:
        # B learns of A's writes by polling (0.2 s), so it may first send what it has, then catch up.
        first = node.wait_for_version(a.version(), timeout=2)
        assert first.control_plane_id == "cp-b"
        delays = []
        for _ in range(5):
            sent = time.monotonic()
            version = bump(ca)
            push = node.wait_for_version(version, timeout=5)
            delay = push.received_at - sent
            delays.append(delay)
            assert push.version_int == version
            assert push.control_plane_id == "cp-b"
            weight = push.snapshot.clusters[0].endpoints[0].weight
            assert weight == ca.get("/api/v1/clusters/ha").json()["endpoints"][0]["weight"]
        ms = [round(d * 1000) for d in delays]
        print(f"write via A -> push via B (ms): {ms}; median {statistics.median(ms)} ms")
        assert max(delays) < 1.0, f"slowest propagation {max(delays):.3f}s"


def test_nodes_on_a_lists_the_nodes_of_b(pair: tuple[ControlPlaneProcess, ControlPlaneProcess]) -> None:
    a, b = pair
    with (
        DiscoveryClient(b.grpc_addr, "listed-b", group="edge") as on_b,
        DiscoveryClient(a.grpc_addr, "listed-a") as on_a,
        a.client() as ca,
        b.client() as cb,
    ):
        v = on_b.wait_for_pushes(1)[0].version
        on_a.wait_for_pushes(1)

        def listed(c: httpx.Client, nid: str, **expect: object) -> dict | None:
            nodes = {n["id"]: n for n in c.get("/api/v1/nodes").json()["items"]}
            n = nodes.get(nid)
            return n if n and all(n.get(k) == val for k, val in expect.items()) else None

        st = wait_until(
            lambda: listed(ca, "listed-b", connected=True, acked_version=v),
            5,
            message="node of B on A's /api/v1/nodes",
        )
        assert st["control_plane"] == "cp-b" and st["group"] == "edge"
        st = wait_until(lambda: listed(cb, "listed-a", connected=True), 5, message="node of A on B's list")
        assert st["control_plane"] == "cp-a"
    # When B's node leaves, A shows it gone too.
    with a.client() as ca:
        wait_until(lambda: listed(ca, "listed-b", connected=False), 5, message="disconnect seen from A")


def test_writes_through_both_share_one_gap_free_version_sequence(
    pair: tuple[ControlPlaneProcess, ControlPlaneProcess],
) -> None:
    a, b = pair
    start = a.version()
    versions: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(cp: ControlPlaneProcess, tag: str) -> None:
        try:
            with cp.client() as c:
                for i in range(10):
                    body = {"name": f"{tag}-{i}", "endpoints": [{"address": "10.1.0.1", "port": 80}]}
                    r = c.post("/api/v1/clusters", json=body)
                    assert r.status_code == 201, r.text
                    with lock:
                        versions.append(int(r.headers["x-flux-config-version"]))
        except BaseException as exc:
            errors.append(exc)

    with DiscoveryClient(a.grpc_addr, "seq-a") as na, DiscoveryClient(b.grpc_addr, "seq-b") as nb:
        na.wait_for_pushes(1)
        nb.wait_for_pushes(1)
        threads = [threading.Thread(target=writer, args=(cp, tag)) for cp, tag in ((a, "wa"), (b, "wb"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert sorted(versions) == list(range(start + 1, start + 21))
        final = start + 20
        for n in (na, nb):
            assert n.wait_for_version(final, timeout=5).version_int == final
            assert n.versions == sorted(set(n.versions))
        digests = set()
        for cp in (a, b):
            with cp.client() as c:
                cfg = c.get("/api/v1/config").json()
                assert cfg["version"] == final
                digests.add(cfg["digest"])
                assert c.get("/api/v1/config/history").json()["total"] == final
        assert len(digests) == 1
        # Both snapshots of the final version are the same bytes.
        last_a, last_b = na.latest, nb.latest
        assert last_a is not None and last_b is not None
        assert last_a.snapshot.SerializeToString(deterministic=True) == last_b.snapshot.SerializeToString(
            deterministic=True
        )


def test_a_node_fails_over_from_b_to_a_without_a_repeat(
    pair: tuple[ControlPlaneProcess, ControlPlaneProcess],
) -> None:
    a, b = pair
    with DiscoveryClient(b.grpc_addr, "failover") as node:
        held = node.wait_for_pushes(1)[0].version
    with DiscoveryClient(a.grpc_addr, "failover", held_version=held) as node, a.client() as ca:
        wait_until(
            lambda: ca.get("/api/v1/nodes/failover").json().get("control_plane") == "cp-a",
            5,
            message="node re-registered on A",
        )
        newer = bump(ca)
        node.wait_for_version(newer)
        assert node.versions == [newer]
