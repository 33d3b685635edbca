"""The tunnel multiplexer (`fluxcommon.tunnel.protocol.mux`): two ends back to back, flow control, odd peers.

The state machine test wires a client and a server `Mux` together and lets hypothesis
interleave opens, sends, closes, resets, reads (`consumed`), partial flushes and partial
deliveries over many streams. After every step: what each end received on a stream is a prefix
of what the other sent on it, a reader never holds more unread bytes than one window, and
the bytes in flight never exceed the credit the receiver has granted. At the end everything
is drained and every stream that was not reset delivered exactly what was sent.
"""

from __future__ import annotations

import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fluxcommon.tunnel.protocol.frames import (
    HEADER_SIZE,
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
    encode_frame,
)
from fluxcommon.tunnel.protocol.mux import (
    ControlMessage,
    Data,
    GoAway,
    Mux,
    Ping,
    Pong,
    ResetCode,
    StreamAccepted,
    StreamEnded,
    StreamError,
    StreamOpened,
    StreamReset,
    UdpPacket,
    WindowUpdated,
)

WINDOW = 1000
SMALL = {"initial_window": WINDOW, "max_frame_data": 300, "stream_buffer": 2500, "max_buffered": 6000, "max_streams": 6}
OTHER = {"client": "server", "server": "client"}


def frames_of(wire: bytes) -> list[object]:
    return list(FrameDecoder().receive_data(wire))


# -- two ends back to back, random interleavings -------------------------------------------


