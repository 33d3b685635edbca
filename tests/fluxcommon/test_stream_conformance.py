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

import contextlib
import os
import pathlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing
from support import tls

from fluxcommon.tunnel.protocol.crypto import Inbound, Outbound
from fluxcommon.tunnel.transport import sockstream
from fluxcommon.tunnel.transport.pipe import TransformStream
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


# -- TransformStream (useEncryption / useCompression over BulkSocketStream) -------------------

TOKEN = "conformance-token"
MODES = {"encrypt": (TOKEN, False), "compress": (None, True), "both": (TOKEN, True)}


class GracefulTransformStream(TransformStream):
    """trio's checks want `aclose` after sending to be a graceful end (the peer reads the data,
    then b""). `TransformStream.aclose` is an abort on purpose: `pipe()` closes both ends with
    it after an error too, and the peer must then see a cut stream (BrokenResourceError, from
    the missing final chunk), not a clean end. So here `aclose` ends the stream with `send_eof`
    first; every other step of the checks runs the real code."""

    async def aclose(self) -> None:
        try:
            if not (self._closed or self._sent_eof or self._sending):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.send_eof()
        finally:
            await super().aclose()


def _transform(sock: socket.socket, out: Outbound, mode: str) -> TransformStream:
    key, compress = MODES[mode]
    return GracefulTransformStream(BulkSocketStream(sock), out, Inbound(key, compress=compress))


def _outbound(mode: str, salt: bytes) -> Outbound:
    key, compress = MODES[mode]
    return Outbound(key, compress=compress, salt=salt)


def _clog_transformed(sock: socket.socket, mode: str, salt: bytes) -> Outbound:
    """Fill `sock`'s buffer with valid transformed bytes (the peer decodes them as the stream's
    first bytes); the `Outbound` to continue the stream with. A piece the kernel refused would be
    lost from the stream (its chunk counter and DEFLATE state moved on), so a dry run on an
    identical pair counts the pieces that fit first; the real run sends exactly those."""

    def pieces(out: Outbound) -> Iterator[bytes]:
        while True:
            yield out.update(b"x")

    dry_a, dry_b = _socketpair()
    with dry_a, dry_b:
        dry_a.setblocking(False)
        fit = 0
        try:
            for piece in pieces(_outbound(mode, salt)):
                if dry_a.send(piece) != len(piece):
                    raise AssertionError("a small send was split: the clog would not be exact")
                fit += 1
        except BlockingIOError:
            pass
    out = _outbound(mode, salt)
    sock.setblocking(False)
    for _, piece in zip(range(fit), pieces(out), strict=False):
        assert sock.send(piece) == len(piece)
    with pytest.raises(BlockingIOError):
        sock.send(b"x")
    return out


def transform_makers(
    mode: str,
) -> tuple[
    Callable[[], Awaitable[tuple[TransformStream, TransformStream]]],
    Callable[[], Awaitable[tuple[TransformStream, TransformStream]]],
]:
    async def pair() -> tuple[TransformStream, TransformStream]:
        a, b = _tcp_pair()
        out_a, out_b = _outbound(mode, os.urandom(16)), _outbound(mode, os.urandom(16))
        return _transform(a, out_a, mode), _transform(b, out_b, mode)

    async def clogged() -> tuple[TransformStream, TransformStream]:
        a, b = _socketpair()
        out_a = _clog_transformed(a, mode, os.urandom(16))
        out_b = _clog_transformed(b, mode, os.urandom(16))
        return _transform(a, out_a, mode), _transform(b, out_b, mode)

    return pair, clogged


@pytest.mark.parametrize("mode", sorted(MODES))
def test_transform_stream_conforms(mode: str) -> None:
    pair, clogged = transform_makers(mode)
    _run(lambda: trio.testing.check_half_closeable_stream(pair, clogged))


def test_transform_stream_states_the_checks_do_not_reach() -> None:
    """Decoded bytes held back (max_bytes) are refused after aclose; a read at EOF still
    checkpoints; a second sender is refused before the transform's state moves, so the stream
    stays decodable."""

    async def main() -> None:
        a, b = _socketpair()
        s = _transform(a, _outbound("both", os.urandom(16)), "both")
        r = _transform(b, _outbound("both", os.urandom(16)), "both")
        with trio.testing.assert_checkpoints():
            await s.send_all(b"abcdef")
        with trio.testing.assert_checkpoints():
            assert await r.receive_some(2) == b"ab"  # the rest is decoded and held back
        with trio.testing.assert_checkpoints():
            assert await r.receive_some(2) == b"cd"  # from what was held back

        socket_full = trio.Event()
        bulk = os.urandom(1_000_000)  # does not compress

        async def blocked_sender() -> None:
            socket_full.set()
            await s.send_all(bulk)  # more than the buffers hold: parks

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_sender)
            await socket_full.wait()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await s.send_all(b"z")
            got = b""
            while len(got) < 2 + len(bulk):
                got += await r.receive_some()
        assert got == b"ef" + bulk  # nothing of the refused send in between
        await s.send_eof()
        with trio.testing.assert_checkpoints():
            assert await r.receive_some() == b""
        with trio.testing.assert_checkpoints():
            assert await r.receive_some() == b""  # at EOF: still a checkpoint

        c, d = _socketpair()
        s2 = _transform(c, _outbound("encrypt", os.urandom(16)), "encrypt")
        r2 = _transform(d, _outbound("encrypt", os.urandom(16)), "encrypt")
        await s2.send_all(b"held")
        assert await r2.receive_some(1) == b"h"
        await r2.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await r2.receive_some(1)  # "eld" was decoded already: still refused
        for stream in (s, r, s2):
            await stream.aclose()

    _run(main)
