"""Small trio stream helpers for the tunnel server."""

from __future__ import annotations

import trio

from fluxcommon.tunnel.sockstream import receive_into, send_parts


class PrefixedStream(trio.abc.HalfCloseableStream):
    """`inner` with `prefix` (bytes already read from it, e.g. to sniff TLS) given back first."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        self.inner = inner
        self.prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.prefix:
            n = len(self.prefix) if max_bytes is None else max_bytes
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.inner.receive_some(max_bytes)

    async def receive_into(self, buffer: bytearray | memoryview) -> int:
        """`receive_some` into `buffer` (the link and TLSStream read this way when they can)."""
        if self.prefix:
            n = min(len(buffer), len(self.prefix))
            memoryview(buffer)[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            await trio.lowlevel.checkpoint()
            return n
        return await receive_into(self.inner, buffer)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        await send_parts(self.inner, parts)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def peer_of(stream: trio.abc.Stream) -> str:
    """ "ip:port" of a socket stream's peer (or "" when not a socket)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        inner = getattr(stream, "transport_stream", None) or getattr(stream, "inner", None)
        return peer_of(inner) if inner is not None else ""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_of(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is None:
        inner = getattr(stream, "transport_stream", None) or getattr(stream, "inner", None)
        return local_of(inner) if inner is not None else ""
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_addr(addr: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)
