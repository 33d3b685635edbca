"""The edge-triggered epoll reactor (`dataplane.reactor`) on real sockets.

Every test runs inside `trio.run` under a `trio.fail_after` bound: the reactor is started with
`await nursery.start(reactor.run)`, work is handed to it with `reactor.spawn(coro)`, results
come back through trio Events set from the reactor tasks (they run inside the reactor's trio
task, so calling a sync trio method there is fine), and the nursery is cancelled at the end.
"""

from __future__ import annotations

import errno
import logging
import random
import select
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import trio
import trio.testing

from dataplane.reactor import ConnectError, Reactor, REvent, RSock, Task, connect


def run(main: Callable[[Reactor], Awaitable[Any]], timeout: float = 5.0) -> Any:
    """Run `main(reactor)` in trio with a started reactor; cancel everything afterwards."""

    async def runner() -> Any:
        reactor = Reactor()
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                await nursery.start(reactor.run)
                result = await main(reactor)
                nursery.cancel_scope.cancel()
        assert reactor.closed
        return result

    return trio.run(runner)


async def on_reactor(reactor: Reactor, coro: Coroutine[Any, Any, Any], name: str = "") -> Any:
    """Run `coro` as a reactor task and wait (in trio) for its result or exception."""
    done = trio.Event()
    box: dict[str, Any] = {}

    async def wrapper() -> None:
        try:
            box["value"] = await coro
        except Exception as exc:
            box["error"] = exc
        finally:
            done.set()

    reactor.spawn(wrapper(), name)
    await done.wait()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def read_exactly(rs: RSock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await rs.recv()
        if not data:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


async def until(predicate: Callable[[], bool], within: float = 1.0) -> None:
    """Poll state the reactor changes (no trio event to wait on) until `predicate()` holds."""
    with trio.fail_after(within):
        for _ in range(100_000):
            if predicate():
                return
            await trio.sleep(0.005)  # poll interval of a condition loop


def pair(reactor: Reactor, bufsize: int | None = None) -> tuple[RSock, RSock]:
    a, b = socket.socketpair()
    if bufsize:
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
    return reactor.wrap(a), reactor.wrap(b)


def listener(backlog: int = 16) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)
    return s


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Boom(Exception):
    pass


# -- socket I/O ----------------------------------------------------------------------------


def test_recv_send_all_round_trip() -> None:
    async def main(reactor: Reactor) -> None:
        a, b = pair(reactor)

        async def echo() -> None:
            while data := await b.recv():
                await b.send_all(data)
            b.close()  # after the client's EOF

        reactor.spawn(echo(), "echo")

        async def client() -> list[bytes]:
            got = []
            for msg in (b"hello", b"x" * 10000, bytes(range(256))):
                await a.send_all(msg)
                got.append(await read_exactly(a, len(msg)))
            a.sock.shutdown(socket.SHUT_WR)
            got.append(await a.recv())
            return got

        assert await on_reactor(reactor, client()) == [b"hello", b"x" * 10000, bytes(range(256)), b""]
        a.close()

    run(main)


def test_recv_returns_empty_at_eof_and_raises_on_reset() -> None:
    async def main(reactor: Reactor) -> None:
        a, b = pair(reactor)
        b.sock.close()  # behind the reactor's back: a sees EOF
        assert await on_reactor(reactor, a.recv()) == b""
        a.close()

        srv = listener()
        port = srv.getsockname()[1]
        c = await on_reactor(reactor, connect(reactor, "127.0.0.1", port, 2.0))
        peer, _ = srv.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # linger 0: RST
        with pytest.raises(OSError) as info:
            await on_reactor(reactor, c.recv())
        assert info.value.errno == errno.ECONNRESET
        c.close()
        srv.close()

    run(main)


