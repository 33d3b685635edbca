"""Reactor: the HTTP hot path's event loop, one trio task driving many coroutines.

Why: a trio task switch costs about ten microseconds of Python per wait, two
waits per proxied request, which capped a node at ~20% of nginx. Here the
proxy's per-connection code stays plain `async def` code, but its waits park
on a small edge-triggered epoll that this module drives, and resuming a
coroutine is one `coro.send()`. Trio still owns the process: the reactor is
an ordinary trio task that parks on `wait_readable(epoll fd)` between
batches (so every other trio task keeps running), and anything slow or rare
(DNS lookups, the reaper, health checks, admin, discovery) stays in trio.

What the reactor offers its coroutines (and nothing else may be awaited in
them, not even trio functions; use `to_trio` for those):
  RSock.recv / send_all / accept / connect   edge-triggered socket I/O
  Reactor.sleep(seconds)                      timers
  REvent                                      a one-shot event
  Reactor.spawn(coro)                         run another coroutine
  Reactor.to_trio(async_fn, *args)            run a trio coroutine, await its result
  Reactor.throw(task, exc)                    raise `exc` in a task at its await (timeouts, drain)

Sockets are registered once (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET) and
remember readiness between waits, so a wait that would find data already
there does not park at all.
"""

from __future__ import annotations

import errno
import heapq
import logging
import math
import select
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import trio
from trio.lowlevel import wait_readable

from dataplane.sockbase import (
    ACCEPT_EXHAUSTED,
    ACCEPT_RETRY,
    CONNECT_PENDING,
    ConnectError,
    connect_failed,
    connect_timed_out,
    numeric_addr,
    resolve,
    set_nodelay,
    tcp_socket,
)

__all__ = ["RECV_SIZE", "ConnectError", "REvent", "RSock", "Reactor", "Task", "Timer", "connect"]

log = logging.getLogger("flux.reactor")
_last_exhausted_log = [-math.inf]  # when "accept failed" was last logged (at most once a second)

RECV_SIZE = 65536
_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_OUT = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_HUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET


class Task:
    """A coroutine run by the reactor."""

    __slots__ = ("coro", "name", "parked", "pending_exc", "scheduled")

    def __init__(self, coro: Coroutine[Any, Any, Any], name: str = "") -> None:
        self.coro = coro
        self.name = name
        self.parked: _Park | None = None  # what it waits for
        self.pending_exc: BaseException | None = None
        self.scheduled = False


class _Park:
    """Something a task can wait on; `unpark` removes the task from it."""

    __slots__ = ()

    def park(self, reactor: Reactor, task: Task) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def unpark(self, task: Task) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __await__(self) -> Generator[_Park, Any, Any]:
        return (yield self)


