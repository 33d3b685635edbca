"""End-to-end: tunnel users, and every agent-against-agent takeover of issue 13 refused.

One control plane and one `flux-node` serve the module; each test makes its own `tunnels`
resource with users (`office`, `lab`) and a shared token, starts real `flux-tunnel` agents
(child processes) and real servers behind them, and attacks as an agent on the same network
would: a foreign custom domain, a location under another user's domain, a proxy name in
another user's namespace (a hand-made agent, `RawAgent`, sends what flux-tunnel never would),
a run id read off the agent, too many ports or proxies, a TLS relay in the middle and a fake
node. Each refused agent is checked for a clear error on its own `/api/status`. The plain-text
agent refused by default is in test_tunnel_core.py (`test_plain_agents_are_refused_by_default...`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import stat
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, executable, free_port, wait_until
from support.tls import self_signed
from support.tunnel import (
    AgentProcess,
    FakeNode,
    FreezableForwarder,
    RawAgent,
    TcpEchoServer,
    TlsRelay,
    tcp_proxy,
    tcp_roundtrip,
)

from fluxcommon.tunnel.protocol.binding import session_tag
from fluxcommon.tunnel.protocol.control import LoginFailed, LoginSucceeded, ProxyAccepted, ProxyRejected

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

_serial = itertools.count(1)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("tunnel-users")
    cp = ControlPlaneProcess(base / "cp").start()
    node = NodeProcess(base / "node", cp.grpc_addr, node_id="tunnel-users-1", extra_args=("--log-level", "debug"))
    try:
        node.start(wait_ready=False)
        yield {"cp": cp, "node": node}
    finally:
        node.stop()
        cp.stop()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[UpstreamProcess, UpstreamProcess]]:
    a, b = UpstreamProcess("a").start(), UpstreamProcess("b").start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


def port_block(size: int = 30) -> int:
    """The first port of `size` consecutive ports that look free now."""
    for _ in range(50):
        start = free_port()
        start -= start % size
        if start < 20000 or start + size > 60000:
            continue
        try:
            for p in range(start, start + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return start
    raise AssertionError("no block of free ports")


class UsersTunnel:
    """A tunnel with users `office` (*.office.example.com) and `lab` (*.example.com), each with a
    block of 10 ports, and a shared token for single-tenant agents."""

    def __init__(self, stack: dict[str, Any], **extra: Any) -> None:
        self.cp: ControlPlaneProcess = stack["cp"]
        self.node: NodeProcess = stack["node"]
        n = next(_serial)
        self.name = f"users-{n}"
        self.bind_port = free_port()
        self.vhost = free_port()
        self.base = port_block()
        self.tokens = {"office": f"t-office-{os.urandom(4).hex()}", "lab": f"t-lab-{os.urandom(4).hex()}"}
        self.shared = f"shared-{os.urandom(4).hex()}"
        users = extra.pop("users", None) or [
            {"name": "office", "token": self.tokens["office"], "allow_ports": self.ports("office"),
             "domains": ["*.office.example.com"]},
            {"name": "lab", "token": self.tokens["lab"], "allow_ports": self.ports("lab"),
             "domains": ["*.example.com"]},
        ]  # fmt: skip
        self.spec = {
            "name": self.name,
            "bind_address": "127.0.0.1",
            "bind_port": self.bind_port,
            "token": self.shared,
            "users": users,
            "allow_ports": f"{self.base}-{self.base + 29}",
            "vhost_http_port": self.vhost,
            "heartbeat_timeout": "30s",
            **extra,
        }

    def ports(self, user: str) -> str:
        lo = self.base + (0 if user == "office" else 10)
        return f"{lo}-{lo + 9}"

    def apply(self) -> UsersTunnel:
        with self.cp.client() as c:
            r = c.put(f"/api/v1/tunnels/{self.name}", json=self.spec)
        assert r.status_code in (200, 201), r.text
        self.node.wait_version(self.cp.version(), timeout=10)
        return self

    def delete(self) -> None:
        with self.cp.client() as c:
            c.delete(f"/api/v1/tunnels/{self.name}")

    def sessions(self, agent: str | None = None) -> list[dict[str, Any]]:
        found = next((t for t in self.node.get("/tunnels").json()["tunnels"] if t["name"] == self.name), None)
        return [s for s in (found["sessions"] if found else []) if agent is None or s["agent"] == agent]

    def config(self, user: str, proxies: list[dict[str, Any]], *, token: str | None = None, **extra: Any) -> dict:
        doc: dict[str, Any] = {
            "serverAddr": "127.0.0.1",
            "serverPort": self.bind_port,
            "loginFailExit": False,
            "user": user,
            "auth": {"token": token if token is not None else self.tokens.get(user, self.shared)},
            "transport": {"dialServerTimeout": 3},
            "proxies": proxies,
        }
        return {**doc, **extra}

    def get(self, host: str, path: str = "/echo") -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.vhost}{path}", headers={"Host": host}, timeout=5)


@pytest.fixture
def tunnel(stack: dict[str, Any]) -> Iterator[Callable[..., UsersTunnel]]:
    made: list[UsersTunnel] = []

    def make(**extra: Any) -> UsersTunnel:
        t = UsersTunnel(stack, **extra).apply()
        made.append(t)
        return t

    yield make
    for t in made:
        t.delete()


@pytest.fixture
def agents(tmp_path: Any) -> Iterator[Callable[[str, dict[str, Any]], AgentProcess]]:
    started: list[AgentProcess] = []

    def make(name: str, config: dict[str, Any]) -> AgentProcess:
        agent = AgentProcess(tmp_path / "agents", name, config).start()
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


def http_proxy(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "http", "localPort": port, **extra}


def last_error(agent: AgentProcess) -> str:
    status = wait_until(lambda: (s := agent.status())["last_error"] and s, 10, message=f"{agent.name}: an error")
    assert status["state"] != "online", status
    return str(status["last_error"])


# -- domains and locations -----------------------------------------------------------------


def test_a_foreign_custom_domain_is_refused_and_its_owner_keeps_the_traffic(
    tunnel: Callable[..., UsersTunnel], agents: Any, upstreams: tuple[UpstreamProcess, ...]
) -> None:
    up_a, up_b = upstreams
    t = tunnel()
    office = agents(
        "office", t.config("office", [http_proxy("crm", up_a.port, customDomains=["crm.office.example.com"])])
    )
    office.wait_proxy("office.crm")
    wait_until(lambda: t.get("crm.office.example.com").status_code == 200, 5, message="office's route")
    # lab may claim any name under example.com, but not one another user serves
    lab = agents(
        "lab",
        t.config(
            "lab",
            [
                http_proxy("crm", up_b.port, customDomains=["crm.office.example.com"]),
                http_proxy("grab", up_b.port, customDomains=["crm.office.example.com"], loadBalancer={"group": "crm"}),
                http_proxy("mine", up_b.port, customDomains=["lab.example.com"]),
            ],
        ),
    )
    for name in ("lab.crm", "lab.grab"):
        refused = lab.wait_proxy(name, status="rejected")
        assert "crm.office.example.com is already served by another tunnel user" in refused["error"], refused
        assert "not shared or taken over" in refused["error"]
    lab.wait_proxy("lab.mine")
    # a user whose domains do not cover it is told so
    guest = agents(
        "guest-on-lab",
        t.config("lab", [http_proxy("other", up_b.port, customDomains=["crm.office.example.org"])]),
    )
    refused = guest.wait_proxy("lab.other", status="rejected")
    assert "crm.office.example.org is not among the domains of user 'lab' (*.example.com)" in refused["error"], refused
    assert "refused by the node" in lab.output()  # flux-tunnel logs it too
    # the domain still goes to office's service, lab's own domain to lab's
    for _ in range(5):
        assert t.get("crm.office.example.com").json()["server"] == "a"
    wait_until(lambda: t.get("lab.example.com").status_code == 200, 5, message="lab's route")
    assert t.get("lab.example.com").json()["server"] == "b"


def test_a_location_under_another_users_domain_is_refused(
    tunnel: Callable[..., UsersTunnel], agents: Any, upstreams: tuple[UpstreamProcess, ...]
) -> None:
    up_a, up_b = upstreams
    t = tunnel()
    office = agents(
        "office", t.config("office", [http_proxy("crm", up_a.port, customDomains=["crm.office.example.com"])])
    )
    office.wait_proxy("office.crm")
    lab = agents(
        "lab",
        t.config(
            "lab", [http_proxy("admin", up_b.port, customDomains=["crm.office.example.com"], locations=["/echo/admin"])]
        ),
    )
    refused = lab.wait_proxy("lab.admin", status="rejected")
    assert "crm.office.example.com is already served by another tunnel user" in refused["error"], refused
    wait_until(lambda: t.get("crm.office.example.com", "/echo/admin/x").status_code == 200, 5, message="route")
    assert t.get("crm.office.example.com", "/echo/admin/x").json()["server"] == "a"
    # office itself may add a location to its own domain
    more = agents(
        "office-2",
        t.config(
            "office", [http_proxy("adm", up_b.port, customDomains=["crm.office.example.com"], locations=["/echo/adm"])]
        ),
    )
    more.wait_proxy("office.adm")
    wait_until(
        lambda: t.get("crm.office.example.com", "/echo/adm/1").json()["server"] == "b", 5, message="office's own"
    )


# -- names and sessions --------------------------------------------------------------------


def test_a_proxy_name_in_another_users_namespace_is_impossible(
    tunnel: Callable[..., UsersTunnel], agents: Any, closing: contextlib.ExitStack
) -> None:
    t = tunnel()
    echo = closing.enter_context(TcpEchoServer())
    office = agents("office", t.config("office", [tcp_proxy("echo-tcp", echo.port, t.base)]))
    office.wait_proxy("office.echo-tcp")
    # lab, logged in with its own token, asks for office.echo-tcp (flux-tunnel would send lab.echo-tcp)
    with RawAgent(t.bind_port, "lab", t.tokens["lab"]) as lab:
        assert isinstance(lab.login(), LoginSucceeded)
        answer = lab.new_proxy("office.echo-tcp", "tcp", {"remote_port": t.base + 11})
        assert isinstance(answer, ProxyRejected), answer
        assert "user 'lab' registers proxies named lab.NAME only, not 'office.echo-tcp'" in answer.message
        assert isinstance(lab.new_proxy("lab.echo-tcp", "tcp", {"remote_port": t.base + 11}), ProxyAccepted)
    # logging in as office takes office's token: not lab's, not the shared one
    with RawAgent(t.bind_port, "office", t.tokens["lab"]) as fake:
        failed = fake.login()
        assert isinstance(failed, LoginFailed) and failed.message.startswith("authentication failed"), failed
    with RawAgent(t.bind_port, "office", t.shared) as fake:
        failed = fake.login()
        assert isinstance(failed, LoginFailed)
        assert "'office' is a tunnel user and logs in with its own token, not the shared one" in failed.message
    # a shared-token agent cannot use a user's namespace either
    with RawAgent(t.bind_port, "build-7", t.shared) as shared:
        assert isinstance(shared.login(), LoginSucceeded)
        answer = shared.new_proxy("office.echo-tcp", "tcp", {"remote_port": t.base + 25})
        assert isinstance(answer, ProxyRejected) and "namespace of tunnel user 'office'" in answer.message
    # flux-tunnel with user = office and lab's token shows the refusal
    impostor = agents(
        "office-impostor", t.config("office", [tcp_proxy("x", echo.port, t.base + 1)], token=t.tokens["lab"])
    )
    assert "authentication failed" in last_error(impostor)
    assert tcp_roundtrip(t.base, b"still office's") == b"still office's"
    assert [p["name"] for s in t.sessions("office") for p in s["proxies"]] == ["office.echo-tcp"]


def test_an_impostor_with_a_run_id_cannot_kick_the_real_agent(
    stack: dict[str, Any], tunnel: Callable[..., UsersTunnel], agents: Any, closing: contextlib.ExitStack
) -> None:
    t = tunnel()
    echo = closing.enter_context(TcpEchoServer())
    office = agents("office", t.config("office", [tcp_proxy("echo-tcp", echo.port, t.base)]))
    office.wait_proxy("office.echo-tcp")
    run_id = office.status()["run_id"]
    # readers of the control plane see a short hash, never the run id
    cp: ControlPlaneProcess = stack["cp"]

    def listed() -> list[dict[str, Any]]:
        with cp.client() as c:
            r = c.get("/api/v1/tunnels/sessions", params={"tunnel": t.name})
        assert r.status_code == 200, r.text
        assert run_id not in r.text and "run_id" not in r.text
        return r.json()["items"]  # type: ignore[no-any-return]

    (shown,) = wait_until(listed, 10, message="the session reported to the control plane")
    assert shown["session"] == session_tag(run_id) and shown["agent"] == "office"
    assert "run_id" not in str(t.sessions())
    # an impostor that learnt the run id anyway: with the shared token it cannot log in as office,
    # with its own credential it gets a run id of its own and replaces nothing
    with RawAgent(t.bind_port, "office", t.shared, run_id=run_id) as impostor:
        failed = impostor.login()
        assert isinstance(failed, LoginFailed) and "logs in with its own token" in failed.message
    with RawAgent(t.bind_port, "office", "guess", run_id=run_id) as impostor:
        assert isinstance(impostor.login(), LoginFailed)
    with RawAgent(t.bind_port, "lab", t.tokens["lab"], run_id=run_id) as impostor:
        assert isinstance(impostor.login(), LoginSucceeded)
        assert impostor.run_id != run_id
        [session] = t.sessions("office")
        assert session["session"] == session_tag(run_id)
        assert tcp_roundtrip(t.base, b"not kicked") == b"not kicked"
    status = office.status()
    assert status["state"] == "online" and status["connects"] == 1 and status["run_id"] == run_id
    assert "replaced by a new login" not in stack["node"].output()


# -- ports and proxies ---------------------------------------------------------------------


def test_a_user_cannot_take_more_than_its_ports_or_proxies(
    tunnel: Callable[..., UsersTunnel], agents: Any, closing: contextlib.ExitStack
) -> None:
    t = tunnel()
    t.spec["users"][0]["max_proxies"] = 3
    t.apply()
    echo = closing.enter_context(TcpEchoServer())
    proxies = [tcp_proxy("theirs", echo.port, t.base + 12)]  # in lab's block (and the tunnel's)
    proxies += [tcp_proxy(f"p{i}", echo.port, 0) for i in range(5)]  # any free port, five of them
    office = agents("office", t.config("office", proxies))
    refused = office.wait_proxy("office.theirs", status="rejected")
    assert (
        f"remotePort: {t.base + 12} is not among the ports of user 'office' ({t.ports('office')})" in (refused["error"])
    ), refused

    def settled() -> list[dict[str, Any]] | None:
        found = [p for p in office.status()["proxies"] if p["name"] != "office.theirs"]
        return found if all(p["status"] in ("running", "rejected") for p in found) else None

    done = wait_until(settled, 10, message="office's proxies answered")
    running = [p for p in done if p["status"] == "running"]
    assert len(running) == 3, done
    for p in running:
        assert t.base <= int(p["remote_addr"].rpartition(":")[2]) <= t.base + 9, p
    for p in done:
        if p["status"] == "rejected":
            assert "max_proxies: user 'office' already has 3 proxies on this node" in p["error"], p
    # a second agent of the same user counts against the same limit
    office2 = agents("office-2", t.config("office", [tcp_proxy("more", echo.port, 0)]))
    assert "max_proxies" in office2.wait_proxy("office.more", status="rejected")["error"]
    # lab still gets ports of its own block
    lab = agents("lab", t.config("lab", [tcp_proxy("svc", echo.port, 0)]))
    port = int(lab.wait_proxy("lab.svc")["remote_addr"].rpartition(":")[2])
    assert t.base + 10 <= port <= t.base + 19
    assert tcp_roundtrip(port, b"lab") == b"lab"


# -- the login is bound to the TLS connection ----------------------------------------------


def test_a_tls_relay_in_the_middle_fails_and_a_fake_node_is_refused(
    tunnel: Callable[..., UsersTunnel], agents: Any, closing: contextlib.ExitStack, tmp_path: Any
) -> None:
    t = tunnel()
    echo = closing.enter_context(TcpEchoServer())
    relay = TlsRelay(("127.0.0.1", t.bind_port), tmp_path / "relay")
    closing.callback(relay.close)
    # the agent does not verify the node (no trustedCaFile): its TLS handshake with the relay
    # succeeds, but its login is bound to the relay's certificate, and the node refuses it
    victim = agents(
        "office-via-relay", {**t.config("office", [tcp_proxy("p", echo.port, t.base)]), "serverPort": relay.port}
    )
    # (the relay pumps one TLS socket from two threads: an attempt it garbles ends in a timeout
    # and the agent tries again, so wait for the refusal rather than for the first error)
    error = wait_until(
        lambda: "authentication failed" in (e := str(victim.status()["last_error"] or "")) and e,
        30,
        message="office-via-relay: the node's refusal",
    )
    assert "TLS relay" in error and victim.status()["state"] != "online", error
    assert relay.handshakes >= 1 and t.sessions("office") == []
    # a forwarder that does not terminate TLS changes nothing: the same agent logs in through it
    forwarder = FreezableForwarder(("127.0.0.1", t.bind_port))
    closing.callback(forwarder.close)
    direct = agents(
        "office-via-tcp", {**t.config("office", [tcp_proxy("p", echo.port, t.base)]), "serverPort": forwarder.port}
    )
    direct.wait_proxy("office.p")
    # a fake node (or a relay that answers itself) cannot prove it holds the token: the agent
    # refuses it before it registers anything
    fake = FakeNode(tmp_path / "fake")
    closing.callback(fake.close)
    fooled = agents(
        "office-to-fake", {**t.config("office", [tcp_proxy("p", echo.port, t.base + 1)]), "serverPort": fake.port}
    )
    error = last_error(fooled)
    assert "the node did not prove that it holds this agent's token" in error, error
    assert "office" in fake.logins and fake.after_login == [], fake.after_login


# -- fluxctl tunnels agent-config ----------------------------------------------------------


def test_agent_config_prints_a_ready_verified_config(
    stack: dict[str, Any], tunnel: Callable[..., UsersTunnel], closing: contextlib.ExitStack, tmp_path: Any
) -> None:
    cp: ControlPlaneProcess = stack["cp"]
    cert_name = f"users-cert-{next(_serial)}"
    cert, key = self_signed("tunnel.users.test", ("tunnel.users.test",))
    with cp.client() as c:
        assert c.put(
            f"/api/v1/certificates/{cert_name}", json={"name": cert_name, "cert": cert, "key": key}
        ).status_code in (200, 201)
    t = tunnel(tls={"certificate": cert_name})
    closing.callback(lambda: cp.client().delete(f"/api/v1/certificates/{cert_name}"))
    closing.callback(t.delete)
    echo = closing.enter_context(TcpEchoServer())
    workdir = tmp_path / "office"
    workdir.mkdir()
    fluxctl = [executable("fluxctl"), "--server", cp.url, "--token", cp.admin_token]
    out = subprocess.run(
        [*fluxctl, "tunnels", "agent-config", t.name, "--user", "office", "--server-addr", "127.0.0.1",
         "-f", str(workdir / "office.toml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    path = workdir / "office.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = tomllib.loads(path.read_text())
    assert doc["user"] == "office" and doc["auth"]["token"] == t.tokens["office"]
    assert (doc["serverAddr"], doc["serverPort"]) == ("127.0.0.1", t.bind_port)
    tls = doc["transport"]["tls"]
    assert tls["trustedCaFile"] == f"{t.name}-ca.pem" and tls["serverName"] == "tunnel.users.test"
    assert (workdir / tls["trustedCaFile"]).read_text().strip() == cert.strip()
    # the file as printed runs: the agent verifies the node and logs in
    agent = AgentProcess(workdir, "office", {**doc, "proxies": [tcp_proxy("p", echo.port, t.base)]}).start()
    closing.callback(agent.stop)
    assert tcp_roundtrip(int(agent.wait_proxy("office.p")["remote_addr"].rpartition(":")[2]), b"v") == b"v"
    assert "not verified" not in agent.output()
    # ... and does not even complete TLS with a relay
    relay = TlsRelay(("127.0.0.1", t.bind_port), tmp_path / "relay")
    closing.callback(relay.close)
    verifying = AgentProcess(  # loginFailExit = false: it stays up, its /api/status says why (true ends it)
        workdir, "via-relay", {**doc, "serverPort": relay.port, "loginFailExit": False,
                               "proxies": [tcp_proxy("q", echo.port, t.base + 1)]},
    ).start()  # fmt: skip
    closing.callback(verifying.stop)
    assert "certificate" in last_error(verifying).lower()
    # printed to stdout, the config points at the CA written into the current directory
    printed = subprocess.run(
        [*fluxctl, "tunnels", "agent-config", t.name, "--user", "lab", "--server-addr", "127.0.0.1"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert f'auth.token = "{t.tokens["lab"]}"' in printed.stdout
    assert str(tmp_path / f"{t.name}-ca.pem") in printed.stdout
    # unknown user: a clear error; a read token never sees a token
    bad = subprocess.run(
        [*fluxctl, "tunnels", "agent-config", t.name, "--user", "nobody"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 1 and "has no user 'nobody' (its users: office, lab)" in bad.stderr
    with cp.client() as c:
        r = c.post("/api/v1/tokens", json={"name": f"reader-{t.name}", "role": "read"})
        assert r.status_code in (200, 201), r.text
        reader = r.json()["token"]
        assert t.tokens["office"] not in c.get(f"/api/v1/tunnels/{t.name}").text
    headers = {"Authorization": f"Bearer {reader}"}
    r = httpx.post(f"{cp.api}/tunnels/{t.name}/agent-config", json={"user": "office"}, headers=headers, timeout=5)
    assert r.status_code == 403 and t.tokens["office"] not in r.text, r.text
    r = httpx.get(f"{cp.api}/tunnels/{t.name}", headers=headers, timeout=5)
    assert r.status_code == 200 and t.tokens["office"] not in r.text
    assert {u["token"] for u in r.json()["users"]} == {"********"}
