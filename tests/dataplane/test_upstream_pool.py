"""Upstream connection pools (`dataplane.upstream.pool`) on a running reactor and loopback TCP.

The upstream is a plain listening socket served by a reactor task that accepts connections
and keeps them (so the tests can close them from the server side, or send stray bytes).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import trio

from dataplane.reactor import ConnectError, Reactor, RSock
from dataplane.upstream.pool import EndpointPool, PoolLimits, PoolOverflow, PoolRegistry, UpstreamConn


class Upstream:
    """A loopback server run by the reactor: accepts and remembers connections."""

    def __init__(self, reactor: Reactor) -> None:
        self.listen_sock = socket.socket()
        self.listen_sock.bind(("127.0.0.1", 0))
        self.listen_sock.listen(64)
        self.port = self.listen_sock.getsockname()[1]
        self.rs = reactor.wrap(self.listen_sock)
        self.conns: list[socket.socket] = []
        reactor.spawn(self._accept(), "upstream-accept")

    async def _accept(self) -> None:
        while True:
            conn, _ = await self.rs.accept()
            self.conns.append(conn)

    async def wait_conns(self, n: int) -> None:
        await until(lambda: len(self.conns) >= n)


async def until(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Poll state the reactor changes (no trio event to wait on) until `predicate()` holds."""
    with trio.fail_after(within):
        for _ in range(100_000):
            if predicate():
                return
            await trio.sleep(0.005)  # poll interval of a condition loop


def run(main: Callable[[Reactor, Upstream], Awaitable[Any]], timeout: float = 5.0) -> Any:
    async def runner() -> Any:
        reactor = Reactor()
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                await nursery.start(reactor.run)
                upstream = Upstream(reactor)
                result = await main(reactor, upstream)
                nursery.cancel_scope.cancel()
        for c in upstream.conns:
            c.close()
        return result

    return trio.run(runner)


async def on_reactor(reactor: Reactor, coro: Coroutine[Any, Any, Any]) -> Any:
    done = trio.Event()
    box: dict[str, Any] = {}

    async def wrapper() -> None:
        try:
            box["value"] = await coro
        except Exception as exc:
            box["error"] = exc
        finally:
            done.set()

    reactor.spawn(wrapper())
    await done.wait()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Pending:
    """An acquire() running in the background; `result()` waits for it."""

    def __init__(self, reactor: Reactor, pool: EndpointPool, timeout: float = 2.0) -> None:
        self.done = trio.Event()
        self.value: tuple[UpstreamConn, bool] | None = None
        self.error: BaseException | None = None

        async def go() -> None:
            try:
                self.value = await pool.acquire(timeout)
            except Exception as exc:
                self.error = exc
            self.done.set()

        reactor.spawn(go())

    async def result(self) -> tuple[UpstreamConn, bool]:
        with trio.fail_after(2):
            await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


def make_pool(
    reactor: Reactor, up: Upstream, clock: Callable[[], float] = time.monotonic, **limits: Any
) -> EndpointPool:
    return EndpointPool(reactor, "127.0.0.1", up.port, PoolLimits(**limits), clock=clock)


def test_acquire_release_and_reuse() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up)
        conn, reused = await on_reactor(reactor, pool.acquire(1.0))
        assert not reused and isinstance(conn.sock, RSock) and pool.in_use == 1 and pool.total == 1
        await up.wait_conns(1)
        pool.release(conn, reusable=True)
        assert pool.idle == [conn] and pool.in_use == 0 and conn.requests == 1
        again, reused = await on_reactor(reactor, pool.acquire(1.0))
        assert again is conn and reused and pool.stats_reused == 1
        pool.release(again, reusable=True)
        await trio.sleep(0.02)  # stays: a negative check, time for a stray second connect to reach the upstream
        assert len(up.conns) == 1  # no second connection was opened

    run(main)


def test_release_not_reusable_closes() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up)
        conn, _ = await on_reactor(reactor, pool.acquire(1.0))
        pool.release(conn, reusable=False)
        assert pool.idle == [] and pool.total == 0 and conn.sock.fd == -1
        fresh, reused = await on_reactor(reactor, pool.acquire(1.0))
        assert fresh is not conn and not reused and pool.stats_reused == 0
        pool.release(fresh, True)

    run(main)