def test_send_all_waits_for_the_peer_to_read() -> None:
    async def main(reactor: Reactor) -> None:
        a, b = pair(reactor, bufsize=8192)
        payload = random.randbytes(3_000_000)
        sent = trio.Event()

        async def sender() -> None:
            await a.send_all(payload)
            sent.set()

        reactor.spawn(sender(), "sender")
        await trio.sleep(0.1)  # stays: a negative check (send_all must not finish while nobody reads)
        assert not sent.is_set(), "send_all finished although nobody read"
        runs = reactor.tasks_run
        await trio.sleep(0.1)  # stays: the parked sender's run count is measured over this time
        assert reactor.tasks_run - runs <= 2, "the parked sender is spinning"
        got = await on_reactor(reactor, read_exactly(b, len(payload)), "reader")
        with trio.fail_after(2):
            await sent.wait()
        assert got == payload
        a.close()
        b.close()

    run(main)


def test_many_concurrent_tasks_on_many_socketpairs() -> None:
    n_pairs = 150
    rng = random.Random(7)
    plans = [[rng.randbytes(rng.randint(1, 40000)) for _ in range(rng.randint(1, 4))] for _ in range(n_pairs)]

    async def main(reactor: Reactor) -> None:
        results: list[tuple[int, list[bytes]]] = []
        done = trio.Event()
        socks: list[RSock] = []

        async def echo(rs: RSock) -> None:
            while data := await rs.recv():
                await rs.send_all(data)

        async def client(i: int, rs: RSock) -> None:
            got = []
            for msg in plans[i]:
                await rs.send_all(msg)
                got.append(await read_exactly(rs, len(msg)))
            results.append((i, got))
            if len(results) == n_pairs:
                done.set()

        for i in range(n_pairs):
            a, b = pair(reactor)
            socks += (a, b)
            reactor.spawn(echo(b), f"echo-{i}")
            reactor.spawn(client(i, a), f"client-{i}")
        await done.wait()
        assert sorted(i for i, _ in results) == list(range(n_pairs))
        for i, got in results:
            assert got == plans[i]
        for rs in socks:
            rs.close()

    run(main, timeout=10)


def test_accept_and_connect() -> None:
    async def main(reactor: Reactor) -> None:
        srv = listener()
        port = srv.getsockname()[1]
        lrs = reactor.wrap(srv)

        async def serve_one() -> bytes:
            conn, addr = await lrs.accept()
            assert addr[0] == "127.0.0.1"
            rs = reactor.wrap(conn)
            data = await read_exactly(rs, 4)
            await rs.send_all(data.upper())
            rs.close()
            return data

        server = reactor.spawn(serve_one(), "server")

        async def client() -> bytes:
            rs = await connect(reactor, "127.0.0.1", port, 2.0)
            assert rs.still_usable()
            await rs.send_all(b"ping")
            reply = await read_exactly(rs, 4)
            assert await rs.recv() == b""
            assert not rs.still_usable()  # EOF arrived
            rs.close()
            return reply

        assert await on_reactor(reactor, client()) == b"PING"
        assert server.coro.cr_frame is None
        lrs.close()

    run(main)


def test_connect_by_name_resolves_in_trio() -> None:
    async def main(reactor: Reactor) -> None:
        srv = listener()
        rs = await on_reactor(reactor, connect(reactor, "localhost", srv.getsockname()[1], 2.0))
        assert rs.sock.getpeername()[1] == srv.getsockname()[1]
        rs.close()
        with pytest.raises(ConnectError):
            await on_reactor(reactor, connect(reactor, "no-such-host.invalid", 80, 2.0))
        srv.close()

    run(main)


def test_connect_to_a_closed_port_fails_quickly() -> None:
    async def main(reactor: Reactor) -> None:
        port = closed_port()
        t0 = time.monotonic()
        with pytest.raises(ConnectError) as info:
            await on_reactor(reactor, connect(reactor, "127.0.0.1", port, 5.0))
        assert time.monotonic() - t0 < 2
        assert info.value.errno == errno.ECONNREFUSED
        assert not reactor._socks, "the failed socket must be closed and unregistered"

    run(main)


def _blackhole_answers_at_once(host: str, port: int) -> str | None:
    """Why a connect to `host` would not hang here (None if it does hang, as on a real network)."""
    s = socket.socket()
    s.setblocking(False)
    try:
        err = s.connect_ex((host, port))
        if err not in (errno.EINPROGRESS, errno.EAGAIN):
            return f"connect to {host} failed at once: {errno.errorcode.get(err, err)}"
        p = select.poll()
        p.register(s, select.POLLOUT)
        if p.poll(300):
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            outcome = errno.errorcode.get(err, err) if err else "connected (a transparent proxy?)"
            return f"connect to {host} answered at once: {outcome}"
        return None
    finally:
        s.close()


