"""Tunnel control protocol (`fluxcommon.tunnel.protocol.control`): login, proxies, visitors, NAT holes, heartbeats.

An agent's `ClientSession` and a node's `ServerSession` talk through two real `Mux` ends wired
back to back; time is a number passed in, so heartbeats and replay windows are tested without
sleeping.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxcommon.tunnel.protocol.control import (
    ClientSession,
    LoginAccepted,
    LoginFailed,
    LoginRefused,
    LoginSucceeded,
    NatHoleAnswered,
    NatHoleInvited,
    NatHoleReported,
    NatHoleRequested,
    PeerTimedOut,
    ProxyAccepted,
    ProxyCloseConfirmed,
    ProxyClosed,
    ProxyRejected,
    ProxyRequested,
    ServerSession,
    VisitorAccepted,
    VisitorRejected,
    VisitorRequested,
    VisitorStreamOpened,
    WorkStreamOpened,
)
from fluxcommon.tunnel.protocol.frames import (
    ControlFrame,
    FrameDecoder,
    OpenFrame,
    ProtocolError,
    UdpPacketFrame,
    encode_frame,
)
from fluxcommon.tunnel.protocol.messages import (
    MESSAGES,
    PROTOCOL_VERSION,
    CloseProxy,
    CloseProxyOk,
    Heartbeat,
    HeartbeatAck,
    Login,
    LoginError,
    LoginOk,
    LoginVerifier,
    NatHoleInvite,
    NatHoleRequest,
    NatHoleResponse,
    NatHoleResult,
    NewProxy,
    NewProxyError,
    NewProxyOk,
    ReplayCache,
    Visitor,
    VisitorError,
    VisitorOk,
    check_visitor,
    login_digest,
    parse_message,
)
from fluxcommon.tunnel.protocol.mux import ControlMessage, Data, Mux, StreamError, StreamReset, UdpPacket

T0 = 1_700_000_000.0
TOKEN = "change-me"


def nonces() -> Any:
    counter = iter(range(10**6))
    return lambda: f"{next(counter):032x}"


class Link:
    """A client session and a server session over two muxes, pumped by hand."""

    def __init__(
        self,
        *,
        token: str = TOKEN,
        verifier: LoginVerifier | None = None,
        name: str = "office",
        run_id: str = "",
        version: int = PROTOCOL_VERSION,
        client_now: float = T0,
        new_nonce: Any = None,
    ) -> None:
        self.cmux, self.smux = Mux("client"), Mux("server")
        self.verifier = verifier or LoginVerifier(TOKEN)
        self.server = ServerSession(
            self.smux, self.verifier, heartbeat_interval=10, heartbeat_timeout=30, new_run_id=lambda: "run-1"
        )
        self.client = ClientSession(
            self.cmux, name=name, token=token, run_id=run_id, version=version, new_nonce=new_nonce or nonces()
        )
        self.server.start(T0)
        self.client.start(client_now)

    def pump(self, now: float = T0) -> tuple[list[object], list[object]]:
        """Move bytes both ways until quiet; returns (client events, server events)."""
        at_client: list[object] = []
        at_server: list[object] = []
        while True:
            to_server, to_client = self.cmux.data_to_send(), self.smux.data_to_send()
            if not to_server and not to_client:
                return at_client, at_server
            for event in self.smux.receive_data(to_server):
                at_server += self.server.handle_event(event, now)
            for event in self.cmux.receive_data(to_client):
                at_client += self.client.handle_event(event, now)


def logged_in() -> Link:
    link = Link()
    link.pump()
    assert link.client.state == link.server.state == "active"
    return link


# -- login ---------------------------------------------------------------------------------


def test_login_succeeds_with_a_run_id_and_heartbeat_settings() -> None:
    link = Link()
    at_client, at_server = link.pump()
    assert at_server == [LoginAccepted("office", "run-1", False, {})]
    assert at_client == [LoginSucceeded("run-1", PROTOCOL_VERSION, 10.0)]
    assert link.client.run_id == "run-1" and link.client.heartbeat_timeout == 30.0


def test_reconnect_keeps_the_run_id() -> None:
    link = Link(run_id="run-0ld")
    at_client, at_server = link.pump()
    assert at_server == [LoginAccepted("office", "run-0ld", True, {})]
    assert at_client == [LoginSucceeded("run-0ld", PROTOCOL_VERSION, 10.0)]


def test_the_token_never_crosses_the_wire() -> None:
    link = Link(token="a-very-secret-token")
    wire = link.cmux.data_to_send()
    assert b"a-very-secret-token" not in wire
    (frame,) = FrameDecoder().receive_data(wire)
    assert isinstance(frame, ControlFrame)
    login = parse_message(frame.message, from_agent=True)
    assert isinstance(login, Login)
    assert login.digest == login_digest("a-very-secret-token", PROTOCOL_VERSION, "office", int(T0), login.nonce)
    for event in link.smux.receive_data(wire):
        link.server.handle_event(event, T0)
    answer = link.smux.data_to_send()
    assert b"a-very-secret-token" not in answer


def test_wrong_token_is_refused() -> None:
    link = Link(token="guess")
    at_client, at_server = link.pump()
    (refused,) = at_server
    assert isinstance(refused, LoginRefused)
    assert refused.message.startswith("authentication failed: the token digest does not match")
    assert at_client == [LoginFailed(refused.message)]
    assert link.server.state == link.client.state == "closed"
    with pytest.raises(StreamError):  # the node is going away: no streams on a refused session
        link.smux.open_stream({})


@pytest.mark.parametrize(("skew", "word"), [(-301, "behind"), (400, "ahead of")])
def test_timestamp_outside_the_replay_window_is_refused(skew: float, word: str) -> None:
    link = Link(client_now=T0 + skew)
    at_client, _ = link.pump()
    (failed,) = at_client
    assert isinstance(failed, LoginFailed)
    assert f"{abs(skew)} s {word} the node's clock (replay window ±300 s)" in failed.message


def test_timestamp_inside_the_window_is_accepted() -> None:
    link = Link(client_now=T0 - 299)
    assert isinstance(link.pump()[0][0], LoginSucceeded)


def test_replayed_login_is_refused() -> None:
    verifier = LoginVerifier(TOKEN)
    first = Link(verifier=verifier)
    recorded = first.cmux.data_to_send()  # an eavesdropper keeps the LOGIN bytes
    for event in first.smux.receive_data(recorded):
        assert isinstance(first.server.handle_event(event, T0)[0], LoginAccepted)
    replay_mux = Mux("server")
    replay = ServerSession(replay_mux, verifier)
    replay.start(T0 + 5)
    (event,) = replay_mux.receive_data(recorded)
    (refused,) = replay.handle_event(event, T0 + 5)
    assert isinstance(refused, LoginRefused) and "replayed login refused" in refused.message


def test_same_nonce_twice_from_one_agent_is_refused_but_keyed_per_agent() -> None:
    verifier = LoginVerifier(TOKEN)
    assert isinstance(Link(verifier=verifier, new_nonce=lambda: "ab" * 16).pump()[0][0], LoginSucceeded)
    (again,) = Link(verifier=verifier, new_nonce=lambda: "ab" * 16).pump()[0]
    assert isinstance(again, LoginFailed) and "nonce was already used" in again.message
    other = Link(verifier=verifier, name="lab", new_nonce=lambda: "ab" * 16)
    assert isinstance(other.pump()[0][0], LoginSucceeded)


def test_version_mismatch_is_refused_naming_both_versions() -> None:
    link = Link(version=PROTOCOL_VERSION + 1)
    at_client, at_server = link.pump()
    expected = (
        f"protocol version mismatch: agent speaks version {PROTOCOL_VERSION + 1}, "
        f"node speaks version {PROTOCOL_VERSION}"
    )
    assert isinstance(at_server[0], LoginRefused) and at_server[0].message.startswith(expected)
    assert isinstance(at_client[0], LoginFailed) and at_client[0].message.startswith(expected)


def test_a_future_login_shape_still_gets_the_version_message() -> None:
    mux = Mux("server")
    session = ServerSession(mux, LoginVerifier(TOKEN))
    session.start(T0)
    raw = {"type": "login", "version": 7, "name": "x", "credentials": {"scheme": "new"}}
    (event,) = mux.receive_data(encode_frame(ControlFrame(raw)))
    (refused,) = session.handle_event(event, T0)
    assert isinstance(refused, LoginRefused)
    assert f"agent speaks version 7, node speaks version {PROTOCOL_VERSION}" in refused.message


def test_replay_cache_is_bounded_and_expires() -> None:
    cache = ReplayCache(window=300, max_per_key=2, max_keys=2)
    assert cache.check_and_add("a", "n1", T0, T0) is None
    assert cache.check_and_add("a", "n2", T0, T0) is None
    assert "too many logins" in (cache.check_and_add("a", "n3", T0, T0) or "")
    assert cache.check_and_add("b", "n1", T0, T0) is None
    assert "too many agents" in (cache.check_and_add("c", "n1", T0, T0) or "")
    later = T0 + 301  # a's and b's entries left the window
    assert cache.check_and_add("a", "n3", later, later) is None
    assert cache.check_and_add("c", "n1", later, later) is None
    assert len(cache) == 2


def test_per_agent_tokens() -> None:
    verifier = LoginVerifier({"office": "t-office"}.get)
    assert isinstance(Link(verifier=verifier, token="t-office").pump()[0][0], LoginSucceeded)
    (failed,) = Link(verifier=verifier, name="stranger", token="t-office").pump()[0]
    assert isinstance(failed, LoginFailed)


def test_login_timeout_on_both_sides() -> None:
    link = Link()
    assert link.server.next_deadline() == T0 + 10 and link.client.next_deadline() == T0 + 10
    assert link.server.tick(T0 + 9) == [] and link.client.tick(T0 + 9) == []
    assert link.server.tick(T0 + 10) == [PeerTimedOut("no login within 10 s")]
    assert link.client.tick(T0 + 10) == [PeerTimedOut("no login answer from the node within 10 s")]
    assert link.server.next_deadline() is None


# -- what may not happen before login ------------------------------------------------------


def fresh_server() -> tuple[Mux, ServerSession]:
    mux = Mux("server")
    session = ServerSession(mux, LoginVerifier(TOKEN))
    session.start(T0)
    return mux, session


@pytest.mark.parametrize(
    "wire",
    [
        encode_frame(ControlFrame(NewProxy("web", "tcp", {}).to_wire())),
        encode_frame(ControlFrame({"type": "ping", "seq": 1})),
        encode_frame(OpenFrame(1, {"kind": "visitor", "proxy": "x"})),
    ],
)
def test_nothing_but_login_before_login(wire: bytes) -> None:
    mux, session = fresh_server()
    with pytest.raises(ProtocolError, match="before login"):
        for event in mux.receive_data(wire):
            session.handle_event(event, T0)


def test_messages_in_the_wrong_direction_or_twice_are_protocol_errors() -> None:
    link = logged_in()
    with pytest.raises(ProtocolError, match="wrong direction"):
        link.server.handle_event(_control(LoginOk("r", 1, 1, 1, "ab" * 16, "00" * 32).to_wire()), T0)
    login = Login(1, "office", "", int(T0), "cd" * 16, login_digest(TOKEN, 1, "office", int(T0), "cd" * 16))
    with pytest.raises(ProtocolError, match="second login"):
        link.server.handle_event(_control(login.to_wire()), T0)
    with pytest.raises(ProtocolError, match="after login"):
        link.client.handle_event(_control(LoginOk("r", 1, 1, 1, "ab" * 16, "00" * 32).to_wire()), T0)
    with pytest.raises(ProtocolError, match="not requested"):
        link.client.handle_event(_control(NewProxyOk("ghost", "x").to_wire()), T0)


def _control(message: dict[str, Any]) -> ControlMessage:
    return ControlMessage(message)


# -- proxies and work streams --------------------------------------------------------------


def test_new_proxy_accepted_then_work_stream_then_close() -> None:
    link = logged_in()
    link.client.new_proxy("ssh", "tcp", {"localPort": 22, "remotePort": 6000})
    _, at_server = link.pump()
    assert at_server == [ProxyRequested("ssh", "tcp", {"localPort": 22, "remotePort": 6000})]
    link.server.accept_proxy("ssh", "0.0.0.0:6000")
    at_client, _ = link.pump()
    assert at_client == [ProxyAccepted("ssh", "0.0.0.0:6000")]

    sid = link.server.open_work_stream("ssh", {"src": "203.0.113.9:51000"})
    link.smux.send(sid, b"SSH-2.0-client\r\n")
    at_client, _ = link.pump()
    assert at_client == [
        WorkStreamOpened(sid, "ssh", {"src": "203.0.113.9:51000", "kind": "work", "proxy": "ssh"}),
        Data(sid, b"SSH-2.0-client\r\n"),
    ]

    link.client.close_proxy("ssh")
    at_client, at_server = link.pump()
    assert at_server == [ProxyClosed("ssh")] and at_client == [ProxyCloseConfirmed("ssh")]
    with pytest.raises(StreamError):
        link.server.open_work_stream("ssh")


def test_new_proxy_rejected_duplicate_and_limits() -> None:
    link = logged_in()
    link.server.max_proxies = 2
    link.client.new_proxy("a", "tcp", {"remotePort": 80})
    link.pump()
    link.server.reject_proxy("a", "port 80 is not allowed (allow_ports 6000-6999)")
    assert link.pump()[0] == [ProxyRejected("a", "port 80 is not allowed (allow_ports 6000-6999)")]
    link.client.new_proxy("b", "udp")
    link.client.new_proxy("c", "http", {"customDomains": ["x.example.com"]})
    link.client.new_proxy("d", "tcp")
    at_client, at_server = link.pump()
    assert [type(e) for e in at_server] == [ProxyRequested, ProxyRequested]
    assert at_client == [ProxyRejected("d", "too many proxies (limit 2)")]
    with pytest.raises(StreamError, match="already requested"):
        link.client.new_proxy("b", "udp")
    with pytest.raises(ValueError, match="proxy_type"):
        link.client.new_proxy("e", "ftp")
    with pytest.raises(ValueError, match="name"):
        link.client.new_proxy("bad|name", "tcp")
    with pytest.raises(ValueError, match="local_addrs"):
        link.client.request_nat_hole("s1", "b", "provider", ["x"] * 17)


def test_work_stream_for_an_unknown_proxy_is_reset() -> None:
    link = logged_in()
    sid = link.smux.open_stream({"kind": "work", "proxy": "nope"})
    at_client, _ = link.pump()
    assert at_client == []
    assert not link.smux.is_open(sid)


def test_udp_packets_pass_only_for_datagram_proxies() -> None:
    link = logged_in()
    link.client.new_proxy("dns", "udp", {"localPort": 53})
    link.pump()
    link.server.accept_proxy("dns", "0.0.0.0:6053")
    link.pump()
    link.smux.send_udp("dns", "198.51.100.7:4000", b"query")
    link.smux.send_udp("other", "198.51.100.7:4000", b"junk")
    link.cmux.send_udp("dns", "198.51.100.7:4000", b"answer")
    at_client, at_server = link.pump()
    assert at_client == [UdpPacket("dns", "198.51.100.7:4000", b"query")]
    assert at_server == [UdpPacket("dns", "198.51.100.7:4000", b"answer")]
    assert link.client.udp_dropped == 1


# -- visitors and NAT holes ----------------------------------------------------------------


def test_secret_visitor_checked_then_streams_flow() -> None:
    link = logged_in()
    link.client.visit("db", "alice", "s3cret-key", T0)
    (requested,) = link.pump()[1]
    assert isinstance(requested, VisitorRequested) and requested.proxy == "db" and requested.user == "alice"
    assert check_visitor("s3cret-key", requested, T0) is None
    assert check_visitor("wrong", requested, T0) == "visitor of 'db' refused: wrong secret key"
    assert "outside the replay window" in (check_visitor("s3cret-key", requested, T0 + 301) or "")
    cache = ReplayCache()
    assert check_visitor("s3cret-key", requested, T0, replay_cache=cache) is None
    assert "already used" in (check_visitor("s3cret-key", requested, T0, replay_cache=cache) or "")

    with pytest.raises(StreamError, match="not accepted"):
        link.client.open_visitor_stream("db")
    link.server.accept_visitor("db")
    assert link.pump()[0] == [VisitorAccepted("db")]
    sid = link.client.open_visitor_stream("db", {"src": "127.0.0.1:5000"})
    link.cmux.send(sid, b"hello")
    assert link.pump()[1] == [
        VisitorStreamOpened(sid, "db", {"src": "127.0.0.1:5000", "kind": "visitor", "proxy": "db"}),
        Data(sid, b"hello"),
    ]


def test_visitor_rejected_and_unaccepted_visitor_streams_reset() -> None:
    link = logged_in()
    link.client.visit("db", "alice", "guess", T0)
    link.pump()
    link.server.reject_visitor("db", "visitor of 'db' refused: wrong secret key")
    assert link.pump()[0] == [VisitorRejected("db", "visitor of 'db' refused: wrong secret key")]
    sid = link.cmux.open_stream({"kind": "visitor", "proxy": "db"})
    at_client, at_server = link.pump()
    assert at_server == []
    assert at_client == [StreamReset(sid, 1, "not an accepted visitor stream")]


def test_nat_hole_exchange() -> None:
    provider = logged_in()
    provider.client.new_proxy("p2p", "xtcp", {"secretKey": "k"})
    provider.pump()
    provider.server.accept_proxy("p2p", "")
    provider.pump()

    visitor = logged_in()
    with pytest.raises(ProtocolError, match="without an accepted visitor"):
        visitor.server.handle_event(_control(NatHoleRequest("s1", "p2p", "visitor", []).to_wire()), T0)
    visitor = logged_in()
    visitor.client.visit("p2p", "bob", "k", T0)
    visitor.pump()
    visitor.server.accept_visitor("p2p")
    visitor.pump()
    visitor.client.request_nat_hole("s1", "p2p", "visitor", ["192.168.1.5:40000"])
    assert visitor.pump()[1] == [NatHoleRequested("s1", "p2p", "visitor", ["192.168.1.5:40000"])]

    provider.server.invite_nat_hole("s1", "p2p")
    assert provider.pump()[0] == [NatHoleInvited("s1", "p2p")]
    provider.client.request_nat_hole("s1", "p2p", "provider", ["10.0.0.8:50000"])
    assert provider.pump()[1] == [NatHoleRequested("s1", "p2p", "provider", ["10.0.0.8:50000"])]

    visitor.server.answer_nat_hole("s1", "198.51.100.2:50001", ["10.0.0.8:50000"])
    provider.server.answer_nat_hole("s1", "203.0.113.4:40001", ["192.168.1.5:40000"])
    assert visitor.pump()[0] == [NatHoleAnswered("s1", "198.51.100.2:50001", ["10.0.0.8:50000"], "")]
    assert provider.pump()[0] == [NatHoleAnswered("s1", "203.0.113.4:40001", ["192.168.1.5:40000"], "")]
    provider.client.report_nat_hole("s1", True)
    assert provider.pump()[1] == [NatHoleReported("s1", True, "")]
    with pytest.raises(ProtocolError, match="without an invitation"):
        provider.server.handle_event(_control(NatHoleRequest("s2", "p2p", "provider", []).to_wire()), T0)


# -- heartbeats ----------------------------------------------------------------------------


def test_heartbeats_keep_the_session_and_silence_times_out() -> None:
    link = logged_in()
    client, server = link.client, link.server
    assert client.next_deadline() == T0 + 10
    assert client.tick(T0 + 5) == [] and link.cmux.data_to_send() == b""
    assert client.tick(T0 + 10) == []
    assert link.pump(now=T0 + 10.25) == ([], [])  # ping answered by pong, both consumed by the sessions
    assert client.rtt == 0.25
    assert server.next_deadline() == T0 + 10.25 + 30
    assert client.next_deadline() == T0 + 20
    assert server.tick(T0 + 40) == []
    (timeout,) = server.tick(T0 + 41)
    assert isinstance(timeout, PeerTimedOut) and "'office'" in timeout.reason
    (timeout,) = client.tick(T0 + 41)
    assert isinstance(timeout, PeerTimedOut) and "nothing heard from the node" in timeout.reason


# -- message validation --------------------------------------------------------------------

names = st.text(st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters="|"), min_size=1, max_size=20)
hexes = st.text("0123456789abcdef", min_size=16, max_size=64)
ids = st.text("abcXYZ019_.-", min_size=1, max_size=20)
messages = st.one_of(
    st.builds(
        Login,
        st.integers(0, 9),
        names,
        ids | st.just(""),
        st.integers(0, 2**40),
        hexes,
        hexes.map(lambda h: (h * 4)[:64]),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    ),
    st.builds(NewProxy, names, st.sampled_from(["tcp", "udp", "http", "https", "stcp", "sudp", "xtcp"]), st.just({})),
    st.builds(CloseProxy, names),
    st.builds(Heartbeat, st.integers(0, 2**53)),
    st.builds(Visitor, names, st.text(max_size=10), st.integers(0, 2**40), hexes, hexes.map(lambda h: (h * 4)[:64])),
    st.builds(
        NatHoleRequest,
        ids,
        names,
        st.sampled_from(["visitor", "provider"]),
        st.lists(st.text(max_size=20), max_size=16),
    ),
    st.builds(NatHoleResult, ids, st.booleans(), st.text(max_size=20)),
    st.builds(
        NatHoleResponse, ids, st.text(max_size=20), st.lists(st.text(max_size=20), max_size=16), st.text(max_size=20)
    ),
)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_messages_round_trip(message: Any) -> None:
    assert parse_message(message.to_wire(), from_agent=message.FROM_AGENT) == message
    with pytest.raises(ProtocolError, match="wrong direction"):
        parse_message(message.to_wire(), from_agent=not message.FROM_AGENT)


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-5, 2**41)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_any = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c), max_leaves=8
)
field_names = st.sampled_from(
    ["version", "name", "run_id", "auth", "metas", "proxy_type", "options", "seq", "sid", "proxy", "role", "user"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["login", "new_proxy", "close_proxy", "ping", "visitor", "nat_hole_request", "login_ok", "x"]),
    st.dictionaries(field_names, json_any, max_size=6),
    st.booleans(),
)
def test_random_messages_raise_only_protocol_error(mtype: str, fields: dict[str, Any], from_agent: bool) -> None:
    try:
        parse_message({"type": mtype, **fields}, from_agent=from_agent)
    except ProtocolError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=5), st.integers(0, 2))
def test_fuzzed_bytes_into_a_server_session_raise_only_protocol_error(chunks: list[bytes], prefix: int) -> None:
    link = Link()
    wire = [link.cmux.data_to_send()][:prefix] + chunks  # with or without a valid login first
    try:
        for chunk in wire:
            for event in link.smux.receive_data(chunk):
                link.server.handle_event(event, T0)
    except ProtocolError:
        pass


node_messages = st.one_of(
    st.builds(LoginOk, ids, st.integers(0, 3), st.floats(0.5, 60), st.floats(1, 100)),
    st.builds(LoginError, st.text(max_size=20)),
    st.builds(NewProxyOk, names, st.text(max_size=20)),
    st.builds(NewProxyError, names, st.text(max_size=20)),
    st.builds(CloseProxyOk, names),
    st.builds(HeartbeatAck, st.integers(0, 5)),
    st.builds(VisitorOk, names),
    st.builds(VisitorError, names, st.text(max_size=10)),
    st.builds(NatHoleInvite, ids, st.sampled_from(["web", "dns", "x"])),
    st.builds(NatHoleResponse, ids, st.text(max_size=20)),
)
stream_meta = st.dictionaries(st.sampled_from(["kind", "proxy"]), st.sampled_from(["work", "visitor", "web", "dns", 7]))


def session_frames(direction: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        direction.map(lambda m: ControlFrame(m.to_wire())),
        st.builds(
            lambda t, f: ControlFrame({"type": t, **f}),
            st.sampled_from(sorted(MESSAGES)),
            st.dictionaries(field_names, json_any, max_size=4),
        ),
        st.builds(OpenFrame, st.integers(1, 12), stream_meta),
        st.builds(UdpPacketFrame, st.sampled_from(["web", "dns", "x"]), st.just("1.2.3.4:5"), st.binary(max_size=5)),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.data())
def test_structured_fuzz_into_logged_in_sessions_raises_only_protocol_error(to_node: bool, data: st.DataObject) -> None:
    link = logged_in()
    link.client.new_proxy("dns", "udp")
    link.client.new_proxy("web", "http")
    link.pump()
    link.server.accept_proxy("dns", ":6053")
    link.pump()
    frames = data.draw(st.lists(session_frames(messages if to_node else node_messages), max_size=8))
    mux, session = (link.smux, link.server) if to_node else (link.cmux, link.client)
    try:
        for frame in frames:
            for event in mux.receive_data(encode_frame(frame)):
                session.handle_event(event, T0 + 1)
            session.tick(T0 + 2)
            mux.data_to_send()
    except ProtocolError:
        pass
