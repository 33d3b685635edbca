"""End-to-end: a control plane, two flux-node processes and real echo upstreams.

Every test replaces the whole config through REST (`/api/v1/apply?prune=true`),
so the nodes also reconfigure listeners, routes and clusters between tests.
"""

from __future__ import annotations

import os
import pathlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, free_port, wait_until

pytestmark = pytest.mark.slow

KINDS = ("listeners", "clusters", "routes", "policies", "consumers", "certificates", "tunnels")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("stack")
    ups = [UpstreamProcess(name).start() for name in ("a", "b", "c")]
    cp = ControlPlaneProcess(base / "cp").start()
    nodes = [NodeProcess(base / f"n{i}", cp.grpc_addr, node_id=f"node-{i}") for i in (1, 2)]
    for node in nodes:
        node.start(wait_ready=False)
    try:
        yield {"cp": cp, "nodes": nodes, "ups": ups, "base": base}
    finally:
        for node in nodes:
            node.stop()
        cp.stop()
        for up in ups:
            up.stop()


def apply(cp: ControlPlaneProcess, doc: dict[str, Any]) -> int:
    body = {kind: doc.get(kind, []) for kind in KINDS}
    with cp.client() as c:
        r = c.post("/api/v1/apply", json=body, params={"prune": True})
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def converge(stack: dict[str, Any], doc: dict[str, Any], timeout: float = 5.0) -> int:
    version = apply(stack["cp"], doc)
    for node in stack["nodes"]:
        node.wait_version(version, timeout)
    return version


def basic(port: int, endpoints: list[dict[str, Any]], **cluster: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
        "clusters": [{"name": "app", "endpoints": endpoints, **cluster}],
        "routes": [{"name": "all", "listener": "web", "path": "/", "cluster": "app"}],
    }


def test_route_created_through_rest_serves_through_both_nodes(stack: dict[str, Any]) -> None:
    a = stack["ups"][0]
    port = free_port()
    converge(stack, basic(port, [a.endpoint()]))
    for node in stack["nodes"]:
        r = httpx.get(f"http://127.0.0.1:{port}/echo?x=1", headers={"Host": "shop.example.com:8080"})
        assert r.status_code == 200
        body = r.json()
        assert body["server"] == "a"
        assert body["url"] == "/echo?x=1"
        assert body["headers"]["Host"] == "shop.example.com:8080"  # Host passed through
        assert body["headers"]["X-Forwarded-For"] == "127.0.0.1"
        assert body["headers"]["X-Forwarded-Proto"] == "http"
        assert body["headers"]["X-Forwarded-Host"] == "shop.example.com:8080"
        assert body["headers"]["X-Request-Id"] == r.headers["x-request-id"]  # created
        kept = httpx.get(f"http://127.0.0.1:{port}/echo", headers={"X-Request-Id": "abc-123"}).json()
        assert kept["headers"]["X-Request-Id"] == "abc-123"
        assert node.is_ready()
    # each node reports the same version to the control plane
    with stack["cp"].client() as c:
        nodes = {n["id"]: n for n in c.get("/api/v1/nodes").json()["items"]}
    assert nodes["node-1"]["in_sync"] and nodes["node-2"]["in_sync"]


def test_hop_by_hop_headers_do_not_cross(stack: dict[str, Any]) -> None:
    port = free_port()
    converge(stack, basic(port, [stack["ups"][0].endpoint()]))
    r = httpx.get(
        f"http://127.0.0.1:{port}/echo",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
        },
    )
    seen = {k.lower() for k in r.json()["headers"]}
    assert "x-secret-hop" not in seen and "keep-alive" not in seen and "te" not in seen
    assert "connection" not in seen


def test_changed_route_is_served_by_both_nodes_within_one_second(stack: dict[str, Any]) -> None:
    a, b = stack["ups"][:2]
    port = free_port()
    doc = basic(port, [a.endpoint()])
    converge(stack, doc)
    doc["clusters"][0]["endpoints"] = [b.endpoint()]
    t0 = time.monotonic()
    apply(stack["cp"], doc)

    def both_on_b() -> bool:
        return all(httpx.get(f"http://127.0.0.1:{port}/echo").json()["server"] == "b" for _ in range(4))

    wait_until(both_on_b, timeout=1.0, interval=0.01, message="both nodes serving the changed route")
    for node in stack["nodes"]:
        node.wait_version(stack["cp"].version(), timeout=1.0 - (time.monotonic() - t0) + 0.5)
    print(f"change served by both nodes after {time.monotonic() - t0:.3f}s")


