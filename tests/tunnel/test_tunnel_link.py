"""TunnelLink (fluxcommon/tunnel/transport/link.py) and its SendGate, over a real socket pair.

Two links joined by a connected socketpair, with a minimal session that turns every stream the
peer opens into a work stream. Streams send from their own tasks (the inline flush) while the
writer task sends window updates and FINs, so the tests check what that must never break:
every stream's bytes arrive whole and in order, with many streams and small windows at once,
and a send that finds the gate busy still goes out.
"""

from __future__ import annotations

import random
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from support import tls

from fluxcommon.tunnel.protocol.control import WorkStreamOpened
from fluxcommon.tunnel.protocol.mux import Mux, StreamOpened
from fluxcommon.tunnel.transport.gate import SendGate
from fluxcommon.tunnel.transport.link import TunnelLink, TunnelStream
from fluxcommon.tunnel.transport.pipe import pipe
from fluxcommon.tunnel.transport.sockstream import BulkSocketStream
from fluxcommon.tunnel.transport.tlsstream import TLSStream

# -- SendGate ------------------------------------------------------------------------------


def test_a_free_gate_is_taken_without_a_schedule_point() -> None:
    async def main() -> None:
        gate = SendGate()
        ran: list[str] = []

        async def other() -> None:
            ran.append("other")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await gate.acquire()  # would let `other` run first if it yielded
            assert ran == [] and gate.locked()
            gate.release()
            assert not gate.locked()

    trio.run(main)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=2, max_size=12))
def test_gate_holders_never_overlap(yields: list[int]) -> None:
    """Tasks that yield a random number of times while holding the gate never hold it together."""

    async def main() -> None:
        gate = SendGate()
        inside = [0]
        done: list[int] = []

        async def worker(i: int, n: int) -> None:
            async with gate:
                inside[0] += 1
                assert inside[0] == 1
                for _ in range(n):
                    await trio.lowlevel.checkpoint()
                inside[0] -= 1
            done.append(i)

        async with trio.open_nursery() as nursery:
            for i, n in enumerate(yields):
                nursery.start_soon(worker, i, n)
        assert sorted(done) == list(range(len(yields)))

    trio.run(main)


def test_a_waiter_cancelled_while_parked_does_not_take_the_gate() -> None:
    async def main() -> None:
        gate = SendGate()
        await gate.acquire()
        with trio.move_on_after(0.05) as scope:
            await gate.acquire()
        assert scope.cancelled_caught and gate.locked()
        gate.release()
        await gate.acquire()  # free again for the next one
        gate.release()

    trio.run(main)


# -- links ---------------------------------------------------------------------------------


