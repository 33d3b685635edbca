"""The connection reaper (dataplane.http.services) on a fake clock: `ProxyServices.clock` sets
and checks the deadlines, so expiry is tested without waiting for it. Real sockets (a socket
pair), a real reactor, no sleeps."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from dataplane.accesslog import AccessLog
from dataplane.config.runtime import ConfigHolder
from dataplane.http.proxy import serve_http
from dataplane.http.services import IDLE, READING, ProxyServices, ProxySettings
from dataplane.metrics import Metrics
from dataplane.reactor import Reactor

HEADER_TIMEOUT = 5.0


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _services(reactor: Reactor, clock: Callable[[], float]) -> ProxyServices:
    return ProxyServices(
        holder=ConfigHolder(),  # no config: the listener's settings are the defaults
        metrics=Metrics(),
        access_log=AccessLog(fd=None),
        passive_health=lambda *args, **kwargs: None,
        reactor=reactor,
        settings=ProxySettings(header_timeout=HEADER_TIMEOUT, idle_timeout=60.0),
        clock=clock,
    )


def _run(
    body: Callable[[ProxyServices, trio.socket.SocketType], Awaitable[None]],
    clock: Callable[[], float] | None,
    trio_clock: trio.abc.Clock | None = None,
) -> None:
    """Serve one connection (a socket pair: the node's end on the reactor, the client's end in
    trio) and run `body(services, client)`."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reactor = await nursery.start(Reactor().run)
            svc = _services(reactor, clock or trio.current_time)
            mine, theirs = socket.socketpair()
            reactor.spawn(serve_http(svc, reactor.wrap(mine), ("127.0.0.1", 40000), "web"), "conn")
            client = trio.socket.from_stdlib_socket(theirs)
            with client, trio.fail_after(30):
                await trio.testing.wait_all_tasks_blocked()
                await body(svc, client)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio_clock)


async def _read_to_eof(client: trio.socket.SocketType) -> bytes:
    out = b""
    while data := await client.recv(65536):
        out += data
    return out


def test_a_silent_connection_is_closed_at_the_header_timeout_and_not_before() -> None:
    clock = FakeClock()

    async def body(svc: ProxyServices, client: Any) -> None:
        (conn,) = svc.conns
        assert conn.phase == IDLE
        assert conn.deadline == clock.t + HEADER_TIMEOUT  # set from the injected clock
        clock.t += HEADER_TIMEOUT - 0.01
        assert svc.reap() == 0
        await trio.testing.wait_all_tasks_blocked()
        assert svc.conns == {conn}
        clock.t += 0.01
        assert svc.reap() == 1
        assert await _read_to_eof(client) == b""  # nothing was asked: closed without a word
        await trio.testing.wait_all_tasks_blocked()
        assert not svc.conns
        assert svc.reap() == 0  # thrown once

    _run(body, clock)


def test_a_head_that_stops_coming_gets_408_at_the_header_timeout() -> None:
    clock = FakeClock()

    async def body(svc: ProxyServices, client: Any) -> None:
        (conn,) = svc.conns
        start = clock.t
        await client.send(b"GET / HTTP/1.1\r\nHost: example\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert conn.phase == READING
        clock.t = start + HEADER_TIMEOUT - 0.5  # the first head counts from the accept
        assert svc.reap() == 0
        clock.t = start + HEADER_TIMEOUT
        assert svc.reap() == 1
        answer = await _read_to_eof(client)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert svc.metrics.counters.get("client_header_timeout") == 1

    _run(body, clock)


def test_run_reaper_on_trio_mock_clock() -> None:
    """The reaper task itself, with trio's MockClock (autojump) as the connections' clock too:
    the header timeout passes in virtual time."""

    async def body(svc: ProxyServices, client: Any) -> None:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(svc.run_reaper)
            assert await _read_to_eof(client) == b""
            nursery.cancel_scope.cancel()
        waited = trio.current_time() - start
        assert HEADER_TIMEOUT <= waited <= HEADER_TIMEOUT + 0.2  # the reaper's interval is 0.1 s

    _run(body, None, trio.testing.MockClock(autojump_threshold=0))