class MuxPair(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.mux = {side: Mux(side, **SMALL) for side in OTHER}  # type: ignore[arg-type]
        self.wire = {side: bytearray() for side in OTHER}  # bytes flushed by side, not yet delivered
        self.sent: dict[tuple[str, int], bytearray] = {}  # (sender, sid) -> bytes taken by send()
        self.received: dict[tuple[str, int], bytearray] = {}  # (receiver, sid) -> Data delivered
        self.unread: dict[tuple[str, int], int] = {}  # (receiver, sid) -> delivered, not consumed
        self.sendable: dict[str, set[int]] = {side: set() for side in OTHER}
        self.ended: set[tuple[str, int]] = set()  # (receiver, sid) saw StreamEnded
        self.reset_ids: set[int] = set()
        self.opened: set[int] = set()
        self.counter = 0

    # -- actions ---------------------------------------------------------------------------

    @rule(side=st.sampled_from(["client", "server"]), port=st.integers(1, 65535), roll=st.integers(0, 1))
    def open(self, side: str, port: int, roll: int) -> None:
        mux = self.mux[side]
        if roll and any(self.sendable.values()):
            return
        if len(mux.stream_ids) >= mux.max_streams:
            with pytest.raises(StreamError, match="too many streams"):
                mux.open_stream({"port": port})
            return
        sid = mux.open_stream({"port": port})
        assert sid % 2 == (1 if side == "client" else 0)
        self.opened.add(sid)
        self.sendable[side].add(sid)
        self.sent[(side, sid)] = bytearray()

    def _send(self, data: st.DataObject, size: int) -> None:
        side = data.draw(st.sampled_from(sorted(s for s in OTHER if self.sendable[s])))
        sid = data.draw(st.sampled_from(sorted(self.sendable[side])))
        self.counter += 1
        payload = bytes((self.counter + i) % 251 for i in range(size))  # distinct, order-revealing
        mux = self.mux[side]
        room = mux.writable(sid)
        taken = mux.send(sid, payload)
        assert taken == min(room, len(payload))
        self.sent[(side, sid)] += payload[:taken]
        assert mux.buffered(sid) <= mux.stream_buffer
        assert mux.buffered_total <= mux.max_buffered

    # send, deliver and consume are listed twice to weigh them over opens, closes and resets
    @precondition(lambda self: any(self.sendable.values()))
    @rule(data=st.data(), size=st.integers(1, 3000))
    def send(self, data: st.DataObject, size: int) -> None:
        self._send(data, size)

    @precondition(lambda self: any(self.sendable.values()))
    @rule(data=st.data(), size=st.integers(1, 400))
    def send_small(self, data: st.DataObject, size: int) -> None:
        self._send(data, size)

    @precondition(lambda self: any(self.sendable.values()))
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        side = data.draw(st.sampled_from(sorted(s for s in OTHER if self.sendable[s])))
        sid = data.draw(st.sampled_from(sorted(self.sendable[side])))
        self.mux[side].close(sid)
        self.sendable[side].discard(sid)
        with pytest.raises(StreamError):
            self.mux[side].send(sid, b"late")

    @precondition(lambda self: any(self.mux[s].stream_ids for s in OTHER))
    @rule(data=st.data(), roll=st.integers(0, 3))
    def reset(self, data: st.DataObject, roll: int) -> None:
        if roll:  # one time in four: resets end streams before much happens on them
            return
        side = data.draw(st.sampled_from(sorted(s for s in OTHER if self.mux[s].stream_ids)))
        sid = data.draw(st.sampled_from(sorted(self.mux[side].stream_ids)))
        self.mux[side].reset(sid, "test reset")
        self.reset_ids.add(sid)
        self.sendable[side].discard(sid)

    @precondition(lambda self: any(n for n in self.unread.values()))
    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k, n in self.unread.items() if n)))
        n = data.draw(st.integers(1, self.unread[key]))
        self.mux[key[0]].consumed(key[1], n)
        self.unread[key] -= n

    @precondition(lambda self: any(n for n in self.unread.values()))
    @rule(data=st.data())
    def consume_all(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k, n in self.unread.items() if n)))
        self.mux[key[0]].consumed(key[1], self.unread[key])
        self.unread[key] = 0

    @rule(side=st.sampled_from(["client", "server"]), max_bytes=st.none() | st.integers(1, 2000))
    def flush(self, side: str, max_bytes: int | None) -> None:
        out = self.mux[side].data_to_send(max_bytes)
        if max_bytes is not None and len(out) > max(max_bytes, HEADER_SIZE + 1):
            # only a single control frame may exceed the soft limit
            assert len(frames_of(out)) == 1
        self.wire[side] += out

    @precondition(lambda self: any(self.wire.values()))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        side = data.draw(st.sampled_from(sorted(s for s in OTHER if self.wire[s])))
        n = data.draw(st.integers(1, len(self.wire[side])))
        self._deliver(side, n)

    @rule(side=st.sampled_from(["client", "server"]))
    def flush_and_deliver_all(self, side: str) -> None:
        self.wire[side] += self.mux[side].data_to_send()
        self._deliver(side, len(self.wire[side]))

    def _deliver(self, side: str, n: int) -> None:
        chunk = bytes(self.wire[side][:n])
        del self.wire[side][:n]
        self.handle(OTHER[side], self.mux[OTHER[side]].receive_data(chunk))

    def handle(self, receiver: str, events: list[object]) -> None:
        for event in events:
            match event:
                case StreamOpened(sid, meta):
                    assert "port" in meta and sid in self.opened
                    self.sendable[receiver].add(sid)
                    self.sent[(receiver, sid)] = bytearray()
                case Data(sid, payload):
                    key = (receiver, sid)
                    self.received.setdefault(key, bytearray()).extend(payload)
                    self.unread[key] = self.unread.get(key, 0) + len(payload)
                    assert self.unread[key] <= WINDOW, "peer sent beyond the window"
                case StreamEnded(sid):
                    self.ended.add((receiver, sid))
                    assert self.received.get((receiver, sid), b"") == self.sent[(OTHER[receiver], sid)]
                case StreamReset(sid, _code, _reason):
                    self.reset_ids.add(sid)
                    self.sendable[receiver].discard(sid)
                case WindowUpdated(sid, window):
                    assert 0 < window <= 2**31 - 1
                case _:
                    raise AssertionError(f"unexpected event {event!r}")

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def in_order_prefixes(self) -> None:
        for (receiver, sid), got in self.received.items():
            assert self.sent[(OTHER[receiver], sid)].startswith(got)

    @invariant()
    def windows_never_exceeded(self) -> None:
        for sender, mux in self.mux.items():
            peer = self.mux[OTHER[sender]]
            for sid in mux.stream_ids:
                assert mux.send_window(sid) >= 0
                if sid in self.reset_ids or not peer.is_open(sid) or (OTHER[sender], sid) in self.ended:
                    continue
                framed = len(self.sent[(sender, sid)]) - mux.buffered(sid)
                in_flight = framed - len(self.received.get((OTHER[sender], sid), b""))
                assert 0 <= in_flight <= peer.recv_window(sid)

    # -- drain and compare -----------------------------------------------------------------

    def teardown(self) -> None:
        for side in OTHER:
            self.handle(OTHER[side], self.mux[OTHER[side]].receive_data(bytes(self.wire[side])))
            self.wire[side].clear()
        for _ in range(1000):
            moved = False
            for side in OTHER:
                for sid in list(self.sendable[side]):
                    self.mux[side].close(sid)
                self.sendable[side].clear()
            for (reader, sid), n in self.unread.items():
                if n:
                    self.mux[reader].consumed(sid, n)
            self.unread = dict.fromkeys(self.unread, 0)
            for side in OTHER:
                receiver = OTHER[side]
                out = self.mux[side].data_to_send()
                if out:
                    moved = True
                    self.handle(receiver, self.mux[receiver].receive_data(out))
            if not moved:
                break
        for (sender, sid), sent in self.sent.items():
            if sid in self.reset_ids:
                continue
            assert (OTHER[sender], sid) in self.ended
            assert self.received.get((OTHER[sender], sid), b"") == sent
        for mux in self.mux.values():
            assert mux.stream_ids == []
            assert mux.buffered_total == 0