class _Session:
    """Every stream the peer opens becomes a work stream; other mux events go to the link."""

    def handle_event(self, event: Any, now: float) -> list[Any]:
        if isinstance(event, StreamOpened):
            return [WorkStreamOpened(event.stream_id, "test", event.meta)]
        return [event]

    def tick(self, now: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return tls.contexts(tmp_path_factory.mktemp("tls"), "node.test")


async def _transports(kind: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None) -> tuple[Any, Any]:
    """Both ends of a socketpair as the link's transport: trio's SocketStream (joined sends,
    receive_some), BulkSocketStream (sendmsg of the mux's parts, receive_into), or TLSStream over
    it (parts written record by record, decrypted into the link's buffer), as node and agent use."""
    a, b = socket.socketpair()
    if kind == "trio":
        wrap = trio.socket.from_stdlib_socket
        return trio.SocketStream(wrap(a)), trio.SocketStream(wrap(b))
    if kind == "bulk":
        return BulkSocketStream(a), BulkSocketStream(b)
    assert contexts is not None
    client = TLSStream(BulkSocketStream(a), contexts[1], server_hostname="node.test")
    server = TLSStream(BulkSocketStream(b), contexts[0], server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def _linked(
    nursery: trio.Nursery,
    window: int,
    wrap: Callable[[Any], Any] = lambda s: s,
    kind: str = "trio",
    contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
) -> tuple[TunnelLink, TunnelLink, trio.MemoryReceiveChannel]:
    """Two running links over a socketpair (see `_transports`); `wrap` may wrap the client's transport."""
    ta, tb = await _transports(kind, contexts)
    accepted_send, accepted = trio.open_memory_channel[TunnelStream](1000)

    def on_event(event: Any, stream: TunnelStream | None) -> None:
        if isinstance(event, WorkStreamOpened) and stream is not None:
            stream.accept()
            accepted_send.send_nowait(stream)

    kw = {"initial_window": window, "max_frame_data": min(window, 16 * 1024)}
    client = TunnelLink(wrap(ta), Mux("client", **kw), _Session(), lambda e, s: None)
    server = TunnelLink(tb, Mux("server", **kw), _Session(), on_event)
    nursery.start_soon(client.run)
    nursery.start_soon(server.run)
    return client, server, accepted


@pytest.mark.parametrize("kind", ["trio", "bulk", "tls"])
@pytest.mark.parametrize("window", [4096, 1024 * 1024])
def test_many_streams_arrive_whole_and_in_order(
    window: int, kind: str, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """20 streams send random-sized chunks at once (senders flush inline, or wake the writer when
    another holds the gate); each receiver gets exactly its stream's bytes, in order, whether it
    reads them itself or pipes them into a socket (frames gathered by sendmsg)."""
    rng = random.Random(window)
    payloads = [rng.randbytes(rng.randint(1, 300_000)) for _ in range(20)]

    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                client, _server, accepted = await _linked(nursery, window, kind=kind, contexts=tls_contexts)
                received: dict[int, bytes] = {}

                async def send(i: int) -> None:
                    stream = client.open_stream(lambda: client.mux.open_stream({"i": i}), {"i": i})
                    data, pos = payloads[i], 0
                    while pos < len(data):
                        n = rng.choice([1, 100, 5000, 70_000])
                        await stream.send_all(data[pos : pos + n])
                        pos += n
                    await stream.send_eof()
                    rest = await stream.receive_some()  # the peer's FIN after it read everything
                    assert rest == b""
                    await stream.aclose()

                async def receive_through_a_socket(stream: TunnelStream) -> None:
                    inside, outside = (BulkSocketStream(s) for s in socket.socketpair())
                    async with trio.open_nursery() as inner:
                        inner.start_soon(pipe, stream, inside)
                        parts = []
                        while chunk := await outside.receive_some():
                            parts.append(chunk)
                        received[stream.meta["i"]] = b"".join(parts)
                        await outside.send_eof()  # the pipe passes it on: the stream's FIN
                    await outside.aclose()

                async def receive(stream: TunnelStream) -> None:
                    if stream.meta["i"] % 3 == 0:
                        await receive_through_a_socket(stream)
                        return
                    parts = []
                    while chunk := await stream.receive_some(rng.choice([None, 10, 4096, 100_000])):
                        parts.append(chunk)
                    received[stream.meta["i"]] = b"".join(parts)
                    await stream.send_eof()
                    await stream.aclose()

                async with trio.open_nursery() as inner:
                    for i in range(len(payloads)):
                        inner.start_soon(send, i)
                    for _ in range(len(payloads)):
                        inner.start_soon(receive, await accepted.receive())
                assert received == dict(enumerate(payloads))
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_send_on_a_broken_link_fails_and_closes_the_link() -> None:
    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                client, server, accepted = await _linked(nursery, 64 * 1024)
                stream = client.open_stream(lambda: client.mux.open_stream({"i": 0}), {"i": 0})
                await stream.send_all(b"hello")
                peer = await accepted.receive()
                assert await peer.receive_some() == b"hello"
                await server.transport.aclose()  # the other end goes away
                with pytest.raises(trio.BrokenResourceError):
                    for _ in range(1000):
                        await stream.send_all(b"x" * 60_000)
                        await trio.sleep(0.001)  # stays: pacing, the link gets to notice the closed end
                with trio.fail_after(5):
                    while client.closed_reason is None:  # the link noticed and closed
                        await client.wait_progress()
                nursery.cancel_scope.cancel()

    trio.run(main)


class _StallingTransport(trio.abc.HalfCloseableStream):
    """A socket stream whose next send stops halfway until `go` is set (a full socket buffer)."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.stall = False
        self.stalled = trio.Event()
        self.go = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.stall and len(data) > 1:
            self.stall = False
            half = len(data) // 2
            await self.inner.send_all(memoryview(data)[:half])
            self.stalled.set()
            await self.go.wait()
            await self.inner.send_all(memoryview(data)[half:])
            return
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_sender_cancelled_mid_send_does_not_cut_the_shared_connection() -> None:
    """A stream's task is cancelled while its inline send is halfway out: the send completes (it
    is shielded), so the connection stays intact for every other stream."""

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                client, server, accepted = await _linked(nursery, 1024 * 1024, _StallingTransport)
                transport = client.transport
                assert isinstance(transport, _StallingTransport)
                first = client.open_stream(lambda: client.mux.open_stream({"i": 1}), {"i": 1})
                await first.send_all(b"open")
                peer_first = await accepted.receive()
                assert await peer_first.receive_some() == b"open"

                transport.stall = True
                payload = bytes(range(256)) * 400
                with trio.CancelScope() as scope:

                    async def cancel_when_stalled() -> None:
                        await transport.stalled.wait()
                        scope.cancel()
                        transport.go.set()

                    nursery.start_soon(cancel_when_stalled)
                    await first.send_all(payload)
                got = b""
                while len(got) < len(payload):
                    got += await peer_first.receive_some()
                assert got == payload  # the halfway frame went out whole

                second = client.open_stream(lambda: client.mux.open_stream({"i": 2}), {"i": 2})
                await second.send_all(b"still fine")
                peer_second = await accepted.receive()
                assert await peer_second.receive_some() == b"still fine"
                assert client.closed_reason is None and server.closed_reason is None
                nursery.cancel_scope.cancel()

    trio.run(main)
