"""The node's active health probe (`dataplane.health.checker.probe`) against real local servers,
plain and over TLS: one HTTP exchange (`_http_status`) behind both."""

from __future__ import annotations

import contextlib
import pathlib
import socket
import ssl
from typing import Any

import trio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived
from h2.exceptions import ProtocolError
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


async def _h2_service(status: bytes, tls: ssl.SSLContext | None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A server that speaks HTTP/2 only (h2c with prior knowledge, or TLS with ALPN h2), as a
    gRPC backend does: it answers every request's headers with `status` and records them."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    seen: list[dict[bytes, bytes]] = []

    async def handle(raw: trio.SocketStream) -> None:
        stream: trio.abc.Stream = trio.SSLStream(raw, tls, server_side=True) if tls is not None else raw
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        try:
            await stream.send_all(conn.data_to_send())
            while data := await stream.receive_some(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        seen.append(dict(event.headers))
                        conn.send_headers(event.stream_id, [(b":status", status)], end_stream=True)
                await stream.send_all(conn.data_to_send())
        except (trio.BrokenResourceError, ProtocolError):
            pass  # a client speaking HTTP/1.1 to this server, or gone
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()

    task_status.started((listeners[0].socket.getsockname()[1], seen))
    await trio.serve_listeners(handle, listeners)


def test_an_http2_cluster_is_checked_in_http2_cleartext_and_over_tls(tmp_path: pathlib.Path) -> None:
    server_ctx, client_ctx = contexts(tmp_path, "grpc.example")
    server_ctx.set_alpn_protocols(["h2"])
    client_ctx.set_alpn_protocols(["h2"])  # what the node's context of a protocol: http2 cluster offers
    tls = UpstreamTls(client_ctx, "grpc.example")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port, seen = await nursery.start(_h2_service, b"200", None)
            ep = EndpointState("127.0.0.1", port)
            check = pb.HealthCheck(type="http", path="/grpc.health.v1.Health/Check", host="grpc.local")
            assert await probe(ep, check, http2=True) == (True, "http 200 (h2)")
            ok, _ = await probe(ep, check)  # HTTP/1.1 to an h2c-only server: what the probe did before
            assert not ok
            tls_port, tls_seen = await nursery.start(_h2_service, b"503", server_ctx)
            tls_ep = EndpointState("127.0.0.1", tls_port)
            assert await probe(tls_ep, check, tls, http2=True) == (False, "https 503 (h2)")
            allow_503 = pb.HealthCheck(type="http", expected_statuses=[503])
            assert await probe(tls_ep, allow_503, tls, http2=True) == (True, "https 503 (h2)")
            nursery.cancel_scope.cancel()
        head = seen[0]
        assert head[b":method"] == b"GET" and head[b":scheme"] == b"http"
        assert head[b":path"] == b"/grpc.health.v1.Health/Check" and head[b":authority"] == b"grpc.local"
        assert head[b"user-agent"] == b"flux-health-check"
        assert tls_seen[0][b":scheme"] == b"https" and tls_seen[1][b":authority"] == f"127.0.0.1:{tls_port}".encode()

    trio.run(main)


def test_an_http2_probe_answered_in_http1_or_garbage_is_unhealthy_never_an_error() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port, _ = await nursery.start(_service, b"200 OK", None)  # an HTTP/1.1 answer to an h2 preface
            ok, detail = await probe(EndpointState("127.0.0.1", port), pb.HealthCheck(type="http"), http2=True)
            assert not ok and ("protocol error" in detail or "closed" in detail), detail
            nursery.cancel_scope.cancel()

    trio.run(main)