TestMuxPair = MuxPair.TestCase
TestMuxPair.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- flow control and fairness -------------------------------------------------------------


def connect(**kwargs: int) -> tuple[Mux, Mux]:
    return Mux("client", **kwargs), Mux("server", **kwargs)  # type: ignore[arg-type]


def pump(a: Mux, b: Mux) -> tuple[list[object], list[object]]:
    """Move bytes both ways until quiet; returns (events at a, events at b)."""
    at_a: list[object] = []
    at_b: list[object] = []
    while True:
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            return at_a, at_b
        at_b += b.receive_data(out_a)
        at_a += a.receive_data(out_b)


def test_a_stalled_reader_does_not_block_another_stream() -> None:
    client, server = connect(initial_window=4096, stream_buffer=8192)
    slow, fast = client.open_stream({"p": "slow"}), client.open_stream({"p": "fast"})
    got: dict[int, bytearray] = {slow: bytearray(), fast: bytearray()}
    fast_payload = bytes(range(256)) * 400  # 100 KiB, 25 windows
    fast_sent = 0
    for _ in range(200):
        client.send(slow, b"s" * 1000)  # the slow stream's writer keeps pushing
        fast_sent += client.send(fast, fast_payload[fast_sent:])
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, Data):
                got[event.stream_id] += event.data
                if event.stream_id == fast:  # only the fast stream's reader reads
                    server.consumed(fast, len(event.data))
        client.receive_data(server.data_to_send())
        if len(got[fast]) == len(fast_payload):
            break
    assert bytes(got[fast]) == fast_payload
    assert len(got[slow]) == 4096  # exactly one window, never more
    assert client.send_window(slow) == 0
    assert client.buffered(slow) == 8192 and client.writable(slow) == 0
    assert client.send(slow, b"more") == 0  # backpressure reaches the slow writer