def test_no_route_gives_404_json(stack: dict[str, Any]) -> None:
    port = free_port()
    doc = basic(port, [stack["ups"][0].endpoint()])
    doc["routes"][0].update({"path": "/api", "hosts": ["api.example.com"]})
    converge(stack, doc)
    r = httpx.get(f"http://127.0.0.1:{port}/other", headers={"Host": "api.example.com"})
    assert r.status_code == 404
    assert r.json()["error"] == "no_route"
    r = httpx.get(f"http://127.0.0.1:{port}/api/x", headers={"Host": "www.example.com"})
    assert r.status_code == 404
    assert httpx.get(f"http://127.0.0.1:{port}/api/x", headers={"Host": "api.example.com"}).status_code == 200


def test_refused_upstream_gives_502(stack: dict[str, Any]) -> None:
    port = free_port()
    converge(stack, basic(port, [{"address": "127.0.0.1", "port": free_port()}]))
    r = httpx.get(f"http://127.0.0.1:{port}/")
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "bad_gateway" and body["request_id"] == r.headers["x-request-id"]


def test_slow_upstream_gives_504(stack: dict[str, Any]) -> None:
    port = free_port()
    converge(stack, basic(port, [stack["ups"][0].endpoint()], timeouts={"connect": "1s", "read": "300ms"}))
    t0 = time.monotonic()
    r = httpx.get(f"http://127.0.0.1:{port}/delay?ms=3000", timeout=10)
    assert r.status_code == 504
    assert r.json()["error"] == "upstream_timeout"
    assert time.monotonic() - t0 < 2.5
    assert httpx.get(f"http://127.0.0.1:{port}/delay?ms=10").status_code == 200


def test_no_healthy_endpoint_gives_503(stack: dict[str, Any]) -> None:
    port = free_port()
    dead = {"address": "127.0.0.1", "port": free_port()}
    converge(
        stack,
        basic(port, [dead], health_check={"type": "tcp", "interval": "200ms", "unhealthy_threshold": 1}),
    )
    for node in stack["nodes"]:
        wait_until(lambda n=node: n.clusters()["app"]["available"] == 0, 5, message="endpoint marked unhealthy")
    r = httpx.get(f"http://127.0.0.1:{port}/")
    assert r.status_code == 503
    assert r.json()["error"] == "unavailable"


def test_active_health_checks_take_endpoints_out_and_back(stack: dict[str, Any], tmp_path: pathlib.Path) -> None:
    up = UpstreamProcess("hc").start()
    try:
        port = free_port()
        converge(
            stack,
            basic(
                port,
                [up.endpoint(), stack["ups"][1].endpoint()],
                health_check={
                    "type": "http",
                    "path": "/healthz",
                    "interval": "200ms",
                    "unhealthy_threshold": 2,
                    "healthy_threshold": 2,
                },
            ),
        )
        node = stack["nodes"][0]
        key = f"127.0.0.1:{up.port}"

        def ep_state() -> dict[str, Any]:
            return next(e for e in node.clusters()["app"]["endpoints"] if e["key"] == key)

        wait_until(lambda: ep_state()["healthy"] and ep_state()["last_check"] == "http 200", 5)
        up.stop()
        wait_until(lambda: not ep_state()["healthy"], 5, message="endpoint unhealthy after its server stopped")
        servers = {httpx.get(f"http://127.0.0.1:{port}/echo").json()["server"] for _ in range(6)}
        assert servers == {"b"}
        up.restart()
        wait_until(lambda: ep_state()["healthy"], 5, message="endpoint healthy again")
        servers = {httpx.get(f"http://127.0.0.1:{port}/echo").json()["server"] for _ in range(6)}
        assert servers == {"hc", "b"}
    finally:
        up.stop()


