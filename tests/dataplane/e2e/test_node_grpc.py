"""gRPC through the node (issue 19): unary and the three streaming kinds over HTTP/2 with
trailers, deadlines (grpc-timeout), cancellation, large messages, the node's own answers as gRPC
statuses, policies per call, gRPC over TLS (h2 by ALPN) both sides, and gRPC-Web translation.
grpcio clients and servers (tests/support/grpc_echo.py)."""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from support.grpc_echo import serve, stubs
from support.processes import free_port
from support.snapshot_node import SnapshotNode, read_response, status_of
from support.tls import TestCA

pytestmark = pytest.mark.slow

TO_ECHO = {"prefix_rewrite": "/flux.test.Echo/"}  # the echo server serves one service
OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ca = TestCA()
    up_cert, up_key = ca.issue("grpc.backend", ("grpc.backend",))
    gw_cert, gw_key = ca.issue("grpc.gateway", ("grpc.gateway",))
    server, gport = serve()
    tls_server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(4))
    from support.grpc_echo import SERVICE

    tls_server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}),)
    )
    tls_port = tls_server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(up_key.encode(), up_cert.encode())])
    )
    tls_server.start()
    port, https_port, dead = free_port(), free_port(), free_port()
    doc = {
        "certificates": [{"name": "gw", "cert": gw_cert, "key": gw_key}],
        "listeners": [
            {"name": "h2c", "protocol": "http", "address": "127.0.0.1", "port": port, "http2": True},
            {"name": "tls", "protocol": "https", "address": "127.0.0.1", "port": https_port, "certificates": ["gw"]},
        ],
        "clusters": [
            {"name": "grpc", "protocol": "http2", "endpoints": [{"address": "127.0.0.1", "port": gport}]},
            {
                "name": "grpc-tls",
                "protocol": "http2",
                "endpoints": [{"address": "127.0.0.1", "port": tls_port}],
                "tls": {"sni": "grpc.backend", "ca": ca.pem},
            },
            {
                "name": "nobody",
                "protocol": "http2",
                "endpoints": [{"address": "127.0.0.1", "port": dead}],
                "outlier_detection": {"consecutive_failures": 1},
            },
        ],
        "consumers": [{"name": "app", "credentials": [{"type": "api_key", "key": "app-key-123456"}]}],
        "policies": [
            {"name": "key", "type": "api_key", "config": {"header": "x-api-key"}},
            {"name": "office", "type": "ip_acl", "config": {"allow": ["10.0.0.0/8"]}},
            {"name": "one-a-minute", "type": "rate_limit", "config": {"rate": 1, "per": "1m", "key": "ip"}},
        ],
        "routes": [
            {"name": "echo", "path": "/flux.test.Echo/", "cluster": "grpc", "grpc_web": True},
            {"name": "keyed", "path": "/flux.test.Keyed/", "cluster": "grpc", "policies": ["key"], **TO_ECHO},
            {"name": "office", "path": "/flux.test.Office/", "cluster": "grpc", "policies": ["office"], **TO_ECHO},
            {
                "name": "limited",
                "path": "/flux.test.Limited/",
                "cluster": "grpc",
                "policies": ["one-a-minute"],
                **TO_ECHO,
            },
            {"name": "down", "path": "/flux.test.Down/", "cluster": "nobody"},
            {"name": "tls-up", "hosts": ["tls.up"], "path": "/flux.test.Echo/", "cluster": "grpc-tls"},
        ],
    }
    base = tmp_path_factory.mktemp("grpc")
    node = SnapshotNode(base / "node", doc).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    try:
        yield {"node": node, "port": port, "https": https_port, "ca": ca, "channel": channel,
               "stubs": stubs(channel)}  # fmt: skip
    finally:
        channel.close()
        node.stop()
        server.stop(0)
        tls_server.stop(0)


def test_unary_with_metadata_both_ways(gw: dict[str, Any]) -> None:
    reply, call = gw["stubs"]["Unary"].with_call(b"hello", metadata=[("x-echo", "v1")], timeout=5)
    assert reply == b"hello"
    assert ("x-echo", "v1") in [(m.key, m.value) for m in call.trailing_metadata()]


def test_server_client_and_bidi_streaming(gw: dict[str, Any]) -> None:
    s = gw["stubs"]
    assert list(s["ServerStream"](b"5:m", timeout=5)) == [b"m-%d" % i for i in range(5)]
    assert s["ClientStream"](iter([b"a", b"b", b"c"]), timeout=5) == b"abc"
    assert list(s["Bidi"](iter([b"1", b"2", b"3"]), timeout=5)) == [b"echo:1", b"echo:2", b"echo:3"]


def test_bidi_is_interactive(gw: dict[str, Any]) -> None:
    """Each answer comes before the next request is sent: nothing is buffered to the end."""
    sent: list[bytes] = []
    ready = threading.Event()

    def requests() -> Iterator[bytes]:
        for i in range(3):
            sent.append(b"%d" % i)
            yield b"%d" % i
            assert ready.wait(5)
            ready.clear()

    for reply in gw["stubs"]["Bidi"](requests(), timeout=10):
        assert reply == b"echo:" + sent[-1]
        ready.set()


