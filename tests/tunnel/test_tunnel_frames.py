"""Tunnel framing (`fluxcommon.tunnel.protocol.frames`): round trips, random splits, strict refusal.

The fuzz invariant of the style guide: the decoder returns frames or raises `ProtocolError`,
nothing else, whether the bytes come whole or one at a time.
"""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxcommon.tunnel.protocol.frames import (
    FRAMING_VERSION,
    HEADER_SIZE,
    MAX_JSON,
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    ControlFrame,
    DataFrame,
    FinFrame,
    FrameDecoder,
    FrameType,
    GoAwayFrame,
    OpenAckFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    ProtocolError,
    ResetFrame,
    UdpPacketFrame,
    WindowUpdateFrame,
    encode_frame,
)

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

stream_ids = st.integers(1, MAX_STREAM_ID)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)
reasons = st.text(max_size=40)
codes = st.integers(0, 2**32 - 1)

frames = st.one_of(
    st.builds(DataFrame, stream_ids, st.binary(min_size=1, max_size=300)),
    st.builds(OpenFrame, stream_ids, json_objects),
    st.builds(OpenAckFrame, stream_ids),
    st.builds(ResetFrame, stream_ids, codes, reasons),
    st.builds(FinFrame, stream_ids),
    st.builds(WindowUpdateFrame, stream_ids, st.integers(1, 2**31 - 1)),
    st.builds(PingFrame, st.binary(min_size=8, max_size=8)),
    st.builds(PongFrame, st.binary(min_size=8, max_size=8)),
    st.builds(ControlFrame, json_objects),
    st.builds(UdpPacketFrame, st.text(min_size=1, max_size=30), st.text(max_size=40), st.binary(max_size=300)),
    st.builds(GoAwayFrame, codes, reasons),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def decode_pieces(pieces: list[bytes]) -> list[object]:
    decoder = FrameDecoder()
    out: list[object] = []
    for piece in pieces:
        out.extend(decoder.receive_data(piece))
    assert decoder.buffered == 0
    return out


def header(ftype: int, stream_id: int, length: int, *, version: int = FRAMING_VERSION, flags: int = 0) -> bytes:
    return struct.pack("!BBBBII", version, ftype, flags, 0, stream_id, length)


# -- round trips ---------------------------------------------------------------------------


@PROPS
@given(st.lists(frames, max_size=12), st.lists(st.integers(0, 10**6), max_size=20))
def test_random_splits_give_the_same_frames(sent: list[object], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f) for f in sent)  # type: ignore[arg-type]
    assert decode_pieces([wire]) == sent
    assert decode_pieces(split(wire, cuts)) == sent


@settings(max_examples=40, deadline=None)
@given(st.lists(frames, max_size=4))
def test_byte_by_byte_gives_the_same_frames(sent: list[object]) -> None:
    wire = b"".join(encode_frame(f) for f in sent)  # type: ignore[arg-type]
    assert decode_pieces([wire[i : i + 1] for i in range(len(wire))]) == sent


def test_documented_layout() -> None:
    wire = encode_frame(DataFrame(7, b"hello"))
    assert wire == bytes([1, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 5]) + b"hello"
    assert encode_frame(WindowUpdateFrame(3, 65536)) == header(FrameType.WINDOW_UPDATE, 3, 4) + b"\x00\x01\x00\x00"
    assert encode_frame(ControlFrame({"type": "ping", "seq": 1})) == (
        header(FrameType.CONTROL, 0, 23) + b'{"type":"ping","seq":1}'
    )
    udp = encode_frame(UdpPacketFrame("dns", "1.2.3.4:53", b"q"))
    assert udp[HEADER_SIZE:] == b"\x03dns\x0a1.2.3.4:53q"


# -- fuzz ----------------------------------------------------------------------------------