def test_round_robin_interleaves_streams() -> None:
    client, server = connect(max_frame_data=100)
    ids = [client.open_stream({}) for _ in range(3)]
    pump(client, server)
    for sid in ids:
        client.send(sid, bytes([sid]) * 1000)
    order: list[int] = []
    got = {sid: 0 for sid in ids}
    while out := client.data_to_send(250):
        assert len(out) <= 250
        for frame in frames_of(out):
            assert isinstance(frame, DataFrame)
            order.append(frame.stream_id)
            got[frame.stream_id] += len(frame.data)
    assert order[:9] == ids * 3  # one chunk per stream per round
    assert got == {sid: 1000 for sid in ids}


def test_parts_are_the_bytes_data_to_send_would_join_and_buffers_the_caller_may_reuse_are_copied() -> None:
    client, server = connect(max_frame_data=1000)
    sid = client.open_stream({})
    pump(client, server)
    kept = b"k" * 2500
    reused = bytearray(b"r" * 1500)
    view = memoryview(b"v" * 3000)
    assert client.send(sid, kept) == 2500
    assert client.send(sid, reused) == 1500
    assert client.send(sid, view[1000:]) == 2000  # a view of bytes: kept as it is, like bytes
    reused[:] = b"X" * 1500  # the caller reuses its buffer: what was queued must not change
    parts = client.parts_to_send()
    assert any(p is kept or (isinstance(p, memoryview) and p.obj is kept) for p in parts)  # not copied
    wire = b"".join(parts)
    got = b"".join(e.data for e in server.receive_data(wire) if isinstance(e, Data))
    assert got == b"k" * 2500 + b"r" * 1500 + b"v" * 2000
    assert client.parts_to_send() == [] and client.data_to_send() == b""

    words = array.array("I", [1, 2, 3])  # a view of 4-byte items: counted and sent as 12 bytes
    assert client.send(sid, memoryview(words)) == 12
    got = b"".join(e.data for e in server.receive_data(client.data_to_send()) if isinstance(e, Data))
    assert got == words.tobytes()


def test_control_frames_go_before_queued_data() -> None:
    client, server = connect()
    sid = client.open_stream({})
    pump(client, server)
    client.send(sid, b"x" * 50_000)
    client.send_control({"type": "ping", "seq": 1})
    client.ping(b"12345678")
    first = frames_of(client.data_to_send(100))
    assert isinstance(first[0], ControlFrame) and isinstance(first[1], PingFrame)


def test_open_data_fin_without_a_round_trip() -> None:
    client, server = connect()
    sid = client.open_stream({"proxy": "web"})
    assert client.send(sid, b"GET / HTTP/1.1\r\n\r\n") == 18
    client.close(sid)
    events = server.receive_data(client.data_to_send())
    assert events == [StreamOpened(sid, {"proxy": "web"}), Data(sid, b"GET / HTTP/1.1\r\n\r\n"), StreamEnded(sid)]
    server.accept(sid)
    server.send(sid, b"HTTP/1.1 200 OK\r\n\r\n")
    server.close(sid)
    at_client, _ = pump(client, server)
    assert at_client == [StreamAccepted(sid), Data(sid, b"HTTP/1.1 200 OK\r\n\r\n"), StreamEnded(sid)]
    assert client.stream_ids == [] and server.stream_ids == []


def test_window_updates_are_coalesced_and_sent_after_half_a_window() -> None:
    client, server = connect(initial_window=1000)
    sid = client.open_stream({})
    client.send(sid, b"x" * 1000)
    server.receive_data(client.data_to_send())
    server.consumed(sid, 300)
    assert server.data_to_send() == b""
    server.consumed(sid, 300)
    server.consumed(sid, 100)
    (update,) = frames_of(server.data_to_send())
    assert update == WindowUpdateFrame(sid, 600)  # granted at 600 >= 500, then 100 waits
    assert client.receive_data(encode_frame(update)) == [WindowUpdated(sid, 600)]
    with pytest.raises(StreamError, match="300 bytes unread"):
        server.consumed(sid, 301)


# -- the peer's mistakes -------------------------------------------------------------------


