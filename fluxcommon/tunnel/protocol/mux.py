"""Sans-IO stream multiplexer for one tunnel connection, with per-stream flow control.

`Mux` owns the stream table of one connection between an agent and a node: it turns received
bytes into events (`receive_data`) and queued application actions into bytes
(`data_to_send`). Both ends use the same class; the role decides stream-id parity (the client,
who dialed, opens odd ids; the server even ids), so either end may open streams. It knows
nothing of sockets, clocks or what the control messages mean (`control` does).

Theory of operation
===================

Streams. ``open_stream(meta)`` queues an OPEN and returns the new id; data may follow at once
(no round trip: the peer's initial window is known). The peer sees `StreamOpened` and may
``accept`` it (OPEN_ACK -> `StreamAccepted` at the opener; optional, informational) or
``reset`` it. Each direction closes on its own: ``close`` queues a FIN after the buffered
data (`StreamEnded` at the peer); a stream is forgotten once FIN went both ways. ``reset``
drops the stream at once in both directions (`StreamReset` at the peer) and discards its
unsent data.

Flow control. Every stream starts with `initial_window` bytes of credit in each direction;
the value is part of the protocol and both ends must use the same one. The sender never
frames more DATA than the credit the peer granted; a peer that sends beyond the credit we
granted is a `ProtocolError`. The application reports what it has read with
``consumed(stream_id, n)``; once at least half a window is consumed the mux grants it back
with one WINDOW_UPDATE. So a stream whose reader stalls stops only itself: its sender keeps
at most one window in flight and at most `stream_buffer` bytes queued, and every other
stream keeps flowing.

Backpressure. ``send`` takes what fits in the stream's buffer (`stream_buffer`) and in the
connection's budget of queued bytes (`max_buffered`) and returns how many bytes it took;
the caller keeps the rest and retries after the next ``data_to_send`` (``writable`` says how
much would fit). Received data is bounded by `max_streams` x `initial_window` (1 GiB at the defaults,
reached only when every stream's reader stalls; in practice a stream holds what its reader is behind).

Output. ``data_to_send(max_bytes)`` returns control frames first (OPEN, OPEN_ACK, RESET,
WINDOW_UPDATE, PING/PONG, CONTROL, GOAWAY, in the order they were queued), then UDP packets,
then DATA and FIN frames round-robin over the streams that may send, one chunk of at most
`max_frame_data` bytes per stream per round, so no stream can starve the others.
`max_bytes` is a soft limit (whole control frames are never split) that lets the driver pull
only what its socket takes and leave the rest queued here, where backpressure works.

Rules for odd frames
====================

- A frame for a stream id this end never saw opened (the peer's parity above the highest
  OPEN received, or our parity never allocated) is a `ProtocolError`.
- A frame for a stream that was open and is gone (reset, or closed both ways) is dropped:
  it may have crossed our RESET on the wire.
- OPEN must use the peer's parity and a strictly higher id than its previous OPEN. An OPEN
  beyond `max_streams`, or after GOAWAY either way, is refused with RESET(REFUSED); no event.
- DATA or FIN after the peer's FIN, a second OPEN_ACK, an OPEN_ACK for a stream the peer
  opened, or a window above 2**31-1 is a `ProtocolError`.
- Answers the peer provokes (PONG, RESET of refused streams) are bounded: if more than
  `max_control_backlog` bytes of them wait unsent the peer is not reading, which is a
  `ProtocolError`.

After a `ProtocolError` the mux is failed: `receive_data` raises it again, and
``data_to_send`` returns one GOAWAY(PROTOCOL) frame carrying the message, for the driver to
send before it closes the connection. Misuse by the local application (sending on a closed
stream, too many streams) raises `StreamError` and changes nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

from fluxcommon.tunnel.protocol.frames import (
    HEADER_SIZE,
    MAX_INCREMENT,
    MAX_STREAM_ID,
    ControlFrame,
    DataFrame,
    FinFrame,
    FrameDecoder,
    GoAwayFrame,
    OpenAckFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    ProtocolError,
    ResetFrame,
    UdpPacketFrame,
    WindowUpdateFrame,
    data_header,
    encode_frame,
)

Role = Literal["client", "server"]

INITIAL_WINDOW = 1024 * 1024  # 256 KiB held a stream to ~450 MB/s on loopback; 1 MiB doubles it
MAX_STREAMS = 1024
STREAM_BUFFER = 256 * 1024
MAX_BUFFERED = 16 * 1024 * 1024
MAX_FRAME_DATA = 16 * 1024
MAX_CONTROL_BACKLOG = 1024 * 1024
MAX_UDP_BACKLOG = 1024 * 1024


class ResetCode(IntEnum):
    """Codes carried by RESET and GOAWAY frames."""

    CANCEL = 0  # the application gave up on the stream (or NO_ERROR for GOAWAY)
    REFUSED = 1  # the receiver would not take the stream: limit reached, going away, unknown proxy
    CONNECT_FAILED = 2  # the agent could not reach the local service
    PROTOCOL = 3  # the peer broke the protocol
    INTERNAL = 4  # an error on the sending side


class StreamError(Exception):
    """The local application misused the mux (e.g. sent on a closed stream); nothing changed."""


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream_id: int
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    stream_id: int


@dataclass(frozen=True, slots=True)
class Data:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (FIN): no more data will arrive on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """The peer granted more credit; `window` is what we may now send on the stream."""

    stream_id: int
    window: int


@dataclass(frozen=True, slots=True)
class ControlMessage:
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer pinged; the PONG is already queued."""

    opaque: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    opaque: bytes


