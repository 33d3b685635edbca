"""End-to-end: when `flux-tunnel` gives up, and how it stops (issue 14 item 7).

- a quick-form agent whose only proxy the node refuses exits with the reason (it used to keep
  running with nothing published);
- a wrong token is not retried for ever: `loginFailExit` is true by default, as in frp, so the
  first refused login ends the agent (with `loginFailExit = false` it keeps trying);
- SIGTERM ends a connected agent without a "reconnecting" line.

One control plane and one `flux-node` serve the module; agents are real child processes.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.node import NodeProcess
from support.processes import ControlPlaneProcess, executable, free_port
from support.tunnel import AgentProcess, TcpEchoServer, tcp_proxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

_serial = itertools.count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("agent-lifecycle")
    cp = ControlPlaneProcess(base / "cp").start()
    node = NodeProcess(base / "node", cp.grpc_addr, node_id="agent-lifecycle-1")
    try:
        node.start(wait_ready=False)
        yield {"cp": cp, "node": node}
    finally:
        node.stop()
        cp.stop()


@pytest.fixture
def edge(stack: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A tunnel allowing remote ports 40000-40009 only, with a token."""
    cp: ControlPlaneProcess = stack["cp"]
    node: NodeProcess = stack["node"]
    name, token, port = f"life-{next(_serial)}", f"tok-{os.urandom(4).hex()}", free_port()
    spec = {"name": name, "bind_address": "127.0.0.1", "bind_port": port, "token": token,
            "allow_ports": "40000-40009"}  # fmt: skip
    with cp.client() as c:
        r = c.put(f"/api/v1/tunnels/{name}", json=spec)
    assert r.status_code in (200, 201), r.text
    node.wait_version(cp.version(), timeout=10)
    yield {"port": port, "token": token}
    with cp.client() as c:
        c.delete(f"/api/v1/tunnels/{name}")


def run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable("flux-tunnel"), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_quick_form_whose_only_proxy_is_refused_exits_with_the_reason(edge: dict[str, Any]) -> None:
    with TcpEchoServer() as local:
        started = time.monotonic()
        done = run(["tcp", "--server", f"127.0.0.1:{edge['port']}", "--token", edge["token"],
                    "--insecure-skip-verify", "--local-port", str(local.port), "--remote-port", "41234"])  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert time.monotonic() - started < 20
    assert "41234 is not allowed" in out and "refused" in out, out


def test_a_wrong_token_ends_the_agent_by_default(edge: dict[str, Any], tmp_path: pathlib.Path) -> None:
    config = tmp_path / "wrong.toml"
    config.write_text(
        f'serverAddr = "127.0.0.1"\nserverPort = {edge["port"]}\nauth.token = "not-the-token"\n'
        "transport.tls.insecureSkipVerify = true\n"
        '[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocalPort = 22\nremotePort = 40001\n'
    )
    done = run(["-c", str(config)])
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "login failed" in out and "reconnecting" not in out, out
    quick = run(["tcp", "--server", f"127.0.0.1:{edge['port']}", "--token", "nope", "--insecure-skip-verify",
                 "--local-port", "22", "--remote-port", "40002"])  # fmt: skip
    assert quick.returncode == 1 and "login failed" in quick.stdout + quick.stderr, quick


def test_with_login_fail_exit_false_a_wrong_token_is_retried(edge: dict[str, Any], tmp_path: pathlib.Path) -> None:
    agent = AgentProcess(tmp_path, "retry", {
        "serverAddr": "127.0.0.1", "serverPort": edge["port"], "auth": {"token": "nope"}, "loginFailExit": False,
        "transport": {"tls": {"insecureSkipVerify": True}}, "proxies": [tcp_proxy("ssh", 22, 40003)],
    })  # fmt: skip
    with agent:
        agent.wait_state("reconnecting")
        assert agent.running
        assert "login failed" in agent.status()["last_error"] or "authentication" in agent.status()["last_error"]


def test_sigterm_stops_a_connected_agent_without_reconnecting(edge: dict[str, Any], tmp_path: pathlib.Path) -> None:
    with TcpEchoServer() as local:
        agent = AgentProcess(tmp_path, "term", {
            "serverAddr": "127.0.0.1", "serverPort": edge["port"], "auth": {"token": edge["token"]},
            "transport": {"tls": {"insecureSkipVerify": True}}, "proxies": [tcp_proxy("echo", local.port, 40004)],
        })  # fmt: skip
        agent.start()
        try:
            agent.wait_proxy("echo")
            before = agent.log_path.read_text()
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGTERM)
            assert agent.proc.wait(10) == 0
        finally:
            agent.stop()
    after = agent.log_path.read_text()[len(before) :]
    assert "received SIGTERM" in after, after
    assert "reconnecting" not in after and "connection to the node lost" not in after, after
    assert "the node is going away" not in after, after  # it is the agent that goes, not the node
