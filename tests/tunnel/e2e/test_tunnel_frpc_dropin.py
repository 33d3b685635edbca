"""End-to-end: the rest of frpc.toml as a drop-in (issue 20): tcpmux over HTTP CONNECT,
routeByHTTPUser, transport.proxyURL (HTTP CONNECT and SOCKS5 proxies) and connectServerLocalIP,
and frp's full example, which passes `flux-tunnel verify` and starts.

One control plane and one `flux-node`; agents are child processes. The proxies on the way to
the node are real programs: tinyproxy (HTTP CONNECT) and microsocks (SOCKS5), skipped when not
installed (.ci/run installs them).
"""

from __future__ import annotations

import base64
import json
import pathlib
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, executable, free_port, wait_until
from support.tls import self_signed
from support.tunnel import AgentProcess, TcpEchoServer, recv_exact

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
TOKEN = "12345678"  # frp's full example's auth.token


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("dropin")
    cp = ControlPlaneProcess(base / "cp").start()
    node = NodeProcess(base / "node", cp.grpc_addr, node_id="dropin-1")
    ports = {k: free_port() for k in ("bind", "vhost_http", "vhost_https", "tcpmux", "bind2", "tcpmux2")}
    try:
        node.start(wait_ready=False)
        with cp.client() as c:
            for name, bind, mux, passthrough in (
                ("dropin", "bind", "tcpmux", False),
                ("pass", "bind2", "tcpmux2", True),
            ):
                spec = {"name": name, "bind_address": "127.0.0.1", "bind_port": ports[bind], "token": TOKEN,
                        "allow_ports": "6000-6999", "tcpmux_httpconnect_port": ports[mux],
                        "tcpmux_passthrough": passthrough, "subdomain_host": "frps.test"}  # fmt: skip
                if name == "dropin":
                    spec |= {"vhost_http_port": ports["vhost_http"], "vhost_https_port": ports["vhost_https"]}
                r = c.put(f"/api/v1/tunnels/{name}", json=spec)
                assert r.status_code in (200, 201), r.text
        node.wait_version(cp.version(), timeout=10)
        yield {"cp": cp, "node": node, "ports": ports, "base": base}
    finally:
        node.stop()
        cp.stop()


def agent_doc(port: int, proxies: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"serverAddr": "127.0.0.1", "serverPort": port, "auth": {"token": TOKEN},
            "transport": {"tls": {"insecureSkipVerify": True}, **extra.pop("transport", {})},
            "proxies": proxies, **extra}  # fmt: skip