@dataclass(frozen=True, slots=True)
class UdpPacket:
    proxy: str
    peer: str
    data: bytes


@dataclass(frozen=True, slots=True)
class GoAway:
    code: int
    reason: str


Event = (
    StreamOpened
    | StreamAccepted
    | Data
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | ControlMessage
    | Ping
    | Pong
    | UdpPacket
    | GoAway
)


# -- the multiplexer -----------------------------------------------------------------------


class _Chunks:
    """Bytes taken by `send`, not yet framed: a queue of the callers' chunks, so framing slices
    views of them and the output is joined once (no copy per frame, no memmove of the rest)."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: deque[bytes | memoryview] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, data: bytes | memoryview) -> None:
        self.parts.append(data)
        self.size += len(data)

    def take(self, n: int, into: list[bytes | memoryview]) -> None:
        """Move the first `n` bytes (n <= size) to `into`, as whole chunks or views of one."""
        self.size -= n
        parts = self.parts
        while n:
            first = parts[0]
            if len(first) <= n:
                into.append(parts.popleft())
                n -= len(first)
            else:
                view = first if isinstance(first, memoryview) else memoryview(first)
                into.append(view[:n])
                parts[0] = view[n:]
                n = 0

    def clear(self) -> None:
        self.parts.clear()
        self.size = 0


@dataclass(slots=True)
class _Stream:
    id: int
    local: bool  # opened by this end
    send_window: int  # bytes the peer still lets us send
    recv_window: int  # bytes the peer may still send before we grant more
    pending: _Chunks = field(default_factory=_Chunks)  # taken by send(), not yet framed
    unconsumed: int = 0  # delivered to the application, not yet consumed
    credit: int = 0  # consumed, not yet granted back
    local_closed: bool = False  # close() called; FIN follows the pending data
    fin_sent: bool = False
    remote_closed: bool = False  # FIN received
    acked: bool = False  # OPEN_ACK sent (peer-opened) or received (local)
    scheduled: bool = False  # in the round-robin queue


class Mux:
    """One tunnel connection's streams; see the module docstring for the rules."""

    def __init__(
        self,
        role: Role,
        *,
        initial_window: int = INITIAL_WINDOW,
        max_streams: int = MAX_STREAMS,
        stream_buffer: int = STREAM_BUFFER,
        max_buffered: int = MAX_BUFFERED,
        max_frame_data: int = MAX_FRAME_DATA,
        max_control_backlog: int = MAX_CONTROL_BACKLOG,
        max_udp_backlog: int = MAX_UDP_BACKLOG,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        if not 1 <= initial_window <= MAX_INCREMENT:
            raise ValueError("initial_window out of range")
        if not 1 <= max_frame_data <= 64 * 1024:
            raise ValueError("max_frame_data must be 1..65536")
        self.role = role
        self.initial_window = initial_window
        self.max_streams = max_streams
        self.stream_buffer = stream_buffer
        self.max_buffered = max_buffered
        self.max_frame_data = max_frame_data
        self.max_control_backlog = max_control_backlog
        self.max_udp_backlog = max_udp_backlog
        self._decoder = FrameDecoder()
        self._streams: dict[int, _Stream] = {}
        self._local_parity = 1 if role == "client" else 0
        self._next_id = 1 if role == "client" else 2
        self._peer_last_id = 0
        self._control: deque[bytes] = deque()
        self._control_bytes = 0
        self._udp: deque[bytes] = deque()
        self._udp_bytes = 0
        self._grants: dict[int, int] = {}
        self._ready: deque[int] = deque()
        self._buffered = 0
        self._grant_threshold = max(1, initial_window // 2)
        self.goaway_sent = False
        self.goaway_received = False
        self._error: ProtocolError | None = None
        self.udp_dropped = 0

    # -- introspection ---------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        """Whether `data_to_send` may have something (grants, control, UDP or streams queued)."""
        return bool(self._grants or self._control or self._udp or self._ready)

    @property
    def stream_ids(self) -> list[int]:
        return list(self._streams)

    @property
    def buffered_total(self) -> int:
        """Bytes taken by `send` on all streams and not yet framed."""
        return self._buffered

    @property
    def failed(self) -> ProtocolError | None:
        return self._error

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        """Credit the peer granted on the stream and we have not used (0 if gone)."""
        s = self._streams.get(stream_id)
        return s.send_window if s else 0

    def recv_window(self, stream_id: int) -> int:
        """Bytes the peer may still send on the stream before we grant more (0 if gone)."""
        s = self._streams.get(stream_id)
        return s.recv_window if s else 0

    def buffered(self, stream_id: int) -> int:
        s = self._streams.get(stream_id)
        return len(s.pending) if s else 0

    def writable(self, stream_id: int) -> int:
        """How many bytes `send` would take on the stream right now (0 if closed)."""
        s = self._streams.get(stream_id)
        if s is None or s.local_closed:
            return 0
        return max(0, min(self.stream_buffer - len(s.pending), self.max_buffered - self._buffered))

    # -- local actions ---------------------------------------------------------------------

    def open_stream(self, meta: dict[str, Any]) -> int:
        """Queue an OPEN carrying `meta` (a JSON object) and return the new stream's id."""
        self._check_usable()
        if self.goaway_sent or self.goaway_received:
            raise StreamError("the connection is going away; no new streams")
        if len(self._streams) >= self.max_streams:
            raise StreamError(f"too many streams (limit {self.max_streams})")
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise StreamError("stream ids exhausted on this connection")
        frame = encode_frame(OpenFrame(stream_id, meta))  # ValueError for bad meta, nothing changed
        self._next_id += 2
        self._streams[stream_id] = _Stream(stream_id, True, self.initial_window, self.initial_window)
        self._queue(frame)
        return stream_id

    def accept(self, stream_id: int) -> None:
        """Queue an OPEN_ACK for a stream the peer opened. No-op on a gone stream."""
        s = self._streams.get(stream_id)
        if s is None or self._error:
            return
        if s.local:
            raise StreamError(f"stream {stream_id} was opened by this end")
        if not s.acked:
            s.acked = True
            self._queue(encode_frame(OpenAckFrame(stream_id)))

    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue stream data; returns how many leading bytes of `data` were taken."""
        s = self._live(stream_id)
        if s.local_closed:
            raise StreamError(f"stream {stream_id} is closed for sending")
        if type(data) is memoryview and data.itemsize != 1:
            data = data.cast("B")  # lengths count bytes
        room = min(self.stream_buffer - len(s.pending), self.max_buffered - self._buffered)
        n = max(0, min(len(data), room))
        if n:
            # bytes, and views of bytes, are kept as they are (immutable); anything else is copied,
            # as the caller may reuse it
            if type(data) is bytes or (type(data) is memoryview and type(data.obj) is bytes and data.contiguous):
                s.pending.append(data if n == len(data) else data[:n])
            else:
                s.pending.append(bytes(data[:n]))
            self._buffered += n
            self._schedule(s)
        return n

    def close(self, stream_id: int) -> None:
        """Half-close: a FIN follows the data already taken. Idempotent; no-op on a gone stream."""
        s = self._streams.get(stream_id)
        if s is None or s.local_closed or self._error:
            return
        s.local_closed = True
        self._schedule(s)

    def reset(self, stream_id: int, reason: str = "", code: int = ResetCode.CANCEL) -> None:
        """Abort the stream both ways, discarding unsent data. No-op on a gone stream."""
        s = self._streams.get(stream_id)
        if s is None or self._error:
            return
        frame = encode_frame(ResetFrame(stream_id, int(code), reason))
        self._remove(s)
        self._queue(frame)

    def consumed(self, stream_id: int, n: int) -> None:
        """The application has read `n` more bytes of the stream's data; grant credit back."""
        s = self._streams.get(stream_id)
        if s is None:
            return
        if not 0 <= n <= s.unconsumed:
            raise StreamError(f"consumed({n}) on stream {stream_id} with {s.unconsumed} bytes unread")
        s.unconsumed -= n
        if s.remote_closed:
            return  # no more data will come; no credit needed
        s.credit += n
        if s.credit >= self._grant_threshold:
            s.recv_window += s.credit
            self._grants[stream_id] = self._grants.get(stream_id, 0) + s.credit
            s.credit = 0

    def send_control(self, message: dict[str, Any]) -> None:
        """Queue one control message (a JSON object, see `control`)."""
        self._check_usable()
        self._queue(encode_frame(ControlFrame(message)))

    def send_udp(self, proxy: str, peer: str, data: bytes) -> bool:
        """Queue a datagram; False (and counted in `udp_dropped`) if the UDP backlog is full."""
        self._check_usable()
        frame = encode_frame(UdpPacketFrame(proxy, peer, data))
        if self._udp_bytes + len(frame) > self.max_udp_backlog:
            self.udp_dropped += 1
            return False
        self._udp.append(frame)
        self._udp_bytes += len(frame)
        return True

    def ping(self, opaque: bytes) -> None:
        """Queue a PING with 8 opaque bytes; the peer answers with a PONG carrying them."""
        self._check_usable()
        self._queue(encode_frame(PingFrame(opaque)))

    def go_away(self, reason: str = "", code: int = ResetCode.CANCEL) -> None:
        """Announce shutdown: no new streams either way; open streams may finish."""
        self._check_usable()
        if not self.goaway_sent:
            self.goaway_sent = True
            self._queue(encode_frame(GoAwayFrame(int(code), reason)))

    # -- output ----------------------------------------------------------------------------

    def data_to_send(self, max_bytes: int | None = None) -> bytes:
        """Bytes to write to the connection now (empty if nothing is due)."""
        parts = self.parts_to_send(max_bytes)
        return parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)

    def parts_to_send(self, max_bytes: int | None = None) -> list[bytes | memoryview]:
        """`data_to_send` as the pieces it would join (frame headers, views of the callers'
        chunks), for a transport that writes them without joining (sendmsg, TLS records)."""
        budget = float("inf") if max_bytes is None else max(max_bytes, HEADER_SIZE + 1)
        out: list[bytes | memoryview] = []
        size = 0
        if self._grants:
            for stream_id, increment in self._grants.items():
                if stream_id in self._streams:
                    self._queue(encode_frame(WindowUpdateFrame(stream_id, increment)))
            self._grants.clear()
        for queue in (self._control, self._udp):
            while queue and (not size or size + len(queue[0]) <= budget):
                frame = queue.popleft()
                out.append(frame)
                size += len(frame)
                if queue is self._control:
                    self._control_bytes -= len(frame)
                else:
                    self._udp_bytes -= len(frame)
            if queue:
                return out
        ready = self._ready
        streams = self._streams
        while ready:
            room = budget - size
            if room <= HEADER_SIZE:
                break
            stream_id = ready.popleft()
            s = streams.get(stream_id)
            if s is None:
                continue
            s.scheduled = False
            if s.pending and s.send_window > 0:
                n = int(min(len(s.pending), s.send_window, self.max_frame_data, room - HEADER_SIZE))
                out.append(data_header(stream_id, n))
                s.pending.take(n, out)
                size += HEADER_SIZE + n
                s.send_window -= n
                self._buffered -= n
            if s.local_closed and not s.pending and not s.fin_sent:
                if size + HEADER_SIZE > budget:
                    s.scheduled = True
                    ready.appendleft(stream_id)
                    break
                fin = encode_frame(FinFrame(stream_id))
                out.append(fin)
                size += len(fin)
                s.fin_sent = True
                if s.remote_closed:
                    self._remove(s)
                continue
            self._schedule(s)
        return out

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview) -> list[Event]:
        """Feed received bytes; returns the events they complete. Raises `ProtocolError` only."""
        if self._error is not None:
            raise self._error
        events: list[Event] = []
        try:
            for frame in self._decoder.receive_data(data):
                self._handle(frame, events)
        except ProtocolError as exc:
            self._fail(exc)
            raise
        return events

    def _handle(self, frame: object, events: list[Event]) -> None:
        match frame:
            case DataFrame(stream_id, payload):
                s = self._existing(stream_id, "DATA")
                if s is None:
                    return
                if s.remote_closed:
                    raise ProtocolError(f"DATA on stream {stream_id} after its FIN")
                if len(payload) > s.recv_window:
                    raise ProtocolError(
                        f"flow control: {len(payload)} bytes on stream {stream_id} "
                        f"with only {s.recv_window} bytes of window granted"
                    )
                s.recv_window -= len(payload)
                s.unconsumed += len(payload)
                events.append(Data(stream_id, payload))
            case OpenFrame(stream_id, meta):
                if stream_id % 2 == self._local_parity:
                    raise ProtocolError(f"peer opened stream {stream_id}, an id of this end's parity")
                if stream_id <= self._peer_last_id:
                    raise ProtocolError(f"OPEN of stream {stream_id} after stream {self._peer_last_id}")
                self._peer_last_id = stream_id
                if self.goaway_sent or self.goaway_received or len(self._streams) >= self.max_streams:
                    why = "going away" if self.goaway_sent or self.goaway_received else "too many streams"
                    self._queue_answer(encode_frame(ResetFrame(stream_id, ResetCode.REFUSED, why)))
                    return
                self._streams[stream_id] = _Stream(stream_id, False, self.initial_window, self.initial_window)
                events.append(StreamOpened(stream_id, meta))
            case OpenAckFrame(stream_id):
                s = self._existing(stream_id, "OPEN_ACK")
                if s is None:
                    return
                if not s.local or s.acked:
                    raise ProtocolError(f"unexpected OPEN_ACK on stream {stream_id}")
                s.acked = True
                events.append(StreamAccepted(stream_id))
            case ResetFrame(stream_id, code, reason):
                s = self._existing(stream_id, "RESET")
                if s is None:
                    return
                self._remove(s)
                events.append(StreamReset(stream_id, code, reason))
            case FinFrame(stream_id):
                s = self._existing(stream_id, "FIN")
                if s is None:
                    return
                if s.remote_closed:
                    raise ProtocolError(f"second FIN on stream {stream_id}")
                s.remote_closed = True
                s.credit = 0
                events.append(StreamEnded(stream_id))
                if s.fin_sent:
                    self._remove(s)
            case WindowUpdateFrame(stream_id, increment):
                s = self._existing(stream_id, "WINDOW_UPDATE")
                if s is None:
                    return
                if s.send_window + increment > MAX_INCREMENT:
                    raise ProtocolError(f"flow control: window of stream {stream_id} above 2**31-1")
                s.send_window += increment
                self._schedule(s)
                events.append(WindowUpdated(stream_id, s.send_window))
            case PingFrame(opaque):
                self._queue_answer(encode_frame(PongFrame(opaque)))
                events.append(Ping(opaque))
            case PongFrame(opaque):
                events.append(Pong(opaque))
            case ControlFrame(message):
                events.append(ControlMessage(message))
            case UdpPacketFrame(proxy, peer, payload):
                events.append(UdpPacket(proxy, peer, payload))
            case GoAwayFrame(code, reason):
                self.goaway_received = True
                events.append(GoAway(code, reason))

    # -- helpers ---------------------------------------------------------------------------

    def _existing(self, stream_id: int, kind: str) -> _Stream | None:
        """The live stream, or None for a gone one (frame dropped); never-opened ids are errors."""
        s = self._streams.get(stream_id)
        if s is not None:
            return s
        if stream_id % 2 == self._local_parity:
            if stream_id >= self._next_id:
                raise ProtocolError(f"{kind} for stream {stream_id}, which this end never opened")
        elif stream_id > self._peer_last_id:
            raise ProtocolError(f"{kind} for stream {stream_id} before its OPEN")
        return None

    def _live(self, stream_id: int) -> _Stream:
        self._check_usable()
        s = self._streams.get(stream_id)
        if s is None:
            raise StreamError(f"stream {stream_id} is not open")
        return s

    def _check_usable(self) -> None:
        if self._error is not None:
            raise StreamError(f"connection failed: {self._error}")

    def _schedule(self, s: _Stream) -> None:
        if s.scheduled:
            return
        if (s.pending and s.send_window > 0) or (s.local_closed and not s.fin_sent and not s.pending):
            s.scheduled = True
            self._ready.append(s.id)

    def _remove(self, s: _Stream) -> None:
        del self._streams[s.id]
        self._buffered -= len(s.pending)
        s.pending.clear()
        self._grants.pop(s.id, None)

    def _queue(self, frame: bytes) -> None:
        self._control.append(frame)
        self._control_bytes += len(frame)

    def _queue_answer(self, frame: bytes) -> None:
        if self._control_bytes + len(frame) > self.max_control_backlog:
            raise ProtocolError(f"peer is not reading: over {self.max_control_backlog} bytes of control answers unsent")
        self._queue(frame)

    def _fail(self, exc: ProtocolError) -> None:
        self._error = exc
        self._streams.clear()
        self._ready.clear()
        self._grants.clear()
        self._udp.clear()
        self._udp_bytes = 0
        self._buffered = 0
        self._control.clear()
        self._control_bytes = 0
        self._queue(encode_frame(GoAwayFrame(ResetCode.PROTOCOL, str(exc))))
