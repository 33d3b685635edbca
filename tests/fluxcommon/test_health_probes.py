"""The three HTTP probers (node, control plane, agent) against one real HTTP server, each
with its documented success rule: the node and the control plane 200-399 or the configured
statuses, the agent any 2xx (frp's rule)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trio

from controlplane.registry.health import Checker
from controlplane.registry.types import ServiceCheckSpec
from dataplane.balancing import EndpointState
from dataplane.health.checker import probe as node_probe
from flux.v1 import config_pb2 as pb
from tunnelclient.health import probe as agent_probe

STATUSES = (200, 204, 299, 301, 302, 399, 400, 404, 500, 503)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """A real HTTP server on port 0: `GET /NNN` answers status NNN."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.strip("/")))
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def node_says(port: int, status: int, expected: tuple[int, ...] = ()) -> bool:
    hc = pb.HealthCheck(type="http", path=f"/{status}", timeout_ms=2000, expected_statuses=expected)
    ok, detail = trio.run(node_probe, EndpointState("127.0.0.1", port), hc)
    assert detail == f"http {status}"
    return ok


def registry_says(port: int, status: int, expected: tuple[int, ...] = ()) -> bool:
    spec = ServiceCheckSpec(type="http", path=f"/{status}", expect_status=list(expected))

    async def check() -> tuple[bool, str]:
        checker = Checker(1)
        try:
            return await checker.http(spec, "127.0.0.1", port, 2.0)
        finally:
            await checker.aclose()

    ok, detail = asyncio.run(check())
    assert detail.startswith(f"HTTP {status}")
    return ok


def agent_says(port: int, status: int) -> bool:
    error = trio.run(agent_probe, "http", "127.0.0.1", port, f"/{status}", 2.0)
    assert error is None or error == f"HTTP {status}"
    return error is None


def test_each_prober_applies_its_documented_rule(port: int) -> None:
    for status in STATUSES:
        assert node_says(port, status) == (200 <= status <= 399), status
        assert registry_says(port, status) == (200 <= status <= 399), status
        assert agent_says(port, status) == (200 <= status <= 299), status


def test_configured_statuses_replace_the_default(port: int) -> None:
    for status in (200, 302, 404, 503):
        assert node_says(port, status, (404, 503)) == (status in (404, 503))
        assert registry_says(port, status, (404, 503)) == (status in (404, 503))
