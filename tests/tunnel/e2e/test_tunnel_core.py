"""End-to-end: the tunnel's core proxy types with real processes.

One control plane and one `flux-node` (group "default") serve the whole module; each test
creates its own `tunnels` resource (own agents' control port and token) through REST,
starts `flux-tunnel` agents (child processes, TOML configs with frpc.toml field names) and
real servers behind them (TCP/UDP echo, HTTP echo upstreams, TLS, PROXY protocol parsers),
and talks to the node's public ports like a user would. The node-restart test brings its
own node in group "restart" so restarting it leaves the shared node alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, executable, free_port, wait_until
from support.tls import self_signed
from support.tunnel import (
    AgentProcess,
    FreezableForwarder,
    ProxyProtocolEchoServer,
    TcpEchoServer,
    TestCA,
    TlsEchoServer,
    UdpEchoServer,
    tcp_proxy,
    tcp_roundtrip,
    transfer,
    udp_roundtrip,
    wait_tcp_echo,
)

from fluxcommon.tunnel.protocol.binding import session_tag

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

_serial = itertools.count(1)


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("tunnel-core")
    cp = ControlPlaneProcess(base / "cp").start()
    node = NodeProcess(base / "node", cp.grpc_addr, node_id="tunnel-node-1", extra_args=("--log-level", "debug"))
    try:
        node.start(wait_ready=False)
        yield {"cp": cp, "node": node, "base": base}
    finally:
        node.stop()
        cp.stop()


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Servers and agents a test starts; closed after it, agents first."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def agent_factory(stack: dict[str, Any], tmp_path: Any, closing: contextlib.ExitStack) -> Callable[..., AgentProcess]:
    agents: list[AgentProcess] = []

    def make(name: str, config: dict[str, Any], *, start: bool = True) -> AgentProcess:
        agent = AgentProcess(tmp_path / "agents", name, config)
        agents.append(agent)
        if start:
            agent.start()
        return agent

    yield make  # type: ignore[misc]
    for agent in agents:
        agent.stop()


def put(cp: ControlPlaneProcess, kind: str, body: dict[str, Any]) -> int:
    with cp.client() as c:
        r = c.put(f"/api/v1/{kind}/{body['name']}", json=body)
    assert r.status_code in (200, 201), r.text
    return cp.version()


def delete(cp: ControlPlaneProcess, kind: str, name: str) -> None:
    with cp.client() as c:
        r = c.delete(f"/api/v1/{kind}/{name}")
    assert r.status_code in (200, 204, 404), r.text


class Tunnel:
    """One `tunnels` resource of a test: its agents' port and token, and the node serving it."""

    def __init__(self, stack: dict[str, Any], node: NodeProcess | None = None, **spec: Any) -> None:
        self.cp: ControlPlaneProcess = stack["cp"]
        self.node: NodeProcess = node or stack["node"]
        n = next(_serial)
        self.name = spec.pop("name", f"core-{n}")
        self.token = spec.pop("token", f"token-{n}-{os.urandom(4).hex()}")
        self.bind_port = spec.pop("bind_port", free_port())
        self.spec = {
            "name": self.name,
            "bind_address": "127.0.0.1",
            "bind_port": self.bind_port,
            "token": self.token,
            "heartbeat_timeout": "3s",
            **spec,
        }

    def apply(self) -> Tunnel:
        version = put(self.cp, "tunnels", self.spec)
        self.node.wait_version(version, timeout=10)
        server = self.server()
        assert server is not None and not server["error"], server
        return self

    def delete(self) -> None:
        delete(self.cp, "tunnels", self.name)

    def server(self) -> dict[str, Any] | None:
        return next((t for t in self.node.get("/tunnels").json()["tunnels"] if t["name"] == self.name), None)

    def sessions(self, agent: str | None = None) -> list[dict[str, Any]]:
        server = self.server()
        found = server["sessions"] if server else []
        return [s for s in found if agent is None or s["agent"] == agent]

    def agent_config(self, *, user: str = "", proxies: list[dict[str, Any]] | None = None, **extra: Any) -> dict:
        """An agent config for this tunnel (TLS on, the right token) plus `extra` top-level fields."""
        doc: dict[str, Any] = {"serverAddr": "127.0.0.1", "serverPort": self.bind_port, "loginFailExit": False}
        if user:
            doc["user"] = user
        doc["auth"] = {"token": self.token}
        doc["transport"] = {"dialServerTimeout": 3}
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        if proxies:
            doc["proxies"] = proxies
        return doc


@pytest.fixture
def tunnel(stack: dict[str, Any]) -> Iterator[Callable[..., Tunnel]]:
    made: list[Tunnel] = []

    def make(**spec: Any) -> Tunnel:
        t = Tunnel(stack, **spec).apply()
        made.append(t)
        return t

    yield make
    for t in made:
        t.delete()


def port_block(size: int = 40) -> tuple[int, int]:
    """A range of `size` ports that look free now (for allow_ports)."""
    for _ in range(50):
        start = free_port()
        start -= start % size
        if start < 20000 or start + size > 60000:
            continue
        ok = True
        for p in range(start, start + size):
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            except OSError:
                ok = False
                break
        if ok:
            return start, start + size - 1
    raise AssertionError("no block of free ports")


