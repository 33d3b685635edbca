"""The forward proxy (issue 15, the Go Gateway Proxy seed): `mode: forward` listeners take
CONNECT and absolute-form requests to allowed destinations only, run their policies (basic
auth from Proxy-Authorization with 407, ip_acl), and log every tunnel with its bytes."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from support.node import UpstreamProcess
from support.processes import free_port, wait_until
from support.snapshot_node import SnapshotNode, exchange, read_response, status_of
from support.tls import TestCA
from support.tls_upstream import TlsUpstream

pytestmark = pytest.mark.slow

AUTH = "Proxy-Authorization: Basic " + base64.b64encode(b"bob:s3cret-pass").decode()


@pytest.fixture(scope="module")
def fwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    echo = UpstreamProcess("echo").start()
    ca = TestCA()
    cert, key = ca.issue("backend.test", ("backend.test", "127.0.0.1"))
    tls_up = TlsUpstream(cert, key).start()
    port, open_port, private_port = free_port(), free_port(), free_port()
    allow = {"allow_hosts": ["127.0.0.1", "localhost"], "allow_ports": f"{echo.port},{tls_up.port}"}
    doc = {
        "listeners": [
            {
                "name": "fwd",
                "protocol": "http",
                "address": "127.0.0.1",
                "port": port,
                "mode": "forward",
                "forward": allow,
                "policies": ["auth"],
            },
            {
                "name": "open",
                "protocol": "http",
                "address": "127.0.0.1",
                "port": open_port,
                "mode": "forward",
                "forward": {"allow_hosts": ["*"], "allow_ports": "1-65535"},
                "policies": ["no-loopback"],
            },
            {
                "name": "public-only",
                "protocol": "http",
                "address": "127.0.0.1",
                "port": private_port,
                "mode": "forward",
                "forward": {"allow_hosts": ["*"], "allow_ports": "1-65535", "deny_private": True},
            },
        ],
        "consumers": [
            {"name": "bob", "credentials": [{"type": "basic_auth", "username": "bob", "password": "s3cret-pass"}]}
        ],
        "policies": [
            {"name": "auth", "type": "basic_auth"},
            {"name": "no-loopback", "type": "ip_acl", "config": {"deny": ["127.0.0.0/8"]}},
        ],
    }
    node = SnapshotNode(tmp_path_factory.mktemp("forward"), doc).start()
    try:
        yield {"node": node, "port": port, "open": open_port, "private": private_port, "echo": echo,
               "tls_up": tls_up, "ca": ca}  # fmt: skip
    finally:
        node.stop()
        echo.stop()
        tls_up.stop()


def test_absolute_form_request_with_proxy_credentials(fwd: dict[str, Any]) -> None:
    echo = fwd["echo"]
    raw = f"GET http://127.0.0.1:{echo.port}/echo?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{echo.port}\r\n{AUTH}\r\n\r\n"
    r = exchange(fwd["port"], raw.encode())
    assert status_of(r) == 200
    seen = json.loads(r.partition(b"\r\n\r\n")[2])
    assert seen["url"] == "/echo?x=1"  # origin form upstream
    assert "Proxy-Authorization" not in seen["headers"]


def test_missing_or_wrong_proxy_credentials_are_407(fwd: dict[str, Any]) -> None:
    echo = fwd["echo"]
    r = exchange(fwd["port"], f"GET http://127.0.0.1:{echo.port}/echo HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(r) == 407 and b"Proxy-Authenticate: Basic" in r
    wrong = "Proxy-Authorization: Basic " + base64.b64encode(b"bob:nope").decode()
    r = exchange(fwd["port"], f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n{wrong}\r\n\r\n".encode())
    assert status_of(r) == 407


def test_connect_tunnel_carries_tls_end_to_end(fwd: dict[str, Any]) -> None:
    up = fwd["tls_up"]
    with socket.create_connection(("127.0.0.1", fwd["port"]), timeout=5) as raw:
        raw.sendall(f"CONNECT 127.0.0.1:{up.port} HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\n{AUTH}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(1)
        assert head.startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cadata=fwd["ca"].pem)
        s = ctx.wrap_socket(raw, server_hostname="backend.test")
        s.sendall(b"GET /inside HTTP/1.1\r\nHost: backend.test\r\n\r\n")
        assert json.loads(read_response(s).partition(b"\r\n\r\n")[2])["path"] == "/inside"
        s.close()

    def logged() -> bool:
        lines = (fwd["node"].workdir / "access.log").read_text().splitlines()
        return any('"method":"CONNECT"' in ln and '"status":200' in ln and '"bytes_out":0' not in ln for ln in lines)

    wait_until(logged, 5, message="CONNECT in the access log with its bytes")


def test_curl_through_the_proxy(fwd: dict[str, Any]) -> None:
    echo = fwd["echo"]
    for extra in ([], ["-p"]):  # absolute form, then CONNECT (-p)
        out = subprocess.run(
            ["curl", "-sS", *extra, "-x", f"http://bob:s3cret-pass@127.0.0.1:{fwd['port']}",
             f"http://127.0.0.1:{echo.port}/echo", "-o", "/dev/null", "-w", "%{http_code}"],
            capture_output=True, text=True, timeout=15,
        ).stdout  # fmt: skip
        assert out == "200"


@pytest.mark.parametrize(
    "target",
    ["CONNECT example.com:443", "CONNECT 127.0.0.1:22", "GET http://10.1.2.3:80/", "GET http://localhost:1/"],
)
def test_destinations_outside_the_allow_lists_are_403(fwd: dict[str, Any], target: str) -> None:
    r = exchange(fwd["port"], f"{target} HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n\r\n".encode())
    assert status_of(r) == 403
    assert fwd["node"].metric("flux_node_events_total", event="forward_refused") >= 1


def test_listener_policies_run(fwd: dict[str, Any]) -> None:
    echo = fwd["echo"]
    r = exchange(fwd["open"], f"GET http://127.0.0.1:{echo.port}/echo HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(r) == 403  # ip_acl: the test client is 127.0.0.1


def test_deny_private_refuses_literals_and_names(fwd: dict[str, Any]) -> None:
    echo = fwd["echo"]
    for dest in (f"127.0.0.1:{echo.port}", f"localhost:{echo.port}", "10.0.0.1:80", "[::1]:80"):
        r = exchange(fwd["private"], f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n".encode())
        assert status_of(r) == 403, dest


def test_origin_form_on_a_forward_listener_is_400(fwd: dict[str, Any]) -> None:
    assert status_of(exchange(fwd["port"], f"GET /echo HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n\r\n".encode())) == 400
