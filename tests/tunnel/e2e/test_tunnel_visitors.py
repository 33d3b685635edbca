"""End-to-end: secret proxies (stcp, sudp, xtcp) and their visitors, with real processes.

One control plane and one node serve the tunnel server; `flux-tunnel` agents connect to it
over TLS (the agents' default):

    alice  provider: stcp "sec" (allowUsers = [bob]), sudp "dns", xtcp "p2p"; local echo servers
    bob    visitors: stcp with the right key, sudp, xtcp
    carol  visitor: stcp "sec" with the right key, but not in allowUsers
    mallory visitor: stcp "sec" with a wrong key

(The node accepts an agent's visits per proxy, so one agent cannot hold visitors of the same
proxy with two keys: its config is refused, see the last test.)

bob starts before alice on purpose: a visitor must not depend on its provider being online
first. xtcp is tested three ways: on loopback (direct or relayed, the test prints which),
across two network namespaces that reach the node but not each other (hole punching cannot
work, so every connection must be relayed by the node), and across two NAT routers (iptables
MASQUERADE in namespaces) where the punched direct connection must succeed.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.processes import free_port, wait_until
from support.tunnel_visitors import (
    AgentProcess,
    TcpEcho,
    TcpSource,
    TunnelStack,
    UdpEcho,
    closed_within,
    echo_roundtrip,
    isolated_pair,
    nat_pair,
    netns_unavailable,
    tcp_listener,
    toml_tables,
    udp_socket,
)

from fluxcommon.tunnel.protocol.binding import peer_end_point
from fluxcommon.tunnel.protocol.control import (
    ClientSession,
    LoginFailed,
    LoginSucceeded,
    VisitorAccepted,
    VisitorRejected,
)
from fluxcommon.tunnel.protocol.mux import Mux
from tunnelclient.config import ConfigError, load_config

pytestmark = pytest.mark.slow

KEY = "key-" + secrets.token_hex(8)
WRONG = "not-" + KEY


@dataclass
class Loop:
    stack: TunnelStack
    alice: AgentProcess
    bob: AgentProcess
    carol: AgentProcess
    mallory: AgentProcess
    echo: TcpEcho
    udp: UdpEcho
    source: TcpSource
    ports: dict[str, int]
    before_provider: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelStack]:
    st = TunnelStack(tmp_path_factory.mktemp("visitors"))
    try:
        st.start()
        yield st
    finally:
        st.stop()


def _agent(stack: TunnelStack, user: str, **kw: Any) -> AgentProcess:
    kw.setdefault("server_addr", "127.0.0.1")
    return AgentProcess(stack.workdir / "agents", user, server_port=stack.port, token=stack.token, **kw)


@pytest.fixture(scope="module")
def loop(stack: TunnelStack) -> Iterator[Loop]:
    echo, udp, source = TcpEcho(), UdpEcho(), TcpSource()
    ports = {name: free_port() for name in ("stcp", "wrong", "xtcp", "carol", "source")}
    ports["sudp"] = free_port(kind=socket.SOCK_DGRAM)
    visit = {"serverUser": "alice", "secretKey": KEY, "bindAddr": "127.0.0.1"}
    bob = _agent(stack, "bob", visitors=[
        {"name": "sec", "type": "stcp", "serverName": "sec", **visit, "bindPort": ports["stcp"]},
        {"name": "dns", "type": "sudp", "serverName": "dns", **visit, "bindPort": ports["sudp"]},
        {"name": "p2p", "type": "xtcp", "serverName": "p2p", **visit, "bindPort": ports["xtcp"]},
        {"name": "src", "type": "stcp", "serverName": "src", **visit, "bindPort": ports["source"]},
    ])  # fmt: skip
    carol = _agent(stack, "carol", visitors=[
        {"name": "sec", "type": "stcp", "serverName": "sec", **visit, "bindPort": ports["carol"]},
    ])  # fmt: skip
    mallory = _agent(stack, "mallory", visitors=[
        {"name": "sec", "type": "stcp", "serverName": "sec", **visit, "secretKey": WRONG, "bindPort": ports["wrong"]},
    ])  # fmt: skip
    alice = _agent(stack, "alice", proxies=[
        {"name": "sec", "type": "stcp", "localPort": echo.port, "secretKey": KEY, "allowUsers": ["bob"]},
        {"name": "dns", "type": "sudp", "localPort": udp.port, "secretKey": KEY},
        {"name": "p2p", "type": "xtcp", "localPort": echo.port, "secretKey": KEY},
        {"name": "src", "type": "stcp", "localPort": source.port, "secretKey": KEY},
    ])  # fmt: skip
    agents = [bob, carol, mallory, alice]
    try:
        bob.start()
        bob.wait_online()
        lp = Loop(stack, alice, bob, carol, mallory, echo, udp, source, ports, before_provider=bob.visitor("sec"))
        alice.start()
        alice.wait_online()
        for agent in (carol, mallory):
            agent.start()
        for agent in (carol, mallory):
            agent.wait_online()
        yield lp
    finally:
        for agent in agents:
            agent.stop()
        echo.close()
        udp.close()
        source.close()


def _payloads(n: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


def _concurrent_echo(port: int, payloads: list[bytes], netns: str | None = None) -> list[bytes]:
    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        futures = [pool.submit(echo_roundtrip, ("127.0.0.1", port), p, netns=netns) for p in payloads]
        return [f.result(timeout=30) for f in futures]


# -- stcp -----------------------------------------------------------------------------------


def test_stcp_right_key_carries_concurrent_connections_both_ways(loop: Loop) -> None:
    # bob asked before alice served the proxy; a connection then must still get through.
    assert loop.before_provider["status"] == "refused", loop.before_provider
    assert "no secret proxy" in loop.before_provider.get("error", ""), loop.before_provider
    before = loop.echo.accepted
    payloads = _payloads(8, 256 * 1024)
    assert _concurrent_echo(loop.ports["stcp"], payloads) == payloads
    assert loop.echo.accepted - before == 8
    assert loop.bob.visitor("sec")["status"] == "ready"
    sec = loop.alice.wait(lambda s: next(p for p in s["proxies"] if p["name"] == "alice.sec"))
    assert sec["total_connections"] >= 8
    assert sec["bytes_in"] >= 8 * 256 * 1024 and sec["bytes_out"] >= 8 * 256 * 1024, sec


def test_stcp_wrong_key_is_refused_and_connections_close(loop: Loop) -> None:
    refusals = loop.stack.metric("flux_tunnel_events_total", event="visitor_refusals")
    before = loop.echo.accepted
    took = closed_within(("127.0.0.1", loop.ports["wrong"]), 5.0)
    assert took < 3.0, f"a refused visitor kept the local connection open {took:.1f}s"
    v = loop.mallory.visitor("sec")
    assert v["status"] == "refused" and "wrong secret key" in v["error"], v
    assert loop.echo.accepted == before, "a wrong key reached the local service"
    assert loop.stack.metric("flux_tunnel_events_total", event="visitor_refusals") > refusals


def test_stcp_allow_users_admits_bob_and_refuses_carol(loop: Loop) -> None:
    v = loop.carol.visitor("sec")
    assert v["status"] == "refused" and "may not visit" in v["error"] and "carol" in v["error"], v
    before = loop.echo.accepted
    assert closed_within(("127.0.0.1", loop.ports["carol"]), 5.0) < 3.0
    assert loop.echo.accepted == before
    payload = os.urandom(10_000)
    assert echo_roundtrip(("127.0.0.1", loop.ports["stcp"]), payload) == payload  # bob, same proxy and key


def _visit_as(stack: TunnelStack, login: str, claimed_user: str, proxy: str, key: str) -> str:
    """Log in as `login` with our own protocol code over TLS, visit `proxy` claiming `claimed_user`:
    "" when the node accepts, else its refusal (a hand-made client: flux-tunnel always sends its login name)."""
    mux = Mux("client")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        session = ClientSession(mux, name=login, token=stack.token, channel_binding=peer_end_point(tls))
        session.start(time.time())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tls.sendall(mux.data_to_send())
            data = tls.recv(65536)
            assert data, "the node closed the connection"
            for event in mux.receive_data(data):
                for ev in session.handle_event(event, time.time()):
                    if isinstance(ev, LoginSucceeded):
                        session.visit(proxy, claimed_user, key, time.time())
                    elif isinstance(ev, VisitorAccepted):
                        return ""
                    elif isinstance(ev, VisitorRejected):
                        return ev.message
                    elif isinstance(ev, LoginFailed):
                        raise AssertionError(f"login refused: {ev.message}")
    raise AssertionError("no answer to the visit")


def test_allow_users_trusts_the_login_name_not_a_claimed_user(loop: Loop) -> None:
    assert _visit_as(loop.stack, "bob", "bob", "alice.sec", KEY) == ""
    refused = _visit_as(loop.stack, "carol", "bob", "alice.sec", KEY)
    assert "claims user 'bob'" in refused and "'carol'" in refused, refused


def test_closing_the_visitor_side_stops_the_providers_local_connection(loop: Loop) -> None:
    # The local service would send for ever: once the user hangs up, the provider must drop it,
    # not keep feeding the tunnel a stream nobody reads.
    with socket.create_connection(("127.0.0.1", loop.ports["source"]), timeout=5) as s:
        got = 0
        while got < 1 << 20:
            got += len(s.recv(65536))
    wait_until(lambda: loop.source.ended == loop.source.accepted == 1, 5, message="the source's connection closed")
    wait_until(lambda: loop.alice.proxy("src")["connections"] == 0, 2, message="alice holds no src connection")


# -- sudp -----------------------------------------------------------------------------------


def test_sudp_datagrams_both_ways(loop: Loop) -> None:
    sock = udp_socket()
    sock.settimeout(0.5)
    target = ("127.0.0.1", loop.ports["sudp"])
    sizes = [1, 100, 1200, 8000, 30_000] * 3
    with sock:
        for i, size in enumerate(sizes):
            data = i.to_bytes(2, "big") + os.urandom(size)
            for _ in range(8):  # UDP: resend a lost datagram (the first may wake the visitor up)
                sock.sendto(data, target)
                try:
                    got, _ = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                break
            else:
                raise AssertionError(f"no answer to datagram {i} ({size} bytes)\n{loop.bob.output()}")
            assert got == b"echo:" + data
    assert loop.udp.received >= len(sizes)
    dns = loop.alice.proxy("dns")
    assert dns["bytes_in"] >= sum(sizes) and dns["bytes_out"] >= sum(sizes), dns


# -- xtcp -----------------------------------------------------------------------------------


def _session_bytes(stack: TunnelStack, agent: str) -> int:
    session = next(s for s in stack.tunnel()["sessions"] if s["agent"] == agent)
    return int(session["bytes_in"]) + int(session["bytes_out"])


def _paths(agent: AgentProcess, visitor: str) -> tuple[int, int]:
    v = agent.visitor(visitor)
    return v["direct"], v["relayed"]


def test_xtcp_on_loopback_direct_or_relayed(loop: Loop, record_property: Any) -> None:
    d0, r0 = _paths(loop.bob, "p2p")
    payloads = _payloads(4, 128 * 1024)
    assert _concurrent_echo(loop.ports["xtcp"], payloads) == payloads
    d1, r1 = _paths(loop.bob, "p2p")
    direct, relayed = d1 - d0, r1 - r0
    assert direct + relayed == 4
    record_property("xtcp_loopback_paths", f"direct={direct} relayed={relayed}")
    print(f"\nxtcp on loopback: {direct} direct, {relayed} relayed")


def test_xtcp_falls_back_to_the_relay_when_peers_cannot_reach_each_other(stack: TunnelStack) -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with isolated_pair() as (a, b):
        echo = TcpEcho(tcp_listener(netns=a.netns))
        port = 4000
        provider = _agent(stack, "dave", server_addr=a.node_addr, netns=a.netns, proxies=[
            {"name": "p2p", "type": "xtcp", "localPort": echo.port, "secretKey": KEY},
        ])  # fmt: skip
        visitor = _agent(stack, "erin", server_addr=b.node_addr, netns=b.netns, visitors=[
            {"name": "p2p", "type": "xtcp", "serverUser": "dave", "serverName": "p2p", "secretKey": KEY,
             "bindPort": port, "fallbackTimeoutMs": 200},
        ])  # fmt: skip
        try:
            provider.start()
            provider.wait_online()
            visitor.start()
            visitor.wait(lambda s: s["visitors"][0]["status"] == "ready", 10, "erin's xtcp visitor ready")
            payloads = _payloads(3, 64 * 1024)
            t0 = time.monotonic()
            assert _concurrent_echo(port, payloads, netns=b.netns) == payloads
            took = time.monotonic() - t0
            assert _paths(visitor, "p2p") == (0, 3)
            assert echo.accepted == 3
            # fallbackTimeoutMs = 200: the relay takes over after that, not seconds later.
            assert took < 2.0, f"relay fallback took {took:.2f}s"
        finally:
            visitor.stop()
            provider.stop()
            echo.close()


def test_xtcp_punches_through_two_masquerading_nats(stack: TunnelStack, record_property: Any) -> None:
    reason = netns_unavailable(iptables=True)
    if reason:
        pytest.skip(reason)
    with nat_pair() as (h1, h2):
        echo = TcpEcho(tcp_listener(netns=h1.netns))
        port = 4000
        provider = _agent(stack, "frank", server_addr=h1.node_addr, netns=h1.netns, proxies=[
            {"name": "p2p", "type": "xtcp", "localPort": echo.port, "secretKey": KEY},
        ])  # fmt: skip
        visitor = _agent(stack, "gina", server_addr=h2.node_addr, netns=h2.netns, visitors=[
            {"name": "p2p", "type": "xtcp", "serverUser": "frank", "serverName": "p2p", "secretKey": KEY,
             "bindPort": port},
        ])  # fmt: skip
        try:
            provider.start()
            provider.wait_online()
            visitor.start()
            visitor.wait(lambda s: s["visitors"][0]["status"] == "ready", 10, "gina's xtcp visitor ready")
            sessions = {s["agent"]: s for s in stack.tunnel()["sessions"]}
            # The node sees each agent at its router's public address, not its private one.
            assert sessions["frank"]["address"].startswith(h1.node_addr.rsplit(".", 1)[0] + ".11:")
            assert sessions["gina"]["address"].startswith(h2.node_addr.rsplit(".", 1)[0] + ".12:")
            relayed_bytes = _session_bytes(stack, "frank")
            payloads = _payloads(3, 256 * 1024)
            for p in payloads:  # one at a time: each punches its own hole
                assert _concurrent_echo(port, [p], netns=h2.netns) == [p]
            direct, relayed = _paths(visitor, "p2p")
            record_property("xtcp_nat_paths", f"direct={direct} relayed={relayed}")
            print(f"\nxtcp through two NATs: {direct} direct, {relayed} relayed")
            assert direct == 3, f"hole punching failed through MASQUERADE: {direct} direct, {relayed} relayed"
            wait_until(lambda: echo.accepted == 3, 2, message="3 connections at frank's service")
            # The payloads did not cross the node (its session with frank carried control messages only).
            assert _session_bytes(stack, "frank") - relayed_bytes < 3 * 256 * 1024 // 4
        finally:
            visitor.stop()
            provider.stop()
            echo.close()


def test_one_agent_cannot_visit_a_proxy_with_two_keys(tmp_path: pathlib.Path) -> None:
    common = {"type": "stcp", "serverUser": "alice", "serverName": "sec"}
    visitors = [
        {"name": "a", **common, "secretKey": KEY, "bindPort": 7001},
        {"name": "b", **common, "secretKey": WRONG, "bindPort": 7002},
    ]
    path = tmp_path / "two-keys.toml"
    path.write_text('user = "bob"\nauth.token = "t"\n' + toml_tables("visitors", visitors))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any(p == "visitors[1].secretKey" and "visitors[0]" in m for p, m in err.value.problems), err.value


def test_an_agent_visiting_its_own_secret_proxy_waits_for_it_instead_of_being_refused(stack: TunnelStack) -> None:
    """One agent holds an stcp proxy and its visitor (a same-host test setup, or a config shared
    by two roles): the visit waits until the node has accepted the proxy, so the start logs no
    "refused" and the visitor is ready at once."""
    echo = TcpEcho()
    port = free_port()
    dave = _agent(
        stack, "dave",
        proxies=[{"name": "own", "type": "stcp", "localPort": echo.port, "secretKey": KEY}],
        visitors=[{"name": "v", "type": "stcp", "serverName": "own", "secretKey": KEY, "bindAddr": "127.0.0.1",
                   "bindPort": port}],
    )  # fmt: skip
    try:
        dave.start()
        dave.wait_online()
        wait_until(lambda: dave.visitor("v")["status"] == "ready", 10, message="the visitor ready")
        assert echo_roundtrip(("127.0.0.1", port), b"to my own proxy") == b"to my own proxy"
        log = dave.log_path.read_text()
        assert "refused" not in log and "no secret proxy" not in log, log
    finally:
        dave.stop()
        echo.close()