def remote_port_of(proxy: dict[str, Any]) -> int:
    return int(proxy["remote_addr"].rpartition(":")[2])


# -- 1. tcp ------------------------------------------------------------------------------------


def test_tcp_proxy_fixed_random_and_refused_ports(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    low, high = port_block()
    t = tunnel(allow_ports=f"{low}-{high}")
    echo = closing.enter_context(TcpEchoServer())
    fixed = low + 5
    outside = high + 1 if high + 1 < 65535 else low - 1
    agent = agent_factory(
        "tcp",
        t.agent_config(
            proxies=[
                tcp_proxy("fixed", echo.port, fixed),
                tcp_proxy("random", echo.port, 0),
                tcp_proxy("outside", echo.port, outside),
            ]
        ),
    )
    p = agent.wait_proxy("fixed")
    assert p["remote_addr"] == f"127.0.0.1:{fixed}"
    # small data both ways, then 20 MiB intact
    assert tcp_roundtrip(fixed, b"hello tunnel") == b"hello tunnel"
    blob = os.urandom(20 * 1024 * 1024)
    t0 = time.monotonic()
    got = transfer(fixed, blob, timeout=45)
    took = time.monotonic() - t0
    assert len(got) == len(blob) and hashlib.sha256(got).digest() == hashlib.sha256(blob).digest(), took
    # remotePort 0: a free port from allow_ports, reported by the agent and the node
    rnd = agent.wait_proxy("random")
    port = remote_port_of(rnd)
    assert low <= port <= high and port != fixed
    assert tcp_roundtrip(port, b"random port") == b"random port"
    served = {p["name"]: p for s in t.sessions() for p in s["proxies"]}
    assert served["random"]["remote_port"] == port and served["fixed"]["remote_port"] == fixed
    # a port outside allow_ports is refused, and the agent says why
    bad = agent.wait_proxy("outside", status="rejected")
    assert "remotePort:" in bad["error"] and str(outside) in bad["error"], bad  # as frpc.toml names it
    assert "outside" not in served
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", outside), timeout=1).close()


# -- 2. udp ------------------------------------------------------------------------------------


def test_udp_proxy_datagrams_both_ways(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    t = tunnel()
    echo = closing.enter_context(UdpEchoServer())
    remote = free_port(kind=socket.SOCK_DGRAM)
    agent = agent_factory(
        "udp", t.agent_config(proxies=[{"name": "dns", "type": "udp", "localPort": echo.port, "remotePort": remote}])
    )
    agent.wait_proxy("dns")
    assert udp_roundtrip(remote, b"first datagram") == b"echo:first datagram"
    # many datagrams from two clients, each gets its own answers
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        for s in (a, b):
            s.settimeout(2)
        for i in range(20):
            a.sendto(f"a-{i}".encode(), ("127.0.0.1", remote))
            b.sendto(f"b-{i}".encode(), ("127.0.0.1", remote))
        got_a = {a.recvfrom(100)[0] for _ in range(20)}
        got_b = {b.recvfrom(100)[0] for _ in range(20)}
    assert got_a == {f"echo:a-{i}".encode() for i in range(20)}
    assert got_b == {f"echo:b-{i}".encode() for i in range(20)}
    big = os.urandom(8000)
    assert udp_roundtrip(remote, big) == b"echo:" + big


# -- 3. http virtual hosts ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[UpstreamProcess, UpstreamProcess]]:
    a, b = UpstreamProcess("a").start(), UpstreamProcess("b").start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def http_proxy(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "http", "localPort": port, **extra}


def test_http_vhosts_domains_locations_auth_and_headers(
    tunnel: Callable[..., Tunnel], agent_factory: Any, upstreams: tuple[UpstreamProcess, ...]
) -> None:
    up_a, up_b = upstreams
    vhost = free_port()
    t = tunnel(vhost_http_port=vhost, subdomain_host="tun.example.test")
    web = agent_factory(
        "web",
        t.agent_config(
            user="web",
            proxies=[
                http_proxy(
                    "exact",
                    up_a.port,
                    customDomains=["exact.example.com"],
                    hostHeaderRewrite="rewritten.internal",
                    requestHeaders={"set": {"X-Tunnel-Req": "set-by-agent"}},
                    responseHeaders={"set": {"X-Tunnel-Resp": "set-on-response"}},
                ),
                http_proxy("wild", up_b.port, customDomains=["*.example.com"]),
                http_proxy("sub", up_a.port, subdomain="app"),
                http_proxy(
                    "auth", up_a.port, customDomains=["private.example.net"], httpUser="alice", httpPassword="s3cret"
                ),
                http_proxy("path-a", up_a.port, customDomains=["paths.example.net"], locations=["/a"]),
            ],
        ),
    )
    web2 = agent_factory(
        "web2",
        t.agent_config(
            user="web2",
            proxies=[http_proxy("path-b", up_b.port, customDomains=["paths.example.net"], locations=["/b"])],
        ),
    )
    for name in ("exact", "wild", "sub", "auth", "path-a"):
        web.wait_proxy(f"web.{name}")
    web2.wait_proxy("web2.path-b")
    base = f"http://127.0.0.1:{vhost}"

    def get(host: str, path: str = "/echo", **kw: Any) -> httpx.Response:
        return httpx.get(base + path, headers={"Host": host, **kw.pop("headers", {})}, timeout=5, **kw)

    # the routes appear on the node's vhost port shortly after the proxies registered
    wait_until(lambda: get("paths.example.net", "/b/x").status_code == 200, 5, message="vhost routes")
    # exact domain: host rewritten, request and response headers set, X-Forwarded-For = the client
    r = get("exact.example.com", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["server"] == "a"
    seen = {k.lower(): v for k, v in body["headers"].items()}
    assert seen["host"] == "rewritten.internal"
    assert seen["x-tunnel-req"] == "set-by-agent"
    assert "127.0.0.1" in seen["x-forwarded-for"]
    assert r.headers["x-tunnel-resp"] == "set-on-response"
    # wildcard: any other name under example.com (one or more labels), to the wildcard's service
    for host in ("other.example.com", "deep.er.example.com"):
        r = get(host)
        assert r.status_code == 200 and r.json()["server"] == "b", (host, r.text)
        assert "x-tunnel-resp" not in r.headers
    # subdomain under subdomain_host
    r = get("app.tun.example.test")
    assert r.status_code == 200 and r.json()["server"] == "a", r.text
    # a body larger than the buffers between the proxy and the tunnel (backpressure both ways)
    big = bytes(range(256)) * 8192  # 2 MiB
    r = httpx.post(base + "/echo", content=big, headers={"Host": "app.tun.example.test"}, timeout=10)
    assert r.status_code == 200 and r.json()["body_length"] == len(big), r.text
    # an upgraded connection is piped both ways through the tunnel, half-closes included
    with socket.create_connection(("127.0.0.1", vhost), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: app.tun.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = b""
        while b"greeting-from-a\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 101"), data
        for message in (b"frame-one", b"y" * 300_000):
            s.sendall(message)
            echoed = b""
            while len(echoed) < len(message):
                chunk = s.recv(65536)
                assert chunk, len(echoed)
                echoed += chunk
            assert echoed == message
    # locations route one domain to two agents by path
    assert get("paths.example.net", "/a/x").text.strip() == "hello from a"
    assert get("paths.example.net", "/b/x").text.strip() == "hello from b"
    assert get("paths.example.net", "/c").status_code == 404
    # httpUser / httpPassword
    r = get("private.example.net")
    assert r.status_code == 401 and r.headers["www-authenticate"].lower().startswith("basic")
    assert get("private.example.net", auth=("alice", "wrong")).status_code == 401
    r = get("private.example.net", auth=("alice", "s3cret"))
    assert r.status_code == 200 and r.json()["server"] == "a"
    # an unknown host is a 404 from the gateway, not a hang or a reset
    r = get("nobody.example.org")
    assert r.status_code == 404


# -- 4. https SNI passthrough ------------------------------------------------------------------


def test_https_sni_passthrough_reaches_the_local_tls_server(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack, tmp_path: Any
) -> None:
    name = "secure.intranet.test"
    cert_pem, key_pem = self_signed(name)
    server = closing.enter_context(TlsEchoServer(name, cert_pem, key_pem, tmp_path))
    https_port = free_port()
    t = tunnel(vhost_https_port=https_port)
    agent = agent_factory(
        "sni",
        t.agent_config(proxies=[{"name": "tls", "type": "https", "localPort": server.port, "customDomains": [name]}]),
    )
    agent.wait_proxy("tls")
    ca = tmp_path / "local.crt"
    ca.write_text(cert_pem)
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        # the handshake verified the local server's own certificate for that name
        peer = ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True))
        assert peer.strip() == cert_pem.strip()
        assert tls.recv(100) == f"hello {name}\n".encode()
        tls.sendall(b"through the node")
        assert tls.recv(100) == b"through the node"
    assert server.handshakes == 1
    # another server name finds no proxy: the node closes without passing anything on
    other = ssl.create_default_context()
    other.check_hostname, other.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw, pytest.raises((ssl.SSLError, OSError)):
        other.wrap_socket(raw, server_hostname="unknown.intranet.test").recv(10)
    assert server.handshakes == 1


# -- 5. a gateway route in front of a tunnelled service ----------------------------------------


def test_gateway_route_policies_guard_a_tunnelled_service(
    stack: dict[str, Any], tunnel: Callable[..., Tunnel], agent_factory: Any, upstreams: tuple[UpstreamProcess, ...]
) -> None:
    cp: ControlPlaneProcess = stack["cp"]
    up_a, _ = upstreams
    t = tunnel()
    listen = free_port()
    resources = [
        ("listeners", {"name": "tun-gw", "protocol": "http", "address": "127.0.0.1", "port": listen}),
        ("clusters", {"name": "intranet", "tunnel": "intranet-api"}),
        ("policies", {"name": "tun-deny-local", "type": "ip_acl", "config": {"deny": ["127.0.0.0/8"]}}),
        ("policies", {"name": "tun-keys", "type": "api_key", "config": {"header": "x-api-key"}}),
        ("consumers", {"name": "tun-bob", "credentials": [{"type": "api_key", "key": "bob-key-0123456789"}]}),
        ("routes", {"name": "tun-open", "listener": "tun-gw", "path": "/echo", "cluster": "intranet"}),
        (
            "routes",
            {
                "name": "tun-denied",
                "listener": "tun-gw",
                "path": "/denied",
                "cluster": "intranet",
                "policies": ["tun-deny-local"],
            },
        ),
        (
            "routes",
            {
                "name": "tun-keyed",
                "listener": "tun-gw",
                "path": "/anything",
                "cluster": "intranet",
                "policies": ["tun-keys"],
            },
        ),
    ]
    try:
        version = 0
        for kind, body in resources:
            version = put(cp, kind, body)
        stack["node"].wait_version(version, timeout=10)
        base = f"http://127.0.0.1:{listen}"
        # no agent serves the proxy yet: the cluster has no endpoints
        assert httpx.get(base + "/echo", timeout=5).status_code == 503
        agent = agent_factory(
            "gw", t.agent_config(user="corp", proxies=[tcp_proxy("intranet-api", up_a.port, free_port())])
        )
        agent.wait_proxy("corp.intranet-api")
        r = wait_until(
            lambda: (r := httpx.get(base + "/echo", timeout=5)).status_code == 200 and r,
            5,
            message="route through the tunnel",
        )
        assert r.json()["server"] == "a" and r.json()["path"] == "/echo"
        # the route's policies apply to the intranet service
        r = httpx.get(base + "/denied", timeout=5)
        assert r.status_code == 403, r.text
        assert httpx.get(base + "/anything", timeout=5).status_code == 401
        r = httpx.get(base + "/anything", headers={"x-api-key": "bob-key-0123456789"}, timeout=5)
        assert r.status_code == 200 and r.json()["headers"].get("X-Consumer-Name") == "tun-bob", r.text
        assert "x-api-key" not in {k.lower() for k in r.json()["headers"]}  # hidden from the service
        # the node counts the connections on the proxy the route used
        served = {p["name"]: p for s in t.sessions() for p in s["proxies"]}
        assert served["corp.intranet-api"]["total_connections"] >= 1
    finally:
        for kind, body in reversed(resources):
            delete(cp, kind, body["name"])


# -- 6. authentication and TLS -----------------------------------------------------------------


def test_wrong_token_is_refused_and_tls_is_on_by_default(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    t = tunnel()
    echo = closing.enter_context(TcpEchoServer())
    wrong = t.agent_config(user="intruder", proxies=[tcp_proxy("p", echo.port, free_port())])
    wrong["auth"] = {"token": "not-the-token"}
    bad = agent_factory("wrong-token", wrong)
    good = agent_factory("right-token", t.agent_config(user="friend", proxies=[tcp_proxy("p", echo.port, free_port())]))
    p = good.wait_proxy("friend.p")
    assert tcp_roundtrip(remote_port_of(p), b"x") == b"x"
    status = wait_until(lambda: (s := bad.status())["last_error"] and s, 10, message="login error on the agent")
    assert "authentication failed" in status["last_error"] and "token" in status["last_error"], status
    assert status["state"] != "online"
    assert all(p["status"] != "running" for p in status["proxies"]), status
    sessions = t.sessions()
    assert [s["agent"] for s in sessions] == ["friend"]
    assert sessions[0]["tls"] is True  # TLS is the default
    assert good.status()["state"] == "online"


def test_plain_agents_are_refused_by_default_with_the_reason(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    t = tunnel()  # tls.force is true unless the tunnel says otherwise
    echo = closing.enter_context(TcpEchoServer())
    plain = agent_factory(
        "plain",
        t.agent_config(
            user="plain", proxies=[tcp_proxy("p", echo.port, free_port())], transport={"tls": {"enable": False}}
        ),
    )
    tls = agent_factory("tls", t.agent_config(user="tls", proxies=[tcp_proxy("p", echo.port, free_port())]))
    tls.wait_proxy("tls.p")
    status = wait_until(lambda: (s := plain.status())["last_error"] and s, 10, message="refusal on the agent")
    assert "requires TLS" in status["last_error"] and "transport.tls.enable" in status["last_error"], status
    assert status["state"] != "online"
    assert [s["agent"] for s in t.sessions()] == ["tls"]
    # a tunnel that allows plain agents (tls: {force: false}) serves them
    lax = tunnel(tls={"force": False})
    plain2 = agent_factory(
        "plain2",
        lax.agent_config(
            user="plain", proxies=[tcp_proxy("p", echo.port, free_port())], transport={"tls": {"enable": False}}
        ),
    )
    assert tcp_roundtrip(remote_port_of(plain2.wait_proxy("plain.p")), b"x") == b"x"
    assert [(s["agent"], s["tls"]) for s in lax.sessions()] == [("plain", False)]


def test_mutual_tls_and_verified_node_certificate(
    stack: dict[str, Any],
    tunnel: Callable[..., Tunnel],
    agent_factory: Any,
    closing: contextlib.ExitStack,
    tmp_path: Any,
) -> None:
    cp: ControlPlaneProcess = stack["cp"]
    ca = TestCA()
    server_name = "tunnel.flux.test"
    node_cert, node_key = ca.issue(server_name)
    put(cp, "certificates", {"name": "tun-node-cert", "cert": node_cert, "key": node_key})
    files = {}
    client_cert, client_key = ca.issue("agent-1", server=False)
    other = TestCA("another CA")
    stranger_cert, stranger_key = other.issue("agent-2", server=False)
    for name, pem in (
        ("ca.pem", ca.pem),
        ("client.crt", client_cert),
        ("client.key", client_key),
        ("stranger.crt", stranger_cert),
        ("stranger.key", stranger_key),
    ):
        files[name] = tmp_path / name
        files[name].write_text(pem)
    t = tunnel(tls={"force": True, "certificate": "tun-node-cert", "client_ca": ca.pem})
    closing.callback(delete, cp, "certificates", "tun-node-cert")  # (after the agents stopped)
    closing.callback(t.delete)  # the tunnel first: it uses the certificate
    echo = closing.enter_context(TcpEchoServer())

    def agent(name: str, **tls: Any) -> AgentProcess:
        return agent_factory(
            name,
            t.agent_config(user=name, proxies=[tcp_proxy("p", echo.port, free_port())], transport={"tls": tls}),
        )

    trusted = {"trustedCaFile": str(files["ca.pem"]), "serverName": server_name}
    good = agent("mtls", certFile=str(files["client.crt"]), keyFile=str(files["client.key"]), **trusted)
    no_cert = agent("nocert", **trusted)
    stranger = agent("stranger", certFile=str(files["stranger.crt"]), keyFile=str(files["stranger.key"]), **trusted)
    wrong_name = agent(
        "wrongname",
        certFile=str(files["client.crt"]),
        keyFile=str(files["client.key"]),
        trustedCaFile=str(files["ca.pem"]),
        serverName="someone-else.flux.test",
    )
    # a client certificate from the CA, and the node's certificate verified against the CA and name
    p = good.wait_proxy("mtls.p")
    assert tcp_roundtrip(remote_port_of(p), b"mutual") == b"mutual"
    for refused in (no_cert, stranger, wrong_name):
        status = wait_until(lambda a=refused: (s := a.status())["last_error"] and s, 10, message="TLS refusal")
        assert status["state"] != "online" and all(p["status"] != "running" for p in status["proxies"]), status
    assert "certificate" in wrong_name.status()["last_error"].lower()
    assert [s["agent"] for s in t.sessions()] == ["mtls"]
    # the node's log names the failed handshakes
    wait_until(lambda: stack["node"].output().count("TLS handshake with") >= 2, 5, message="node log")


# -- 7. load-balancing groups ------------------------------------------------------------------


def greetings(port: int, n: int) -> Counter[bytes]:
    """Who answers `n` fresh connections to `port` (each echo server greets with its name)."""
    seen: Counter[bytes] = Counter()
    for i in range(n):
        data = tcp_roundtrip(port, f"c{i}".encode(), greeting=1)
        assert data[1:] == f"c{i}".encode()
        seen[data[:1]] += 1
    return seen


def test_load_balancing_group_with_failover_and_key_check(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    t = tunnel()
    remote = free_port()
    servers = {name: TcpEchoServer(greeting=name.encode()) for name in ("A", "B")}
    for server in servers.values():
        closing.callback(server.close)
    health = {"type": "tcp", "intervalSeconds": 1, "maxFailed": 1, "timeoutSeconds": 1}
    lb = {"group": "web", "groupKey": "k-123"}
    agents = {
        name: agent_factory(
            f"lb-{name}",
            t.agent_config(
                user=f"lb{name}",
                proxies=[tcp_proxy("svc", servers[name].port, remote, loadBalancer=lb, healthCheck=health)],
            ),
        )
        for name in ("A", "B")
    }
    for name, agent in agents.items():
        agent.wait_proxy(f"lb{name}.svc")
    assert set(greetings(remote, 12)) == {b"A", b"B"}
    # A's local service dies: its connections go to B at once (the node retries), and once the
    # health check withdrew A's proxy, only B serves the port
    port_a = servers["A"].port
    servers["A"].close()
    assert greetings(remote, 6) == Counter({b"B": 6})
    agents["A"].wait_proxy("lbA.svc", status="withdrawn", timeout=5)
    members = [p["name"] for s in t.sessions() for p in s["proxies"] if p.get("group") == "web"]
    assert members == ["lbB.svc"]
    assert greetings(remote, 20) == Counter({b"B": 20})
    # a proxy claiming the group with another key is refused
    intruder = agent_factory(
        "lb-C",
        t.agent_config(
            user="lbC",
            proxies=[tcp_proxy("svc", servers["B"].port, remote, loadBalancer={"group": "web", "groupKey": "guess"})],
        ),
    )
    refused = intruder.wait_proxy("lbC.svc", status="rejected")
    assert "group key does not match" in refused["error"], refused
    # A's service comes back on its port: the health check registers the proxy again
    servers["A"] = TcpEchoServer(greeting=b"A", port=port_a)
    closing.callback(servers["A"].close)
    agents["A"].wait_proxy("lbA.svc", timeout=5)
    assert set(greetings(remote, 12)) == {b"A", b"B"}


# -- 8. bandwidth limits -----------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_bandwidth_limit_10kb_makes_100kib_take_8s(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    """Slow on purpose (about 10 s): the agent-enforced (frp's default) and the node-enforced
    limit run side by side, with an unlimited proxy as the control."""
    t = tunnel()
    echo = closing.enter_context(TcpEchoServer())
    ports = {"client": free_port(), "server": free_port(), "free": free_port()}
    limited = {"bandwidthLimit": "10KB"}
    agent = agent_factory(
        "bw",
        t.agent_config(
            proxies=[
                tcp_proxy("client-mode", echo.port, ports["client"], transport=limited),
                tcp_proxy(
                    "server-mode", echo.port, ports["server"], transport={**limited, "bandwidthLimitMode": "server"}
                ),
                tcp_proxy("unlimited", echo.port, ports["free"]),
            ]
        ),
    )
    for name in ("client-mode", "server-mode", "unlimited"):
        agent.wait_proxy(name)
    served = {p["name"]: p for s in t.sessions() for p in s["proxies"]}
    assert served["server-mode"]["bandwidth_limit"] == 10 * 1024 and "bandwidth_limit" not in served["client-mode"]
    data = os.urandom(100 * 1024)
    took: dict[str, float] = {}

    def run(kind: str) -> None:
        t0 = time.monotonic()
        assert transfer(ports[kind], data, timeout=40) == data
        took[kind] = time.monotonic() - t0

    threads = [threading.Thread(target=run, args=(k,)) for k in ports]
    for th in threads:
        th.start()
    for th in threads:
        th.join(45)
    assert set(took) == set(ports), took
    assert took["free"] < 2.0, took
    assert 8.0 <= took["client"] < 20.0, took
    assert 8.0 <= took["server"] < 20.0, took


# -- 9. reconnecting -----------------------------------------------------------------------------


def test_agent_comes_back_after_the_node_restarts(
    stack: dict[str, Any], tmp_path: Any, agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    node = NodeProcess(tmp_path / "restart-node", stack["cp"].grpc_addr, node_id="tunnel-restart", group="restart")
    node.start(wait_ready=False)
    closing.callback(node.stop)
    t = Tunnel(stack, node=node, node_group="restart").apply()
    closing.callback(t.delete)
    echo = closing.enter_context(TcpEchoServer())
    udp = closing.enter_context(UdpEchoServer())
    tcp_port, udp_port = free_port(), free_port(kind=socket.SOCK_DGRAM)
    agent = agent_factory(
        "restart",
        t.agent_config(
            user="rs",
            proxies=[
                tcp_proxy("tcp", echo.port, tcp_port),
                {"name": "udp", "type": "udp", "localPort": udp.port, "remotePort": udp_port},
            ],
        ),
    )
    agent.wait_proxy("rs.tcp")
    agent.wait_proxy("rs.udp")
    run_id = agent.status()["run_id"]
    assert tcp_roundtrip(tcp_port, b"before") == b"before"
    node.stop()
    wait_until(lambda: agent.status()["state"] != "online", 5, message="agent notices the node is gone")
    node.start(wait_ready=False)
    agent.wait_state("online", timeout=15)
    p = agent.wait_proxy("rs.tcp")
    assert p["remote_addr"] == f"127.0.0.1:{tcp_port}"
    assert agent.wait_proxy("rs.udp")["remote_addr"] == f"127.0.0.1:{udp_port}"
    assert wait_tcp_echo(tcp_port, 5) == b"ping"
    assert udp_roundtrip(udp_port, b"after") == b"echo:after"
    status = agent.status()
    assert status["run_id"] == run_id and status["connects"] >= 2
    assert [s["session"] for s in t.sessions()] == [session_tag(run_id)]  # the node shows a hash, not the run id


def test_a_first_login_that_fails_at_boot_is_retried(
    stack: dict[str, Any], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    t = Tunnel(stack)  # not applied yet: nothing listens on its port when the agent boots
    closing.callback(t.delete)
    echo = closing.enter_context(TcpEchoServer())
    port = free_port()
    agent = agent_factory("early", t.agent_config(user="early", proxies=[tcp_proxy("tcp", echo.port, port)]))
    failed = wait_until(lambda: (s := agent.status())["last_error"] and s, 5, message="the first login fails")
    assert "cannot connect" in failed["last_error"] and failed["state"] != "online", failed
    t.apply()  # the tunnel server comes up later: the agent's back-off retry finds it
    agent.wait_proxy("early.tcp", timeout=20)
    assert tcp_roundtrip(port, b"late but here") == b"late but here"


def test_half_open_connection_is_detected_and_replaced(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    # The node waits long for heartbeats (20 s), the agent only 3 s: the agent notices the dead
    # link first, and its new login must replace the session the node still holds.
    t = tunnel(heartbeat_timeout="20s")
    echo = closing.enter_context(TcpEchoServer())
    forwarder = FreezableForwarder(("127.0.0.1", t.bind_port))
    closing.callback(forwarder.close)
    remote = free_port()
    config = t.agent_config(user="ho", proxies=[tcp_proxy("tcp", echo.port, remote)])
    config["serverPort"] = forwarder.port
    config["transport"] = {**config["transport"], "heartbeatInterval": 1, "heartbeatTimeout": 3, "dialServerTimeout": 2}
    agent = agent_factory("half-open", config)
    agent.wait_proxy("ho.tcp")
    run_id = agent.status()["run_id"]
    [old] = t.sessions("ho")
    assert tcp_roundtrip(remote, b"before") == b"before"
    forwarder.freeze()
    t0 = time.monotonic()
    wait_until(lambda: agent.status()["state"] != "online", 8, message="agent detects the dead link")
    detected = time.monotonic() - t0
    assert 2.0 <= detected <= 6.0, detected
    assert "nothing heard from the node" in agent.status()["last_error"]
    # the node has not noticed anything yet (its timeout is 20 s)
    assert [s["address"] for s in t.sessions("ho")] == [old["address"]]
    forwarder.unfreeze()
    agent.wait_state("online", timeout=10)
    agent.wait_proxy("ho.tcp")
    # one session for the agent, on the new connection: the old one was replaced, not timed out
    [new] = t.sessions("ho")
    assert new["session"] == session_tag(run_id) and new["address"] != old["address"]
    assert time.monotonic() - t0 < 15
    assert wait_tcp_echo(remote, 5) == b"ping"
    assert "replaces its connection" in t.node.output()


# -- 10. static mappings -----------------------------------------------------------------------


def test_static_mapping_is_served_when_its_agent_connects(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    echo = closing.enter_context(TcpEchoServer(greeting=b"S"))
    udp = closing.enter_context(UdpEchoServer())
    tcp_port, udp_port = free_port(), free_port(kind=socket.SOCK_DGRAM)
    t = tunnel(
        mappings=[
            {"name": "office-ssh", "agent": "office", "type": "tcp", "remote_port": tcp_port, "local_port": echo.port},
            {"name": "office-dns", "agent": "office", "type": "udp", "remote_port": udp_port, "local_port": udp.port},
        ]
    )
    # nothing listens before the agent connects; another agent does not get the mapping
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", tcp_port), timeout=1).close()
    other = agent_factory("not-office", t.agent_config(user="home"))
    other.wait_state("online")
    office = agent_factory("office", t.agent_config(user="office"))  # configures no proxy itself
    p = office.wait_proxy("office-ssh")
    assert p["static"] is True and p["remote_addr"] == f"127.0.0.1:{tcp_port}"
    assert p["local"] == f"127.0.0.1:{echo.port}"
    assert tcp_roundtrip(tcp_port, b"static", greeting=1) == b"Sstatic"
    office.wait_proxy("office-dns")
    assert udp_roundtrip(udp_port, b"static udp") == b"echo:static udp"
    assert other.status()["proxies"] == []
    [session] = t.sessions("office")
    assert {p["name"]: p.get("static") for p in session["proxies"]} == {"office-ssh": True, "office-dns": True}
    # the agent leaves: the port closes with it
    office.stop()
    wait_until(lambda: not t.sessions("office"), 5, message="office session gone")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", tcp_port), timeout=1).close()


# -- 11. encryption, compression, PROXY protocol ------------------------------------------------


def test_encryption_compression_and_proxy_protocol(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    t = tunnel()
    echo = closing.enter_context(TcpEchoServer())
    v1 = closing.enter_context(ProxyProtocolEchoServer())
    v2 = closing.enter_context(ProxyProtocolEchoServer())
    ports = {"sealed": free_port(), "v1": free_port(), "v2": free_port()}
    agent = agent_factory(
        "transforms",
        t.agent_config(
            proxies=[
                tcp_proxy(
                    "sealed", echo.port, ports["sealed"], transport={"useEncryption": True, "useCompression": True}
                ),
                tcp_proxy("pp-v1", v1.port, ports["v1"], transport={"proxyProtocolVersion": "v1"}),
                tcp_proxy(
                    "pp-v2", v2.port, ports["v2"], transport={"proxyProtocolVersion": "v2", "useEncryption": True}
                ),
            ]
        ),
    )
    for name in ("sealed", "pp-v1", "pp-v2"):
        agent.wait_proxy(name)
    # encrypted + compressed: compressible and random data both arrive intact
    text = b"flux tunnel " * 200_000
    assert transfer(ports["sealed"], text) == text
    blob = os.urandom(3 * 1024 * 1024)
    got = transfer(ports["sealed"], blob)
    assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
    # PROXY protocol: the local service sees the user's address, not the agent's
    for kind, server in (("v1", v1), ("v2", v2)):
        with socket.create_connection(("127.0.0.1", ports[kind]), timeout=5) as s:
            client = s.getsockname()
            s.sendall(b"who am i")
            assert s.recv(100) == b"who am i"
        [header] = server.headers
        assert header.source == ("127.0.0.1", client[1]), (kind, header)
        assert header.dest == ("127.0.0.1", ports[kind]), (kind, header)


# -- 12. what the control plane and the node show ----------------------------------------------


def test_control_plane_sessions_proxy_counters_and_node_metrics(
    stack: dict[str, Any], tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    cp: ControlPlaneProcess = stack["cp"]
    t = tunnel()
    echo = closing.enter_context(TcpEchoServer())
    remote = free_port()
    agent = agent_factory("observed", t.agent_config(user="watched", proxies=[tcp_proxy("svc", echo.port, remote)]))
    agent.wait_proxy("watched.svc")
    status = agent.status()
    payload = os.urandom(50_000)
    # one connection held open while the control plane looks
    held = socket.create_connection(("127.0.0.1", remote), timeout=5)
    closing.callback(held.close)
    held.sendall(b"hold")
    assert held.recv(10) == b"hold"
    assert transfer(remote, payload) == payload

    def session() -> dict[str, Any] | None:
        with cp.client(timeout=5) as c:  # every /api/v1 read needs a token
            items = c.get("/api/v1/tunnels/sessions", params={"tunnel": t.name}).json()["items"]
        found = [s for s in items if s["agent"] == "watched"]
        return found[0] if found and found[0]["connections"] == 1 and found[0]["proxies"][0]["bytes_in"] else None

    s = wait_until(session, 8, interval=0.2, message="session on the control plane")
    assert s["version"] == status["version"] and s["session"] == session_tag(status["run_id"])
    assert "run_id" not in s and status["run_id"] not in str(s)
    assert s["node"] == "tunnel-node-1" and s["tls"] is True
    assert s["address"].startswith("127.0.0.1:")
    assert abs(s["connected_since"] - status["connected_since"]) < 5
    assert s["bytes_in"] > len(payload) and s["bytes_out"] > len(payload)
    [p] = s["proxies"]
    assert p["name"] == "watched.svc" and p["type"] == "tcp" and p["remote_port"] == remote
    assert p["connections"] == 1 and p["total_connections"] == 2
    assert p["bytes_in"] == len(payload) + 4 and p["bytes_out"] == len(payload) + 4

    def totals() -> dict[str, Any] | None:
        with cp.client(timeout=5) as c:
            items = c.get("/api/v1/tunnels/proxies").json()["items"]
        return next((i for i in items if i["tunnel"] == t.name and i["proxy"] == "watched.svc"), None)

    first = wait_until(totals, 8, interval=0.2, message="proxy totals")
    assert first["type"] == "tcp" and first["agents"] == ["watched"]
    assert transfer(remote, b"more" * 1000) == b"more" * 1000
    grown = wait_until(
        lambda: (x := totals()) and x["total_connections"] > first["total_connections"] and x,
        8,
        interval=0.2,
        message="proxy totals grow",
    )
    assert grown["bytes_in"] >= first["bytes_in"] + 4000 and grown["bytes_out"] >= first["bytes_out"] + 4000
    # the node's Prometheus metrics
    metrics = stack["node"].get("/metrics").text
    assert re.search(rf'flux_tunnel_sessions\{{tunnel="{t.name}"\}} 1(\.0)?\b', metrics), metrics[-3000:]
    assert re.search(rf'flux_tunnel_proxy_active_connections\{{proxy="watched.svc",tunnel="{t.name}"\}} 1', metrics)
    assert re.search(rf'flux_tunnel_proxy_connections_total\{{proxy="watched.svc",tunnel="{t.name}"\}} [3-9]', metrics)
    assert re.search(r'flux_tunnel_proxy_bytes_total\{direction="in",proxy="watched.svc"', metrics)
    assert re.search(r'flux_tunnel_events_total\{event="logins"\} [1-9]', metrics)


# -- 13. the agent's admin reload and `flux-tunnel verify` ---------------------------------------


def test_reload_adds_a_proxy_without_dropping_connections(
    tunnel: Callable[..., Tunnel], agent_factory: Any, closing: contextlib.ExitStack
) -> None:
    t = tunnel()
    echo = closing.enter_context(TcpEchoServer())
    first, second = free_port(), free_port()
    config = t.agent_config(user="rl", proxies=[tcp_proxy("one", echo.port, first)])
    agent = agent_factory("reload", config)
    agent.wait_proxy("rl.one")
    run_id = agent.status()["run_id"]
    held = socket.create_connection(("127.0.0.1", first), timeout=5)
    closing.callback(held.close)
    held.sendall(b"before reload")
    assert held.recv(100) == b"before reload"
    agent.write({**config, "proxies": [*config["proxies"], tcp_proxy("two", echo.port, second)]})
    r = agent.reload()
    assert r.status_code == 200 and r.json()["added"] == ["rl.two"], r.text
    agent.wait_proxy("rl.two")
    assert tcp_roundtrip(second, b"new proxy") == b"new proxy"
    # the connection on the first proxy lives on, in the same session
    held.sendall(b"after reload")
    assert held.recv(100) == b"after reload"
    assert agent.status()["run_id"] == run_id and agent.status()["connects"] == 1
    # a broken file is refused by reload with the field named, and the running proxies stay
    agent.path.write_text(agent.path.read_text() + '\n[[proxies]]\nname = "three"\ntype = "tcp"\nlocalPort = 99999\n')
    r = agent.reload()
    assert r.status_code == 400 and any("localPort" in line for line in r.json()["problems"]), r.text
    assert {p["name"]: p["status"] for p in agent.status()["proxies"]} == {"rl.one": "running", "rl.two": "running"}


def test_verify_names_the_field_at_fault(tmp_path: Any) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        'serverAddr = "127.0.0.1"\nserverPort = 7000\n[[proxies]]\nname = "ssh"\ntype = "tcp"\n'
        "localPort = 22\nremotePort = 6022\n"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'serverAddr = "127.0.0.1"\nserverPort = 7000\n[[proxies]]\nname = "ssh"\ntype = "tcp"\n'
        'localPort = 22\nremotePrt = 6022\n[[proxies]]\nname = "web"\ntype = "http"\nlocalPort = 80\n'
    )
    run = [executable("flux-tunnel"), "verify", "-c"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=20)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    out = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "proxies[0].remotePrt: unknown field (did you mean remotePort?)" in out.stdout, out.stdout
    assert "proxies[1].customDomains" in out.stdout, out.stdout
