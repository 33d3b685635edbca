"""Layer 4 through a real node (issue 15): tcp listeners carry bytes both ways with half-close
and an idle timeout, udp listeners relay datagrams both ways, and `tls` listeners pass TLS
through by the ClientHello's SNI (routes' hosts), to a default cluster when nothing matches."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.processes import free_port
from support.snapshot_node import SnapshotNode
from support.tls import TestCA
from support.tls_upstream import TlsUpstream

pytestmark = pytest.mark.slow


class TcpEcho:
    """Echoes what it reads; after the client's half-close it sends "bye" and closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.closed_by_peer = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    conn.sendall(b"bye")  # the client half-closed: this direction still works
                    break
                conn.sendall(data)
            if not conn.recv(1):
                self.closed_by_peer.set()
        except OSError:
            self.closed_by_peer.set()
        finally:
            conn.close()


class UdpEcho:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
                self.sock.sendto(b"echo:" + data, peer)
            except OSError:
                return


@pytest.fixture(scope="module")
def l4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tcp, udp = TcpEcho(), UdpEcho()
    ca = TestCA()
    a_cert, a_key = ca.issue("a.test", ("a.test", "*.a.test"))
    b_cert, b_key = ca.issue("b.test", ("b.test", "default.test"))
    up_a, up_b = TlsUpstream(a_cert, a_key).start(), TlsUpstream(b_cert, b_key).start()
    tcp_port, idle_port, udp_port, tls_port = free_port(), free_port(), free_port(), free_port()
    node_addr = {"address": "127.0.0.1"}
    doc = {
        "listeners": [
            {"name": "tcp", "protocol": "tcp", "port": tcp_port, "cluster": "tcp-echo", **node_addr},
            {
                "name": "tcp-idle",
                "protocol": "tcp",
                "port": idle_port,
                "cluster": "tcp-echo",
                "timeouts": {"idle": "1s"},
                **node_addr,
            },
            {"name": "udp", "protocol": "udp", "port": udp_port, "cluster": "udp-echo", **node_addr},
            {"name": "tls", "protocol": "tls", "port": tls_port, "cluster": "b", **node_addr},
        ],
        "clusters": [
            {"name": "tcp-echo", "endpoints": [{"address": "127.0.0.1", "port": tcp.port}]},
            {"name": "udp-echo", "endpoints": [{"address": "127.0.0.1", "port": udp.port}]},
            {"name": "a", "endpoints": [up_a.endpoint()]},
            {"name": "b", "endpoints": [up_b.endpoint()]},
        ],
        "routes": [{"name": "to-a", "listener": "tls", "hosts": ["a.test", "*.a.test"], "cluster": "a"}],
    }
    node = SnapshotNode(tmp_path_factory.mktemp("l4"), doc).start()
    try:
        yield {"node": node, "tcp": tcp_port, "idle": idle_port, "udp": udp_port, "tls": tls_port, "ca": ca,
               "tcp_echo": tcp, "up_a": up_a, "up_b": up_b}  # fmt: skip
    finally:
        node.stop()
        up_a.stop()
        up_b.stop()


def test_tcp_bytes_both_ways_and_half_close(l4: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", l4["tcp"]), timeout=5) as s:
        payload = bytes(range(256)) * 2000  # 512 KB
        got = b""
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        while len(got) < len(payload):
            got += s.recv(65536)
        sender.join()
        assert got == payload
        s.shutdown(socket.SHUT_WR)  # half-close: the upstream sees EOF, and may still answer
        rest = b""
        while chunk := s.recv(100):
            rest += chunk
        assert rest == b"bye"


def test_tcp_idle_timeout_closes_both_sides(l4: dict[str, Any]) -> None:
    echo: TcpEcho = l4["tcp_echo"]
    echo.closed_by_peer.clear()
    with socket.create_connection(("127.0.0.1", l4["idle"]), timeout=5) as s:
        s.sendall(b"hi")
        assert s.recv(10) == b"hi"
        t0 = time.monotonic()
        assert s.recv(10) == b""  # nothing moved for 1 s: closed
        assert 0.8 < time.monotonic() - t0 < 4
    assert echo.closed_by_peer.wait(5)  # and the upstream side too


def test_udp_relays_both_ways_per_client(l4: dict[str, Any]) -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for i, s in enumerate(socks):
            s.settimeout(3)
            s.sendto(f"ping {i}".encode(), ("127.0.0.1", l4["udp"]))
        for i, s in enumerate(socks):
            assert s.recvfrom(100)[0] == f"echo:ping {i}".encode()
    finally:
        for s in socks:
            s.close()


def _tls_name(l4: dict[str, Any], sni: str | None) -> tuple[str, str]:
    ctx = ssl.create_default_context(cadata=l4["ca"].pem)
    if sni is None:
        ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", l4["tls"]), timeout=5) as raw:
        s = ctx.wrap_socket(raw, server_hostname=sni)
        s.sendall(b"GET /through HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(65536)
        cert = s.getpeercert()
        cn = next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")
        return cn, data.decode("latin-1")


def test_tls_passthrough_by_sni(l4: dict[str, Any]) -> None:
    cn, response = _tls_name(l4, "a.test")
    assert cn == "a.test" and "200 OK" in response  # end to end: the node never terminated TLS
    assert l4["up_a"].sni[-1] == "a.test"
    assert _tls_name(l4, "x.a.test")[0] == "a.test"  # a wildcard route
    cn, _ = _tls_name(l4, "default.test")  # no route: the listener's default cluster
    assert cn == "b.test"


def test_tls_passthrough_without_sni_goes_to_the_default(l4: dict[str, Any]) -> None:
    cn, _ = _tls_name(l4, None)
    assert cn == "b.test"


def test_not_tls_on_a_tls_listener_is_closed(l4: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", l4["tls"]), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100) == b""