def test_connect_to_a_non_routable_address_times_out() -> None:
    reason = _blackhole_answers_at_once("10.255.255.1", 80)
    if reason:
        pytest.skip(f"the sandbox network does not black-hole 10.255.255.1 ({reason})")

    async def main(reactor: Reactor) -> None:
        t0 = time.monotonic()
        with pytest.raises(ConnectError) as info:
            await on_reactor(reactor, connect(reactor, "10.255.255.1", 80, 0.2))
        assert time.monotonic() - t0 < 2
        assert info.value.errno in (errno.ETIMEDOUT, errno.ENETUNREACH, errno.EHOSTUNREACH)

    run(main)


def _full_backlog() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback listener whose accept queue is full: further SYNs are dropped, connects hang."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    for _ in range(2):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(srv.getsockname())
        fillers.append(c)
    time.sleep(0.05)  # stays: the fillers' handshakes complete (one of them may never: no condition to wait on)
    return srv, fillers


def test_connect_timeout_on_a_black_hole() -> None:
    srv, fillers = _full_backlog()
    if _blackhole_answers_at_once(*srv.getsockname()):
        pytest.skip("a full accept queue does not make connects hang here")

    async def main(reactor: Reactor) -> None:
        t0 = time.monotonic()
        with pytest.raises(ConnectError) as info:
            await on_reactor(reactor, connect(reactor, "127.0.0.1", srv.getsockname()[1], 0.2))
        assert 0.15 < time.monotonic() - t0 < 2
        assert info.value.errno == errno.ETIMEDOUT
        assert not reactor._socks, "the timed-out socket must be closed and unregistered"

    try:
        run(main)
    finally:
        for s in (srv, *fillers):
            s.close()


def test_connect_interrupted_by_throw_closes_its_socket() -> None:
    # The proxy's reaper throws its own timeout into a task that may be inside connect().
    srv, fillers = _full_backlog()
    if _blackhole_answers_at_once(*srv.getsockname()):
        pytest.skip("a full accept queue does not make connects hang here")

    async def main(reactor: Reactor) -> None:
        caught = trio.Event()
        box: list[BaseException] = []

        async def connecting() -> None:
            try:
                await connect(reactor, "127.0.0.1", srv.getsockname()[1], 30.0)
            except Boom as exc:
                box.append(exc)
            caught.set()

        task = reactor.spawn(connecting(), "connecting")
        await until(lambda: len(reactor._socks) == 1)
        reactor.throw(task, Boom())
        await caught.wait()
        assert box and isinstance(box[0], Boom)
        assert not reactor._socks, "connect() leaked its socket when interrupted"

    try:
        run(main)
    finally:
        for s in (srv, *fillers):
            s.close()


# -- timers, events, tasks -----------------------------------------------------------------


def test_sleep_order() -> None:
    async def main(reactor: Reactor) -> list[str]:
        order: list[str] = []
        done = trio.Event()
        delays = {"d": 0.0, "e": 0.01, "b": 0.03, "c": 0.06, "a": 0.09, "neg": -1.0}

        async def sleeper(name: str, seconds: float) -> None:
            await reactor.sleep(seconds)
            order.append(name)
            if len(order) == len(delays):
                done.set()

        for name, seconds in random.Random(3).sample(sorted(delays.items()), len(delays)):
            reactor.spawn(sleeper(name, seconds), name)
        await done.wait()
        return order

    order = run(main)
    assert set(order[:2]) == {"d", "neg"} and order[2:] == ["e", "b", "c", "a"]


def test_sleep_really_waits() -> None:
    async def main(reactor: Reactor) -> float:
        async def nap() -> float:
            t0 = time.monotonic()
            await reactor.sleep(0.05)
            return time.monotonic() - t0

        return await on_reactor(reactor, nap())

    assert run(main) >= 0.045