@pytest.mark.parametrize("how", ["close", "reset", "stray bytes"])
def test_idle_connection_the_server_dropped_is_not_handed_out(how: str) -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up)
        conn, _ = await on_reactor(reactor, pool.acquire(1.0))
        pool.release(conn, reusable=True)
        await up.wait_conns(1)
        server_side = up.conns[0]
        if how == "close":
            server_side.close()
        elif how == "reset":
            server_side.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            server_side.close()
        else:
            server_side.send(b"HTTP/1.1 200 OK\r\n\r\n")
        await until(lambda: not conn.sock.still_usable())  # the reactor notices the event
        fresh, reused = await on_reactor(reactor, pool.acquire(1.0))
        assert fresh is not conn and not reused
        assert conn.sock.fd == -1 and pool.stats_reused == 0
        pool.release(fresh, True)

    run(main)


def test_bytes_that_arrived_before_release_keep_the_connection_out_of_the_pool() -> None:
    # The upstream sends something after the response ended, while the proxy is still busy
    # writing to its client: those bytes are already waiting when the connection is released.
    # Reusing it would hand them to the next request as the start of its response.
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up)
        conn, _ = await on_reactor(reactor, pool.acquire(1.0))
        await up.wait_conns(1)
        await on_reactor(reactor, conn.sock.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        up.conns[0].sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        assert await on_reactor(reactor, conn.sock.recv()) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        up.conns[0].sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        sock = conn.sock
        await until(lambda: sock.readable and sock.edges != sock.recv_edges)  # the reactor has seen them arrive
        pool.release(conn, reusable=True)
        fresh, reused = await on_reactor(reactor, pool.acquire(1.0))
        assert fresh is not conn and not reused
        pool.release(fresh, True)

    run(main)


def test_max_connections_and_max_pending_overflow_and_waiter_gets_released_conn() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up, max_connections=1, max_pending=1)
        first, _ = await on_reactor(reactor, pool.acquire(1.0))
        waiter = Pending(reactor, pool)
        await until(lambda: len(pool.waiters) == 1)
        assert not waiter.done.is_set()
        with pytest.raises(PoolOverflow):
            await on_reactor(reactor, pool.acquire(1.0))
        pool.release(first, reusable=True)
        conn, reused = await waiter.result()
        assert conn is first and reused and not pool.waiters
        pool.release(conn, reusable=False)
        # The slot is free again: the next acquire opens a new connection.
        third, reused = await on_reactor(reactor, pool.acquire(1.0))
        assert not reused and third is not first
        pool.release(third, True)

    run(main)


def test_waiter_gets_a_new_connection_when_the_released_one_is_closed() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up, max_connections=1, max_pending=4)
        first, _ = await on_reactor(reactor, pool.acquire(1.0))
        waiter = Pending(reactor, pool)
        await until(lambda: len(pool.waiters) == 1)
        pool.release(first, reusable=False)
        conn, reused = await waiter.result()
        assert conn is not first and not reused and pool.in_use == 1
        pool.release(conn, True)

    run(main)


def test_waiter_times_out_as_a_saturated_pool_and_leaves_the_queue() -> None:
    """No connection freed in time is the pool's saturation (503), not the endpoint's failure:
    PoolOverflow, which never counts towards ejection."""

    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up, max_connections=1, max_pending=4)
        first, _ = await on_reactor(reactor, pool.acquire(1.0))
        t0 = time.monotonic()
        waiter = Pending(reactor, pool, timeout=0.1)
        with pytest.raises(PoolOverflow, match="busy"):
            await waiter.result()
        assert time.monotonic() - t0 < 2
        assert not pool.waiters
        pool.release(first, True)

    run(main)


def test_several_waiters_are_served_in_turn() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up, max_connections=2, max_pending=8)
        held = [await on_reactor(reactor, pool.acquire(1.0)) for _ in range(2)]
        waiters = [Pending(reactor, pool) for _ in range(4)]
        await until(lambda: len(pool.waiters) == 4)
        for conn, _ in held:
            pool.release(conn, True)
        served = 0
        for w in waiters:
            with trio.move_on_after(0.1):
                await w.done.wait()
            if w.done.is_set():
                conn, _ = await w.result()
                served += 1
                pool.release(conn, True)  # hand it on to the next waiter
        assert served == 4 and pool.total <= 2

    run(main)


def test_close_closes_idle_connections_and_later_releases() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up)
        a, _ = await on_reactor(reactor, pool.acquire(1.0))
        b, _ = await on_reactor(reactor, pool.acquire(1.0))
        pool.release(a, True)
        pool.close()
        assert pool.closed and pool.idle == [] and a.sock.fd == -1
        assert b.sock.fd != -1  # in use: closed when released
        pool.release(b, True)
        assert b.sock.fd == -1 and pool.idle == []

    run(main)