def only_protocol_errors(pieces: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for piece in pieces:
            decoder.receive_data(piece)
    except ProtocolError:
        with pytest.raises(ProtocolError):  # stays failed
            decoder.receive_data(b"")


@PROPS
@given(st.binary(max_size=400))
def test_fuzzed_bytes_raise_only_protocol_error(data: bytes) -> None:
    only_protocol_errors([data])
    only_protocol_errors([data[i : i + 1] for i in range(len(data))])


@PROPS
@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_mutated_frames_raise_only_protocol_error(sent: list[object], data: st.DataObject) -> None:
    wire = bytearray(b"".join(encode_frame(f) for f in sent))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    only_protocol_errors([bytes(wire)])
    only_protocol_errors([bytes(wire[i : i + 1]) for i in range(len(wire))])


@PROPS
@given(st.sampled_from([FrameType.OPEN, FrameType.CONTROL]), st.binary(min_size=2, max_size=200))
def test_fuzzed_json_payloads_raise_only_protocol_error(ftype: FrameType, payload: bytes) -> None:
    sid = 1 if ftype is FrameType.OPEN else 0
    only_protocol_errors([header(ftype, sid, len(payload)) + payload])


# -- strict refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (header(0, 1, 1, version=2) + b"x", "framing version 2 (this end speaks version 1)"),
        (header(0x0B, 0, 0), "unknown frame type 0x0b"),
        (header(FrameType.DATA, 1, 1, flags=1) + b"x", "non-zero flags"),
        (header(FrameType.DATA, 0, 1) + b"x", "invalid stream id 0"),
        (header(FrameType.DATA, 2**31, 1) + b"x", "invalid stream id"),
        (header(FrameType.DATA, 1, 0), "payload length 0"),
        (header(FrameType.PING, 5, 8) + bytes(8), "must be stream 0"),
        (header(FrameType.PING, 0, 7) + bytes(7), "payload length 7"),
        (header(FrameType.FIN, 1, 1) + b"x", "payload length 1"),
        (header(FrameType.WINDOW_UPDATE, 1, 4) + bytes(4), "increment 0"),
        (header(FrameType.WINDOW_UPDATE, 1, 4) + b"\x80\x00\x00\x00", "increment 2147483648"),
        (header(FrameType.CONTROL, 0, 2) + b"[]", "not a JSON object"),
        (header(FrameType.CONTROL, 0, 13) + b'{"a":1,"a":2}', "duplicate key"),
        (header(FrameType.CONTROL, 0, 9) + b'{"a":NaN}', "NaN is not allowed"),
        (header(FrameType.CONTROL, 0, 11) + b'{"a":1e999}', "out of range"),
        (header(FrameType.CONTROL, 0, 3) + b'{"\xff', "malformed CONTROL"),
        (header(FrameType.RESET, 1, 5) + b"\x00\x00\x00\x00\xff", "not valid UTF-8"),
        (header(FrameType.UDP_PACKET, 0, 3) + b"\x00\x00x", "bad proxy name length"),
        (header(FrameType.UDP_PACKET, 0, 5) + b"\x01p\x09ab", "bad peer address"),
    ],
)
def test_malformed_frames_are_refused(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        FrameDecoder().receive_data(wire)


def test_oversized_length_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="payload length"):
        decoder.receive_data(header(FrameType.DATA, 1, MAX_PAYLOAD + 1))
    with pytest.raises(ProtocolError, match="payload length"):
        FrameDecoder().receive_data(header(FrameType.CONTROL, 0, MAX_JSON + 1))
    small = FrameDecoder(max_payload=100)
    with pytest.raises(ProtocolError, match="exceeds the limit of 100"):
        small.receive_data(header(FrameType.DATA, 1, 101))


def test_deeply_nested_json_is_a_protocol_error() -> None:
    payload = b'{"a":' + b"[" * 30000 + b"]" * 30000 + b"}"
    with pytest.raises(ProtocolError):
        FrameDecoder().receive_data(header(FrameType.CONTROL, 0, len(payload)) + payload)


def test_encoder_refuses_what_cannot_be_framed() -> None:
    for bad in (
        DataFrame(0, b"x"),
        DataFrame(1, b""),
        DataFrame(1, bytes(MAX_PAYLOAD + 1)),
        OpenFrame(2**31, {}),
        WindowUpdateFrame(1, 0),
        PingFrame(b"short"),
        ControlFrame({"big": "x" * MAX_JSON}),
        ControlFrame({"nan": float("nan")}),
        ControlFrame({"obj": object()}),
        UdpPacketFrame("", "a", b""),
        UdpPacketFrame("p" * 256, "a", b""),
        UdpPacketFrame("p", "a", bytes(65536)),
    ):
        with pytest.raises(ValueError):
            encode_frame(bad)  # type: ignore[arg-type]


def test_long_reasons_are_cut_on_a_character_boundary() -> None:
    (frame,) = FrameDecoder().receive_data(encode_frame(ResetFrame(1, 2, "é" * 1000)))
    assert isinstance(frame, ResetFrame)
    assert frame.reason == "é" * 512