def test_revent_wakes_every_waiter_once() -> None:
    async def main(reactor: Reactor) -> None:
        ev = reactor.event()
        assert isinstance(ev, REvent) and not ev.is_set
        woke: list[int] = []
        all_woke = trio.Event()

        async def waiter(i: int) -> None:
            await ev
            woke.append(i)
            if len(woke) == 5:
                all_woke.set()

        tasks = [reactor.spawn(waiter(i)) for i in range(5)]
        await until(lambda: all(t.parked is not None for t in tasks))  # every waiter parked on the event
        assert woke == []

        async def setter() -> None:
            ev.set()
            ev.set()  # idempotent

        reactor.spawn(setter())
        await all_woke.wait()
        assert sorted(woke) == list(range(5))

        async def late() -> str:
            await ev  # already set: returns at once
            return "late"

        assert await on_reactor(reactor, late()) == "late"

    run(main)


def test_revent_set_from_trio_wakes_a_waiter() -> None:
    async def main(reactor: Reactor) -> None:
        ev = reactor.event()
        woke = trio.Event()

        async def waiter() -> None:
            await ev
            woke.set()

        reactor.spawn(waiter())
        await trio.testing.wait_all_tasks_blocked()  # the reactor is parked with nothing to do
        ev.set()
        with trio.fail_after(1):
            await woke.wait()

    run(main)


def test_throw_into_a_task_parked_on_recv() -> None:
    async def main(reactor: Reactor) -> None:
        a, b = pair(reactor)
        trail: list[str] = []
        finished = trio.Event()

        async def parked() -> None:
            try:
                await a.recv()
                trail.append("received")
            except Boom:
                trail.append("boom")
            finally:
                trail.append("finally")
                finished.set()

        task = reactor.spawn(parked(), "parked")
        await until(lambda: task.parked is a)
        assert trail == []
        reactor.throw(task, Boom())
        with trio.fail_after(1):
            await finished.wait()
        assert trail == ["boom", "finally"]
        assert a.reader is None
        b.sock.send(b"late data")  # must not resume the finished task
        await trio.sleep(0.05)  # stays: a negative check, time for a wrong resume to happen
        assert trail == ["boom", "finally"]
        reactor.throw(task, Boom())  # a finished task: nothing happens
        a.close()
        b.close()

    run(main)


def test_uncaught_exception_in_a_task_is_logged_and_finally_runs(caplog: pytest.LogCaptureFixture) -> None:
    async def main(reactor: Reactor) -> None:
        a, b = pair(reactor)
        trail: list[str] = []

        async def parked() -> None:
            try:
                await a.recv()
            finally:
                trail.append("finally")

        task = reactor.spawn(parked(), "doomed")
        await until(lambda: task.parked is a)
        reactor.throw(task, Boom("uncaught"))
        await until(lambda: trail == ["finally"])
        assert task.coro.cr_frame is None

        async def still_running() -> str:
            await reactor.sleep(0)
            return "alive"

        assert await on_reactor(reactor, still_running()) == "alive"
        a.close()
        b.close()

    with caplog.at_level(logging.ERROR, logger="flux.reactor"):
        run(main)
    assert any("doomed" in r.getMessage() for r in caplog.records)


def test_throw_into_a_sleeping_task_cancels_its_timer() -> None:
    async def main(reactor: Reactor) -> None:
        trail: list[str] = []
        done = trio.Event()

        async def sleeper() -> None:
            try:
                await reactor.sleep(0.05)
                trail.append("woke")
            except Boom:
                trail.append("boom")
                await reactor.sleep(0.15)  # a stale timer must not cut this second sleep short
                trail.append("slept again")
            done.set()

        task = reactor.spawn(sleeper())
        await until(lambda: task.parked is not None)  # asleep on its timer
        reactor.throw(task, Boom())
        t0 = trio.current_time()
        await done.wait()
        assert trail == ["boom", "slept again"]
        assert trio.current_time() - t0 >= 0.14

    run(main)