def test_close_wakes_waiters() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up, max_connections=1)
        held, _ = await on_reactor(reactor, pool.acquire(1.0))
        waiter = Pending(reactor, pool, timeout=0.3)
        await until(lambda: len(pool.waiters) == 1)
        pool.close()
        assert not pool.waiters
        # Woken, it finds the pool still full and waits again (then times out): it does not hang.
        with pytest.raises(PoolOverflow):
            await waiter.result()
        pool.release(held, True)

    run(main)


def test_close_expired_drops_connections_idle_too_long() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up, idle_timeout=30.0)
        conns = [(await on_reactor(reactor, pool.acquire(1.0)))[0] for _ in range(3)]
        for c in conns:
            pool.release(c, True)
        now = time.monotonic()
        assert pool.close_expired(now) == 0 and len(pool.idle) == 3
        conns[0].idle_since = now - 60  # idle for a minute
        assert pool.close_expired(now) == 1
        assert conns[0].sock.fd == -1 and pool.idle == conns[1:]
        assert pool.close_expired(now + 31) == 2 and pool.idle == []

    run(main)


def test_take_idle_skips_expired_connections() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        now = [100.0]
        pool = make_pool(reactor, up, clock=lambda: now[0], idle_timeout=30.0)
        conn, _ = await on_reactor(reactor, pool.acquire(1.0))
        pool.release(conn, True)
        assert conn.idle_since == 100.0
        now[0] += 31
        fresh, reused = await on_reactor(reactor, pool.acquire(1.0))
        assert not reused and fresh is not conn and conn.sock.fd == -1
        pool.release(fresh, True)

    run(main)


def test_max_idle_is_respected() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up, max_idle=2)
        conns = [(await on_reactor(reactor, pool.acquire(1.0)))[0] for _ in range(4)]
        for c in conns:
            pool.release(c, True)
        assert pool.idle == conns[:2]
        assert all(c.sock.fd == -1 for c in conns[2:])

    run(main)


def test_idle_connections_are_reused_lifo() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        pool = make_pool(reactor, up)
        a, _ = await on_reactor(reactor, pool.acquire(1.0))
        b, _ = await on_reactor(reactor, pool.acquire(1.0))
        pool.release(a, True)
        pool.release(b, True)
        got, reused = await on_reactor(reactor, pool.acquire(1.0))
        assert got is b and reused

    run(main)


def test_acquire_to_a_closed_port_raises_connect_error() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        pool = EndpointPool(reactor, "127.0.0.1", port, PoolLimits())
        with pytest.raises(ConnectError):
            await on_reactor(reactor, pool.acquire(1.0))
        assert pool.total == 0 and pool.connecting == 0

    run(main)


def test_registry_get_and_reconcile() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        reg = PoolRegistry(reactor)
        limits = PoolLimits(max_connections=4)
        p1 = reg.get("c1", "127.0.0.1", up.port, limits)
        assert reg.get("c1", "127.0.0.1", up.port, limits) is p1
        conn, _ = await on_reactor(reactor, p1.acquire(1.0))
        p1.release(conn, True)
        p2 = reg.get("c1", "127.0.0.1", up.port, PoolLimits(max_connections=8))  # new limits: new pool
        assert p2 is not p1 and p1.closed and conn.sock.fd == -1
        other = reg.get("c2", "127.0.0.1", up.port, limits)
        reg.reconcile({("c1", "127.0.0.1", up.port)})
        assert other.closed and set(reg.pools) == {("c1", "127.0.0.1", up.port)}
        reg.close_all()
        assert p2.closed

    run(main)


def test_sweeper_closes_idle_connections_by_the_registry_clock() -> None:
    async def main(reactor: Reactor, up: Upstream) -> None:
        now, reads = [100.0], [0]

        def clock() -> float:
            reads[0] += 1
            return now[0]

        reg = PoolRegistry(reactor, clock=clock)
        pool = reg.get("c1", "127.0.0.1", up.port, PoolLimits(idle_timeout=30.0))
        assert pool.clock is reg.clock
        conn, _ = await on_reactor(reactor, pool.acquire(1.0))
        pool.release(conn, True)
        async with trio.open_nursery() as nursery:
            swept = reads[0]
            nursery.start_soon(reg.run_sweeper, 0.001)
            await until(lambda: reads[0] >= swept + 3)  # three sweeps: nothing has been idle for 30 s
            assert pool.idle == [conn]
            now[0] += 31
            await until(lambda: not pool.idle)
            nursery.cancel_scope.cancel()
        assert conn.sock.fd == -1

    run(main)