def opened_server() -> tuple[Mux, int]:
    server = Mux("server", initial_window=100)
    server.receive_data(encode_frame(OpenFrame(1, {})))
    return server, 1


def test_data_beyond_the_window_is_a_protocol_error() -> None:
    server, sid = opened_server()
    server.receive_data(encode_frame(DataFrame(sid, b"x" * 60)))
    with pytest.raises(ProtocolError, match="flow control: 41 bytes on stream 1 with only 40"):
        server.receive_data(encode_frame(DataFrame(sid, b"x" * 41)))
    # the failed mux says why in a GOAWAY and stays failed
    (goaway,) = frames_of(server.data_to_send())
    assert isinstance(goaway, GoAwayFrame) and goaway.code == ResetCode.PROTOCOL and "flow control" in goaway.reason
    with pytest.raises(ProtocolError):
        server.receive_data(b"")
    with pytest.raises(StreamError):
        server.send(sid, b"x")


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([DataFrame(3, b"x")], "DATA for stream 3 before its OPEN"),
        ([WindowUpdateFrame(2, 5)], "WINDOW_UPDATE for stream 2, which this end never opened"),
        ([OpenFrame(2, {})], "peer opened stream 2, an id of this end's parity"),
        ([OpenFrame(5, {}), OpenFrame(3, {})], "OPEN of stream 3 after stream 5"),
        ([OpenFrame(1, {}), OpenFrame(1, {})], "OPEN of stream 1 after stream 1"),
        ([OpenFrame(1, {}), FinFrame(1), DataFrame(1, b"x")], "DATA on stream 1 after its FIN"),
        ([OpenFrame(1, {}), FinFrame(1), FinFrame(1)], "second FIN"),
        ([OpenFrame(1, {}), OpenAckFrame(1)], "unexpected OPEN_ACK"),
        ([OpenFrame(1, {}), WindowUpdateFrame(1, 2**31 - 1)], "above 2\\*\\*31-1"),
    ],
)
def test_peer_protocol_violations(frames: list[object], message: str) -> None:
    server = Mux("server")
    with pytest.raises(ProtocolError, match=message):
        server.receive_data(b"".join(encode_frame(f) for f in frames))  # type: ignore[arg-type]


def test_frames_for_a_reset_stream_are_dropped() -> None:
    server, sid = opened_server()
    server.reset(sid, "go away")
    late = [DataFrame(sid, b"x" * 100), FinFrame(sid), WindowUpdateFrame(sid, 10), ResetFrame(sid, 0, "")]
    assert server.receive_data(b"".join(encode_frame(f) for f in late)) == []
    (reset,) = frames_of(server.data_to_send())
    assert reset == ResetFrame(sid, ResetCode.CANCEL, "go away")


def test_stream_limit_refuses_peer_opens_and_local_opens() -> None:
    server = Mux("server", max_streams=2)
    events = server.receive_data(b"".join(encode_frame(OpenFrame(i, {})) for i in (1, 3, 5)))
    assert [e.stream_id for e in events if isinstance(e, StreamOpened)] == [1, 3]
    assert frames_of(server.data_to_send()) == [ResetFrame(5, ResetCode.REFUSED, "too many streams")]
    with pytest.raises(StreamError, match="too many streams"):
        server.open_stream({})


def test_goaway_stops_new_streams_both_ways() -> None:
    client, server = connect()
    sid = client.open_stream({})
    assert pump(client, server)[1] == [StreamOpened(sid, {})]
    server.go_away("restarting")
    assert pump(client, server)[0] == [GoAway(ResetCode.CANCEL, "restarting")]
    with pytest.raises(StreamError, match="going away"):
        client.open_stream({})
    # an OPEN that crossed the GOAWAY is refused, not an error
    server.receive_data(encode_frame(OpenFrame(sid + 2, {})))
    assert ResetFrame(sid + 2, ResetCode.REFUSED, "going away") in frames_of(server.data_to_send())