class RSock(_Park):
    """A non-blocking socket registered with the reactor (edge-triggered).

    `readable` says whether a recv may find data without parking. It turns False
    when a recv would block, and also after a short read (fewer bytes than asked
    for): stream sockets hand over everything queued up to the size asked, and
    with EPOLLET every arrival after that read raises a new event that sets it
    True again. (Not once EOF or an error was signalled: that event came already,
    and the next recv must find it.) So the next wait parks at once instead of
    first making a recv that fails with EAGAIN, which cost a system call and a
    Python exception per request on each side of the proxy (about a third of a
    worker's throughput). `recv` and `try_recv` both apply the rule, inline: they
    are the hot path.
    """

    __slots__ = (
        "_want",
        "edges",
        "fd",
        "hup",
        "reactor",
        "readable",
        "reader",
        "recv_edges",
        "sock",
        "writable",
        "writer",
    )

    def __init__(self, reactor: Reactor, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.readable = True  # optimistic: try the call first
        self.writable = True
        self.edges = 0  # read events seen (the loop counts them)
        self.recv_edges = 0  # `edges` as of the last recv that returned data
        self.hup = False
        self.reader: Task | None = None
        self.writer: Task | None = None
        self._want = 0
        reactor._register(self)

    # -- waiting ------------------------------------------------------------------------

    def park(self, reactor: Reactor, task: Task) -> None:
        if self._want == 1:
            if self.readable:
                reactor._schedule(task)
            else:
                self.reader = task
                task.parked = self
        else:
            if self.writable:
                reactor._schedule(task)
            else:
                self.writer = task
                task.parked = self

    def unpark(self, task: Task) -> None:
        if self.reader is task:
            self.reader = None
        if self.writer is task:
            self.writer = None

    def _wait(self, want: int) -> RSock:
        self._want = want
        return self

    # -- I/O ----------------------------------------------------------------------------

    async def recv(self, size: int = RECV_SIZE) -> bytes:
        """Up to `size` bytes; b"" at EOF. Raises OSError on reset.

        Parks first when the socket is known to be drained (see the class docstring).
        """
        while True:
            if not self.readable:
                await self._wait(1)
            edges = self.edges
            try:
                data = self.sock.recv(size)
            except BlockingIOError:
                self.readable = False
                continue
            self.recv_edges = edges  # read events seen before this read (see pool._quiet)
            if 0 < len(data) < size and not self.hup:
                self.readable = False  # a short read took all there was (see the class docstring)
            return data

    def try_recv(self, size: int = RECV_SIZE) -> bytes | None:
        """`recv` without awaiting: the bytes, b"" at EOF, or None when nothing is there yet."""
        if not self.readable:
            return None
        edges = self.edges
        try:
            data = self.sock.recv(size)
        except BlockingIOError:
            self.readable = False
            return None
        self.recv_edges = edges
        if 0 < len(data) < size and not self.hup:
            self.readable = False
        return data

    def try_send(self, data: bytes) -> int:
        """Send what the kernel takes now (no await); the caller awaits `send_all` for the rest."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of `data`; OSError when the peer is gone."""
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            self.writable = False
            await self._wait(2)
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                continue
            view = view[sent:]

    async def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        while True:
            try:
                conn, addr = self.sock.accept()
            except BlockingIOError:
                self.readable = False
                await self._wait(1)
                continue
            except OSError as exc:
                if exc.errno in ACCEPT_EXHAUSTED:
                    self.reactor.fd_exhausted += 1
                    now = time.monotonic()
                    if now - _last_exhausted_log[0] >= 1.0:
                        _last_exhausted_log[0] = now
                        log.warning("accept failed: %s; backing off (raise `ulimit -n`?)", exc.strerror or exc)
                    await self.reactor.sleep(0.1)  # out of descriptors: back off instead of spinning
                    continue
                if exc.errno in ACCEPT_RETRY:
                    continue
                raise
            conn.setblocking(False)
            set_nodelay(conn)
            return conn, addr[:2]

    def shutdown_write(self) -> None:
        """Half-close: the peer reads EOF; this side can still receive. OSError when gone."""
        self.sock.shutdown(socket.SHUT_WR)

    def still_usable(self) -> bool:
        """For an idle pooled connection: no EOF, reset or unexpected bytes arrived."""
        return not self.hup and not self.readable

    def detach(self) -> socket.socket:
        """Leave the reactor without closing: the socket, to be wrapped (TLS) and registered again."""
        self.reactor._unregister(self)
        self.fd = -1
        return self.sock

    def close(self) -> None:
        if self.fd < 0:
            return
        self.reactor._unregister(self)
        for task in (self.reader, self.writer):
            if task is not None:
                self.reactor.throw(task, ConnectionAbortedError("socket closed"))
        self.reader = self.writer = None
        self.sock.close()
        self.fd = -1


class Timer:
    """A call the reactor makes at `deadline` (monotonic) unless cancelled first."""

    __slots__ = ("args", "callback", "deadline")

    def __init__(self, deadline: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.deadline = deadline
        self.callback: Callable[..., None] | None = callback
        self.args = args

    def cancel(self) -> None:
        self.callback = None

    def __lt__(self, other: Timer) -> bool:
        return self.deadline < other.deadline


class _Sleep(_Park):
    __slots__ = ("seconds", "timer")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.timer: Timer | None = None

    def park(self, reactor: Reactor, task: Task) -> None:
        task.parked = self
        self.timer = reactor.call_later(self.seconds, reactor._schedule, task)

    def unpark(self, task: Task) -> None:
        if self.timer is not None:
            self.timer.cancel()


class REvent(_Park):
    """A one-shot event for reactor tasks (`await event`, `event.set()`)."""

    __slots__ = ("_reactor", "_waiters", "is_set")

    def __init__(self, reactor: Reactor) -> None:
        self._reactor = reactor
        self._waiters: list[Task] = []
        self.is_set = False

    def set(self) -> None:
        if self.is_set:
            return
        self.is_set = True
        for task in self._waiters:
            task.parked = None
            self._reactor._schedule(task)
        self._waiters.clear()

    def park(self, reactor: Reactor, task: Task) -> None:
        if self.is_set:
            reactor._schedule(task)
        else:
            self._waiters.append(task)
            task.parked = self

    def unpark(self, task: Task) -> None:
        if task in self._waiters:
            self._waiters.remove(task)


class _Outcome(_Park):
    """The result of a trio coroutine run for a reactor task (see `Reactor.to_trio`)."""

    __slots__ = ("done", "error", "task", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.task: Task | None = None

    def park(self, reactor: Reactor, task: Task) -> None:
        if self.done:
            reactor._schedule(task, self)
        else:
            self.task = task
            task.parked = self

    def unpark(self, task: Task) -> None:
        self.task = None


class Reactor:
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._socks: dict[int, RSock] = {}
        self._ready: deque[tuple[Task, Any]] = deque()
        self._timers: list[Timer] = []
        self.current: Task | None = None
        self._in_loop = False  # True while the loop runs tasks or dispatches events
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._ep.register(self._wake_r.fileno(), select.EPOLLIN)
        self._nursery: trio.Nursery | None = None
        self.tasks_run = 0
        self.closed = False
        # Sockets `connect` may hold open in all (0: no cap); the node keeps descriptors in
        # reserve for its admin port and config stream (see dataplane.admission.FdBudget).
        self.max_sockets = 0
        self.fd_exhausted = 0  # accepts that failed for want of a descriptor

    @property
    def open_sockets(self) -> int:
        """Sockets registered with the reactor now (clients, upstreams, listeners)."""
        return len(self._socks)

    # -- registration ---------------------------------------------------------------------

    def _register(self, rs: RSock) -> None:
        self._ep.register(rs.fd, _MASK)
        self._socks[rs.fd] = rs

    def _unregister(self, rs: RSock) -> None:
        self._socks.pop(rs.fd, None)
        try:
            self._ep.unregister(rs.fd)
        except (OSError, ValueError):
            pass

    def wrap(self, sock: socket.socket) -> RSock:
        return RSock(self, sock)

    # -- tasks --------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> Task:
        task = Task(coro, name)
        self._schedule(task)
        return task

    def _schedule(self, task: Task, value: Any = None) -> None:
        if not task.scheduled:
            task.scheduled = True
            task.parked = None
            self._ready.append((task, value))
            if not self._in_loop:
                self._poke()  # scheduled from a trio task while the loop may be parked

    def throw(self, task: Task, exc: BaseException) -> None:
        """Raise `exc` inside `task` at the await where it waits (or its next one)."""
        if task.coro.cr_frame is None:
            return  # finished
        task.pending_exc = exc
        parked = task.parked
        if parked is not None:
            parked.unpark(task)
            task.parked = None
        self._schedule(task)

    def sleep(self, seconds: float) -> _Sleep:
        return _Sleep(max(0.0, seconds))

    def call_later(self, seconds: float, callback: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(time.monotonic() + seconds, callback, args)
        heapq.heappush(self._timers, timer)
        if self._timers[0] is timer:
            self._poke()  # the loop may be parked with a later (or no) deadline
        return timer

    def event(self) -> REvent:
        return REvent(self)

    def to_trio(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> _Outcome:
        """Run `fn(*args)` as a trio task; awaiting the returned object gives its result."""
        outcome = _Outcome()
        assert self._nursery is not None, "the reactor is not running"
        self._nursery.start_soon(self._run_in_trio, outcome, fn, args)
        return outcome

    async def _run_in_trio(self, outcome: _Outcome, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            outcome.value = await fn(*args)
        except Exception as exc:
            outcome.error = exc
        outcome.done = True
        if outcome.task is not None:
            task, outcome.task = outcome.task, None
            self._schedule(task, outcome)
            self._poke()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _step(self, task: Task, value: Any) -> None:
        task.scheduled = False
        exc = task.pending_exc
        self.current = task
        try:
            if exc is not None:
                task.pending_exc = None
                waiting = task.coro.throw(exc)
            elif type(value) is _Outcome:
                waiting = task.coro.throw(value.error) if value.error is not None else task.coro.send(value.value)
            else:
                waiting = task.coro.send(value)
        except StopIteration:
            return
        except Exception:
            log.exception("reactor task %s failed", task.name or task.coro)
            return
        finally:
            self.current = None
        self.tasks_run += 1
        waiting.park(self, task)

    # -- the loop -----------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Drive every task until cancelled (then close every socket)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                await self._loop()
        finally:
            self.closed = True
            for rs in list(self._socks.values()):
                rs.sock.close()
            self._socks.clear()
            self._ep.close()
            self._wake_r.close()
            self._wake_w.close()

    async def _loop(self) -> None:
        ready = self._ready
        socks = self._socks
        poll = self._ep.poll
        wake_fd = self._wake_r.fileno()
        ep = self._ep
        while True:
            self._in_loop = True
            while ready:
                task, value = ready.popleft()
                if task.scheduled:
                    self._step(task, value)
            self._in_loop = False
            timers = self._timers
            deadline = timers[0].deadline if timers else math.inf
            if deadline == math.inf:
                await wait_readable(ep)
            else:
                with trio.move_on_after(max(0.0, deadline - time.monotonic())):
                    await wait_readable(ep)
            self._in_loop = True
            for fd, mask in poll(0, 4096):
                rs = socks.get(fd)
                if rs is None:
                    if fd == wake_fd:
                        self._drain_wake()
                    continue
                if mask & _IN:
                    rs.readable = True
                    rs.edges += 1
                    if mask & _HUP:
                        rs.hup = True
                    task = rs.reader
                    if task is not None:  # inlined _schedule: this runs for every event
                        rs.reader = None
                        if not task.scheduled:
                            task.scheduled = True
                            task.parked = None
                            ready.append((task, None))
                if mask & _OUT:
                    rs.writable = True
                    task = rs.writer
                    if task is not None:
                        rs.writer = None
                        if not task.scheduled:
                            task.scheduled = True
                            task.parked = None
                            ready.append((task, None))
            if timers:
                now = time.monotonic()
                while timers and timers[0].deadline <= now:
                    timer = heapq.heappop(timers)
                    if timer.callback is not None:
                        callback, timer.callback = timer.callback, None
                        callback(*timer.args)


async def connect(reactor: Reactor, host: str, port: int, connect_timeout: float) -> RSock:
    """A connected socket in the reactor, or ConnectError (refused, unreachable, unresolvable,
    timed out); OSError(EMFILE) when the reactor holds `max_sockets` already (the node's reserve).
    A name (not a numeric address) is resolved in a trio worker thread (`Reactor.to_trio`)."""
    if reactor.max_sockets and len(reactor._socks) >= reactor.max_sockets:
        raise OSError(errno.EMFILE, "no descriptor free outside the node's reserve")
    info = numeric_addr(host, port) or await reactor.to_trio(resolve, host, port)
    sock = tcp_socket(info)
    rs = reactor.wrap(sock)
    err = sock.connect_ex(info[4])
    if err in CONNECT_PENDING:
        rs.writable = False
        task = reactor.current
        assert task is not None, "connect() outside a reactor task"
        timer = reactor.call_later(connect_timeout, reactor.throw, task, _ConnectTimeout())
        try:
            await rs._wait(2)
        except _ConnectTimeout:
            rs.close()
            raise connect_timed_out(host, port, connect_timeout) from None
        except BaseException:
            rs.close()  # interrupted by another exception (the proxy's timeout, a drain): do not leak it
            raise
        finally:
            timer.cancel()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        rs.close()
        raise connect_failed(host, port, err)
    rs.readable = False
    return rs


class _ConnectTimeout(Exception):
    pass