def connect(port: int, target: str, user: str = "", password: str = "") -> tuple[socket.socket, bytes]:
    """A CONNECT request to the tcpmux port; the socket and the head of the answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    auth = ""
    if user:
        auth = "Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() + "\r\n"
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, head


# -- tcpmux and routeByHTTPUser ---------------------------------------------------------------


def test_tcpmux_by_domain_and_by_basic_auth_user(world: dict[str, Any], tmp_path: pathlib.Path) -> None:
    mux = world["ports"]["tcpmux"]
    with TcpEchoServer(b"everyone:") as anyone, TcpEchoServer(b"alice:") as alice, UpstreamProcess("web") as web:
        proxies = [
            {"name": "all", "type": "tcpmux", "multiplexer": "httpconnect", "localPort": anyone.port,
             "customDomains": ["tunnel1"]},
            {"name": "alice", "type": "tcpmux", "multiplexer": "httpconnect", "localPort": alice.port,
             "customDomains": ["tunnel1"], "routeByHTTPUser": "alice", "httpUser": "alice", "httpPassword": "pa"},
            {"name": "web", "type": "tcpmux", "localPort": web.port, "subdomain": "web"},
        ]  # fmt: skip
        with AgentProcess(tmp_path, "mux", agent_doc(world["ports"]["bind"], proxies)) as agent:
            for name in ("all", "alice", "web"):
                assert agent.wait_proxy(name)["remote_addr"].endswith(f":{mux}")
            s, head = connect(mux, "tunnel1:22")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert recv_exact(s, 9) == b"everyone:"
            s.sendall(b"x")
            assert recv_exact(s, 1) == b"x"
            s.close()
            s, head = connect(mux, "tunnel1:22", "alice", "pa")
            assert head.startswith(b"HTTP/1.1 200") and recv_exact(s, 6) == b"alice:", head
            s.close()
            s, head = connect(mux, "tunnel1:22", "alice", "wrong")  # alice's proxy: never falls back
            assert head.startswith(b"HTTP/1.1 407") and b"Proxy-Authenticate: Basic" in head, head
            s.close()
            s, head = connect(mux, "nobody.example:22")
            assert head.startswith(b"HTTP/1.1 404"), head
            s.close()
            # a real client: curl -p (proxytunnel) CONNECTs, then speaks HTTP inside
            cmd = [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-p",
                "--proxy",
                f"http://127.0.0.1:{mux}",
                "http://web.frps.test/echo",
            ]
            got = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            assert json.loads(got.stdout)["server"] == "web", got


def test_tcpmux_passthrough_hands_the_connect_request_on(world: dict[str, Any], tmp_path: pathlib.Path) -> None:
    mux = world["ports"]["tcpmux2"]
    with TcpEchoServer() as echo:
        proxies = [{"name": "raw", "type": "tcpmux", "localPort": echo.port, "customDomains": ["pass.test"]}]
        with AgentProcess(tmp_path, "pass", agent_doc(world["ports"]["bind2"], proxies)) as agent:
            agent.wait_proxy("raw")
            s, head = connect(mux, "pass.test:443")  # the echo gives the request itself back
            assert head == b"CONNECT pass.test:443 HTTP/1.1\r\nHost: pass.test:443\r\n\r\n", head
            s.close()


def test_route_by_http_user_on_http_proxies(world: dict[str, Any], tmp_path: pathlib.Path) -> None:
    vhost = world["ports"]["vhost_http"]
    with UpstreamProcess("alice") as a, UpstreamProcess("bob") as b, UpstreamProcess("others") as o:
        domain = ["users.frps.example"]
        proxies = [
            {"name": "a", "type": "http", "localPort": a.port, "customDomains": domain, "routeByHTTPUser": "alice",
             "httpUser": "alice", "httpPassword": "pa"},
            {"name": "b", "type": "http", "localPort": b.port, "customDomains": domain, "routeByHTTPUser": "bob",
             "httpUser": "bob", "httpPassword": "pb"},
            {"name": "o", "type": "http", "localPort": o.port, "customDomains": domain},
        ]  # fmt: skip
        with AgentProcess(tmp_path, "users", agent_doc(world["ports"]["bind"], proxies)) as agent:
            for name in ("a", "b", "o"):
                agent.wait_proxy(name)

            def get(user: str = "") -> subprocess.CompletedProcess[str]:
                auth = ("-u", user) if user else ()
                return subprocess.run(["curl", "-sS", "--max-time", "10", *auth, "-w", "\n%{http_code}", "-H",
                                       f"Host: {domain[0]}", f"http://127.0.0.1:{vhost}/echo"],
                                      capture_output=True, text=True, timeout=20)  # fmt: skip

            def server(user: str = "") -> str:
                answered = wait_until(lambda: (r := get(user)).stdout.endswith("200") and r, 10)
                body = answered.stdout.rpartition("\n")[0]
                return str(json.loads(body)["server"])

            assert server("alice:pa") == "alice" and server("bob:pb") == "bob"
            assert server() == "others" and server("carol:whatever") == "others"
            for wrong in ("alice:pb", "bob:pa"):  # a wrong password reaches nobody, not even the fallback
                assert get(wrong).stdout.endswith("\n401"), wrong


# -- the way to the node ------------------------------------------------------------------------


def _tinyproxy(tmp: pathlib.Path) -> tuple[subprocess.Popen[bytes], int, pathlib.Path]:
    port, log = free_port(), tmp / "tinyproxy.log"
    conf = tmp / "tinyproxy.conf"
    conf.write_text(f'Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile "{log}"\nLogLevel Connect\n'
                    "MaxClients 20\nAllow 127.0.0.1\nBasicAuth flux s3cret\n")  # fmt: skip
    proc = subprocess.Popen([shutil.which("tinyproxy") or "tinyproxy", "-d", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None, 10)
    return proc, port, log


@pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="tinyproxy is not installed (.ci/run installs it)")
def test_proxy_url_through_an_http_connect_proxy(world: dict[str, Any], tmp_path: pathlib.Path) -> None:
    proc, port, log = _tinyproxy(tmp_path)
    try:
        with TcpEchoServer(b"via-http:") as echo:
            doc = agent_doc(world["ports"]["bind"], [{"name": "t", "type": "tcp", "localPort": echo.port,
                                                      "remotePort": free_port_in(6000, 6999)}],
                            transport={"proxyURL": f"http://flux:s3cret@127.0.0.1:{port}"})  # fmt: skip
            with AgentProcess(tmp_path, "via-http", doc) as agent:
                agent.wait_proxy("t")
                assert re.search(rf"CONNECT.*127\.0\.0\.1:{world['ports']['bind']}", log.read_text()), log.read_text()
            bad = agent_doc(world["ports"]["bind"], [], transport={"proxyURL": f"http://flux:nope@127.0.0.1:{port}"})
            wrong = AgentProcess(tmp_path, "via-http-bad", bad)
            cfg = tmp_path / "bad.toml"
            cfg.write_text(wrong.path.read_text())
            done = subprocess.run([executable("flux-tunnel"), "-c", str(cfg)], capture_output=True, text=True,
                                  timeout=30)  # fmt: skip
            assert done.returncode == 1 and "through the proxy http://127.0.0.1" in done.stdout + done.stderr, done
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.skipif(shutil.which("microsocks") is None, reason="microsocks is not installed (.ci/run installs it)")
def test_proxy_url_through_a_socks5_proxy_from_a_local_ip(world: dict[str, Any], tmp_path: pathlib.Path) -> None:
    port = free_port()
    cmd = [shutil.which("microsocks") or "microsocks", "-i", "127.0.0.1", "-p", str(port), "-u", "flux", "-P", "s3cret"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None, 10)
        with TcpEchoServer(b"via-socks:") as echo:
            remote = free_port_in(6000, 6999)
            doc = agent_doc(world["ports"]["bind"], [{"name": "s", "type": "tcp", "localPort": echo.port,
                                                      "remotePort": remote}],
                            transport={"proxyURL": f"socks5://flux:s3cret@127.0.0.1:{port}"})  # fmt: skip
            with AgentProcess(tmp_path, "via-socks", doc) as agent:
                agent.wait_proxy("s")
                with socket.create_connection(("127.0.0.1", remote), timeout=5) as s:
                    assert recv_exact(s, 10) == b"via-socks:"
        # without a proxy, from a chosen local address: the node sees the agent coming from it
        doc = agent_doc(world["ports"]["bind"], [], user="localip", transport={"connectServerLocalIP": "127.0.0.2"})
        with AgentProcess(tmp_path, "local-ip", doc) as agent:
            agent.wait_state("online")
            sessions = next(t for t in world["node"].get("/tunnels").json()["tunnels"] if t["name"] == "dropin")
            assert any(str(s.get("address", "")).startswith("127.0.0.2:") for s in sessions["sessions"]), sessions
    finally:
        proc.terminate()
        proc.wait(5)


def free_port_in(lo: int, hi: int) -> int:
    for port in range(lo + free_port() % 500, hi):
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise AssertionError("no free port")


# -- frp's full example -------------------------------------------------------------------------


def made_local(tmp: pathlib.Path) -> pathlib.Path:
    """tests/tunnel/data/frpc_full_example.toml beside the files it names (see its header)."""
    shutil.copy(DATA / "frpc_full_example.toml", tmp / "frpc.toml")
    (tmp / "www").mkdir()
    (tmp / "www" / "index.html").write_text("<h1>blog</h1>\n")
    cert, key = self_signed("test.yourdomain.com")
    (tmp / "server.crt").write_text(cert)
    (tmp / "server.key").write_text(key)
    return tmp / "frpc.toml"


def test_frps_full_example_passes_verify(tmp_path: pathlib.Path) -> None:
    done = subprocess.run([executable("flux-tunnel"), "verify", "-c", str(made_local(tmp_path))],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK (18 proxies, 3 visitors)" in done.stdout, done.stdout


def test_frps_full_example_starts(world: dict[str, Any], tmp_path: pathlib.Path) -> None:
    path = made_local(tmp_path)
    admin, v1, v2 = free_port(), free_port(), free_port()
    text = path.read_text()
    changes = [
        (r"^serverPort = 7000$", f"serverPort = {world['ports']['bind']}"),
        (r"^webServer.port = 7400$", f"webServer.port = {admin}"),
        (r"^bindPort = 9000$", f"bindPort = {v1}"),
        (r"^bindPort = 9001$", f"bindPort = {v2}"),
    ]
    for old, new in changes:
        text, n = re.subn(old, new, text, flags=re.M)
        assert n == 1, old
    path.write_text(text)
    log = open(tmp_path / "agent.log", "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([executable("flux-tunnel"), "-c", str(path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        def status() -> dict[str, Any]:
            r = httpx.get(f"http://127.0.0.1:{admin}/api/status", auth=("admin", "admin"), timeout=2)
            return r.json()  # type: ignore[no-any-return]

        wait_until(lambda: status()["state"] == "online", 15)
        wait_until(lambda: all(p["status"] not in ("new", "pending") for p in status()["proxies"]), 15)
        now = status()
        proxies = {p["name"]: p for p in now["proxies"]}
        assert now["agent"] == "your_name" and len(proxies) == 18, now
        for name in ("plugin_http_proxy", "plugin_socks5", "plugin_static_file", "tcpmuxhttpconnect", "web02"):
            p = proxies[f"your_name.{name}"]
            assert p["status"] == "running" or "already" in p.get("error", "") or "listen" in p.get("error", ""), p
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
