"""The agent's local health probe (`tunnelclient.health.probe`) against real local services."""

from __future__ import annotations

import socket
from typing import Any

import trio

from tunnelclient.health import probe


async def _http_service(status: bytes, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    heads: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
        heads.append(head)
        await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await stream.aclose()

    task_status.started((listeners[0].socket.getsockname()[1], heads))
    await trio.serve_listeners(handle, listeners)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_http_probe_wants_a_2xx_and_sends_host_and_headers() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ok_port, heads = await nursery.start(_http_service, b"204 No Content")
            bad_port, _ = await nursery.start(_http_service, b"302 Found")
            assert await probe("http", "127.0.0.1", ok_port, "/healthz?deep=1", 5, (("X-Check", "yes"),)) is None
            assert await probe("http", "127.0.0.1", bad_port, "/", 5) == "HTTP 302"
            nursery.cancel_scope.cancel()
        head = heads[0].lower()
        assert head.startswith(b"get /healthz?deep=1 http/1.1\r\n")
        assert f"host: 127.0.0.1:{ok_port}\r\n".encode() in head and b"x-check: yes\r\n" in head

    trio.run(main)


def test_probe_failures() -> None:
    async def main() -> None:
        port = _closed_port()
        assert "cannot reach" in (await probe("http", "127.0.0.1", port, "/", 5) or "")
        assert await probe("tcp", "127.0.0.1", port, "", 5)  # refused: a reason, not None
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        assert await probe("tcp", "127.0.0.1", lsock.getsockname()[1], "", 5) is None
        # a listener that never answers the GET
        assert await probe("http", "127.0.0.1", lsock.getsockname()[1], "/", 0.3) == "no answer within 0.3s"
        lsock.close()

    trio.run(main)