def test_large_messages(gw: dict[str, Any]) -> None:
    big = bytes(range(256)) * (6 << 12)  # 6 MiB
    assert gw["stubs"]["Unary"](big, timeout=20) == big


def test_upstream_statuses_pass_through(gw: dict[str, Any]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        gw["stubs"]["Unary"](b"fail:NOT_FOUND", timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and info.value.details() == "asked to fail"


def test_deadline_is_honoured_by_the_node(gw: dict[str, Any]) -> None:
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        gw["stubs"]["Slow"](b"5000", timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 3


def test_cancellation_reaches_the_upstream(gw: dict[str, Any]) -> None:
    call = gw["stubs"]["ServerStream"].__call__(b"100000:x", timeout=10)  # type: ignore[attr-defined]
    first = next(call)
    assert first == b"x-0"
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED


def test_the_nodes_own_answers_are_grpc_statuses(gw: dict[str, Any]) -> None:
    ch = gw["channel"]
    cases = [
        ("/other.Service/Method", (), grpc.StatusCode.UNIMPLEMENTED),  # no route
        ("/flux.test.Keyed/Unary", (), grpc.StatusCode.UNAUTHENTICATED),  # api_key: none sent
        ("/flux.test.Office/Unary", (), grpc.StatusCode.PERMISSION_DENIED),  # ip_acl
        ("/flux.test.Down/Unary", (), grpc.StatusCode.UNAVAILABLE),  # refused
    ]
    for path, metadata, code in cases:
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(path)(b"x", metadata=metadata, timeout=5)
        assert info.value.code() == code, (path, info.value.details())
    assert ch.unary_unary("/flux.test.Keyed/Unary")(b"ok", metadata=[("x-api-key", "app-key-123456")], timeout=5)
    limited = ch.unary_unary("/flux.test.Limited/Unary")
    codes = []
    for _ in range(3):
        try:
            limited(b"x", timeout=5)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes


def test_grpc_over_tls_both_sides(gw: dict[str, Any]) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=gw["ca"].pem.encode())
    options = [("grpc.ssl_target_name_override", "grpc.gateway"), ("grpc.default_authority", "grpc.gateway")]
    with grpc.secure_channel(f"127.0.0.1:{gw['https']}", creds, options=options) as ch:
        assert stubs(ch)["Unary"](b"over h2", timeout=5) == b"over h2"
        tls_up = ch.unary_unary("/flux.test.Echo/Unary")
        assert tls_up(b"to a TLS upstream", metadata=[], timeout=5, wait_for_ready=False) == b"to a TLS upstream"
    options = [("grpc.ssl_target_name_override", "grpc.gateway"), ("grpc.default_authority", "tls.up")]
    with grpc.secure_channel(f"127.0.0.1:{gw['https']}", creds, options=options) as ch:
        assert ch.unary_unary("/flux.test.Echo/Unary")(b"tls upstream", timeout=5) == b"tls upstream"


def _grpc_web(port: int, message: bytes, text: bool) -> tuple[int, list[bytes], dict[bytes, bytes]]:
    frame = b"\x00" + struct.pack(">I", len(message)) + message
    body = base64.b64encode(frame) if text else frame
    ctype = b"application/grpc-web-text" if text else b"application/grpc-web+proto"
    raw = (b"POST /flux.test.Echo/Unary HTTP/1.1\r\nHost: h\r\nContent-Type: " + ctype
           + b"\r\nX-Grpc-Web: 1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        out, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        payload = out
    if text:
        payload = base64.b64decode(payload)
    messages, trailers = [], {}
    while payload:
        flag, length = payload[0], struct.unpack(">I", payload[1:5])[0]
        content, payload = payload[5 : 5 + length], payload[5 + length :]
        if flag & 0x80:
            for line in content.split(b"\r\n"):
                if line:
                    k, _, v = line.partition(b":")
                    trailers[k.strip()] = v.strip()
        else:
            messages.append(content)
    return status_of(data), messages, trailers


@pytest.mark.parametrize("text", [False, True])
def test_grpc_web_is_translated(gw: dict[str, Any], text: bool) -> None:
    status, messages, trailers = _grpc_web(gw["port"], b"from a browser", text)
    assert status == 200 and messages == [b"from a browser"]
    assert trailers.get(b"grpc-status") == b"0"


def test_grpc_web_is_only_translated_where_the_route_says(gw: dict[str, Any]) -> None:
    """The keyed route does not set grpc_web: the request goes up as it came, which a gRPC server
    does not take for gRPC (no gRPC-Web trailer frame comes back)."""
    raw = (
        b"POST /flux.test.Keyed/Unary HTTP/1.1\r\nHost: h\r\nContent-Type: application/grpc-web+proto\r\n"
        b"x-api-key: app-key-123456\r\nContent-Length: 5\r\nConnection: close\r\n\r\n\x00\x00\x00\x00\x00"
    )
    with socket.create_connection(("127.0.0.1", gw["port"]), timeout=5) as s:
        s.sendall(raw)
        data = read_response(s)
    assert b"\x80\x00\x00" not in data and b"grpc-status:0" not in data.replace(b" ", b"")