def test_ping_is_answered_and_a_ping_flood_without_reading_fails() -> None:
    server = Mux("server", max_control_backlog=200)
    assert server.receive_data(encode_frame(PingFrame(b"abcdefgh"))) == [Ping(b"abcdefgh")]
    assert frames_of(server.data_to_send()) == [PongFrame(b"abcdefgh")]
    assert server.receive_data(encode_frame(PongFrame(b"12345678"))) == [Pong(b"12345678")]
    with pytest.raises(ProtocolError, match="peer is not reading"):
        server.receive_data(encode_frame(PingFrame(b"abcdefgh")) * 20)


def test_control_and_udp_events() -> None:
    client, server = connect()
    client.send_control({"type": "x"})
    assert client.send_udp("dns", "10.0.0.1:5353", b"query")
    _, at_server = pump(client, server)
    assert at_server == [ControlMessage({"type": "x"}), UdpPacket("dns", "10.0.0.1:5353", b"query")]
    small = Mux("client", max_udp_backlog=100)
    assert small.send_udp("dns", "", b"x" * 50)
    assert not small.send_udp("dns", "", b"x" * 50)
    assert small.udp_dropped == 1


def test_local_misuse_raises_stream_error() -> None:
    client = Mux("client")
    with pytest.raises(StreamError):
        client.send(99, b"x")
    sid = client.open_stream({})
    with pytest.raises(StreamError, match="opened by this end"):
        client.accept(sid)
    with pytest.raises(ValueError):
        client.open_stream({"bad": object()})
    client.close(sid)
    client.close(sid)  # idempotent
    with pytest.raises(StreamError, match="closed for sending"):
        client.send(sid, b"x")
    client.reset(12345)  # unknown: no-op
    client.consumed(12345, 10)  # unknown: no-op
    with pytest.raises(ValueError):
        Mux("peer")  # type: ignore[arg-type]


def test_connection_level_buffer_bound() -> None:
    client = Mux("client", stream_buffer=1000, max_buffered=1500)
    a, b = client.open_stream({}), client.open_stream({})
    assert client.send(a, b"x" * 2000) == 1000
    assert client.send(b, b"x" * 2000) == 500
    assert client.writable(b) == 0 and client.buffered_total == 1500
    client.data_to_send()
    assert client.writable(b) == 1000 and client.buffered_total == 0


# -- fuzz ----------------------------------------------------------------------------------

small_ids = st.integers(1, 8)
mux_frames = st.one_of(
    st.builds(DataFrame, small_ids, st.binary(min_size=1, max_size=50)),
    st.builds(OpenFrame, small_ids, st.just({})),
    st.builds(OpenAckFrame, small_ids),
    st.builds(ResetFrame, small_ids, st.integers(0, 5), st.text(max_size=5)),
    st.builds(FinFrame, small_ids),
    st.builds(WindowUpdateFrame, small_ids, st.integers(1, 2**31 - 1)),
    st.builds(PingFrame, st.just(b"12345678")),
    st.builds(UdpPacketFrame, st.just("p"), st.just(""), st.binary(max_size=10)),
    st.builds(GoAwayFrame, st.integers(0, 3), st.text(max_size=5)),
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["client", "server"]), st.lists(mux_frames, max_size=15), st.binary(max_size=30))
def test_fuzzed_frames_raise_only_protocol_error(role: str, frames: list[object], tail: bytes) -> None:
    wire = b"".join(encode_frame(f) for f in frames) + tail  # type: ignore[arg-type]
    for pieces in ([wire], [wire[i : i + 1] for i in range(len(wire))]):
        mux = Mux(role, initial_window=100, max_streams=3)  # type: ignore[arg-type]
        try:
            for piece in pieces:
                for event in mux.receive_data(piece):
                    if isinstance(event, Data):
                        mux.consumed(event.stream_id, len(event.data))
                mux.data_to_send()
        except ProtocolError:
            assert mux.failed is not None
            assert isinstance(frames_of(mux.data_to_send())[0], GoAwayFrame)
