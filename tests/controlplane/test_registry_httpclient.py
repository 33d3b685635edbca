"""The registry adapters' JSON-over-HTTP client (httpx underneath) against a real local server."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from controlplane.registry.adapters.httpclient import HttpClient, HttpError


async def _server(answer: bytes | None) -> tuple[asyncio.Server, list[bytes]]:
    """A server that records each request and sends `answer` (None: never answers)."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)  # fmt: skip
        seen.append(head + (await reader.readexactly(length) if length else b""))
        if answer is None:
            await asyncio.sleep(30)  # stays: a server that never answers (the client's timeout is tested)
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


def test_request_sends_json_and_reads_status_headers_body() -> None:
    async def main() -> None:
        body = b'{"ok": true}'
        server, seen = await _server(
            b"HTTP/1.1 200 OK\r\nX-Consul-Index: 7\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        port = server.sockets[0].getsockname()[1]
        async with server:
            http = HttpClient(f"http://user:pw@127.0.0.1:{port}", default_path="/v1")
            try:
                resp = await http.call("PUT", "/kv", params={"a": 1, "skip": None}, json_body={"x": 1})
            finally:
                await http.aclose()
        assert resp.status == 200 and resp.headers["x-consul-index"] == "7" and resp.json() == {"ok": True}
        request = seen[0].lower()
        assert request.startswith(b"put /v1/kv?a=1 http/1.1\r\n")
        assert b"authorization: basic dxnlcjpwdw==\r\n" in request and b"content-type: application/json\r\n" in request
        assert json.loads(seen[0].split(b"\r\n\r\n", 1)[1]) == {"x": 1}

    asyncio.run(main())


def test_failures_are_http_errors() -> None:
    async def main() -> None:
        server, _ = await _server(b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nboom")
        slow, _ = await _server(None)
        port, slow_port = server.sockets[0].getsockname()[1], slow.sockets[0].getsockname()[1]
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
        probe.close()
        async with server, slow:
            for url, match, kw in (
                (f"http://127.0.0.1:{port}", "HTTP 500: GET /x: boom", {}),
                (f"http://127.0.0.1:{slow_port}", "GET /x: timed out", {"time_limit": 0.3}),
                (f"http://127.0.0.1:{closed}", "GET /x: ConnectError", {}),
            ):
                http = HttpClient(url)
                try:
                    with pytest.raises(HttpError, match=match):
                        await http.call("GET", "/x", **kw)
                finally:
                    await http.aclose()
            slow.close()

    asyncio.run(main())
