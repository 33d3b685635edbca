"""The one byte-copying loop (`fluxcommon.bytepipe`) on each I/O layer that uses it: raw sockets
with trio waits (`dataplane.l4`), sockets on the node's reactor (`dataplane.http.proxy.splice`);
the tunnel's trio streams are covered in tests/tunnel/test_tunnel_pipe.py."""

from __future__ import annotations

import socket
from functools import partial

import trio
import trio.testing

from dataplane import l4, net
from dataplane.http.proxy import splice
from dataplane.reactor import Reactor
from fluxcommon.bytepipe import copy, forward
from tests.dataplane.test_reactor import on_reactor, run


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def _read_all(sock: socket.socket) -> bytes:
    buf = b""
    while data := await net.recv(sock):
        buf += data
    return buf


def test_copy_counts_each_chunk_and_measures_parts() -> None:
    async def main() -> None:
        chunks = [[b"ab", b"c"], [b"defg"], []]
        sent: list[list[bytes]] = []
        counted: list[int] = []

        async def recv() -> list[bytes]:
            return chunks.pop(0)

        async def send(parts: list[bytes]) -> None:
            sent.append(parts)

        total = await copy(recv, send, counted.append, lambda parts: sum(map(len, parts)))
        assert total == 7 and counted == [3, 4] and sent == [[b"ab", b"c"], [b"defg"]]

    trio.run(main)


def test_forward_passes_the_half_close_on_and_the_other_way_keeps_flowing() -> None:
    async def main() -> None:
        client, src = _pair()  # client writes into src
        dst, upstream = _pair()  # dst writes to upstream
        counted: list[int] = []
        async with trio.open_nursery() as nursery:

            async def one_way() -> None:
                error = await forward(
                    partial(net.recv, src), partial(net.send_all, dst), partial(dst.shutdown, socket.SHUT_WR),
                    counted.append,
                )  # fmt: skip
                assert error is None

            nursery.start_soon(one_way)
            await net.send_all(client, b"hello " * 1000)
            client.shutdown(socket.SHUT_WR)
            assert await _read_all(upstream) == b"hello " * 1000  # EOF arrived: the half-close went on
        assert sum(counted) == 6000
        await net.send_all(upstream, b"back")  # the other direction of dst is still open
        assert await net.recv(dst) == b"back"
        for s in (client, src, dst, upstream):
            net.close(s)

    trio.run(main)


def test_forward_returns_a_reset_and_still_half_closes() -> None:
    async def main() -> None:
        client, src = _pair()
        dst, upstream = _pair()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        upstream.close()  # sends to dst now fail (EPIPE)
        await net.send_all(client, b"x")
        error = await forward(partial(net.recv, src), partial(net.send_all, dst), partial(dst.shutdown, socket.SHUT_WR))
        assert isinstance(error, OSError)
        for s in (client, src, dst):
            net.close(s)

    trio.run(main)


def test_l4_relay_copies_both_ways_and_counts() -> None:
    async def main() -> None:
        client, front = _pair()
        back, server = _pair()
        counts = [0, 0]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(l4._relay, front, back, counts, 60.0)
            await net.send_all(client, b"request")
            assert await net.recv(server) == b"request"
            await net.send_all(server, b"response!")
            assert await net.recv(client) == b"response!"
            client.shutdown(socket.SHUT_WR)
            assert await net.recv(server) == b""  # half-close passed on
            await net.send_all(server, b"more")  # the other direction still flows
            assert await net.recv(client) == b"more"
            server.shutdown(socket.SHUT_WR)
            assert await net.recv(client) == b""
        assert counts == [7, 13]  # the relay ended by itself once both directions had
        for s in (client, front, back, server):
            net.close(s)

    trio.run(main)


def test_l4_relay_closes_an_idle_connection_and_a_byte_restarts_the_clock() -> None:
    async def main() -> None:
        client, front = _pair()
        back, server = _pair()
        counts = [0, 0]
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(l4._relay, front, back, counts, 30.0)
            await trio.sleep(20)  # MockClock: virtual time, 20 s of silence before the byte
            await net.send_all(client, b"ping")
            assert await net.recv(server) == b"ping"
        assert 50 <= trio.current_time() - t0 < 51  # idle 30 s after the byte at 20 s
        assert counts == [4, 0]
        for s in (client, front, back, server):
            net.close(s)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_splice_on_the_reactor_copies_counts_and_half_closes() -> None:
    async def main(reactor: Reactor) -> None:
        client, front = _pair()
        back, server = _pair()
        rs_front, rs_back = reactor.wrap(front), reactor.wrap(back)
        result: list[list[int]] = []

        async def run_splice() -> None:
            result.append(await splice(reactor, rs_front, rs_back, b"first:"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_reactor, reactor, run_splice())
            await net.send_all(client, b"up")
            client.shutdown(socket.SHUT_WR)  # the client's half-close reaches the upstream ...
            assert await _read_all(server) == b"first:up"
            await net.send_all(server, b"down")  # ... and the upstream may still answer
            server.close()  # the upstream closing ends the splice
            assert await _read_all(client) == b"down"
        assert result == [[8, 4]]
        assert rs_back.fd == -1  # splice closed the upstream
        rs_front.close()
        client.close()

    run(main)