def test_call_later_and_cancel() -> None:
    async def main(reactor: Reactor) -> list[str]:
        hits: list[str] = []
        fired = trio.Event()
        reactor.call_later(0.06, hits.append, "a")
        reactor.call_later(0.03, hits.append, "b")
        cancelled = reactor.call_later(0.01, hits.append, "cancelled")
        cancelled.cancel()
        reactor.call_later(0.1, fired.set)

        async def from_a_task() -> None:
            t = reactor.call_later(0.02, hits.append, "task-cancelled")
            reactor.call_later(0.04, hits.append, "task")
            t.cancel()

        reactor.spawn(from_a_task())
        await fired.wait()
        return hits

    assert run(main) == ["b", "task", "a"]


def test_to_trio_returns_values_and_raises_errors() -> None:
    async def main(reactor: Reactor) -> None:
        async def trio_side(x: int) -> int:
            await trio.sleep(0.01)  # stays: a trio side that really suspends is the scenario
            return x * 2

        async def trio_fails() -> None:
            await trio.lowlevel.checkpoint()
            raise Boom("from trio")

        async def immediate() -> str:
            return "now"

        async def task() -> list[object]:
            out: list[object] = [await reactor.to_trio(trio_side, 21)]
            try:
                await reactor.to_trio(trio_fails)
            except Boom as exc:
                out.append(str(exc))
            out.append(await reactor.to_trio(immediate))
            return out

        assert await on_reactor(reactor, task()) == [42, "from trio", "now"]

    run(main)


def test_spawn_from_trio_is_picked_up_promptly() -> None:
    # Regression: a task spawned from a trio task while the reactor was parked with no timer
    # used to wait until some unrelated socket event woke the reactor.
    async def main(reactor: Reactor) -> None:
        await trio.testing.wait_all_tasks_blocked()  # let the reactor park: no sockets, no timers
        for _ in range(3):
            ran = trio.Event()

            async def mark(ev: trio.Event = ran) -> None:
                ev.set()

            reactor.spawn(mark())
            with trio.fail_after(1):
                await ran.wait()
            await trio.testing.wait_all_tasks_blocked()  # the reactor parks again

    run(main)


def test_call_later_from_trio_wakes_a_parked_reactor() -> None:
    async def main(reactor: Reactor) -> None:
        await trio.testing.wait_all_tasks_blocked()  # the reactor parks: no sockets, no timers
        fired = trio.Event()
        reactor.call_later(0.01, fired.set)
        with trio.fail_after(1):
            await fired.wait()

    run(main)


def test_closing_an_rsock_wakes_its_parked_tasks() -> None:
    async def main(reactor: Reactor) -> None:
        a, b = pair(reactor, bufsize=4096)
        c, d = pair(reactor)
        errors: list[type[BaseException]] = []
        both = trio.Event()

        async def reader() -> None:
            try:
                await a.recv()
            except ConnectionAbortedError as exc:
                errors.append(type(exc))
            if len(errors) == 2:
                both.set()

        async def writer() -> None:
            try:
                await c.send_all(b"x" * 5_000_000)  # nobody reads d: parks on a full buffer
            except ConnectionAbortedError as exc:
                errors.append(type(exc))
            if len(errors) == 2:
                both.set()

        t1 = reactor.spawn(reader())
        t2 = reactor.spawn(writer())
        await until(lambda: t1.parked is a and t2.parked is c)
        a.close()
        c.close()
        with trio.fail_after(1):
            await both.wait()
        assert errors == [ConnectionAbortedError, ConnectionAbortedError]
        assert a.sock.fileno() == -1 and c.sock.fileno() == -1
        a.close()  # twice: harmless
        for rs in (b, d):
            rs.close()

    run(main)


def test_reactor_closes_its_sockets_when_cancelled() -> None:
    kept: list[RSock] = []

    async def main(reactor: Reactor) -> None:
        kept.extend(pair(reactor))

    run(main)
    assert all(rs.sock.fileno() == -1 for rs in kept)


