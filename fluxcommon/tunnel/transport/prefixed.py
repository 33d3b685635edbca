"""`PrefixedStream`: a trio stream with bytes already read from it given back first.

The node sniffs the first bytes of a connection (TLS or a tunnel login, an HTTP or SOCKS
request) and then hands the whole stream on; the agent's proxy plugins do the same.
"""

from __future__ import annotations

import trio

from fluxcommon.tunnel.transport.sockstream import receive_into, receive_size, send_parts


class PrefixedStream(trio.abc.HalfCloseableStream):
    """`inner` with `prefix` (bytes already read from it, e.g. to sniff TLS) given back first."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        self.inner = inner
        self.prefix = prefix
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.prefix and not self._closed:
            n = receive_size(max_bytes, len(self.prefix))
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.inner.receive_some(max_bytes)

    async def receive_into(self, buffer: bytearray | memoryview) -> int:
        """`receive_some` into `buffer` (the link and TLSStream read this way when they can)."""
        if self.prefix and not self._closed:
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
        self._closed = True  # an unread prefix is dropped: the inner stream says ClosedResourceError
        await self.inner.aclose()
