"""The node's active health probe (`dataplane.health.checker.probe`) against real local servers,
plain and over TLS: one HTTP exchange (`_http_status`) behind both."""

from __future__ import annotations

import pathlib
import socket
import ssl
from typing import Any

import trio
from support.tls import contexts

from dataplane.balancing import EndpointState
from dataplane.health.checker import probe
from dataplane.tls.contexts import UpstreamTls
from flux.v1 import config_pb2 as pb


async def _service(status: bytes, tls: ssl.SSLContext | None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    heads: list[bytes] = []

    async def handle(raw: trio.SocketStream) -> None:
        stream: trio.abc.Stream = trio.SSLStream(raw, tls, server_side=True) if tls is not None else raw
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(4096)
                if not data:
                    return
                head += data
            heads.append(head)
            await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
            await stream.aclose()
        except trio.BrokenResourceError:
            pass

    task_status.started((listeners[0].socket.getsockname()[1], heads))
    await trio.serve_listeners(handle, listeners)


def test_http_probe_judges_the_status_and_names_the_host() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port, heads = await nursery.start(_service, b"301 Moved", None)
            ep = EndpointState("127.0.0.1", port)
            assert await probe(ep, pb.HealthCheck(type="http", path="/hz", host="svc.local")) == (True, "http 301")
            expected = pb.HealthCheck(type="http", expected_statuses=[200])
            assert await probe(ep, expected) == (False, "http 301")
            assert await probe(ep, pb.HealthCheck(type="tcp")) == (True, "tcp connect ok")
            nursery.cancel_scope.cancel()
        assert heads[0].startswith(b"GET /hz HTTP/1.1\r\nHost: svc.local\r\n")
        assert f"Host: 127.0.0.1:{port}\r\n".encode() in heads[1]

    trio.run(main)


def test_probe_failures() -> None:
    async def main() -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        ok, detail = await probe(EndpointState("127.0.0.1", port), pb.HealthCheck(type="http"))
        assert not ok and "ECONNREFUSED" in detail
        s.listen()
        silent = pb.HealthCheck(type="http", timeout_ms=200)
        assert await probe(EndpointState("127.0.0.1", port), silent) == (False, "timed out after 0.2s")
        s.close()

    trio.run(main)


def test_https_probe_uses_the_cluster_context_and_sni(tmp_path: pathlib.Path) -> None:
    server_ctx, client_ctx = contexts(tmp_path, "svc.example")
    client_ctx.set_alpn_protocols(["h2"])
    tls = UpstreamTls(client_ctx, "svc.example")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port, heads = await nursery.start(_service, b"204 No Content", server_ctx)
            ep = EndpointState("127.0.0.1", port)
            assert await probe(ep, pb.HealthCheck(type="http", path="/ready"), tls) == (True, "https 204")
            assert await probe(ep, pb.HealthCheck(type="tcp"), tls) == (True, "tls handshake ok")
            ok, detail = await probe(ep, pb.HealthCheck(type="http"), UpstreamTls(client_ctx, "other.example"))
            assert not ok and detail.startswith("tls: ")
            nursery.cancel_scope.cancel()
        assert heads[0].startswith(b"GET /ready HTTP/1.1\r\n")

    trio.run(main)
