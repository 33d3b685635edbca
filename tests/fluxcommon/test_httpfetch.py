"""`fluxcommon.httpfetch` (httpx) against a real local HTTP server, on trio and on asyncio."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from fluxcommon import httpfetch

Reply = Callable[[bytes], Awaitable[bytes | None]]  # request head -> raw response (None: never answer)


async def _serve(
    reply: Reply, task_status: trio.TaskStatus[tuple[int, list[bytes]]] = trio.TASK_STATUS_IGNORED
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    seen: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(65536)
            if not data:
                return
            head += data
        seen.append(head)
        answer = await reply(head)
        if answer is None:
            await trio.sleep_forever()
        try:
            await stream.send_all(answer)
        except trio.BrokenResourceError:
            pass
        await stream.aclose()

    task_status.started((listeners[0].socket.getsockname()[1], seen))
    await trio.serve_listeners(handle, listeners)


def _ok(body: bytes) -> Reply:
    async def reply(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)

    return reply


def _on_trio(reply: Reply, work: Callable[[str], Awaitable[None]]) -> list[bytes]:
    async def main() -> list[bytes]:
        async with trio.open_nursery() as nursery:
            port, seen = await nursery.start(_serve, reply)
            await work(f"http://127.0.0.1:{port}")
            nursery.cancel_scope.cancel()
        return seen

    return trio.run(main)


def test_fetch_returns_status_and_body_and_asks_for_identity() -> None:
    async def work(base: str) -> None:
        async with httpfetch.client(user_agent="flux-test") as http:
            status, body = await httpfetch.fetch(
                http, "POST", base + "/x?y=1", headers=[(b"Accept", b"application/json")], body=b"a=b", time_limit=5
            )
        assert (status, body) == (200, b"hello")

    seen = _on_trio(_ok(b"hello"), work)
    head = seen[0].lower()
    assert head.startswith(b"post /x?y=1 http/1.1\r\n")
    assert b"accept-encoding: identity\r\n" in head and b"user-agent: flux-test\r\n" in head
    assert b"content-length: 3\r\n" in head and b"accept: application/json\r\n" in head


def test_fetch_bounds_the_body() -> None:
    async def work(base: str) -> None:
        async with httpfetch.client() as http:
            assert (await httpfetch.fetch(http, "GET", base, time_limit=5, max_body=1000))[1] == b"x" * 1000
            with pytest.raises(httpfetch.FetchError, match="larger than 999 bytes"):
                await httpfetch.fetch(http, "GET", base, time_limit=5, max_body=999)

    _on_trio(_ok(b"x" * 1000), work)


def test_fetch_failures_say_what_happened() -> None:
    async def never(head: bytes) -> None:
        return None

    async def garbage(head: bytes) -> bytes:
        return b"SMTP ready\r\n\r\n"

    async def timed_out(base: str) -> None:
        async with httpfetch.client() as http:
            with pytest.raises(httpfetch.FetchError, match=r"no answer within 0.2s"):
                await httpfetch.fetch(http, "GET", base, time_limit=0.2)

    async def bad(base: str) -> None:
        async with httpfetch.client() as http:
            with pytest.raises(httpfetch.FetchError, match="bad answer"):
                await httpfetch.fetch(http, "GET", base, time_limit=5)

    _on_trio(never, timed_out)
    _on_trio(garbage, bad)

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def refused() -> None:
        async with httpfetch.client() as http:
            with pytest.raises(httpfetch.FetchError, match=f"cannot reach 127.0.0.1:{port}"):
                await httpfetch.fetch(http, "GET", f"http://127.0.0.1:{port}/", time_limit=5)

    trio.run(refused)


def test_status_of_reads_no_body() -> None:
    async def huge(head: bytes) -> bytes:
        return b"HTTP/1.1 503 Busy\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000

    async def work(base: str) -> None:
        async with httpfetch.client(keepalive=False) as http:
            assert await httpfetch.status_of(http, base + "/health", time_limit=5) == 503

    _on_trio(huge, work)


def test_the_same_fetch_runs_on_asyncio() -> None:
    async def main() -> tuple[int, bytes]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, httpfetch.client() as http:
            return await httpfetch.fetch(http, "GET", f"http://127.0.0.1:{port}/", time_limit=5)

    assert asyncio.run(main()) == (200, b"ok")
