"""End-to-end: frp's client plugins in `flux-tunnel` (issue 20, item 3), each used by a real client.

One control plane and one `flux-node`; one agent (a child process) serves every plugin proxy of
the module. The clients are curl (`--proxy`, `--socks5-hostname`, plain GETs of the static files,
`--resolve` + TLS for the https plugins) and Python's ssl for tls2raw; behind the plugins are the
echo upstream (scripts/echo_upstream.py), an HTTPS upstream, a TCP echo and a unix socket echo.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, free_port
from support.tls import self_signed
from support.tls_upstream import TlsUpstream
from support.tunnel import AgentProcess, TcpEchoServer, recv_exact

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

DOMAIN = "plugins.example.test"


def port_block(size: int = 20) -> int:
    for _ in range(50):
        start = free_port()
        start -= start % size
        if not 20000 <= start < 60000 - size:
            continue
        try:
            for p in range(start, start + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return start
    raise AssertionError("no block of free ports")


class UnixEcho:
    def __init__(self, path: pathlib.Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"unix:")
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("plugins")
    cp = ControlPlaneProcess(base / "cp").start()
    node = NodeProcess(base / "node", cp.grpc_addr, node_id="plugins-1")
    up = UpstreamProcess("local").start()
    cert, key = self_signed("local.https")
    https_up = TlsUpstream(cert, key).start()
    echo = TcpEchoServer(b"raw:")
    unix = UnixEcho(base / "echo.sock")
    ports = port_block()
    t = {"vhost_http": free_port(), "vhost_https": free_port(), "bind": free_port()}
    www = base / "www"
    (www / "docs").mkdir(parents=True)
    (www / "hello.txt").write_text("hello static\n")
    (www / "docs" / "index.html").write_text("<h1>docs</h1>\n")
    (base / "secret.txt").write_text("outside localPath\n")
    os.symlink(base / "secret.txt", www / "escape.txt")
    (base / "server.crt").write_text(self_signed(DOMAIN)[0])
    crt_key = self_signed(DOMAIN)
    (base / "server.crt").write_text(crt_key[0])
    (base / "server.key").write_text(crt_key[1])
    try:
        node.start(wait_ready=False)
        spec = {"name": "plugins", "bind_address": "127.0.0.1", "bind_port": t["bind"], "token": "plug-token",
                "allow_ports": f"{ports}-{ports + 19}", "vhost_http_port": t["vhost_http"],
                "vhost_https_port": t["vhost_https"]}  # fmt: skip
        with cp.client() as c:
            r = c.put("/api/v1/tunnels/plugins", json=spec)
        assert r.status_code in (200, 201), r.text
        node.wait_version(cp.version(), timeout=10)
        local = f"127.0.0.1:{up.port}"
        proxies = [
            {"name": "hp", "type": "tcp", "remotePort": ports,
             "plugin": {"type": "http_proxy", "httpUser": "u", "httpPassword": "p"}},
            {"name": "s5", "type": "tcp", "remotePort": ports + 1,
             "plugin": {"type": "socks5", "username": "u", "password": "p"}},
            {"name": "files", "type": "tcp", "remotePort": ports + 2,
             "plugin": {"type": "static_file", "localPath": str(www), "stripPrefix": "static", "httpUser": "a",
                        "httpPassword": "b"}},
            {"name": "uds", "type": "tcp", "remotePort": ports + 3,
             "plugin": {"type": "unix_domain_socket", "unixPath": str(base / "echo.sock")}},
            {"name": "h2h", "type": "tcp", "remotePort": ports + 4,
             "plugin": {"type": "http2http", "localAddr": local, "hostHeaderRewrite": "rewritten.internal",
                        "requestHeaders": {"set": {"x-from-where": "frp"}}}},
            {"name": "tls2raw", "type": "tcp", "remotePort": ports + 5,
             "plugin": {"type": "tls2raw", "localAddr": f"127.0.0.1:{echo.port}", "crtPath": str(base / "server.crt"),
                        "keyPath": str(base / "server.key")}},
            {"name": "s2h", "type": "https", "customDomains": [f"s2h.{DOMAIN}"],
             "plugin": {"type": "https2http", "localAddr": local, "requestHeaders": {"set": {"x-from-where": "frp"}}}},
            {"name": "s2s", "type": "https", "customDomains": [f"s2s.{DOMAIN}"],
             "plugin": {"type": "https2https", "localAddr": f"127.0.0.1:{https_up.port}", "crtPath": "server.crt",
                        "keyPath": "server.key"}},
            {"name": "h2s", "type": "http", "customDomains": [f"h2s.{DOMAIN}"],
             "plugin": {"type": "http2https", "localAddr": f"127.0.0.1:{https_up.port}"}},
        ]  # fmt: skip
        agent = AgentProcess(base, "plugins", {
            "serverAddr": "127.0.0.1", "serverPort": t["bind"], "auth": {"token": "plug-token"},
            "transport": {"tls": {"insecureSkipVerify": True}}, "proxies": proxies,
        }).start()  # fmt: skip
        for p in proxies:
            agent.wait_proxy(p["name"])
        yield {"ports": ports, "agent": agent, "tunnel": t, "up": up, "https_up": https_up, "base": base}
        agent.stop()
    finally:
        for closer in (unix.close, echo.close, https_up.stop, up.stop, node.stop, cp.stop):
            closer()


def headers_of(echo: dict[str, Any]) -> dict[str, str]:
    """The request headers the echo upstream saw, by lower-case name."""
    return {k.lower(): v for k, v in echo["headers"].items()}


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)


def test_http_proxy_plugin_with_curl_proxy(world: dict[str, Any]) -> None:
    port, up = world["ports"], world["up"]
    target = f"http://127.0.0.1:{up.port}/echo"
    ok = curl("--proxy", f"http://u:p@127.0.0.1:{port}", target)
    assert ok.returncode == 0 and json.loads(ok.stdout)["server"] == "local", ok
    tunnelled = curl("-p", "--proxy", f"http://u:p@127.0.0.1:{port}", target)  # CONNECT, then HTTP inside
    assert tunnelled.returncode == 0 and json.loads(tunnelled.stdout)["path"] == "/echo", tunnelled
    denied = curl("-o", "/dev/null", "-w", "%{http_code}", "--proxy", f"http://u:wrong@127.0.0.1:{port}", target)
    assert denied.stdout == "407", denied


def test_socks5_plugin_with_curl_socks5(world: dict[str, Any]) -> None:
    port, up = world["ports"] + 1, world["up"]
    ok = curl("--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", "u:p", f"http://localhost:{up.port}/echo")
    assert ok.returncode == 0 and json.loads(ok.stdout)["server"] == "local", ok
    ok = curl("--socks5", f"127.0.0.1:{port}", "--proxy-user", "u:p", f"http://127.0.0.1:{up.port}/echo")
    assert ok.returncode == 0, ok
    denied = curl("--socks5", f"127.0.0.1:{port}", "--proxy-user", "u:nope", f"http://127.0.0.1:{up.port}/echo")
    assert denied.returncode != 0 and "rejected" in denied.stderr, denied


def test_static_file_plugin_serves_files_and_nothing_outside(world: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{world['ports'] + 2}"
    browser = ("-u", "a:b", "-H", "Accept: text/html,*/*", "-H", "User-Agent: Mozilla/5.0")
    got = curl(*browser, "-i", f"{base}/static/hello.txt")
    assert "200 OK" in got.stdout and "hello static" in got.stdout and "text/plain" in got.stdout, got
    assert "<h1>docs</h1>" in curl(*browser, "-L", f"{base}/static/docs").stdout  # redirected to docs/
    listing = curl(*browser, f"{base}/static/").stdout
    assert "hello.txt" in listing and "escape.txt" not in listing, listing
    code = ("-o", "/dev/null", "-w", "%{http_code}")
    assert curl(*code, f"{base}/static/hello.txt").stdout == "401"  # no credentials
    for escape in ("/static/escape.txt", "/static/../secret.txt", "/static/%2e%2e/secret.txt",
                   "/static/docs/..%2f..%2fsecret.txt", "/hello.txt"):  # fmt: skip
        assert curl(*browser, *code, "--path-as-is", base + escape).stdout == "404", escape


def test_unix_domain_socket_plugin(world: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", world["ports"] + 3), timeout=5) as s:
        assert recv_exact(s, 5) == b"unix:"
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"


def test_http2http_plugin_rewrites_host_and_headers(world: dict[str, Any]) -> None:
    got = headers_of(json.loads(curl(f"http://127.0.0.1:{world['ports'] + 4}/echo?x=1").stdout))
    assert got["host"] == "rewritten.internal" and got["x-from-where"] == "frp", got


def test_tls2raw_plugin_ends_tls_and_passes_bytes(world: dict[str, Any]) -> None:
    ctx = ssl.create_default_context(cafile=str(world["base"] / "server.crt"))
    raw = socket.create_connection(("127.0.0.1", world["ports"] + 5), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=DOMAIN) as s:  # the configured certificate, verified
        assert recv_exact(s, 4) == b"raw:"
        s.sendall(b"through tls")
        assert recv_exact(s, 11) == b"through tls"


def test_https2http_and_https2https_end_tls_at_the_agent(world: dict[str, Any]) -> None:
    https = world["tunnel"]["vhost_https"]
    host = f"s2h.{DOMAIN}"
    got = curl("-k", "--resolve", f"{host}:{https}:127.0.0.1", f"https://{host}:{https}/echo")
    body = headers_of(json.loads(got.stdout))
    assert body["x-from-where"] == "frp" and body["x-forwarded-proto"] == "https", body
    assert body["x-forwarded-for"] == "127.0.0.1" and body["x-forwarded-host"] == f"{host}:{https}"
    host = f"s2s.{DOMAIN}"
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", https), timeout=5), server_hostname=host) as s:
        served = ssl.DER_cert_to_PEM_cert(s.getpeercert(binary_form=True) or b"")
    assert served.strip() == (world["base"] / "server.crt").read_text().strip()  # crtPath's, relative to the file
    got = curl("-k", "--resolve", f"{host}:{https}:127.0.0.1", f"https://{host}:{https}/x")
    assert json.loads(got.stdout)["path"] == "/x" and json.loads(got.stdout)["tls"].startswith("TLS"), got


def test_http2https_plugin_reaches_an_https_service(world: dict[str, Any]) -> None:
    vhost = world["tunnel"]["vhost_http"]
    got = curl("-H", f"Host: h2s.{DOMAIN}", f"http://127.0.0.1:{vhost}/over-tls")
    body = json.loads(got.stdout)
    assert body["path"] == "/over-tls" and body["tls"].startswith("TLS"), got