def test_a_listener_no_node_can_bind_is_set_aside_and_the_rest_of_the_version_serves(
    stack: dict[str, Any],
) -> None:
    port = free_port()
    converge(stack, basic(port, [stack["ups"][0].endpoint()]))
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        doc = basic(port, [stack["ups"][1].endpoint()])
        doc["listeners"].append({"name": "clash", "protocol": "http", "address": "127.0.0.1", "port": taken})
        bad = apply(stack["cp"], doc)

        def set_aside() -> list[dict[str, Any]] | None:
            with stack["cp"].client() as c:
                items = c.get("/api/v1/nodes").json()["items"]
            mine = [n for n in items if n["id"] in ("node-1", "node-2")]
            ok = all(n["acked_version"] == str(bad) and n["failing_resources"] for n in mine)
            return mine if ok and len(mine) == 2 else None

        nodes = wait_until(set_aside, 10, message="both nodes apply the version with the listener set aside")
        for n in nodes:
            assert n["last_nack"] is None or n["last_nack"]["version"] != str(bad), n
            [failing] = n["failing_resources"]
            assert failing["kind"] == "listener" and failing["name"] == "clash", failing
            assert str(taken) in failing["message"], failing
        for node in stack["nodes"]:
            assert node.version() == str(bad)
        # the rest of the version took effect: the cluster now points at upstream b
        assert httpx.get(f"http://127.0.0.1:{port}/echo").json()["server"] == "b"
    finally:
        blocker.close()
    # the next version retries the listener set aside; now the port is free, it opens
    doc["routes"].append({"name": "extra", "listener": "web", "path": "/extra", "cluster": "app"})
    fixed = converge(stack, doc)
    assert fixed > bad
    with stack["cp"].client() as c:
        items = c.get("/api/v1/nodes").json()["items"]
    assert all(not n["failing_resources"] for n in items if n["id"] in ("node-1", "node-2")), items
    assert httpx.get(f"http://127.0.0.1:{port}/echo").json()["server"] == "b"


def _rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_large_bodies_stream_both_ways_in_constant_memory(stack: dict[str, Any]) -> None:
    port = free_port()
    converge(stack, basic(port, [stack["ups"][0].endpoint()], timeouts={"read": "60s"}))
    node = stack["nodes"][0]
    assert node.proc is not None
    size = 256 * 1024 * 1024
    before = _rss_kib(node.proc.pid)
    got = 0
    with httpx.stream("GET", f"http://127.0.0.1:{port}/stream?n={size}&chunk=65536", timeout=60) as r:
        assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
        for piece in r.iter_raw(1 << 20):
            got += len(piece)
    assert got == size

    def body() -> Iterator[bytes]:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            yield block

    r = httpx.post(f"http://127.0.0.1:{port}/sink", content=body(), timeout=60)
    assert r.status_code == 200 and r.json()["received"] == size
    r = httpx.post(f"http://127.0.0.1:{port}/sink", content=b"z" * 5_000_000, headers={"Expect": "100-continue"})
    assert r.json()["received"] == 5_000_000
    grown = _rss_kib(node.proc.pid) - before
    assert grown < 64 * 1024, f"node memory grew by {grown} KiB while streaming {size >> 20} MiB each way"


def test_weighted_split_between_clusters(stack: dict[str, Any]) -> None:
    a, b = stack["ups"][:2]
    port = free_port()
    converge(
        stack,
        {
            "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
            "clusters": [
                {"name": "stable", "endpoints": [a.endpoint()]},
                {"name": "canary", "endpoints": [b.endpoint()]},
            ],
            "routes": [
                {
                    "name": "split",
                    "listener": "web",
                    "path": "/",
                    "clusters": [{"name": "stable", "weight": 80}, {"name": "canary", "weight": 20}],
                },
            ],
        },
    )
    counts: Counter[str] = Counter()
    with httpx.Client() as c:
        for _ in range(600):
            counts[c.get(f"http://127.0.0.1:{port}/echo").json()["server"]] += 1
    share = counts["b"] / 600
    assert 0.13 < share < 0.27, counts


