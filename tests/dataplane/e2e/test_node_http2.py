"""HTTP/2 at the node (issue 19): h2c with prior knowledge and h2 by ALPN, multiplexing, flow
control both ways, limits, the defences (rapid reset, CONTINUATION, SETTINGS and PING floods),
GOAWAY on drain; real clients: the h2 library over raw sockets, curl, h2load."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame
from support.node import UpstreamProcess
from support.processes import free_port, wait_until
from support.snapshot_node import SnapshotNode, exchange, status_of
from support.tls import TestCA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    echo = UpstreamProcess("echo").start()
    ca = TestCA()
    cert, key = ca.issue("h2.test", ("h2.test",))
    base = tmp_path_factory.mktemp("h2")
    (base / "ca.pem").write_text(ca.pem)
    port, tls_port, plain_port = free_port(), free_port(), free_port()
    doc = {
        "certificates": [{"name": "h2", "cert": cert, "key": key}],
        "listeners": [
            {"name": "h2c", "protocol": "http", "address": "127.0.0.1", "port": port, "http2": True},
            {"name": "tls", "protocol": "https", "address": "127.0.0.1", "port": tls_port, "certificates": ["h2"]},
            {"name": "plain", "protocol": "http", "address": "127.0.0.1", "port": plain_port},
        ],
        "clusters": [{"name": "echo", "endpoints": [echo.endpoint()]}],
        "routes": [{"name": "all", "path": "/", "cluster": "echo"}],
    }
    n = SnapshotNode(base / "node", doc).start()
    try:
        yield {"node": n, "port": port, "tls": tls_port, "plain": plain_port, "base": base}
    finally:
        n.stop()
        echo.stop()


class Client:
    """An HTTP/2 client on a raw socket (h2 library), for frame-level tests."""

    def __init__(self, port: int, *, window: int = 65535) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.h2.initiate_connection()
        self.flush()
        self.responses: dict[int, dict[str, Any]] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.resets: list[int] = []

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def request(self, path: str, method: str = "GET", body: bytes = b"", headers: tuple = ()) -> int:
        sid = self.h2.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", b"http"), (b":authority", b"h2.test"),
                  (b":path", path.encode()), *headers]  # fmt: skip
        self.h2.send_headers(sid, fields, end_stream=not body)
        if body:
            self._send_body(sid, body)
        self.flush()
        self.responses[sid] = {"status": None, "data": b"", "ended": False}
        return sid

    def _send_body(self, sid: int, body: bytes) -> None:
        view = memoryview(body)
        while view:
            size = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size, len(view))
            if size <= 0:
                self.flush()
                self.pump()
                continue
            self.h2.send_data(sid, bytes(view[:size]), end_stream=size == len(view))
            view = view[size:]

    def pump(self, timeout: float = 10.0) -> bool:
        """Read once; False at EOF."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return False
        if not data:
            return False
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                self.responses[ev.stream_id]["status"] = int(dict(ev.headers)[b":status"])
                self.responses[ev.stream_id]["headers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                self.responses[ev.stream_id]["data"] += ev.data
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.responses[ev.stream_id]["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                self.resets.append(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.terminated = ev
        self.flush()
        return True

    def wait(self, sids: list[int], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.responses[s]["ended"] or s in self.resets for s in sids):
            assert time.monotonic() < deadline, "no answer in time"
            if not self.pump(deadline - time.monotonic()):
                return

    def until_goaway(self, timeout: float = 10.0) -> h2.events.ConnectionTerminated | None:
        deadline = time.monotonic() + timeout
        while self.terminated is None and time.monotonic() < deadline:
            if not self.pump(deadline - time.monotonic()):
                break
        return self.terminated

    def close(self) -> None:
        self.sock.close()


def test_h2c_with_prior_knowledge_and_http11_on_the_same_port(node: dict[str, Any]) -> None:
    c = Client(node["port"])
    sid = c.request("/echo?x=1")
    c.wait([sid])
    assert c.responses[sid]["status"] == 200 and b'"url": "/echo?x=1"' in c.responses[sid]["data"]
    c.close()
    assert status_of(exchange(node["port"], b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")) == 200


def test_a_listener_without_http2_tells_an_h2c_client_to_use_http11(node: dict[str, Any]) -> None:
    """Not an empty reply: an HTTP/2 GOAWAY with HTTP_1_1_REQUIRED (RFC 9113 7), which clients
    report; the node logs why once a minute. HTTP/1.1 on the same port is unaffected."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", node["plain"]), timeout=5) as s:
        s.sendall(conn.data_to_send())
        events: list[Any] = []
        while not any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
            data = s.recv(65536)
            assert data, events
            events += conn.receive_data(data)
    [ended] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended.error_code == h2.errors.ErrorCodes.HTTP_1_1_REQUIRED
    out = subprocess.run(
        ["curl", "-sSv", "--http2-prior-knowledge", f"http://127.0.0.1:{node['plain']}/echo"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert out.returncode != 0 and "GOAWAY, error=13" in out.stderr, out.stderr  # 13: HTTP_1_1_REQUIRED
    assert "serves HTTP/1.1 only: set http2: true" in node["node"].output()
    assert status_of(exchange(node["plain"], b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")) == 200


def test_curl_http2_both_ways(node: dict[str, Any]) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{node['port']}/echo", "-o", "/dev/null",
         "-w", "%{http_code} %{http_version}"], capture_output=True, text=True, timeout=15,
    ).stdout  # fmt: skip
    assert out == "200 2"
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(node["base"] / "ca.pem"),
         "--resolve", f"h2.test:{node['tls']}:127.0.0.1", f"https://h2.test:{node['tls']}/echo",
         "-o", "/dev/null", "-w", "%{http_code} %{http_version}"], capture_output=True, text=True, timeout=15,
    ).stdout  # fmt: skip
    assert out == "200 2"


def test_alpn_offers_h2_and_http11(node: dict[str, Any]) -> None:
    ctx = ssl.create_default_context(cafile=str(node["base"] / "ca.pem"))
    for offer, expect in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        ctx.set_alpn_protocols(offer)
        with socket.create_connection(("127.0.0.1", node["tls"]), timeout=5) as raw:
            s = ctx.wrap_socket(raw, server_hostname="h2.test")
            assert s.selected_alpn_protocol() == expect
            s.close()


def test_streams_are_multiplexed(node: dict[str, Any]) -> None:
    c = Client(node["port"])
    t0 = time.monotonic()
    sids = [c.request("/delay?ms=300") for _ in range(20)]
    c.wait(sids)
    assert all(c.responses[s]["status"] == 200 for s in sids)
    assert time.monotonic() - t0 < 3  # 20 x 300 ms one after another would be 6 s
    c.close()


def test_flow_control_both_ways(node: dict[str, Any]) -> None:
    c = Client(node["port"], window=16384)  # a small client window: the node must wait for updates
    big = c.request("/bytes?n=3000000")
    body = bytes(range(256)) * 8000  # 2 MB up, more than every window
    up = c.request("/sink", method="POST", body=body, headers=((b"content-length", str(len(body)).encode()),))
    c.wait([big, up], timeout=30)
    assert len(c.responses[big]["data"]) == 3_000_000
    assert b'"received": 2048000' in c.responses[up]["data"]
    c.close()


def test_too_many_concurrent_streams_are_refused(node: dict[str, Any]) -> None:
    c = Client(node["port"])
    c.pump()  # the node's SETTINGS
    assert c.h2.remote_settings.max_concurrent_streams == 100
    c.close()


def test_an_oversized_header_list_is_refused(node: dict[str, Any]) -> None:
    c = Client(node["port"])
    c.pump()
    sid = c.h2.get_next_available_stream_id()
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/echo")]
    fields += [(b"x-big-%d" % i, b"v" * 1000) for i in range(64)]  # 64 KB > 32 KB
    c.h2.send_headers(sid, fields, end_stream=True)
    c.flush()
    c.responses[sid] = {"status": None, "data": b"", "ended": False}
    c.wait([sid])
    status = c.responses[sid]["status"]
    assert sid in c.resets or status in (400, 431) or c.terminated is not None
    c.close()


def _raw_preface(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def _goaway_code(s: socket.socket, conn: h2.connection.H2Connection, timeout: float = 10.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = s.recv(65536)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            return None
        if not data:
            return None
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            continue
        for ev in events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                return int(ev.error_code)
    return None


def test_rapid_reset_ends_the_connection(node: dict[str, Any]) -> None:
    s, conn = _raw_preface(node["port"])
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/delay?ms=1000")]
    out = b""
    for _ in range(400):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, fields, end_stream=True)
        conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        out += conn.data_to_send()
    try:
        s.sendall(out)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert _goaway_code(s, conn) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    s.close()
    assert node["node"].metric("flux_node_events_total", event="h2_goaway_enhance_your_calm") >= 1


def test_continuation_flood_ends_the_connection(node: dict[str, Any]) -> None:
    s, conn = _raw_preface(node["port"])
    headers = HeadersFrame(1)
    headers.data = conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")])
    frames = [headers.serialize()]
    for _ in range(200):
        cont = ContinuationFrame(1)
        cont.data = b"\x00" * 16  # never END_HEADERS
        frames.append(cont.serialize())
    try:
        s.sendall(b"".join(frames))
    except (BrokenPipeError, ConnectionResetError):
        pass
    code = _goaway_code(s, conn)
    assert code is not None and code != h2.errors.ErrorCodes.NO_ERROR
    s.close()


@pytest.mark.parametrize("kind", ["settings", "ping"])
def test_settings_and_ping_floods_end_the_connection(node: dict[str, Any], kind: str) -> None:
    s, conn = _raw_preface(node["port"])
    frames = []
    for i in range(300):
        if kind == "settings":
            f = SettingsFrame(0)
            f.settings = {h2.settings.SettingCodes.HEADER_TABLE_SIZE: 4096}
        else:
            f = PingFrame(0)
            f.opaque_data = i.to_bytes(8, "big")
        frames.append(f.serialize())
    try:
        s.sendall(b"".join(frames))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert _goaway_code(s, conn) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    s.close()


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) is not installed")
def test_h2load(node: dict[str, Any]) -> None:
    out = subprocess.run(
        ["h2load", "-n", "2000", "-c", "4", "-m", "10", f"http://127.0.0.1:{node['port']}/"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "2000 succeeded, 0 failed, 0 errored" in out, out


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (Debian nghttp2-client) is not installed")
def test_goaway_on_drain_lets_streams_in_flight_finish(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGTERM: GOAWAY (NO_ERROR) at once, and the stream in flight still gets its answer.
    (nghttp as the client: the h2 library's client drops a connection on any GOAWAY.)"""
    echo = UpstreamProcess("echo").start()
    port = free_port()
    doc = {
        "listeners": [{"name": "h2c", "protocol": "http", "address": "127.0.0.1", "port": port, "http2": True}],
        "clusters": [{"name": "echo", "endpoints": [echo.endpoint()]}],
        "routes": [{"name": "all", "path": "/", "cluster": "echo"}],
    }
    n = SnapshotNode(tmp_path_factory.mktemp("drain"), doc).start()
    try:
        client = subprocess.Popen(
            ["nghttp", "-nv", f"http://127.0.0.1:{port}/delay?ms=1000"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        in_flight = lambda: httpx.get(n.admin + "/stats", timeout=5).json()["requests_in_flight"]  # noqa: E731
        wait_until(lambda: in_flight() >= 1, 5, message="the request in flight")
        assert n.proc is not None
        n.proc.send_signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=15)
        assert "recv GOAWAY frame" in out and "error_code=NO_ERROR(0x00)" in out, out
        assert ":status: 200" in out, out  # answered after the GOAWAY
        assert n.proc.wait(10) == 0
    finally:
        n.stop()
        echo.stop()
