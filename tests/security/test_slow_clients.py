"""Issue 12, part 4: slow and abusive clients. A body that stops, a head that never ends,
connection floods over a listener's limits, a saturated upstream pool (503, never an ejection)
and descriptor exhaustion with a low RLIMIT_NOFILE (the admin port keeps answering).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.node import UpstreamProcess
from support.processes import free_port, wait_until

from .conftest import HostileUpstream, SnapshotNode, exchange, read_response, status_of

pytestmark = pytest.mark.slow


HELD = threading.Event()  # the upstream has a /hold request (its pooled connection is taken)
RELEASE = threading.Event()  # the test lets it answer


def _hold_upstream(conn: socket.socket) -> None:
    """An upstream request that answers only once the test sets RELEASE (holds its pooled connection)."""
    HELD.set()
    RELEASE.wait(10)
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
    except OSError:
        pass


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, echo: UpstreamProcess) -> Iterator[dict[str, Any]]:
    slow = HostileUpstream({"/hold": _hold_upstream}).start()
    port, limited, tight = free_port(), free_port(), free_port()
    doc = {
        "listeners": [
            {
                "name": "web",
                "protocol": "http",
                "address": "127.0.0.1",
                "port": port,
                "timeouts": {"header": "1s", "body_idle": "1s", "idle": "2s"},
            },
            {
                "name": "limited",
                "protocol": "http",
                "address": "127.0.0.1",
                "port": limited,
                "limits": {"max_connections": 4, "max_connections_per_ip": 2},
            },
            {"name": "tight", "protocol": "http", "address": "127.0.0.1", "port": tight},
        ],
        "clusters": [
            {"name": "echo", "endpoints": [echo.endpoint()]},
            {
                "name": "one-conn",
                "endpoints": [{"address": "127.0.0.1", "port": slow.port}],
                "pool": {"max_connections": 1, "max_pending": 8},
                "timeouts": {"connect": "500ms", "read": "10s"},
                "outlier_detection": {"consecutive_failures": 1},
            },
        ],
        "routes": [
            {"name": "web", "listener": "web", "path": "/", "cluster": "echo"},
            {"name": "limited", "listener": "limited", "path": "/", "cluster": "echo"},
            {"name": "tight", "listener": "tight", "path": "/", "cluster": "one-conn", "retry": {"attempts": 0}},
        ],
    }
    n = SnapshotNode(tmp_path_factory.mktemp("slow"), doc).start()
    try:
        yield {"node": n, "port": port, "limited": limited, "tight": tight, "slow": slow}
    finally:
        n.stop()
        slow.stop()


def test_a_body_that_goes_silent_gets_408_and_the_connection_closes(node: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", node["port"]), timeout=5) as s:
        s.sendall(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10)
        t0 = time.monotonic()
        r = read_response(s, timeout=5)
        assert status_of(r) == 408, r
        assert time.monotonic() - t0 < 4  # body_idle is 1s
        assert s.recv(10) == b""  # closed
    assert node["node"].metric("flux_node_events_total", event="client_body_timeout") >= 1


def test_a_body_that_trickles_is_served(node: dict[str, Any]) -> None:
    """body_idle bounds silence, not speed: a body that keeps coming is read whole."""
    with socket.create_connection(("127.0.0.1", node["port"]), timeout=5) as s:
        s.sendall(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n")
        for b in b"abcd":
            time.sleep(0.5)  # stays: the trickle is the point (2 s in all, each gap under body_idle 1s)
            s.sendall(bytes([b]))
        assert status_of(read_response(s, timeout=5)) == 200


def test_a_head_that_never_ends_is_cut_at_the_header_timeout(node: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", node["port"]), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        t0 = time.monotonic()
        r = read_response(s, timeout=5)
        assert status_of(r) == 408 and time.monotonic() - t0 < 4


def test_a_keep_alive_connection_gets_a_fresh_header_timeout_not_its_idle_time(node: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", node["port"]), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status_of(read_response(s)) == 200
        time.sleep(0.5)  # stays: the idle gap before the next request is the point
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # then nothing
        t0 = time.monotonic()
        assert status_of(read_response(s, timeout=5)) == 408
        assert time.monotonic() - t0 < 3


def test_an_idle_keep_alive_connection_is_closed_after_idle(node: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", node["port"]), timeout=6) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status_of(read_response(s)) == 200
        t0 = time.monotonic()
        assert s.recv(10) == b""
        assert 1.5 < time.monotonic() - t0 < 5  # idle is 2s


def _open(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def test_max_connections_per_ip_and_per_listener(node: dict[str, Any]) -> None:
    port, n = node["limited"], node["node"]

    def accepted() -> float:
        return n.metric("flux_downstream_connections_accepted_total")

    base = accepted()
    held = [_open(port), _open(port)]
    try:
        wait_until(lambda: accepted() >= base + 2, 5, message="the node admitted the first two")
        third = _open(port)  # a third from 127.0.0.1: over max_connections_per_ip (2)
        r = read_response(third, timeout=3)
        third.close()
        assert status_of(r) == 503 or r == b""
        # Other addresses may still come, up to max_connections (4) on the listener.
        others = [_open(port, "127.0.0.2"), _open(port, "127.0.0.3")]
        held += others
        wait_until(lambda: accepted() >= base + 4, 5, message="the node admitted the next two")
        fifth = _open(port, "127.0.0.4")
        r = read_response(fifth, timeout=3)
        fifth.close()
        assert status_of(r) == 503 or r == b""
        for s in held:  # the admitted ones are served
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status_of(read_response(s)) == 200
    finally:
        for s in held:
            s.close()
    assert n.metric("flux_downstream_connections_refused_total", listener="limited",
                    reason="max_connections_per_ip") >= 1  # fmt: skip
    assert n.metric("flux_downstream_connections_refused_total", listener="limited", reason="max_connections") >= 1
    # Released: a new connection is served again.
    wait_until(lambda: status_of(exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")) == 200, 5)
    assert "refused a connection" in n.output()


def test_a_saturated_pool_answers_503_and_ejects_nobody(node: dict[str, Any]) -> None:
    port, n = node["tight"], node["node"]
    HELD.clear()
    RELEASE.clear()
    holder = socket.create_connection(("127.0.0.1", port), timeout=8)
    try:
        holder.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")  # takes the only upstream connection
        assert HELD.wait(5), "the /hold request never reached the upstream"
        t0 = time.monotonic()
        r = exchange(port, b"GET /other HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert status_of(r) == 503, r
        assert time.monotonic() - t0 < 2.5  # the pool wait (connect timeout), not a hang
        assert b"busy" in r
        RELEASE.set()
        assert status_of(read_response(holder, timeout=6)) == 200
    finally:
        RELEASE.set()
        holder.close()
    clusters = {c["name"]: c for c in httpx.get(n.admin + "/clusters", timeout=5).json()["clusters"]}
    (ep,) = clusters["one-conn"]["endpoints"]
    assert ep["available"] and not ep.get("ejected"), ep  # consecutive_failures: 1 would have ejected it
    r = exchange(port, b"GET /again HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert status_of(r) == 200
    assert n.metric("flux_upstream_errors_total", cluster="one-conn", kind="overflow") >= 1


def test_descriptor_exhaustion_keeps_admin_and_new_clients_working(
    tmp_path_factory: pytest.TempPathFactory, echo: UpstreamProcess
) -> None:
    """With RLIMIT_NOFILE 256, 600 idle connections: the node keeps a reserve for its admin port,
    closes the oldest idle connections to serve new ones, and says why in its log."""
    port = free_port()
    doc = {
        "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
        "clusters": [{"name": "echo", "endpoints": [echo.endpoint()]}],
        "routes": [{"name": "all", "path": "/", "cluster": "echo"}],
    }
    n = SnapshotNode(tmp_path_factory.mktemp("fds"), doc, nofile=256).start()
    idle: list[socket.socket] = []
    try:
        for _ in range(600):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break

        def taken() -> bool:  # every connection accepted (perhaps reclaimed later) or refused
            done = n.metric("flux_downstream_connections_accepted_total")
            done += n.metric("flux_downstream_connections_refused_total", listener="web", reason="fd_reserve")
            return done >= len(idle)

        wait_until(taken, 10, message="the node took the flood")
        assert httpx.get(n.admin + "/ready", timeout=5).status_code == 200
        assert "flux_open_sockets" in httpx.get(n.admin + "/metrics", timeout=5).text
        for _ in range(3):  # new clients are served: the oldest idle connections make room
            r = exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert status_of(r) == 200, r
        reclaimed = n.metric("flux_node_events_total", event="idle_connections_reclaimed")
        refused = n.metric("flux_downstream_connections_refused_total", listener="web", reason="fd_reserve")
        assert reclaimed + refused >= 1
        assert n.proc is not None and n.proc.poll() is None
    finally:
        for s in idle:
            s.close()
        n.stop()
