"""trio's own stream conformance checks run against each custom trio stream of the tunnel.

`trio.testing.check_half_closeable_stream` / `check_two_way_stream` test what every trio stream
promises: data arrives whole and in order both ways, `receive_some` argument checks, a
checkpoint in every call, `BusyResourceError` for two callers of one direction at once,
`ClosedResourceError` after `aclose` (also for a task parked in a call), `BrokenResourceError`
when the peer is gone, a cancelled call leaving the stream closable, and `send_eof`.

The streams run over real loopback sockets (socketpair); the clogged variants fill the kernel
buffers first so a send must park. `BulkSocketStream` skips schedule points on calls that did
not park (see its docstring); the checks run with `YIELD_EVERY = 1` so every call checkpoints,
as trio requires, which tests the same code paths.
"""

from __future__ import annotations

import pathlib
import socket
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from support import tls

from fluxcommon.tunnel.transport import sockstream
from fluxcommon.tunnel.transport.prefixed import PrefixedStream
from fluxcommon.tunnel.transport.sockstream import BulkSocketStream
from fluxcommon.tunnel.transport.tlsstream import TLSStream

Contexts = tuple[ssl.SSLContext, ssl.SSLContext]


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> Contexts:
    server, client = tls.contexts(pathlib.Path(tmp_path_factory.mktemp("tls")), "node.test")
    # No TLS 1.3 session tickets: a client that closes with a ticket unread in its socket buffer
    # makes the kernel reset the connection (TCP's rule, not the stream's), which the checks'
    # "close after sending, the peer reads it all" steps cannot tell from a broken stream.
    server.num_tickets = 0
    return server, client


@pytest.fixture(autouse=True)
def always_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockstream, "YIELD_EVERY", 1)


def _socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (a, b):  # small buffers: a clogged stream is quick to fill
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


def _clog(*socks: socket.socket) -> None:
    """Fill the kernel's buffers from each socket's side until a send would block (check_two_way_stream
    also uses the clogged pair the other way round)."""
    for sock in socks:
        sock.setblocking(False)
        try:
            while True:
                sock.send(b"x" * 65536)
        except BlockingIOError:
            pass


def _run(check: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        with trio.fail_after(5):
            await check()

    trio.run(main)


# -- BulkSocketStream -------------------------------------------------------------------------


async def bulk_pair() -> tuple[BulkSocketStream, BulkSocketStream]:
    a, b = _tcp_pair()
    return BulkSocketStream(a), BulkSocketStream(b)


async def clogged_bulk_pair() -> tuple[BulkSocketStream, BulkSocketStream]:
    a, b = _socketpair()
    _clog(a, b)
    return BulkSocketStream(a), BulkSocketStream(b)


def test_bulk_socket_stream_conforms() -> None:
    _run(lambda: trio.testing.check_half_closeable_stream(bulk_pair, clogged_bulk_pair))


# -- PrefixedStream (over trio's SocketStream and over BulkSocketStream) ----------------------


async def prefixed_pair() -> tuple[PrefixedStream, PrefixedStream]:
    a, b = _tcp_pair()
    return (
        PrefixedStream(trio.SocketStream(trio.socket.from_stdlib_socket(a)), b""),
        PrefixedStream(BulkSocketStream(b), b""),
    )


async def clogged_prefixed_pair() -> tuple[PrefixedStream, PrefixedStream]:
    a, b = _socketpair()
    _clog(a, b)
    return (
        PrefixedStream(trio.SocketStream(trio.socket.from_stdlib_socket(a)), b""),
        PrefixedStream(BulkSocketStream(b), b""),
    )


def test_prefixed_stream_conforms() -> None:
    _run(lambda: trio.testing.check_half_closeable_stream(prefixed_pair, clogged_prefixed_pair))


def test_prefixed_stream_gives_the_prefix_back_first_and_refuses_after_close() -> None:
    async def main() -> None:
        a, b = _tcp_pair()
        stream = PrefixedStream(BulkSocketStream(a), b"HEAD")
        peer = BulkSocketStream(b)
        await peer.send_all(b"-rest")
        assert await stream.receive_some(3) == b"HEA"
        buffer = bytearray(10)
        assert await sockstream.receive_into(stream, buffer) == 1 and buffer[:1] == b"D"
        got = b""
        while len(got) < 5:
            got += await stream.receive_some()
        assert got == b"-rest"
        for bad in (0, -1):
            with pytest.raises(ValueError):
                await PrefixedStream(stream, b"x").receive_some(bad)

        closed = PrefixedStream(BulkSocketStream(socket.socket()), b"unread")
        await closed.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await closed.receive_some()
        with pytest.raises(trio.ClosedResourceError):
            await closed.receive_into(bytearray(4))
        await stream.aclose()
        await peer.aclose()

    _run(main)


# -- TLSStream (over BulkSocketStream) --------------------------------------------------------


def tls_makers(
    contexts: Contexts,
) -> tuple[Callable[[], Awaitable[tuple[TLSStream, TLSStream]]], Callable[[], Awaitable[tuple[TLSStream, TLSStream]]]]:
    server_ctx, client_ctx = contexts

    async def handshake(a: socket.socket, b: socket.socket) -> tuple[TLSStream, TLSStream]:
        server = TLSStream(BulkSocketStream(a), server_ctx, server_side=True)
        client = TLSStream(BulkSocketStream(b), client_ctx, server_hostname="node.test")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
        return server, client

    async def pair() -> tuple[TLSStream, TLSStream]:
        return await handshake(*_tcp_pair())

    async def clogged() -> tuple[TLSStream, TLSStream]:
        a, b = _socketpair()
        server, client = await handshake(a, b)
        _clog(a, b)  # the checks only send on a clogged stream: raw bytes fill the buffers as well as records
        return server, client

    return pair, clogged


def test_tls_stream_conforms(contexts: Contexts) -> None:
    pair, clogged = tls_makers(contexts)
    _run(lambda: trio.testing.check_two_way_stream(pair, clogged))
