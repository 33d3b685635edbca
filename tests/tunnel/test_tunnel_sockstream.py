"""BulkSocketStream (fluxcommon/tunnel/transport/sockstream.py) and ReadBuffer (readbuffer.py), over real
socket pairs: bytes arrive whole and in order through full socket buffers and partial sends,
gathered parts arrive joined, end of stream and close behave as trio's streams do, and a task
whose peer is always ready still lets other tasks run."""

from __future__ import annotations

import random
import socket

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxcommon.tunnel.transport import sockstream
from fluxcommon.tunnel.transport.readbuffer import MAX_SIZE, MIN_SIZE, SHRINK_AFTER, ReadBuffer
from fluxcommon.tunnel.transport.sockstream import BulkSocketStream, drain_datagrams


def _pair() -> tuple[BulkSocketStream, BulkSocketStream]:
    a, b = socket.socketpair()
    for s in (a, b):  # small buffers: sends fill them and go out in pieces
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    return BulkSocketStream(a), BulkSocketStream(b)


async def _drain(stream: BulkSocketStream, rng: random.Random, into: bytearray) -> None:
    while True:
        if rng.random() < 0.5:
            chunk = await stream.receive_some(rng.choice([1, 1000, 65536, None]))
            if not chunk:
                return
            into += chunk
        else:
            buf = bytearray(rng.choice([1, 1000, 65536]))
            n = await stream.receive_into(buf)
            if not n:
                return
            into += buf[:n]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 200_000), min_size=1, max_size=40),
    gather=st.lists(st.booleans(), min_size=1, max_size=40),
    seed=st.integers(0, 2**16),
)
def test_sends_and_gathered_parts_arrive_whole_and_in_order(sizes: list[int], gather: list[bool], seed: int) -> None:
    rng = random.Random(seed)
    blobs = [rng.randbytes(n) for n in sizes]

    async def main() -> None:
        a, b = _pair()
        got = bytearray()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, b, random.Random(seed + 1), got)
                i = 0
                while i < len(blobs):
                    if gather[i % len(gather)]:  # several parts in one sendmsg, some of them views
                        k = rng.randint(1, 5)
                        parts: list[bytes | memoryview] = [
                            memoryview(p) if rng.random() < 0.5 else p for p in blobs[i : i + k]
                        ]
                        await a.send_parts(parts)
                        i += k
                    else:
                        await a.send_all(blobs[i])
                        i += 1
                await a.send_eof()
        assert bytes(got) == b"".join(blobs)
        await a.aclose()
        await b.aclose()

    trio.run(main)


def test_more_parts_than_one_sendmsg_takes() -> None:
    async def main() -> None:
        a, b = _pair()
        parts: list[bytes | memoryview] = [bytes([i % 256]) * 7 for i in range(sockstream.IOV_BATCH * 2 + 3)]
        got = bytearray()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, b, random.Random(1), got)
                await a.send_parts(parts)
                await a.send_eof()
        assert bytes(got) == b"".join(parts)

    trio.run(main)


def test_end_of_stream_close_and_a_broken_connection() -> None:
    async def main() -> None:
        a, b = _pair()
        await a.send_all(b"last words")
        await a.send_eof()
        assert await b.receive_some() == b"last words"
        assert await b.receive_some() == b""  # the peer's FIN
        await b.send_all(b"still open this way")
        assert await a.receive_some() == b"still open this way"
        await b.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await b.receive_some()
        with pytest.raises(trio.ClosedResourceError):
            await b.send_all(b"x")
        await b.aclose()  # idempotent

        c, d = _pair()
        d.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await d.aclose()  # linger 0: a reset
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(100):  # the reset may need a send to surface
                await c.send_all(b"x" * 65536)
                await c.receive_some()

    trio.run(main)


def test_aclose_wakes_a_receiver_parked_on_the_socket() -> None:
    async def main() -> None:
        a, _b = _pair()
        outcome: list[str] = []

        async def receiver() -> None:
            try:
                await a.receive_some()
            except trio.ClosedResourceError:
                outcome.append("closed")

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                await a.aclose()
        assert outcome == ["closed"]

    trio.run(main)


def test_a_stream_that_never_waits_still_lets_other_tasks_run() -> None:
    """Calls that succeed at once skip trio's schedule point, but every YIELD_EVERY-th one takes it."""

    async def main() -> None:
        a, b = (BulkSocketStream(s) for s in socket.socketpair())  # default buffers: room for every send
        ticks = 0

        async def other() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.lowlevel.checkpoint()  # `other` has started (it never blocks)
            before = ticks
            for _ in range(sockstream.YIELD_EVERY * 4):
                await a.send_all(b"x")  # room in the buffer: never parks
            assert ticks - before >= 3  # one run per yield (trio may order the last batch either way)
            nursery.cancel_scope.cancel()
        await a.aclose()
        await b.aclose()

    trio.run(main)


def test_cancellation_is_honoured_without_parking() -> None:
    async def main() -> None:
        a, b = _pair()
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.send_all(b"x")  # sent (the call succeeded), then the cancellation is raised
        assert scope.cancelled_caught
        await a.aclose()
        await b.aclose()

    trio.run(main)


def test_adopt_takes_over_a_trio_socket_stream() -> None:
    async def main() -> None:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, lambda s: s.send_all(b"hi from the server"), [listener])
            stream = BulkSocketStream.adopt(await trio.open_tcp_stream("127.0.0.1", port))
            assert stream.socket.getpeername()[1] == port
            assert await stream.receive_some() == b"hi from the server"
            await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- ReadBuffer ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), max_size=200))
def test_read_buffer_grows_on_full_reads_and_shrinks_slowly(fills: list[float]) -> None:
    buf = ReadBuffer()
    small = 0
    for f in fills:
        size = len(buf)
        assert MIN_SIZE <= size <= MAX_SIZE
        n = int(size * f)
        buf.record(n)
        if n >= size:  # a full read: grow (up to the maximum), never shrink
            small = 0
            assert len(buf) == min(MAX_SIZE, size * 4)
        elif n < size // 8 and size > MIN_SIZE:
            small += 1
            if small == SHRINK_AFTER:  # only after that many small reads in a row
                small = 0
                assert len(buf) == max(MIN_SIZE, size // 2)
            else:
                assert len(buf) == size
        else:
            small = 0
            assert len(buf) == size


def test_drain_datagrams_takes_what_is_waiting_up_to_the_limit_in_order() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    with rx, tx:
        assert drain_datagrams(rx, 10) == []  # nothing waiting: no wait, no error
        for i in range(10):
            tx.sendto(bytes([i]) * (i + 1), rx.getsockname())
        first = drain_datagrams(rx, 4)
        rest = drain_datagrams(rx, 100)
        assert [d for d, _ in first + rest] == [bytes([i]) * (i + 1) for i in range(10)]
        assert len(first) == 4 and all(addr == tx.getsockname() for _, addr in first + rest)
        assert drain_datagrams(rx, 10) == []
