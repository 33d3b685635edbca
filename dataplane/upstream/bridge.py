"""An in-memory byte stream between a reactor task and a trio task.

Upstream endpoints that are not host:port (a tunnel proxy: `tunnel:` addresses) are carried
by trio code (the agent's multiplexed connection, encryption, bandwidth limits), while the
proxy's upstream code runs on the reactor (`dataplane.reactor`). `bridge()` joins the two
without a socket: the reactor end looks like an `RSock` to the pool and the HTTP/1.1 and
HTTP/2 upstream codecs (recv / try_recv / send_all / try_send / still_usable / close), the
trio end is a `trio.abc.HalfCloseableStream` that the tunnel splices to the agent.

Both run in the one thread of the node's trio run: the reactor end wakes a trio task by
setting its `trio.Event`, the trio end wakes a reactor task by scheduling it (the reactor
pokes its own loop when it sleeps). Each direction buffers at most `limit` bytes; a writer
past that waits for the reader (backpressure both ways).

Ends of the stream: the trio end's `send_eof` or `aclose` is EOF for the reactor end (its
`recv` gives b"" once the buffer is read); the reactor end's `shutdown_write` is EOF for the
trio end's `receive_some`, and its `close` is that too and makes the trio end's `send_all`
raise `trio.BrokenResourceError`.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import trio

from dataplane.reactor import RECV_SIZE, _Park
from fluxcommon.tunnel.transport.sockstream import receive_size

if TYPE_CHECKING:
    from dataplane.reactor import Reactor, Task

LIMIT = 256 * 1024  # bytes buffered per direction before the writer waits


class _Pipe:
    __slots__ = (
        "limit", "reactor", "reactor_closed", "reactor_eof", "reader", "to_reactor", "to_trio", "trio_closed",
        "trio_eof", "trio_receiver", "trio_sender", "writer",
    )  # fmt: skip

    def __init__(self, reactor: Reactor, limit: int) -> None:
        self.reactor = reactor
        self.limit = limit
        self.to_trio = bytearray()
        self.to_reactor = bytearray()
        self.reactor_closed = False
        self.reactor_eof = False  # the reactor end half-closed: EOF for the trio end
        self.trio_closed = False
        self.trio_eof = False  # the trio end sent EOF (or closed): nothing more for the reactor end
        self.reader: Task | None = None  # a reactor task waiting for bytes
        self.writer: Task | None = None  # a reactor task waiting for room
        self.trio_receiver: trio.Event | None = None
        self.trio_sender: trio.Event | None = None

    def wake_reactor_reader(self) -> None:
        task = self.reader
        if task is not None:
            self.reader = None
            self.reactor._schedule(task)

    def wake_reactor_writer(self) -> None:
        task = self.writer
        if task is not None:
            self.writer = None
            self.reactor._schedule(task)

    def wake_trio_receiver(self) -> None:
        event = self.trio_receiver
        if event is not None:
            self.trio_receiver = None
            event.set()

    def wake_trio_sender(self) -> None:
        event = self.trio_sender
        if event is not None:
            self.trio_sender = None
            event.set()


def _take(buf: bytearray, size: int) -> bytes:
    if size >= len(buf):
        data = bytes(buf)
        buf.clear()
    else:
        data = bytes(buf[:size])
        del buf[:size]
    return data


class ReactorEnd(_Park):
    """The reactor's side: the subset of `RSock` the upstream pool and codecs use."""

    __slots__ = ("_pipe", "_want", "readable")

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._want = 0
        self.readable = False  # set by the pool on release; the end's own state is in the pipe

    # -- waiting (the reactor's `_Park` protocol) --------------------------------------

    def park(self, reactor: Reactor, task: Task) -> None:
        p = self._pipe
        if self._want == 1:
            if p.to_reactor or p.trio_eof or p.reactor_closed:
                reactor._schedule(task)
            else:
                p.reader = task
                task.parked = self
        else:
            if len(p.to_trio) < p.limit or p.trio_closed or p.reactor_closed:
                reactor._schedule(task)
            else:
                p.writer = task
                task.parked = self

    def unpark(self, task: Task) -> None:
        p = self._pipe
        if p.reader is task:
            p.reader = None
        if p.writer is task:
            p.writer = None

    def _wait(self, want: int) -> ReactorEnd:
        self._want = want
        return self

    # -- state --------------------------------------------------------------------------

    @property
    def hup(self) -> bool:
        """The other end is done: EOF (or a close) came from trio."""
        return self._pipe.trio_eof

    def quiet(self) -> bool:
        """Nothing (no bytes, no EOF) waits to be read: the pool may keep the connection idle."""
        p = self._pipe
        return not p.to_reactor and not p.trio_eof and not p.reactor_closed

    def still_usable(self) -> bool:
        return self.quiet()

    # -- I/O ----------------------------------------------------------------------------

    def try_recv(self, size: int = RECV_SIZE) -> bytes | None:
        p = self._pipe
        if p.reactor_closed:
            raise ConnectionAbortedError(errno.ECONNABORTED, "connection closed")
        if p.to_reactor:
            data = _take(p.to_reactor, size)
            if len(p.to_reactor) < p.limit:
                p.wake_trio_sender()
            return data
        return b"" if p.trio_eof else None

    async def recv(self, size: int = RECV_SIZE) -> bytes:
        """Up to `size` bytes; b"" at EOF."""
        while True:
            data = self.try_recv(size)
            if data is not None:
                return data
            await self._wait(1)

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """Take all of `data` when there is room (no await), else nothing."""
        p = self._pipe
        if p.reactor_closed:
            raise ConnectionAbortedError(errno.ECONNABORTED, "connection closed")
        if p.trio_closed or p.reactor_eof:
            raise BrokenPipeError(errno.EPIPE, "the connection is closed for sending")
        if len(p.to_trio) >= p.limit:
            return 0
        p.to_trio += data
        p.wake_trio_receiver()
        return len(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        while not self.try_send(data):
            await self._wait(2)

    def shutdown_write(self) -> None:
        """Half-close: EOF for the trio end once it read what was sent; receiving goes on."""
        p = self._pipe
        if p.reactor_closed:
            raise ConnectionAbortedError(errno.ECONNABORTED, "connection closed")
        p.reactor_eof = True
        p.wake_trio_receiver()

    def close(self) -> None:
        p = self._pipe
        if p.reactor_closed:
            return
        p.reactor_closed = True
        p.to_reactor.clear()
        for task in (p.reader, p.writer):
            if task is not None:
                p.reactor.throw(task, ConnectionAbortedError("connection closed"))
        p.reader = p.writer = None
        p.wake_trio_receiver()  # EOF for the trio end
        p.wake_trio_sender()


class TrioEnd(trio.abc.HalfCloseableStream):
    """The trio side of the bridge. One receiver and one sender at a time, as with any trio
    stream: a second one waiting at once gets `trio.BusyResourceError`."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._receiving = False
        self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = receive_size(max_bytes, RECV_SIZE)
        p = self._pipe
        while True:
            if p.trio_closed:
                raise trio.ClosedResourceError("the stream is closed")
            if p.to_trio:
                data = _take(p.to_trio, size)
                if len(p.to_trio) < p.limit:
                    p.wake_reactor_writer()
                await trio.lowlevel.checkpoint()
                return data
            if p.reactor_closed or p.reactor_eof:
                await trio.lowlevel.checkpoint()
                return b""
            if self._receiving:
                raise trio.BusyResourceError("another task is receiving on this stream")
            event = p.trio_receiver = trio.Event()
            self._receiving = True
            try:
                await event.wait()
            finally:
                self._receiving = False

    async def _wait_for_room(self) -> None:
        """Park until the reactor end reads (or either end closes); the send side is busy meanwhile."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        event = self._pipe.trio_sender = trio.Event()
        self._sending = True
        try:
            await event.wait()
        finally:
            self._sending = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        p = self._pipe
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        while True:
            if p.trio_closed or p.trio_eof:
                raise trio.ClosedResourceError("the stream is closed for sending")
            if p.reactor_closed:
                raise trio.BrokenResourceError("the proxy closed the connection")
            if len(p.to_reactor) < p.limit:
                break
            await self._wait_for_room()
        p.to_reactor += data
        p.wake_reactor_reader()
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        p = self._pipe
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        while len(p.to_reactor) >= p.limit and not (p.reactor_closed or p.trio_closed):
            await self._wait_for_room()
        if p.trio_closed:
            raise trio.ClosedResourceError("the stream is closed")
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        p = self._pipe
        if p.trio_closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        p.trio_eof = True
        p.wake_reactor_reader()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        p = self._pipe
        if not p.trio_closed:
            p.trio_closed = p.trio_eof = True
            p.to_trio.clear()
            p.wake_reactor_reader()
            p.wake_reactor_writer()
            p.wake_trio_receiver()
            p.wake_trio_sender()
        await trio.lowlevel.checkpoint()


def bridge(reactor: Reactor, limit: int = LIMIT) -> tuple[ReactorEnd, TrioEnd]:
    """A connected pair: bytes sent on one end are received on the other."""
    pipe = _Pipe(reactor, limit)
    return ReactorEnd(pipe), TrioEnd(pipe)
