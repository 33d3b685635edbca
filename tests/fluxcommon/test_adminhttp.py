"""The admin HTTP server shared by the node and the agent (fluxcommon/adminhttp.py): the request
head parser on bytes, then the server on a real socket (port 0, no sleeps)."""

from __future__ import annotations

import json

import pytest
import trio

from fluxcommon.adminhttp import AdminRequest, AdminServer, BadRequest, Reply, head_end, json_body, parse_head


def test_parse_head_reads_method_path_query_and_headers() -> None:
    req = parse_head(b"GET /api/status?verbose=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YTpi\r\n\r\n")
    assert (req.method, req.path, req.query) == ("GET", "/api/status", b"verbose=1")
    assert req.header("authorization") == "Basic YTpi"
    assert req.header("x-missing") is None


@pytest.mark.parametrize(
    ("head", "path"),
    [
        (b"GET http://node:9901/ready HTTP/1.1\r\n\r\n", "/ready"),  # absolute form
        (b"GET http://node:9901 HTTP/1.1\r\n\r\n", "/"),
        (b"GET /healthz HTTP/1.0\n\n", "/healthz"),  # bare LF line ends
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", "/metrics"),  # no Host: admin clients may omit it
    ],
)
def test_parse_head_accepts(head: bytes, path: str) -> None:
    assert head_end(head) == len(head)
    assert parse_head(head).path == path


@pytest.mark.parametrize(
    "head",
    [
        b"\x16\x03\x01\x00\xa5\x01\r\n\r\n",  # a TLS hello
        b"GET /ready\r\n\r\n",
        b"GET /ready HTTP/2.0\r\n\r\n",
        b"GET ready HTTP/1.1\r\n\r\n",
        b"GET /ready HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /ready HTTP/1.1\r\nBad Name: x\r\n\r\n",
    ],
)
def test_parse_head_refuses_what_is_not_an_http_head(head: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_head(head[: head_end(head)])
    assert info.value.status == 400


def test_a_head_longer_than_the_limit_is_431() -> None:
    assert head_end(b"GET / HTTP/1.1\r\nX: y") == -1
    with pytest.raises(BadRequest) as info:
        head_end(b"GET / HTTP/1.1\r\nX: " + b"y" * 70_000)
    assert info.value.status == 431


async def _exchange(port: int, raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        await stream.send_eof()  # a client that sent all it has
        out = b""
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


def _status_and_body(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_the_server_answers_routes_and_refuses_the_rest() -> None:
    trio.run(_serve_and_ask)


async def _serve_and_ask() -> None:
    def fails(_req: AdminRequest) -> Reply:
        raise RuntimeError("boom")

    async def slow_ok(req: AdminRequest) -> Reply:
        await trio.lowlevel.checkpoint()
        return 200, "application/json", json_body({"path": req.path, "query": req.query.decode()})

    server = AdminServer({"/healthz": slow_ok, "/fails": fails})
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        assert port == server.port > 0

        status, body = _status_and_body(await _exchange(port, b"GET /healthz/?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 200 and json.loads(body) == {"path": "/healthz/", "query": "a=1"}
        raw = await _exchange(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in raw and raw.endswith(b"\r\n\r\n")

        status, body = _status_and_body(await _exchange(port, b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 405 and json.loads(body)["error"] == "method_not_allowed"
        status, body = _status_and_body(await _exchange(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 404 and json.loads(body)["paths"] == ["/fails", "/healthz"]
        status, body = _status_and_body(await _exchange(port, b"GET /fails HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 500 and json.loads(body) == {"error": "internal_error", "message": "boom"}
        status, _ = _status_and_body(await _exchange(port, b"\x16\x03\x01 garbage\r\n\r\n"))
        assert status == 400
        assert await _exchange(port, b"") == b""  # a client that closes at once gets nothing

        status, _ = _status_and_body(await _exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n"))
        assert status == 200  # still serving after all of the above
        nursery.cancel_scope.cancel()
