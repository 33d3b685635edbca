"""Issue 12, part 5: an upstream that answers with bytes a client must never see. Each answer
is a 502 at once (no waiting for the read timeout), counted as a protocol error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.processes import free_port

from .conftest import HostileUpstream, SnapshotNode, exchange, status_of

pytestmark = pytest.mark.slow

ANSWERS = {
    "/nul": b"HTTP/1.1 200 OK\r\nX-Evil: a\x00b\r\nContent-Length: 2\r\n\r\nhi",
    "/ctl": b"HTTP/1.1 200 OK\r\nX-Evil: a\x01b\r\nContent-Length: 2\r\n\r\nhi",
    "/del": b"HTTP/1.1 200 OK\r\nX-Evil: a\x7fb\r\nContent-Length: 2\r\n\r\nhi",
    "/nul-chunked": b"HTTP/1.1 200 OK\r\nX-Evil: a\x00b\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "/bad-name": b"HTTP/1.1 200 OK\r\nX Evil: 1\r\nContent-Length: 2\r\n\r\nhi",
    "/gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "/te-two-lines": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "/te-identity": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhi",
    "/upgrade": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "/bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",  # and the connection stays open
    "/bare-lf-header": b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 2\r\n\r\nhi",
    "/not-http": b"SSH-2.0-OpenSSH_9.2\r\n",
    "/fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nhi",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hostile = HostileUpstream(dict(ANSWERS)).start()
    port = free_port()
    doc = {
        "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
        "clusters": [
            {
                "name": "hostile",
                "endpoints": [{"address": "127.0.0.1", "port": hostile.port}],
                "timeouts": {"read": "20s"},
            }
        ],
        "routes": [{"name": "all", "path": "/", "cluster": "hostile", "retry": {"attempts": 0}}],
    }
    n = SnapshotNode(tmp_path_factory.mktemp("hostile"), doc).start()
    try:
        yield {"node": n, "port": port}
    finally:
        n.stop()
        hostile.stop()


@pytest.mark.parametrize("path", sorted(ANSWERS))
def test_hostile_answers_are_502_at_once(node: dict[str, Any], path: str) -> None:
    before = node["node"].metric("flux_upstream_errors_total", cluster="hostile", kind="protocol")
    t0 = time.monotonic()
    r = exchange(node["port"], f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode(), timeout=10)
    assert status_of(r) == 502, r
    assert time.monotonic() - t0 < 3  # not the 20 s read timeout
    assert b"\x00" not in r and b"X-Evil" not in r and b"X Evil" not in r
    assert node["node"].metric("flux_upstream_errors_total", cluster="hostile", kind="protocol") == before + 1


def test_a_plain_answer_still_passes(node: dict[str, Any]) -> None:
    r = exchange(node["port"], b"GET /fine HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert status_of(r) == 200
