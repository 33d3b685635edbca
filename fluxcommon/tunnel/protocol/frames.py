"""Binary framing of the tunnel connection (framing version 1): frame classes, encoder, decoder.

This module owns the bytes on the wire between a `flux-tunnel` agent and a node's tunnel
server, and nothing above them: stream bookkeeping and flow control live in `mux`, the meaning
of control messages in `control`. No sockets, no clock.

Frame layout
============

Every frame is a 12-byte header followed by `length` payload bytes. Integers are unsigned and
big-endian::

     0        1        2        3
    +--------+--------+--------+--------+
    | version|  type  | flags  |reserved|
    +--------+--------+--------+--------+
    |             stream id             |
    +-----------------------------------+
    |          payload length           |
    +-----------------------------------+
    |   payload (length bytes) ...

- ``version`` is the framing version, 1. A frame with any other version is refused with a
  message naming both versions. (The tunnel *protocol* version, which the agent and the node
  must share, is exchanged separately in the LOGIN control message; see `control`.)
- ``flags`` and ``reserved`` must be 0 in version 1.
- ``stream id`` is 0 for connection-level frames and 1..2**31-1 for stream frames. Streams
  opened by the client (the agent, who dials) have odd ids, streams opened by the server even
  ids; each side's ids strictly increase and are never reused (enforced by `mux`).
- ``length`` never exceeds `MAX_PAYLOAD` (128 KiB); the decoder refuses a larger length as soon
  as it has read the header, before buffering the payload.

Frame types
===========

====  =============  =========  =================================================================
type  name           stream id  payload
====  =============  =========  =================================================================
0x0   DATA           != 0       1..MAX_PAYLOAD bytes of stream data (empty DATA is refused)
0x1   OPEN           != 0       JSON object: stream metadata (what the stream is for), <= 64 KiB
0x2   OPEN_ACK       != 0       empty: the receiver of OPEN accepted the stream
0x3   RESET          != 0       u32 code, then a UTF-8 reason of at most 1024 bytes
0x4   FIN            != 0       empty: the sender will send no more DATA on this stream
0x5   WINDOW_UPDATE  != 0       u32 increment, 1..2**31-1: more bytes the peer may send
0x6   PING           0          8 opaque bytes
0x7   PONG           0          the 8 bytes of the PING it answers
0x8   CONTROL        0          JSON object: one control message (`control`), <= 64 KiB
0x9   UDP_PACKET     0          u8 proxy length, proxy name (UTF-8, 1..255 bytes),
                                u8 peer length, peer address (UTF-8, 0..255 bytes),
                                datagram (0..65535 bytes)
0xA   GOAWAY         0          u32 code, then a UTF-8 reason of at most 1024 bytes
====  =============  =========  =================================================================

JSON payloads are UTF-8 objects; duplicate keys, NaN and infinities are refused, and nesting
too deep for the parser is a protocol error like any other malformed input.

Errors
======

`FrameDecoder.receive_data` either returns frames or raises `ProtocolError`, nothing else,
whether the bytes come whole or one at a time; after an error it keeps raising the same error.
The encoder raises `ValueError` for arguments that cannot be framed (a local bug, not a peer's).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

FRAMING_VERSION = 1
HEADER_SIZE = 12
MAX_PAYLOAD = 128 * 1024
MAX_JSON = 64 * 1024
MAX_REASON = 1024
MAX_DATAGRAM = 65535
MAX_STREAM_ID = 2**31 - 1
MAX_INCREMENT = 2**31 - 1

_HEADER = struct.Struct("!BBBBII")
_U32 = struct.Struct("!I")


class ProtocolError(Exception):
    """The peer broke the tunnel protocol; the connection must be closed."""


class FrameType(IntEnum):
    DATA = 0x0
    OPEN = 0x1
    OPEN_ACK = 0x2
    RESET = 0x3
    FIN = 0x4
    WINDOW_UPDATE = 0x5
    PING = 0x6
    PONG = 0x7
    CONTROL = 0x8
    UDP_PACKET = 0x9
    GOAWAY = 0xA


_CONNECTION_TYPES = frozenset(
    {FrameType.PING, FrameType.PONG, FrameType.CONTROL, FrameType.UDP_PACKET, FrameType.GOAWAY}
)
# Payload length bounds checked from the header alone: (min, max).
_LENGTHS: dict[FrameType, tuple[int, int]] = {
    FrameType.DATA: (1, MAX_PAYLOAD),
    FrameType.OPEN: (2, MAX_JSON),
    FrameType.OPEN_ACK: (0, 0),
    FrameType.RESET: (4, 4 + MAX_REASON),
    FrameType.FIN: (0, 0),
    FrameType.WINDOW_UPDATE: (4, 4),
    FrameType.PING: (8, 8),
    FrameType.PONG: (8, 8),
    FrameType.CONTROL: (2, MAX_JSON),
    FrameType.UDP_PACKET: (3, 2 + 255 + 255 + MAX_DATAGRAM),
    FrameType.GOAWAY: (4, 4 + MAX_REASON),
}


# -- frames --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenFrame:
    stream_id: int
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OpenAckFrame:
    stream_id: int


@dataclass(frozen=True, slots=True)
class ResetFrame:
    stream_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class FinFrame:
    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowUpdateFrame:
    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class PingFrame:
    opaque: bytes


@dataclass(frozen=True, slots=True)
class PongFrame:
    opaque: bytes


@dataclass(frozen=True, slots=True)
class ControlFrame:
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UdpPacketFrame:
    proxy: str
    peer: str
    data: bytes


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    code: int
    reason: str


Frame = (
    DataFrame
    | OpenFrame
    | OpenAckFrame
    | ResetFrame
    | FinFrame
    | WindowUpdateFrame
    | PingFrame
    | PongFrame
    | ControlFrame
    | UdpPacketFrame
    | GoAwayFrame
)


# -- JSON ----------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _bad_constant(text: str) -> Any:
    raise ValueError(f"{text} is not allowed")


def encode_json(obj: dict[str, Any]) -> bytes:
    """Canonical compact JSON of a payload object; `ValueError` if it cannot be sent."""
    if not isinstance(obj, dict):
        raise ValueError("a JSON payload must be an object")
    try:
        raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, RecursionError) as exc:
        raise ValueError(f"payload is not JSON-serializable: {exc}") from None
    if len(raw) > MAX_JSON:
        raise ValueError(f"JSON payload of {len(raw)} bytes exceeds {MAX_JSON}")
    return raw


def decode_json(raw: bytes, what: str) -> dict[str, Any]:
    """Strictly parse a JSON object payload; `ProtocolError` for anything else."""
    try:
        text = raw.decode("utf-8")
        obj = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_bad_constant, parse_float=_finite_float
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed {what} payload: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"malformed {what} payload: not a JSON object")
    return obj


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None


# -- encoder -------------------------------------------------------------------------------


def _head(ftype: FrameType, stream_id: int, length: int) -> bytes:
    return _HEADER.pack(FRAMING_VERSION, ftype, 0, 0, stream_id, length)


def _check_stream_id(stream_id: int) -> None:
    if not isinstance(stream_id, int) or not 1 <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id must be 1..{MAX_STREAM_ID}, not {stream_id!r}")


def _reason(code: int, reason: str) -> bytes:
    if not 0 <= code <= 0xFFFFFFFF:
        raise ValueError(f"code out of range: {code}")
    raw = reason.encode("utf-8")
    if len(raw) > MAX_REASON:  # cut on a character boundary
        raw = raw[:MAX_REASON].decode("utf-8", "ignore").encode("utf-8")
    return _U32.pack(code) + raw


def data_header(stream_id: int, length: int) -> bytes:
    """The header of a DATA frame of `length` bytes (the payload follows it on the wire)."""
    _check_stream_id(stream_id)
    if not 1 <= length <= MAX_PAYLOAD:
        raise ValueError(f"DATA payload must be 1..{MAX_PAYLOAD} bytes, not {length}")
    return _head(FrameType.DATA, stream_id, length)


def encode_data(stream_id: int, data: bytes) -> bytes:
    """One DATA frame (the mux's hot path)."""
    _check_stream_id(stream_id)
    if not 1 <= len(data) <= MAX_PAYLOAD:
        raise ValueError(f"DATA payload must be 1..{MAX_PAYLOAD} bytes, not {len(data)}")
    return _head(FrameType.DATA, stream_id, len(data)) + bytes(data)


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of `frame`; `ValueError` if its fields cannot be framed."""
    match frame:
        case DataFrame(stream_id, data):
            return encode_data(stream_id, data)
        case OpenFrame(stream_id, meta):
            _check_stream_id(stream_id)
            body = encode_json(meta)
            return _head(FrameType.OPEN, stream_id, len(body)) + body
        case OpenAckFrame(stream_id):
            _check_stream_id(stream_id)
            return _head(FrameType.OPEN_ACK, stream_id, 0)
        case ResetFrame(stream_id, code, reason):
            _check_stream_id(stream_id)
            body = _reason(code, reason)
            return _head(FrameType.RESET, stream_id, len(body)) + body
        case FinFrame(stream_id):
            _check_stream_id(stream_id)
            return _head(FrameType.FIN, stream_id, 0)
        case WindowUpdateFrame(stream_id, increment):
            _check_stream_id(stream_id)
            if not 1 <= increment <= MAX_INCREMENT:
                raise ValueError(f"window increment must be 1..{MAX_INCREMENT}, not {increment}")
            return _head(FrameType.WINDOW_UPDATE, stream_id, 4) + _U32.pack(increment)
        case PingFrame(opaque) | PongFrame(opaque):
            if len(opaque) != 8:
                raise ValueError("PING/PONG payload must be 8 bytes")
            ftype = FrameType.PING if isinstance(frame, PingFrame) else FrameType.PONG
            return _head(ftype, 0, 8) + bytes(opaque)
        case ControlFrame(message):
            body = encode_json(message)
            return _head(FrameType.CONTROL, 0, len(body)) + body
        case UdpPacketFrame(proxy, peer, data):
            p, a = proxy.encode("utf-8"), peer.encode("utf-8")
            if not 1 <= len(p) <= 255 or len(a) > 255:
                raise ValueError("UDP proxy name must be 1..255 bytes and peer address at most 255")
            if len(data) > MAX_DATAGRAM:
                raise ValueError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
            body = bytes((len(p),)) + p + bytes((len(a),)) + a + bytes(data)
            return _head(FrameType.UDP_PACKET, 0, len(body)) + body
        case GoAwayFrame(code, reason):
            body = _reason(code, reason)
            return _head(FrameType.GOAWAY, 0, len(body)) + body
    raise ValueError(f"not a frame: {frame!r}")


# -- decoder -------------------------------------------------------------------------------


def _check_header(version: int, ftype: int, flags: int, reserved: int, stream_id: int, length: int) -> FrameType:
    if version != FRAMING_VERSION:
        raise ProtocolError(
            f"unsupported tunnel framing version {version} (this end speaks version {FRAMING_VERSION}); "
            "is the peer a flux-tunnel endpoint of a matching release?"
        )
    try:
        kind = FrameType(ftype)
    except ValueError:
        raise ProtocolError(f"unknown frame type 0x{ftype:02x}") from None
    if flags or reserved:
        raise ProtocolError(f"{kind.name} frame with non-zero flags/reserved bits")
    if kind in _CONNECTION_TYPES:
        if stream_id != 0:
            raise ProtocolError(f"{kind.name} frame on stream {stream_id} (must be stream 0)")
    elif not 1 <= stream_id <= MAX_STREAM_ID:
        raise ProtocolError(f"{kind.name} frame with invalid stream id {stream_id}")
    low, high = _LENGTHS[kind]
    if not low <= length <= high:
        raise ProtocolError(f"{kind.name} frame with payload length {length} (allowed {low}..{high})")
    return kind


def _parse(kind: FrameType, stream_id: int, payload: bytes) -> Frame:
    if kind is FrameType.DATA:
        return DataFrame(stream_id, payload)
    if kind is FrameType.OPEN:
        return OpenFrame(stream_id, decode_json(payload, "OPEN"))
    if kind is FrameType.OPEN_ACK:
        return OpenAckFrame(stream_id)
    if kind is FrameType.RESET:
        return ResetFrame(stream_id, _U32.unpack_from(payload)[0], _utf8(payload[4:], "RESET reason"))
    if kind is FrameType.FIN:
        return FinFrame(stream_id)
    if kind is FrameType.WINDOW_UPDATE:
        increment = _U32.unpack(payload)[0]
        if not 1 <= increment <= MAX_INCREMENT:
            raise ProtocolError(f"WINDOW_UPDATE on stream {stream_id} with increment {increment}")
        return WindowUpdateFrame(stream_id, increment)
    if kind is FrameType.PING:
        return PingFrame(payload)
    if kind is FrameType.PONG:
        return PongFrame(payload)
    if kind is FrameType.CONTROL:
        return ControlFrame(decode_json(payload, "CONTROL"))
    if kind is FrameType.UDP_PACKET:
        plen = payload[0]
        if plen == 0 or len(payload) < 2 + plen:
            raise ProtocolError("UDP_PACKET with a bad proxy name length")
        alen = payload[1 + plen]
        start = 2 + plen + alen
        if len(payload) < start or len(payload) - start > MAX_DATAGRAM:
            raise ProtocolError("UDP_PACKET with a bad peer address or datagram length")
        proxy = _utf8(payload[1 : 1 + plen], "UDP_PACKET proxy name")
        peer = _utf8(payload[2 + plen : start], "UDP_PACKET peer address")
        return UdpPacketFrame(proxy, peer, payload[start:])
    # GOAWAY
    return GoAwayFrame(_U32.unpack_from(payload)[0], _utf8(payload[4:], "GOAWAY reason"))


class FrameDecoder:
    """Turns received bytes, split anywhere, into frames.

    `receive_data(data)` returns every frame completed by `data` (possibly none). Malformed or
    oversized input raises `ProtocolError`; the decoder then stays failed.
    """

    __slots__ = ("_buf", "_error", "_max_payload")

    def __init__(self, *, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._error: ProtocolError | None = None
        self._max_payload = min(max_payload, MAX_PAYLOAD)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def receive_data(self, data: bytes | memoryview) -> list[Frame]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        frames: list[Frame] = []
        pos = 0
        end = len(data)
        try:
            if buf:
                # A frame was cut by the previous read: complete it with only the bytes it still
                # needs, then parse the rest straight from `data` (one copy per payload, where
                # appending all of `data` to the buffer cost three).
                if len(buf) < HEADER_SIZE:
                    pos = min(end, HEADER_SIZE - len(buf))
                    buf += data[:pos]
                    if len(buf) < HEADER_SIZE:
                        return frames
                stream_id, length, kind = self._header(buf, 0)
                need = HEADER_SIZE + length - len(buf)
                if need > end - pos:
                    buf += memoryview(data)[pos:]
                    return frames
                buf += memoryview(data)[pos : pos + need]
                pos += need
                frames.append(_parse(kind, stream_id, bytes(memoryview(buf)[HEADER_SIZE:])))
                buf.clear()
            while end - pos >= HEADER_SIZE:
                stream_id, length, kind = self._header(data, pos)
                if end - pos - HEADER_SIZE < length:
                    break
                start = pos + HEADER_SIZE
                payload = data[start : start + length]
                frames.append(_parse(kind, stream_id, payload if type(payload) is bytes else bytes(payload)))
                pos = start + length
        except ProtocolError as exc:
            self._error = exc
            buf.clear()
            raise
        if pos < end:
            buf += memoryview(data)[pos:]
        return frames

    def _header(self, src: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, FrameType]:
        """(stream id, payload length, kind) of the header at `pos`, checked."""
        version, ftype, flags, reserved, stream_id, length = _HEADER.unpack_from(src, pos)
        kind = _check_header(version, ftype, flags, reserved, stream_id, length)
        if length > self._max_payload:
            raise ProtocolError(f"{kind.name} frame of {length} bytes exceeds the limit of {self._max_payload}")
        return stream_id, length, kind
