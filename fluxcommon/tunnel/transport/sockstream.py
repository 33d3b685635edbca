"""`BulkSocketStream`: a trio stream over a TCP socket for bulk tunnel traffic (with
`send_parts` / `receive_into` for any stream, and `drain_datagrams`, the same idea for UDP).

trio's `SocketStream` goes back through the scheduler after every call that succeeded at
once (a full checkpoint: an epoll call and a reschedule). A tunnel moves each chunk through
three or four such calls per process, so at hundreds of MB/s those trips were a large share
of the CPU. This stream calls the socket directly and parks only when the kernel says it would
block; a call that succeeded honours cancellation, and every `YIELD_EVERY`-th one also yields,
so a task whose peer is always ready still lets the others run.

Errors are trio's: `BrokenResourceError` (with the `OSError` as its cause) when the connection
failed, `ClosedResourceError` after `aclose`. One receiver and one sender at a time, as with any
trio stream (concurrent waits on one socket raise `BusyResourceError` from trio).
"""

from __future__ import annotations

import errno
import operator
import socket
from collections.abc import Callable
from typing import Any

import trio

RECEIVE_SIZE = 256 * 1024
YIELD_EVERY = 16  # calls that did not park, between two schedule points
IOV_BATCH = 512  # buffers per sendmsg (the kernel takes at most IOV_MAX, 1024 on Linux)
UDP_BATCH = 64  # datagrams taken from a UDP socket per wake-up


def receive_size(max_bytes: int | None, default: int) -> int:
    """`receive_some`'s `max_bytes` checked as trio's streams do: None is `default`, else a
    positive integer (ValueError below 1, TypeError for a float)."""
    if max_bytes is None:
        return default
    size = operator.index(max_bytes)
    if size < 1:
        raise ValueError("max_bytes must be at least 1")
    return size


def drain_datagrams(sock: socket.socket, limit: int) -> list[tuple[bytes, Any]]:
    """Up to `limit` more (datagram, address) pairs already waiting on a non-blocking UDP socket."""
    got: list[tuple[bytes, Any]] = []
    try:
        while len(got) < limit:
            got.append(sock.recvfrom(65535))
    except OSError:  # BlockingIOError: nothing more now; other errors surface on the next wait
        pass
    return got


async def send_parts(stream: trio.abc.SendStream, parts: list[bytes | memoryview]) -> None:
    """Send `parts` as one piece: gathered by the stream's own `send_parts` when it has one
    (BulkSocketStream, TLSStream, PrefixedStream), else joined for its `send_all`."""
    own = getattr(stream, "send_parts", None)
    if own is not None:
        await own(parts)
    else:
        await stream.send_all(parts[0] if len(parts) == 1 else b"".join(parts))


async def receive_into(stream: trio.abc.ReceiveStream, buffer: bytearray | memoryview) -> int:
    """Receive into `buffer` (0 at end of stream): the stream's own `receive_into` when it has
    one, else its `receive_some` copied in."""
    own = getattr(stream, "receive_into", None)
    if own is not None:
        return int(await own(buffer))
    data = await stream.receive_some(len(buffer))
    memoryview(buffer)[: len(data)] = data
    return len(data)


class BulkSocketStream(trio.abc.HalfCloseableStream):
    """A connected TCP socket (stdlib, switched to non-blocking) as a trio stream."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        # the trio view of the same socket: addresses, options, and a close trio is told about
        self.socket = trio.socket.from_stdlib_socket(sock)
        self._calls = 0
        self._closed = False
        self._eof_sent = False
        self._sending = False  # a send-side call is parked (two at once: BusyResourceError, as in trio)

    @classmethod
    def adopt(cls, stream: trio.SocketStream | trio.socket.SocketType) -> BulkSocketStream:
        """Take over the socket of a trio stream or trio socket (which must not be used afterwards)."""
        tsock = stream.socket if isinstance(stream, trio.SocketStream) else stream
        return cls(socket.socket(fileno=tsock.detach()))

    # -- options, as trio.SocketStream offers them -------------------------------------------

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self._sock.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        return self._sock.getsockopt(level, option)

    # -- helpers -------------------------------------------------------------------------------

    async def _done(self) -> None:
        """After a call that did not park: a cancellation point, and now and then a schedule point."""
        self._calls += 1
        if self._calls >= YIELD_EVERY:
            self._calls = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("socket stream closed")

    def _check_send(self) -> None:
        self._check_open()
        if self._eof_sent:
            raise trio.ClosedResourceError("cannot send after send_eof")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")

    async def _wait_writable(self) -> None:
        """Park until the socket takes more (the send side marked busy meanwhile)."""
        self._sending = True
        try:
            await trio.lowlevel.wait_writable(self._sock)
        finally:
            self._sending = False
        self._check_open()

    def _broken(self, exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self._closed or exc.errno == errno.EBADF:
            return trio.ClosedResourceError("socket stream closed")
        return trio.BrokenResourceError(f"socket connection broken: {exc}")

    # -- trio.abc.HalfCloseableStream ---------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._receive(self._sock.recv, receive_size(max_bytes, RECEIVE_SIZE))

    async def receive_into(self, buffer: bytearray | memoryview) -> int:
        """`receive_some` into `buffer`: the byte count (0 at end of stream), no allocation."""
        return await self._receive(self._sock.recv_into, buffer)

    async def _receive(self, call: Callable[[Any], Any], arg: Any) -> Any:
        """`call(arg)` on the socket, parking until it is readable when it would block."""
        self._check_open()
        while True:
            try:
                result = call(arg)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
                self._calls = 0
                self._check_open()
                continue
            except OSError as exc:
                raise self._broken(exc) from exc
            await self._done()
            return result

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check_send()
        if type(data) is memoryview and data.itemsize != 1:
            data = data.cast("B")  # lengths below count bytes
        total = len(data)
        sent = 0
        parked = False
        view: memoryview | None = None
        while sent < total:
            try:
                if sent == 0:
                    sent = self._sock.send(data)
                else:
                    if view is None:
                        view = memoryview(data).cast("B")
                    sent += self._sock.send(view[sent:])
            except BlockingIOError:
                parked = True
                await self._wait_writable()
            except OSError as exc:
                raise self._broken(exc) from exc
        if parked:
            self._calls = 0
        else:
            await self._done()

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """`send_all` of the parts joined, without joining them: one `sendmsg` gathers them."""
        if len(parts) <= 1:
            await self.send_all(parts[0] if parts else b"")
            return
        self._check_send()
        parked = False
        pending = list(parts)
        while pending:
            batch = pending[:IOV_BATCH]
            try:
                n = self._sock.sendmsg(batch)
            except BlockingIOError:
                parked = True
                await self._wait_writable()
                continue
            except OSError as exc:
                raise self._broken(exc) from exc
            i = 0  # drop what was sent: whole parts, then the front of a partly sent one
            while i < len(batch) and n >= len(batch[i]):
                n -= len(batch[i])
                i += 1
            del pending[:i]
            if n:
                pending[0] = memoryview(pending[0]).cast("B")[n:]
        if parked:
            self._calls = 0
        else:
            await self._done()

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await self._wait_writable()

    async def send_eof(self) -> None:
        self._check_open()
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._eof_sent = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:  # the peer is gone already: nothing to tell it
                raise self._broken(exc) from exc
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.socket.close()  # tells trio first, so a task parked on the socket wakes
        await trio.lowlevel.checkpoint()