def test_still_usable_tracks_stray_bytes_and_eof() -> None:
    async def main(reactor: Reactor) -> None:
        srv = listener()
        rs = await on_reactor(reactor, connect(reactor, "127.0.0.1", srv.getsockname()[1], 2.0))
        peer, _ = srv.accept()
        assert rs.still_usable()
        peer.send(b"unexpected")
        await until(lambda: not rs.still_usable())
        assert await on_reactor(reactor, rs.recv()) == b"unexpected"
        rs.readable = False  # as the pool does when it takes the connection back
        peer.close()
        await until(lambda: not rs.still_usable())
        assert rs.hup
        rs.close()
        srv.close()

    run(main)


class CountingSocket:
    """A socket whose recv calls are recorded: the byte count, or "EAGAIN" when one would block."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.calls: list[int | str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def recv(self, size: int, *flags: int) -> bytes:
        try:
            data = self.real.recv(size, *flags)
        except BlockingIOError:
            self.calls.append("EAGAIN")
            raise
        self.calls.append(len(data))
        return data


def test_a_short_read_parks_the_next_recv_without_a_failing_call() -> None:
    """A recv that got fewer bytes than asked leaves the socket drained: the next recv parks at
    once (no recv that fails with EAGAIN), and bytes sent later, or just after that read, still
    wake it."""

    async def main(reactor: Reactor) -> None:
        a, b = pair(reactor)
        counting = CountingSocket(b.sock)
        b.sock = counting  # type: ignore[assignment]
        a.sock.send(b"one")
        await until(lambda: b.edges > 0)
        got: list[bytes] = []
        sizes = [b"two", b"three", b"four" * 5000]  # the last one takes more than one recv

        async def reader() -> None:
            got.append(await b.recv())
            assert not b.readable  # "one" was a short read
            while sum(map(len, got)) < 3 + 3 + 5 + 20000:
                got.append(await b.recv())

        task = on_reactor(reactor, reader())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: task)
            await until(lambda: got == [b"one"])
            await until(lambda: b.reader is not None)  # the reader parks
            for chunk in sizes:
                a.sock.sendall(chunk)
                await trio.sleep(0.01)  # stays: each chunk arrives on its own (separate wake-ups are the point)
        assert b"".join(got) == b"one" + b"".join(sizes)
        assert "EAGAIN" not in counting.calls, counting.calls
        a.close()
        b.close()

    run(main)


def test_eof_that_came_with_the_last_bytes_is_still_seen() -> None:
    """The peer writes and closes at once: the read event carries the EOF too, so the short
    read must not mark the socket drained, or the next recv would wait forever."""

    async def main(reactor: Reactor) -> None:
        for _ in range(20):
            a, b = pair(reactor)
            a.sock.send(b"last words")
            a.sock.shutdown(socket.SHUT_WR)
            await until(lambda b=b: b.hup)

            async def reader(b: RSock = b) -> tuple[bytes, bytes]:
                return await b.recv(), await b.recv()

            assert await on_reactor(reactor, reader()) == (b"last words", b"")
            a.close()
            b.close()

    run(main)


def test_bytes_arriving_right_after_a_short_read_are_not_lost() -> None:
    """Random writes racing the reader: every byte arrives, in order, with no recv left hanging."""
    rng = random.Random(7)
    payload = bytes(rng.getrandbits(8) for _ in range(200_000))

    async def main(reactor: Reactor) -> None:
        a, b = pair(reactor)

        async def reader() -> bytes:
            buf = bytearray()
            while len(buf) < len(payload):
                buf += await b.recv(rng.choice([7, 100, 4096, 65536]))
            return bytes(buf)

        async def writer() -> None:
            pos = 0
            while pos < len(payload):
                n = rng.choice([1, 3, 50, 1000, 30000])
                await a.send_all(payload[pos : pos + n])
                pos += n
                if rng.random() < 0.3:
                    await reactor.sleep(0)

        reactor.spawn(writer(), "writer")
        assert await on_reactor(reactor, reader()) == payload
        a.close()
        b.close()

    run(main, timeout=20)


def test_task_bookkeeping() -> None:
    async def main(reactor: Reactor) -> None:
        async def noop() -> None:
            await reactor.sleep(0)

        task = reactor.spawn(noop(), "named")
        assert isinstance(task, Task) and task.name == "named"
        await until(lambda: task.coro.cr_frame is None)
        assert reactor.tasks_run >= 1

    run(main)