def test_balancers_round_robin_and_consistent_hash(stack: dict[str, Any]) -> None:
    ups = stack["ups"]
    port = free_port()
    converge(stack, basic(port, [u.endpoint() for u in ups]))
    with httpx.Client() as c:
        servers = [c.get(f"http://127.0.0.1:{port}/echo").json()["server"] for _ in range(9)]
    assert Counter(servers) == {"a": 3, "b": 3, "c": 3}
    converge(stack, basic(port, [u.endpoint() for u in ups], lb="consistent_hash", hash_on="header:x-user"))
    with httpx.Client() as c:
        for user in ("alice", "bob", "carol", "dave"):
            seen = {c.get(f"http://127.0.0.1:{port}/echo", headers={"x-user": user}).json()["server"] for _ in range(5)}
            assert len(seen) == 1, (user, seen)


def test_cookie_session_affinity(stack: dict[str, Any]) -> None:
    ups = stack["ups"]
    port = free_port()
    converge(stack, basic(port, [u.endpoint() for u in ups], session_affinity={"cookie": "srv"}))
    url = f"http://127.0.0.1:{port}/echo"
    first = httpx.get(url)
    cookie = first.cookies.get("srv")
    assert cookie, first.headers
    server = first.json()["server"]
    for _ in range(6):
        r = httpx.get(url, cookies={"srv": cookie})
        assert r.json()["server"] == server
        assert "set-cookie" not in r.headers
    r = httpx.get(url, cookies={"srv": "0123456789abcdef"})  # unknown endpoint id: fall back, reset cookie
    assert r.status_code == 200 and r.cookies.get("srv")


def test_killed_endpoint_is_ejected_and_traffic_continues_without_errors(stack: dict[str, Any]) -> None:
    victim = UpstreamProcess("victim").start()
    try:
        port = free_port()
        converge(
            stack,
            basic(
                port,
                [victim.endpoint(), stack["ups"][1].endpoint()],
                outlier_detection={"consecutive_failures": 2, "base_ejection": "30s"},
            ),
        )
        url = f"http://127.0.0.1:{port}/echo"
        results: list[tuple[float, int]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=5) as c:
                while not stop.is_set():
                    try:
                        results.append((time.monotonic(), c.get(url).status_code))
                    except httpx.HTTPError:
                        results.append((time.monotonic(), 0))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(results) >= 20, 5, message="traffic before the kill")
        victim.stop()
        killed_at = time.monotonic()
        settled = lambda: sum(1 for t, _ in list(results) if t > killed_at + 0.5) > 50  # noqa: E731
        wait_until(settled, 10, message="traffic after the kill")
        stop.set()
        for t in threads:
            t.join()
        after = [s for t, s in results if t > killed_at + 0.5]
        assert len(after) > 50
        assert all(s == 200 for s in after), Counter(after)
        errors = [s for t, s in results if t > killed_at and s != 200]
        print(f"{len(results)} requests; {len(errors)} errors right after the kill, none after ejection")
        # Both nodes share the port (SO_REUSEPORT): the 4 keep-alive clients may all have landed on
        # one of them, and only a node that saw the failures ejects (passive health is per node).
        key = f"127.0.0.1:{victim.port}"
        states = [{e["key"]: e for e in n.clusters()["app"]["endpoints"]}[key]["available"] for n in stack["nodes"]]
        assert False in states, states
    finally:
        victim.stop()


def test_admin_endpoints(stack: dict[str, Any]) -> None:
    port = free_port()
    doc = basic(port, [stack["ups"][0].endpoint()])
    doc["consumers"] = [{"name": "alice", "credentials": [{"type": "jwt", "issuer": "idp", "secret": "s" * 24}]}]
    version = converge(stack, doc)
    httpx.get(f"http://127.0.0.1:{port}/echo")
    node = stack["nodes"][0]
    ready = node.get("/ready").json()
    assert ready["ready"] is True and ready["version"] == str(version)
    metrics = node.get("/metrics").text
    assert 'flux_http_requests_total{cluster="app",listener="web",route="all",status="200"}' in metrics
    assert "flux_http_request_duration_seconds_bucket" in metrics
    assert f"flux_config_version {float(version)}" in metrics
    assert 'flux_upstream_connections{cluster="app",state="idle"}' in metrics
    dump = node.get("/config_dump").json()
    assert dump["version"] == str(version)
    secret = dump["snapshot"]["consumers"][0]["credentials"][0]["secret"]
    assert secret == "********"
    assert "s" * 24 not in node.get("/config_dump").text
    clusters = node.clusters()
    assert clusters["app"]["endpoints"][0]["available"] is True
    lines = wait_until(
        lambda: [e for e in node.access_log() if e["route"] == "all"], message="the access log has the request"
    )
    entry = lines[-1]
    for key in ("request_id", "route", "upstream", "status", "bytes_out", "duration_ms"):
        assert key in entry


