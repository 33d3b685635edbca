"""The in-memory stream between reactor tasks and trio tasks (dataplane.upstream.bridge)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.reactor import Reactor
from dataplane.upstream.bridge import ReactorEnd, TrioEnd, bridge


def run(body: Callable[[Reactor, ReactorEnd, TrioEnd], Awaitable[None]], limit: int = 1024) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reactor = await nursery.start(Reactor().run)
            mine, theirs = bridge(reactor, limit)
            with trio.fail_after(10):
                await body(reactor, mine, theirs)
            nursery.cancel_scope.cancel()

    trio.run(main)


async def on_reactor(reactor: Reactor, coro: Any) -> Any:
    """Run `coro` as a reactor task; wait (in trio) for its result or exception."""
    done = trio.Event()
    box: dict[str, Any] = {}

    async def wrapper() -> None:
        try:
            box["value"] = await coro
        except BaseException as exc:
            box["error"] = exc
        done.set()

    reactor.spawn(wrapper())
    await done.wait()
    if "error" in box:
        raise box["error"]
    return box.get("value")


chunks = st.lists(st.binary(min_size=1, max_size=3000), max_size=30)


@settings(max_examples=40, deadline=None)
@given(up=chunks, down=chunks, limit=st.integers(1, 4096), read_size=st.integers(1, 5000))
def test_bytes_arrive_whole_and_in_order_both_ways_with_buffers_bounded(
    up: list[bytes], down: list[bytes], limit: int, read_size: int
) -> None:
    seen: dict[str, Any] = {"peak": 0}

    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        async def reactor_writer() -> None:
            for chunk in up:
                await mine.send_all(chunk)
                seen["peak"] = max(seen["peak"], len(mine._pipe.to_trio))
            mine.shutdown_write()

        async def reactor_reader() -> bytes:
            out = bytearray()
            while data := await mine.recv(read_size):
                out += data
            return bytes(out)

        async def trio_side() -> bytes:
            async def write() -> None:
                for chunk in down:
                    await theirs.send_all(chunk)
                    seen["peak"] = max(seen["peak"], len(theirs._pipe.to_reactor))
                await theirs.send_eof()

            out = bytearray()
            async with trio.open_nursery() as n:
                n.start_soon(write)
                while data := await theirs.receive_some(read_size):
                    out += data
            return bytes(out)

        async with trio.open_nursery() as n:
            results: dict[str, bytes] = {}

            async def collect(name: str, fn: Callable[[], Awaitable[bytes]]) -> None:
                results[name] = await fn()

            n.start_soon(on_reactor, reactor, reactor_writer())
            n.start_soon(collect, "reactor", lambda: on_reactor(reactor, reactor_reader()))
            n.start_soon(collect, "trio", trio_side)
        assert results["trio"] == b"".join(up)
        assert results["reactor"] == b"".join(down)

    run(body, limit)
    # a writer waits once `limit` bytes are buffered: at most limit + one write's bytes
    assert seen["peak"] <= limit + max(map(len, up + down), default=0)


def test_eof_from_trio_after_the_data_then_recv_gives_empty() -> None:
    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        await theirs.send_all(b"HTTP/1.1 200 OK\r\n\r\n")
        assert not mine.quiet() and not mine.still_usable()  # bytes wait: not for the idle pool
        await theirs.send_eof()
        assert mine.hup
        assert await on_reactor(reactor, mine.recv()) == b"HTTP/1.1 200 OK\r\n\r\n"
        assert await on_reactor(reactor, mine.recv()) == b""
        with pytest.raises(trio.ClosedResourceError):
            await theirs.send_all(b"more")  # after send_eof, like trio's own streams
        await mine.send_all(b"still heard")  # the other direction goes on
        assert await theirs.receive_some() == b"still heard"

    run(body)


def test_a_quiet_end_is_usable_and_an_idle_wait_parks() -> None:
    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        assert mine.quiet() and mine.still_usable() and mine.try_recv() is None
        reading = trio.Event()
        got: list[bytes] = []

        async def read() -> None:
            reading.set()
            got.append(await mine.recv())

        reactor.spawn(read())
        await reading.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # parked: nothing came yet
        await theirs.send_all(b"x")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [b"x"]

    run(body)


def test_the_proxy_closing_is_eof_for_trio_and_breaks_its_sends() -> None:
    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        mine.try_send(b"GET / HTTP/1.1\r\n\r\n")
        mine.close()
        assert await theirs.receive_some() == b"GET / HTTP/1.1\r\n\r\n"  # what was sent still arrives
        assert await theirs.receive_some() == b""
        with pytest.raises(trio.BrokenResourceError):
            await theirs.send_all(b"late")
        with pytest.raises(ConnectionAbortedError):
            mine.try_recv()
        mine.close()  # twice is fine

    run(body)


def test_trio_closing_wakes_a_parked_reactor_reader_and_writer() -> None:
    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        mine.try_send(b"a" * 2048)  # fills the 1 KiB buffer: the next send parks
        reader = trio.Event()

        async def write() -> None:
            reader.set()
            await mine.send_all(b"b")

        recv = on_reactor(reactor, mine.recv())
        async with trio.open_nursery() as n:
            results: list[Any] = []

            async def catch(coro: Any) -> None:
                try:
                    results.append(await coro)
                except OSError as exc:
                    results.append(type(exc))

            n.start_soon(catch, recv)
            n.start_soon(catch, on_reactor(reactor, write()))
            await reader.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert results == []  # both parked
            await theirs.aclose()
        assert sorted(map(str, results)) == sorted(["b''", str(BrokenPipeError)])
        assert mine.hup and not mine.still_usable()

    run(body)


def test_closing_with_a_parked_reader_raises_in_it() -> None:
    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        async with trio.open_nursery() as n:
            outcome: list[Any] = []

            async def wait_recv() -> None:
                try:
                    await on_reactor(reactor, mine.recv())
                except ConnectionAbortedError as exc:
                    outcome.append(exc)

            n.start_soon(wait_recv)
            await trio.testing.wait_all_tasks_blocked()
            mine.close()
        assert len(outcome) == 1
        assert await theirs.receive_some() == b""

    run(body)


# -- the trio end's stream contract (what trio.testing.check_half_closeable_stream checks; its
# peer here is a reactor end, not a trio stream, so the checks are spelled out) ----------------


def test_trio_end_checks_max_bytes_and_checkpoints_in_every_call() -> None:
    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError)):
            with pytest.raises(error):
                await theirs.receive_some(bad)  # type: ignore[arg-type]
        with trio.testing.assert_checkpoints():
            await theirs.send_all(b"")
        with trio.testing.assert_checkpoints():
            await theirs.send_all(b"ab")
        with trio.testing.assert_checkpoints():
            await theirs.wait_send_all_might_not_block()
        assert await on_reactor(reactor, mine.recv(10)) == b"ab"
        await on_reactor(reactor, mine.send_all(b"xyz"))
        with trio.testing.assert_checkpoints():
            assert await theirs.receive_some(2) == b"xy"
        with trio.testing.assert_checkpoints():
            assert await theirs.receive_some() == b"z"
        with trio.testing.assert_checkpoints():
            await theirs.send_eof()
        with trio.testing.assert_checkpoints():
            await theirs.send_eof()  # again: fine
        with pytest.raises(trio.ClosedResourceError):
            await theirs.send_all(b"after eof")
        assert await on_reactor(reactor, mine.recv(10)) == b""
        mine.shutdown_write()
        with trio.testing.assert_checkpoints():
            assert await theirs.receive_some() == b""
        with trio.testing.assert_checkpoints():
            await theirs.aclose()

    run(body)


@contextlib.contextmanager
def raises_busy() -> Iterator[None]:
    """BusyResourceError from one of the tasks of a nursery (so in an exception group)."""
    with pytest.raises(BaseExceptionGroup) as info:
        yield
    assert info.group_contains(trio.BusyResourceError)


def test_trio_end_two_receivers_or_two_senders_at_once_are_busy() -> None:
    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        with raises_busy():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(theirs.receive_some)
                nursery.start_soon(theirs.receive_some)
        await theirs.send_all(b"x" * 16)  # fills the buffer (limit 16): the next send parks
        with raises_busy():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(theirs.send_all, b"1")
                nursery.start_soon(theirs.send_all, b"2")
        for second in (theirs.wait_send_all_might_not_block, theirs.send_eof):
            with raises_busy():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(theirs.wait_send_all_might_not_block)
                    await trio.testing.wait_all_tasks_blocked()
                    await second()
        # a cancelled wait leaves the stream as it was: the bytes sent before arrive, nothing else
        assert await on_reactor(reactor, mine.recv(100)) == b"x" * 16
        await theirs.send_all(b"after")
        assert await on_reactor(reactor, mine.recv(100)) == b"after"

    run(body, limit=16)


def test_trio_end_aclose_wakes_parked_calls_and_refuses_later_ones() -> None:
    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        await theirs.send_all(b"x" * 16)

        async def expect_closed(call: Callable[[], Awaitable[object]]) -> None:
            with pytest.raises(trio.ClosedResourceError):
                await call()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect_closed, theirs.receive_some)
            nursery.start_soon(expect_closed, lambda: theirs.send_all(b"more"))
            await trio.testing.wait_all_tasks_blocked()
            await theirs.aclose()
        for call in (theirs.receive_some, lambda: theirs.send_all(b""), theirs.send_eof):
            await expect_closed(call)
        await expect_closed(theirs.wait_send_all_might_not_block)
        await theirs.aclose()  # again: fine
        assert await on_reactor(reactor, mine.recv(100)) == b"x" * 16  # what was sent before the close
        assert await on_reactor(reactor, mine.recv(100)) == b""

    run(body, limit=16)


def test_trio_end_cancelled_receive_loses_nothing() -> None:
    async def body(reactor: Reactor, mine: ReactorEnd, theirs: TrioEnd) -> None:
        async with trio.open_nursery() as nursery:  # a receive with nothing to read, cancelled
            nursery.start_soon(theirs.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        await on_reactor(reactor, mine.send_all(b"later"))
        assert await theirs.receive_some() == b"later"
        mine.close()  # the proxy closing: EOF for the trio end, and its sends break
        assert await theirs.receive_some() == b""
        with pytest.raises(trio.BrokenResourceError):
            await theirs.send_all(b"x")
        await theirs.aclose()

    run(body)
