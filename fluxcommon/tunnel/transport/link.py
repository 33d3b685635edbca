"""The trio shell around one tunnel connection: a `Mux` and a session driven over a stream.

`TunnelLink` owns three tasks: the reader feeds received bytes to the mux and the session
and dispatches what they produce; the writer flushes `mux.parts_to_send()` whenever
something is queued; the ticker calls `session.tick` at its deadlines (heartbeats, login and
peer timeouts). Streams are `TunnelStream` objects, trio `HalfCloseableStream`s, so the
node and the agent pipe them to sockets with the same code they use for sockets.

Bulk data is copied as little as Python allows: a stream that finds the connection free sends
inline from its own task; the mux's pieces (frame headers, views of the callers' chunks) go to
the transport's `send_parts` when it has one (`TLSStream` writes them record by record,
`BulkSocketStream` gathers them with one sendmsg), and the reader decrypts or receives into a
buffer it keeps (`receive_into`), from which the frame decoder copies each payload once.

Flow control is the mux's: `TunnelStream.send_all` blocks while the stream's send buffer is
full (the peer has not granted more window), and `receive_some` grants credit back as the
application reads. A slow reader stalls its own stream only.

Events the link does not handle itself (session events such as `ProxyRequested`,
`WorkStreamOpened`, UDP packets, GOAWAY) go to the `on_event` callback of the driver, which
must not block: it may start tasks in a nursery of its own.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import trio

from fluxcommon.tunnel.protocol.control import (
    PeerTimedOut,
    SessionEvent,
    VisitorStreamOpened,
    WorkStreamOpened,
)
from fluxcommon.tunnel.protocol.frames import ProtocolError
from fluxcommon.tunnel.protocol.mux import (
    Data,
    Mux,
    ResetCode,
    StreamAccepted,
    StreamEnded,
    StreamError,
    StreamReset,
    WindowUpdated,
)
from fluxcommon.tunnel.transport.gate import SendGate
from fluxcommon.tunnel.transport.readbuffer import ReadBuffer
from fluxcommon.tunnel.transport.sockstream import receive_into, send_parts

log = logging.getLogger("flux.tunnel.link")

WRITE_BUDGET = 512 * 1024
# SO_SNDBUF for the sockets tunnel bulk data crosses: fewer, larger sends (~10% less CPU per MB).
# Linux autotuning grows a busy send buffer to tcp_wmem's maximum (4 MiB by default) anyway: this skips the ramp.
SEND_BUFFER = 4 << 20


def error_text(exc: BaseException) -> str:
    """What went wrong, for people: trio's BrokenResourceError often says nothing, its cause
    (an SSLError such as a failed certificate check) does."""
    return str(exc) or str(exc.__cause__ or exc.__context__ or "") or type(exc).__name__


class Session(Protocol):
    def handle_event(self, event: Any, now: float) -> list[Any]: ...
    def tick(self, now: float) -> list[Any]: ...
    def next_deadline(self) -> float | None: ...


class TunnelStream(trio.abc.HalfCloseableStream):
    """One multiplexed stream of a `TunnelLink`."""

    def __init__(self, link: TunnelLink, stream_id: int, meta: dict[str, Any]) -> None:
        self.link = link
        self.id = stream_id
        self.meta = meta
        self.bytes_in = 0
        self.bytes_out = 0
        self._chunks: deque[bytes] = deque()  # received, not yet read (whole frames: no copies)
        self._buffered = 0
        self._eof = False
        self._broken: str | None = None
        self._sent_eof = False
        self._closed = False
        self._readable = trio.Event()
        self._accepted = trio.Event()
        self.reset_code: int | None = None

    # -- fed by the link -------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._closed:  # the application is gone: take the data and grant the window back
            self.link.mux.consumed(self.id, len(data))
            return
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            self._readable.set()

    def _end(self) -> None:
        self._eof = True
        self._readable.set()

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self._readable.set()
        self._accepted.set()

    @property
    def reset_reason(self) -> str | None:
        return self._broken

    async def wait_accepted(self) -> None:
        """Until the peer accepted the stream we opened (OPEN_ACK); BrokenResourceError if refused."""
        await self._accepted.wait()
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    def accept(self) -> None:
        """Accept a stream the peer opened (sends OPEN_ACK)."""
        self.link.mux.accept(self.id)
        self.link.wake()

    # -- trio stream API -------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        parts = await self.receive_parts(max_bytes)
        return parts[0] if len(parts) == 1 else b"".join(parts)  # b"" at the end of stream

    async def receive_parts(self, max_bytes: int | None = None) -> list[bytes]:
        """`receive_some` as the received frames it would join (at most `max_bytes` in all; the
        first frame is cut when it alone is larger; none at the end of stream): a socket's
        `send_parts` gathers them."""
        while not self._buffered:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            if self._broken is not None and not self._eof:
                raise trio.BrokenResourceError(self._broken)
            if self._eof:
                await trio.lowlevel.checkpoint()
                return []
            self._readable = trio.Event()
            await self._readable.wait()
        chunks = self._chunks
        first = chunks[0]
        if max_bytes is None:
            parts = [chunks.popleft()]  # one whole frame, handed over as it is
            n = len(parts[0])
        elif len(first) <= max_bytes:
            parts, n = [chunks.popleft()], len(first)  # whole frames while they fit
            while chunks and n + len(chunks[0]) <= max_bytes:
                n += len(chunks[0])
                parts.append(chunks.popleft())
        else:
            parts, chunks[0], n = [first[:max_bytes]], first[max_bytes:], max_bytes
        self._buffered -= n
        self.bytes_in += n
        mux = self.link.mux
        try:
            mux.consumed(self.id, n)
        except StreamError:
            pass
        if mux.has_output:  # a window update is due: the writer sends it
            self.link.wake()
        # Cancellation is honoured; the schedule point comes with the caller's next send, as
        # with TLSStream: a yield per chunk here was a trip through trio's scheduler per frame.
        await trio.lowlevel.checkpoint_if_cancelled()
        return parts

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if view.itemsize != 1:
            view = view.cast("B")  # lengths count bytes
        mux = self.link.mux
        sent_inline = False  # a send on the connection happened in this call (a checkpoint)
        while view:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            if self._sent_eof:
                raise trio.ClosedResourceError("stream already half-closed for sending")
            if self._broken is not None:
                raise trio.BrokenResourceError(self._broken)
            try:
                n = mux.send(self.id, view)  # a view of bytes is kept as it is (no copy)
            except StreamError as exc:
                self._break(str(exc))
                raise trio.BrokenResourceError(str(exc)) from None
            if n:
                self.bytes_out += n
                view = view[n:]
                if await self.link.flush_inline():
                    sent_inline = True
                    continue  # the flush emptied the stream's buffer: room for the rest at once
                self.link.wake()
            if view:
                await self.link.wait_progress()  # window or buffer room, granted or freed by the writer
        if sent_inline:
            await trio.lowlevel.checkpoint_if_cancelled()  # the inline sends were shielded
        else:
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        while not self._broken and not self._closed and self.link.mux.writable(self.id) == 0:
            await self.link.wait_progress()

    async def send_eof(self) -> None:
        if not self._sent_eof and not self._closed:
            self._sent_eof = True
            self.link.mux.close(self.id)
            self.link.wake()
        await trio.lowlevel.checkpoint()

    def reset(self, reason: str = "", code: int = ResetCode.CANCEL) -> None:
        """Abort the stream both ways."""
        if not self._closed:
            self._closed = True
            self.link.mux.reset(self.id, reason, code)
            self.link.forget(self.id)
            self.link.wake()
            self._readable.set()

    async def aclose(self) -> None:
        """Close: a FIN after what was sent when the peer has finished too; a reset while it may still send."""
        if not self._closed:
            if self._broken is None and not self._eof:
                # Nobody will read what the peer still sends: a reset tells it at once (also after our
                # own FIN, else a peer reading an endless local service would feed a dead stream for ever).
                self.link.mux.reset(self.id, "closed", ResetCode.CANCEL)
                self.link.forget(self.id)
            else:
                self.link.mux.close(self.id)
                if self._buffered:
                    self.link.mux.consumed(self.id, self._buffered)
                    self._chunks.clear()
                    self._buffered = 0
                if self._eof or self._broken is not None:
                    self.link.forget(self.id)
            self._closed = True
            self._readable.set()
            self.link.wake()
        await trio.lowlevel.checkpoint()


class TunnelLink:
    """Drives one tunnel connection; see the module docstring."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        mux: Mux,
        session: Session,
        on_event: Callable[[SessionEvent, TunnelStream | None], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.mux = mux
        self.session = session
        self.on_event = on_event
        self.clock = clock
        self.streams: dict[int, TunnelStream] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed_reason: str | None = None
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._cancel: trio.CancelScope | None = None
        # One sender at a time on the transport: the writer, or the last flush in run() (a second
        # concurrent send_all raises BusyResourceError). Held from taking bytes off the mux to
        # having sent them, so chunks never overtake each other. A gate, not a trio.Lock: taking
        # it when free costs no trip through the scheduler.
        self._send_lock = SendGate()

    # -- used by streams and drivers ---------------------------------------------------------

    def wake(self) -> None:
        """Something was queued on the mux: let the writer flush it."""
        self._wake.set()

    async def wait_progress(self) -> None:
        """Until bytes were written or the peer granted window (or the link closed)."""
        if self.closed_reason is not None:
            await trio.lowlevel.checkpoint()
            return
        await self._progress.wait()

    async def flush_inline(self) -> bool:
        """Send what the mux holds from the calling task, when no one else is sending.

        A stream's `send_all` calls this instead of waking the writer task: the bytes go out
        one task switch sooner, and the writer stays parked. False when it sent nothing: the
        writer or another stream holds the gate (the caller then wakes the writer), or nothing
        may go yet (no window). A failed send wakes the writer too, so the link sees the
        failure and closes, whoever sent.
        """
        if self.closed_reason is not None or not self._send_lock.try_acquire():
            return False
        try:
            # Shielded: the connection is shared by every stream, and a send cancelled halfway
            # (the caller's pipe cancelled while the socket is full) would cut a frame and break
            # all of them. The send still ends when the link closes its transport.
            with trio.CancelScope(shield=True):
                sent = await self._send_queued()
        except BaseException:
            self.wake()
            raise
        finally:
            self._send_lock.release()
        if sent:
            self._set_progress()
        return sent

    async def _send_queued(self) -> bool:
        """Send everything the mux has for the connection (the send gate held); whether it sent."""
        sent = False
        while parts := self.mux.parts_to_send(WRITE_BUDGET):
            self.bytes_out += await self._send_parts(parts)
            sent = True
        return sent

    async def _send_parts(self, parts: list[bytes | memoryview]) -> int:
        """Send the pieces `mux.parts_to_send` gave (gathered by the transport when it can)."""
        await send_parts(self.transport, parts)
        return sum(map(len, parts))

    def _set_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)

    def open_stream(self, opener: Callable[[], int], meta: dict[str, Any]) -> TunnelStream:
        """Open a stream with `opener()` (a session or mux call that returns its id)."""
        if self.closed_reason is not None:
            raise trio.BrokenResourceError(self.closed_reason)
        stream_id = opener()
        stream = self.streams[stream_id] = TunnelStream(self, stream_id, meta)
        self.wake()
        return stream

    def close(self, reason: str, code: int = ResetCode.CANCEL) -> None:
        """Say GOAWAY and stop the link after a last flush."""
        if self.closed_reason is None:
            try:
                self.mux.go_away(reason, code)
            except StreamError:
                pass
            self.wake()
            self.closed_reason = reason
            if self._cancel is not None:
                self._cancel.deadline = min(self._cancel.deadline, trio.current_time() + 1.0)

    # -- the tasks ---------------------------------------------------------------------------

    async def run(self) -> str:
        """Run until the connection ends; returns why. Every stream is broken afterwards."""
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._writer)
                nursery.start_soon(self._ticker)
                reason = await self._reader()
                self.closed_reason = self.closed_reason or reason
                # give the writer a moment to flush a GOAWAY or a last answer
                nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline, trio.current_time() + 1.0)
                await self._flushed()
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            # (except*: the nursery wraps a failed send of the writer in an ExceptionGroup)
            exc: BaseException = group
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            self.closed_reason = self.closed_reason or f"connection lost: {error_text(exc)}"
        finally:
            reason = self.closed_reason or "closed"
            self.closed_reason = reason
            for stream in list(self.streams.values()):
                stream._break(f"tunnel connection closed: {reason}")
            self.streams.clear()
            self._progress.set()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await self.transport.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        return reason

    async def _flushed(self) -> None:
        async with self._send_lock:
            await self._send_queued()

    async def _reader(self) -> str:
        mux, session = self.mux, self.session
        # Read into a buffer kept between reads (TLSStream decrypts into it, a socket stream
        # receives into it): the frame decoder copies each payload out once.
        buf = ReadBuffer()
        while True:
            try:
                data = buf.view[: await receive_into(self.transport, buf.view)]
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                return f"connection lost: {error_text(exc)}"
            if not data:
                return self.closed_reason or "peer closed the connection"
            self.bytes_in += len(data)
            now = self.clock()
            try:
                for event in mux.receive_data(data):
                    for out in session.handle_event(event, now):
                        self._dispatch(out)
            except ProtocolError as exc:
                log.warning("tunnel protocol error: %s", exc)
                self.wake()
                return f"protocol error: {exc}"
            buf.record(len(data))
            if self.closed_reason is not None:
                return self.closed_reason
            if mux.has_output:  # answers (PONG, OPEN_ACK, RESET...) and data a window update let go
                self.wake()

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, Data):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.mux.consumed(event.stream_id, len(event.data))
                self.mux.reset(event.stream_id, "no reader", ResetCode.CANCEL)
            else:
                stream._feed(event.data)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._end()
                if stream._closed or stream._sent_eof:
                    self.forget(event.stream_id)
        elif isinstance(event, StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.reset_code = event.code
                stream._break(f"reset by peer ({ResetCode(event.code).name.lower()}): {event.reason}")
            self._set_progress()
        elif isinstance(event, StreamAccepted):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._accepted.set()
            self._set_progress()
        elif isinstance(event, WindowUpdated):
            self._set_progress()
        elif isinstance(event, WorkStreamOpened | VisitorStreamOpened):
            stream = self.streams[event.stream_id] = TunnelStream(self, event.stream_id, event.meta)
            self.on_event(event, stream)
        elif isinstance(event, PeerTimedOut):
            self.on_event(event, None)
            self.close(event.reason)
        else:
            self.on_event(event, None)

    async def _writer(self) -> None:
        mux = self.mux
        while True:
            async with self._send_lock:
                parts = mux.parts_to_send(WRITE_BUDGET)
                if parts:
                    self.bytes_out += await self._send_parts(parts)
            if not parts:
                self._set_progress()
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            self._set_progress()

    async def _ticker(self) -> None:
        while True:
            deadline = self.session.next_deadline()
            now = self.clock()
            delay = 1.0 if deadline is None else min(1.0, max(0.0, deadline - now))
            await trio.sleep(delay)
            for out in self.session.tick(self.clock()):
                self._dispatch(out)
            self.wake()
