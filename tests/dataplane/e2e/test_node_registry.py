"""End-to-end: the service registry feeding real flux-node processes.

A control plane, two nodes and echo upstreams registered as instances over REST. The nodes
sit in two node groups and zones so each can be addressed on its own listener:

    node-1  group "default", --zone z1   listener "web"  (port P1)
    node-2  group "east",    --zone z2   listener "east" (port P2)

Routes name no listener, so both nodes serve every route. Every test registers its own
service, applies the whole gateway config through REST (`/api/v1/apply?prune=true`) and
watches the nodes' admin `/clusters` for the endpoints the registry gives them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, free_port, wait_until

pytestmark = pytest.mark.slow

KINDS = ("listeners", "clusters", "routes", "policies", "consumers", "certificates", "tunnels")
_names = itertools.count()


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("registry")
    ups = [UpstreamProcess(name).start() for name in ("a", "b", "c")]
    cp = ControlPlaneProcess(base / "cp").start()
    nodes = [
        NodeProcess(base / "n1", cp.grpc_addr, node_id="reg-node-1", extra_args=("--zone", "z1")),
        NodeProcess(base / "n2", cp.grpc_addr, node_id="reg-node-2", group="east", extra_args=("--zone", "z2")),
    ]
    for node in nodes:
        node.start(wait_ready=False)
    try:
        yield {"cp": cp, "nodes": nodes, "ups": ups}
    finally:
        for node in nodes:
            node.stop()
        cp.stop()
        for up in ups:
            up.stop()


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def key(up: UpstreamProcess) -> str:
    return f"127.0.0.1:{up.port}"


def register(cp: ControlPlaneProcess, service: str, up: UpstreamProcess, **body: Any) -> str:
    body = {"address": "127.0.0.1", "port": up.port, "ephemeral": False, **body}
    with cp.client() as c:
        r = c.post(f"/api/v1/services/{service}/instances", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def patch(cp: ControlPlaneProcess, service: str, iid: str, **body: Any) -> httpx.Response:
    with cp.client() as c:
        r = c.patch(f"/api/v1/services/{service}/instances/{iid}", json=body)
    assert r.status_code == 200, r.text
    return r


def deregister(cp: ControlPlaneProcess, service: str, iid: str) -> None:
    with cp.client() as c:
        r = c.delete(f"/api/v1/services/{service}/instances/{iid}")
    assert r.status_code == 200, r.text


def apply(cp: ControlPlaneProcess, doc: dict[str, Any]) -> int:
    body = {kind: doc.get(kind, []) for kind in KINDS}
    with cp.client() as c:
        r = c.post("/api/v1/apply", json=body, params={"prune": True})
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def gateway(
    service: str, ports: tuple[int, int], route: dict[str, Any] | None = None, **cluster: Any
) -> dict[str, Any]:
    """Listener "web" on node-1 (group default), "east" on node-2; one route to a `service:` cluster."""
    return {
        "listeners": [
            {"name": "web", "protocol": "http", "address": "127.0.0.1", "port": ports[0]},
            {"name": "east", "protocol": "http", "address": "127.0.0.1", "port": ports[1], "node_group": "east"},
        ],
        "clusters": [{"name": "svc", "service": service, **cluster}],
        "routes": [{"name": "all", "path": "/", "cluster": "svc", **(route or {})}],
    }


def node_endpoints(node: NodeProcess, cluster: str = "svc") -> dict[str, dict[str, Any]]:
    found = node.clusters().get(cluster)
    return {e["key"]: e for e in found["endpoints"]} if found else {}


def wait_endpoints(
    nodes: list[NodeProcess], keys: set[str], timeout: float = 5.0, cluster: str = "svc", **state: Any
) -> float:
    """Wait until every node's `cluster` has exactly the endpoints `keys` (each with `state`);
    return how long it took."""
    t0 = time.monotonic()

    def converged() -> bool:
        for node in nodes:
            eps = node_endpoints(node, cluster)
            if set(eps) != keys or any(eps[k].get(f) != v for k in keys for f, v in state.items()):
                return False
        return True

    wait_until(converged, timeout, interval=0.01, message=f"nodes serving {sorted(keys)} {state or ''}")
    return time.monotonic() - t0


def servers(url: str, n: int, **kw: Any) -> Counter[str]:
    with httpx.Client(timeout=5) as c:
        return Counter(c.get(url, **kw).json()["server"] for _ in range(n))


@contextmanager
def traffic(urls: list[str], threads: int = 2) -> Iterator[list[tuple[float, int, str]]]:
    """Requests in a loop on `urls` while the block runs: (time, status or 0, server) each."""
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def loop(url: str) -> None:
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                try:
                    r = c.get(url)
                    server = r.json().get("server", "") if r.status_code == 200 else ""
                    results.append((time.monotonic(), r.status_code, server))
                except (httpx.HTTPError, ValueError):
                    results.append((time.monotonic(), 0, ""))

    workers = [threading.Thread(target=loop, args=(urls[i % len(urls)],)) for i in range(threads)]
    for t in workers:
        t.start()
    try:
        yield results
    finally:
        stop.set()
        for t in workers:
            t.join(10)


def since(results: list[tuple[float, int, str]], t0: float) -> int:
    """How many of the traffic results came after `t0` (monotonic)."""
    return sum(1 for t, _, _ in list(results) if t > t0)


# -- tests ---------------------------------------------------------------------------------


def test_instances_registered_over_rest_are_served_by_both_nodes(stack: dict[str, Any]) -> None:
    cp, nodes = stack["cp"], stack["nodes"]
    a, b, _ = stack["ups"]
    service = fresh("orders")
    register(cp, service, a, version="v1")
    ports = (free_port(), free_port())
    apply(cp, gateway(service, ports))
    wait_endpoints(nodes, {key(a)})
    # a second instance registered later reaches every node through the snapshot stream
    t0 = time.monotonic()
    register(cp, service, b, version="v1", weight=3)
    took = wait_endpoints(nodes, {key(a), key(b)}, available=True)
    print(f"\nregistered instance on both nodes after {time.monotonic() - t0:.3f}s (wait loop {took:.3f}s)")
    assert node_endpoints(nodes[0])[key(b)]["weight"] == 3
    for port in ports:
        seen = servers(f"http://127.0.0.1:{port}/echo", 8)
        assert set(seen) == {"a", "b"}, (port, seen)
    # the node's config dump carries the registry endpoints with their versions
    dump = nodes[1].get("/config_dump").json()["snapshot"]
    cluster = next(c for c in dump["clusters"] if c["name"] == "svc")
    assert {(e["port"], e.get("version")) for e in cluster["endpoints"]} == {(a.port, "v1"), (b.port, "v1")}
    assert cluster["service"]["name"] == service


def test_killed_instance_is_ejected_then_deregistered_without_5xx(stack: dict[str, Any]) -> None:
    cp, nodes = stack["cp"], stack["nodes"]
    b = stack["ups"][1]
    victim = UpstreamProcess("victim").start()
    try:
        service = fresh("pay")
        vid = register(cp, service, victim)
        register(cp, service, b)
        ports = (free_port(), free_port())
        check = {"type": "http", "path": "/healthz", "interval": "200ms", "unhealthy_threshold": 2}
        apply(cp, gateway(service, ports, health_check=check, outlier_detection={"consecutive_failures": 2}))
        wait_endpoints(nodes, {key(victim), key(b)}, available=True)
        urls = [f"http://127.0.0.1:{p}/echo" for p in ports]
        with traffic(urls, threads=4) as results:
            wait_until(lambda: len(results) >= 20, 5.0, message="traffic flowing before the kill")
            victim.stop()
            killed = time.monotonic()
            # health-check window: 2 failed checks 200 ms apart, plus the check timeout
            wait_until(lambda: all(not node_endpoints(n)[key(victim)]["available"] for n in nodes), 3.0, interval=0.01)
            ejected = time.monotonic()
            wait_until(lambda: since(results, ejected + 0.05) > 50, 10.0, message="traffic after the ejection")
            # the registry takes it out (its owner or an operator deregisters it): it leaves the endpoints
            deregister(cp, service, vid)
            left = wait_endpoints(nodes, {key(b)}, timeout=2.0)
            gone = time.monotonic()
            wait_until(lambda: since(results, gone) >= 20, 5.0, message="traffic after the deregistration")
        print(
            f"\nkilled instance unavailable on both nodes after {ejected - killed:.3f}s; "
            f"gone from the endpoints {left:.3f}s after deregistration"
        )
        assert ejected - killed < 2.0
        after = [(s, srv) for t, s, srv in results if t > ejected + 0.05]
        assert len(after) > 50, len(after)
        assert all(s == 200 for s, _ in after), Counter(s for s, _ in after)
        assert {srv for _, srv in after} == {"b"}
        errors = [s for t, s, _ in results if killed <= t <= ejected and s != 200]
        print(f"{len(results)} requests, {len(errors)} failed between the kill and the ejection, none after")
    finally:
        victim.stop()


def test_ephemeral_instance_expires_when_heartbeats_stop(stack: dict[str, Any]) -> None:
    cp, nodes = stack["cp"], stack["nodes"]
    a, b, _ = stack["ups"]
    service = fresh("cart")
    register(cp, service, a)
    iid = register(cp, service, b, ephemeral=True, ttl="2s")
    ports = (free_port(), free_port())
    apply(cp, gateway(service, ports))
    wait_endpoints(nodes, {key(a), key(b)})
    with cp.client() as c:
        until = time.monotonic() + 2.6  # past the TTL, kept alive by heartbeats
        while True:
            assert c.put(f"/api/v1/services/{service}/instances/{iid}/heartbeat").status_code == 200
            stopped = time.monotonic()
            if stopped > until:
                break
            time.sleep(0.4)  # stays: heartbeats at this pace keep the instance past its TTL (the point)
        assert set(node_endpoints(nodes[0])) == {key(a), key(b)}
        with traffic([f"http://127.0.0.1:{p}/echo" for p in ports]) as results:
            wait_endpoints(nodes, {key(a)}, timeout=5.0)
            left = time.monotonic()
            gone = left - stopped
            wait_until(lambda: since(results, left) >= 10, 5.0, message="traffic after the expiry")
        print(f"\nephemeral instance (ttl 2s) left both nodes {gone:.3f}s after its last heartbeat")
        assert 1.5 < gone < 4.0, gone
        assert c.get(f"/api/v1/services/{service}/instances/{iid}").status_code == 404
        assert all(s == 200 for _, s, _ in results), Counter(s for _, s, _ in results)
    assert set(servers(f"http://127.0.0.1:{ports[0]}/echo", 4)) == {"a"}


def test_draining_instance_gets_no_new_requests_but_finishes_open_ones(stack: dict[str, Any]) -> None:
    cp, nodes = stack["cp"], stack["nodes"]
    a, b, _ = stack["ups"]
    service = fresh("stock")
    register(cp, service, a)
    bid = register(cp, service, b)
    ports = (free_port(), free_port())
    apply(cp, gateway(service, ports, timeouts={"read": "10s"}))
    wait_endpoints(nodes, {key(a), key(b)}, available=True)
    url = f"http://127.0.0.1:{ports[0]}"
    slow: list[httpx.Response] = []

    def slow_request() -> None:
        slow.append(httpx.get(f"{url}/delay?ms=1500", timeout=10))

    open_requests = [threading.Thread(target=slow_request) for _ in range(4)]
    for t in open_requests:  # round robin: two go to each instance
        t.start()

    def in_flight() -> int:
        return sum(int(n.get("/stats").json()["requests_in_flight"]) for n in nodes)

    wait_until(lambda: in_flight() >= 4, 5.0, message="the four slow requests open on the node")
    patch(cp, service, bid, status="draining")
    took = wait_endpoints(nodes, {key(a), key(b)}, timeout=2.0)
    wait_until(lambda: all(node_endpoints(n)[key(b)]["draining"] for n in nodes), 2.0, interval=0.01)
    print(f"\ndraining reached both nodes within {took:.3f}s")
    for port in ports:
        seen = servers(f"http://127.0.0.1:{port}/echo", 20)
        assert seen == {"a": 20}, seen
    for t in open_requests:
        t.join(10)
    assert [r.status_code for r in slow] == [200] * 4
    assert {r.headers["x-upstream"] for r in slow} == {"a", "b"}  # b finished the ones it had
    patch(cp, service, bid, status="up")
    wait_until(lambda: all(not node_endpoints(n)[key(b)]["draining"] for n in nodes), 2.0, interval=0.01)
    assert set(servers(f"{url}/echo", 6)) == {"a", "b"}


def test_grayscale_split_by_version_rule_and_change_without_failures(stack: dict[str, Any]) -> None:
    cp, nodes = stack["cp"], stack["nodes"]
    a, b, c = stack["ups"]
    service = fresh("search")
    for up in (a, b, c):
        register(cp, service, up)
    ports = (free_port(), free_port())
    apply(cp, gateway(service, ports))
    wait_endpoints(nodes, {key(a), key(b), key(c)}, available=True)
    # the instances are registered again with their versions: the nodes keep the endpoints and
    # must split by the versions just pushed
    gray = {"versions": {"v1": 90, "v2": 10}, "rules": [{"headers": {"x-canary": "true"}, "version": "v2"}]}
    doc = gateway(service, ports, route={"grayscale": gray})
    apply(cp, doc)
    for up, version in ((a, "v1"), (b, "v1"), (c, "v2")):
        with cp.client() as client:
            r = client.post(
                f"/api/v1/services/{service}/instances",
                json={"address": "127.0.0.1", "port": up.port, "ephemeral": False, "version": version},
            )
            assert r.status_code == 200, r.text
    wait_endpoints(nodes, {key(a), key(b), key(c)}, available=True)
    wait_until(lambda: all(node_endpoints(n)[key(c)]["version"] == "v2" for n in nodes), 3.0, interval=0.01)
    urls = [f"http://127.0.0.1:{p}/echo" for p in ports]
    seen = servers(urls[0], 200) + servers(urls[1], 200)
    share = seen["c"] / 400
    print(f"\nv1:90 v2:10 over 400 requests: {dict(seen)} (v2 share {share:.3f})")
    assert 0.04 < share < 0.18, seen
    assert seen["a"] > 100 and seen["b"] > 100, seen  # v1 is balanced over its two instances
    for url in urls:
        assert servers(url, 10, headers={"x-canary": "true"}) == {"c": 10}

    # change the split through REST while requests flow: none fails
    doc["routes"][0]["grayscale"] = {"versions": {"v1": 50, "v2": 50}}
    with traffic(urls, threads=4) as results:
        wait_until(lambda: len(results) >= 20, 5.0, message="traffic flowing before the change")
        with cp.client() as client:
            r = client.put("/api/v1/routes/all", json=doc["routes"][0])
        assert r.status_code == 200, r.text
        changed = time.monotonic()
        version = str(cp.version())

        def split_applied() -> bool:
            return all(n.get("/config_dump").json()["version"].split(".")[0] == version for n in nodes)

        wait_until(split_applied, 3.0, interval=0.01, message="both nodes at the new split")
        applied = time.monotonic()
        wait_until(lambda: since(results, applied) >= 50 and len(results) > 100, 10.0, message="traffic after it")
    assert len(results) > 100
    assert all(s == 200 for _, s, _ in results), Counter(s for _, s, _ in results)
    settled = [srv for t, _, srv in results if t > changed + 0.5]
    after = servers(urls[0], 200) + servers(urls[1], 200) + Counter(settled)
    share = after["c"] / sum(after.values())
    print(f"v1:50 v2:50 after the change: {dict(after)} (v2 share {share:.3f}); {len(results)} requests, 0 failed")
    assert 0.38 < share < 0.62, after


def test_prefer_zone_sends_each_node_to_its_zone_then_others(stack: dict[str, Any]) -> None:
    cp, nodes = stack["cp"], stack["nodes"]
    a, b, _ = stack["ups"]
    service = fresh("zones")
    with cp.client() as c:
        r = c.put(f"/api/v1/services/{service}", json={"strategy": "prefer_zone"})
    assert r.status_code == 201, r.text
    aid = register(cp, service, a, zone="z1")
    register(cp, service, b, zone="z2")
    ports = (free_port(), free_port())
    apply(cp, gateway(service, ports))
    wait_endpoints(nodes, {key(a), key(b)}, available=True)
    z1, z2 = (f"http://127.0.0.1:{p}/echo" for p in ports)
    assert servers(z1, 10) == {"a": 10}  # node-1 is in z1
    assert servers(z2, 10) == {"b": 10}  # node-2 is in z2
    # nothing left in z1: node-1 falls back to the other zones
    patch(cp, service, aid, status="draining")
    wait_until(lambda: all(node_endpoints(n)[key(a)]["draining"] for n in nodes), 2.0, interval=0.01)
    assert servers(z1, 10) == {"b": 10}
    # a filter on the cluster: only z1 instances
    patch(cp, service, aid, status="up")
    doc = gateway(service, ports)
    doc["clusters"][0]["service"] = {"name": service, "zone": "z1"}
    apply(cp, doc)
    wait_endpoints(nodes, {key(a)}, available=True)
    assert servers(z2, 6) == {"a": 6}


def test_long_poll_wakes_up_soon_after_a_change(stack: dict[str, Any]) -> None:
    cp = stack["cp"]
    a, b, _ = stack["ups"]
    service = fresh("watch")
    iid = register(cp, service, a)
    latencies = []
    with cp.client() as api:
        index = int(api.get(f"/api/v1/services/{service}/instances").headers["x-flux-index"])
        for i in range(5):
            done: dict[str, Any] = {}
            watches = cp.metric("flux_registry_watches")

            def poll(at: int = index, out: dict[str, Any] = done) -> None:
                with cp.client(timeout=15) as c:
                    r = c.get(f"/api/v1/services/{service}/instances", params={"index": at, "wait": "10s"})
                    out["t"], out["r"] = time.perf_counter(), r

            t = threading.Thread(target=poll)
            t.start()
            wait_until(lambda w=watches: cp.metric("flux_registry_watches") > w, 5.0, message="the poll is waiting")
            assert "r" not in done
            sent = time.perf_counter()
            if i % 2:
                w = api.patch(f"/api/v1/services/{service}/instances/{iid}", json={"weight": i + 2})
            else:
                body = {"address": "127.0.0.1", "port": b.port, "id": f"b{i}", "ephemeral": False}
                w = api.post(f"/api/v1/services/{service}/instances", json=body)
            t.join(15)
            latencies.append(done["t"] - sent)
            assert done["r"].status_code == 200
            index = int(done["r"].headers["x-flux-index"])
            assert index == int(w.headers["x-flux-index"])
    print(f"\nlong-poll wake-up after a change: {', '.join(f'{x * 1000:.1f} ms' for x in latencies)}")
    assert max(latencies) < 1.0, latencies