def test_malformed_traffic_gets_4xx_and_never_crashes_the_node(stack: dict[str, Any]) -> None:
    port = free_port()
    converge(stack, basic(port, [stack["ups"][0].endpoint()]))
    bad = [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
        (b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64), b"400"),
    ]
    for payload, status in bad:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 " + status), (payload[:40], answer[:80])
    for node in stack["nodes"]:
        assert node.running and node.is_ready()
    assert httpx.get(f"http://127.0.0.1:{port}/echo").status_code == 200


def test_listeners_open_and_close_without_restart(stack: dict[str, Any]) -> None:
    p1, p2 = free_port(), free_port()
    doc = basic(p1, [stack["ups"][0].endpoint()])
    converge(stack, doc)
    slow: dict[str, Any] = {}

    def slow_request() -> None:
        slow["r"] = httpx.get(f"http://127.0.0.1:{p1}/delay?ms=1200", timeout=10)

    t = threading.Thread(target=slow_request)
    t.start()
    in_flight = lambda: sum(int(n.get("/stats").json()["requests_in_flight"]) for n in stack["nodes"])  # noqa: E731
    wait_until(lambda: in_flight() >= 1, 5, message="the slow request in flight")
    doc["listeners"] = [{"name": "web2", "protocol": "http", "address": "127.0.0.1", "port": p2}]
    doc["routes"][0]["listener"] = "web2"
    converge(stack, doc)
    assert httpx.get(f"http://127.0.0.1:{p2}/echo").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{p1}/echo")
    t.join()
    assert slow["r"].status_code == 200  # in flight on the removed listener: finished


def test_websocket_upgrade_is_piped_both_ways(stack: dict[str, Any]) -> None:
    port = free_port()
    converge(stack, basic(port, [stack["ups"][0].endpoint()]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = b""
        while b"greeting-from-a\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 101")
        assert b"upgrade: websocket" in head and b"connection: upgrade" in head
        assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in head
        for message in (b"frame-one", b"x" * 100_000):
            s.sendall(message)
            echoed = b""
            while len(echoed) < len(message):
                echoed += s.recv(65536)
            assert echoed == message


def test_grayscale_split_rules_and_sticky_cookie(stack: dict[str, Any]) -> None:
    a, b, c = stack["ups"]
    port = free_port()
    endpoints = [
        {**a.endpoint(), "version": "v1"},
        {**b.endpoint(), "version": "v1"},
        {**c.endpoint(), "version": "v2"},
    ]
    doc = basic(port, endpoints)
    doc["routes"][0]["grayscale"] = {
        "versions": {"v1": 80, "v2": 20},
        "rules": [{"headers": {"x-canary": "true"}, "version": "v2"}],
    }
    converge(stack, doc)
    url = f"http://127.0.0.1:{port}/echo"
    with httpx.Client() as client:
        servers = Counter(client.get(url).json()["server"] for _ in range(500))
        assert 0.12 < servers["c"] / 500 < 0.28, servers  # v2 is only "c"
        assert {client.get(url, headers={"x-canary": "true"}).json()["server"] for _ in range(10)} == {"c"}
    doc["routes"][0]["grayscale"] = {"versions": {"v1": 50, "v2": 50}, "sticky": {"cookie": "gray"}}
    converge(stack, doc)  # the split changes through REST; requests keep flowing
    first = httpx.get(url)
    version = first.cookies.get("gray")
    assert version in ("v1", "v2")
    expected = {"v1": {"a", "b"}, "v2": {"c"}}[version]
    with httpx.Client(cookies={"gray": version}) as client:
        assert {client.get(url).json()["server"] for _ in range(10)} <= expected
