"""The tunnel login is mutual and bound to the TLS connection (`fluxcommon.tunnel.protocol.binding`,
`messages`, `control`): sans-IO, two real `Mux` ends back to back, a real TLS handshake over
memory BIOs for the binding itself.

A relay in the middle that terminates TLS with its own certificate makes the agent bind to that
certificate: the node refuses the login. A fake node (or relay) without the token cannot make
the proof the agent checks in LOGIN_OK. Tunnel users log in with their own tokens only.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxcommon.tlsutil import self_signed, server_context
from fluxcommon.tunnel.protocol.binding import NO_BINDING, end_point, own_end_point, peer_end_point, session_tag
from fluxcommon.tunnel.protocol.control import (
    NODE_NOT_PROVEN,
    ClientSession,
    LoginAccepted,
    LoginFailed,
    LoginRefused,
    LoginSucceeded,
    ServerSession,
)
from fluxcommon.tunnel.protocol.frames import ControlFrame, FrameDecoder, encode_frame
from fluxcommon.tunnel.protocol.messages import (
    PROTOCOL_VERSION,
    Credential,
    Login,
    LoginOk,
    LoginVerifier,
    node_digest,
    parse_message,
)
from fluxcommon.tunnel.protocol.mux import Mux, StreamError

T0 = 1_700_000_000.0
NODE_CERT = "a1" * 32  # the node's tls-server-end-point
RELAY_CERT = "b2" * 32  # a relay's own certificate


def nonces(prefix: str = "") -> Any:
    counter = iter(range(10**6))
    return lambda: (prefix + f"{next(counter):032x}")[-32:]


def agent(
    mux: Mux, *, name: str = "office", token: str = "t-office", binding: str = NODE_CERT, run_id: str = ""
) -> ClientSession:
    return ClientSession(mux, name=name, token=token, run_id=run_id, new_nonce=nonces("a"), channel_binding=binding)


def node(mux: Mux, verifier: LoginVerifier, *, binding: str = NODE_CERT, **kw: Any) -> ServerSession:
    return ServerSession(
        mux, verifier, new_run_id=lambda: "run-new", new_nonce=nonces("b"), channel_binding=binding, **kw
    )


def pump(cmux: Mux, client: ClientSession, smux: Mux, server: ServerSession) -> tuple[list[Any], list[Any]]:
    at_client: list[Any] = []
    at_server: list[Any] = []
    while True:
        up, down = cmux.data_to_send(), smux.data_to_send()
        if not up and not down:
            return at_client, at_server
        for event in smux.receive_data(up):
            at_server += server.handle_event(event, T0)
        for event in cmux.receive_data(down):
            at_client += client.handle_event(event, T0)


def login(
    verifier: LoginVerifier, *, agent_binding: str = NODE_CERT, node_binding: str = NODE_CERT, **kw: Any
) -> tuple[ClientSession, ServerSession, list[Any], list[Any]]:
    cmux, smux = Mux("client"), Mux("server")
    may_resume = kw.pop("may_resume", None)
    server = node(smux, verifier, binding=node_binding, **({"may_resume": may_resume} if may_resume else {}))
    client = agent(cmux, binding=agent_binding, **kw)
    server.start(T0)
    client.start(T0)
    at_client, at_server = pump(cmux, client, smux, server)
    return client, server, at_client, at_server


USERS = {"office": "t-office", "lab": "t-lab"}


# -- the binding itself --------------------------------------------------------------------


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject, c_in: Any, c_out: Any, s_in: Any, s_out: Any) -> None:
    done = {"c": False, "s": False}
    for _ in range(20):
        for key, obj in (("c", client), ("s", server)):
            if not done[key]:
                try:
                    obj.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("TLS handshake did not finish")


def test_agent_and_node_compute_the_same_binding_over_a_real_handshake() -> None:
    cert, key = self_signed("node.example.test")
    other_cert, other_key = self_signed("relay.example.test")
    for presented_cert, presented_key, same in ((cert, key, True), (other_cert, other_key, False)):
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        cctx = ssl.create_default_context()
        cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE  # an agent that does not verify the node
        client = cctx.wrap_bio(c_in, c_out, server_hostname="node.example.test")
        server = server_context(presented_cert, presented_key).wrap_bio(s_in, s_out, server_side=True)
        _handshake(client, server, c_in, c_out, s_in, s_out)
        assert (peer_end_point(client) == own_end_point(cert)) is same
    assert len(own_end_point(cert)) == 64 and own_end_point(cert) != own_end_point(other_cert)
    with pytest.raises(ValueError):
        end_point(b"")


def test_session_tag_is_short_stable_and_not_the_run_id() -> None:
    assert session_tag("0123456789abcdef") == session_tag("0123456789abcdef")
    assert len(session_tag("0123456789abcdef")) == 12 and "0123456789abcdef" not in session_tag("0123456789abcdef")
    assert session_tag("") == ""


# -- a mutual login ------------------------------------------------------------------------


def test_mutual_login_succeeds_and_the_node_proves_the_token() -> None:
    client, server, at_client, at_server = login(LoginVerifier(users=USERS))
    assert at_server == [LoginAccepted("office", "run-new", False, {}, "office")]
    assert at_client == [LoginSucceeded("run-new", PROTOCOL_VERSION, 30.0)]
    assert (server.user, server.token) == ("office", "t-office")
    assert client.state == server.state == "active"


@settings(max_examples=60, deadline=None)
@given(
    token=st.text(min_size=1, max_size=40),
    name=st.text("abcdefgh-_", min_size=1, max_size=12),
    run_id=st.text("abcXYZ019_.-", max_size=20),
    binding=st.sampled_from([NO_BINDING, NODE_CERT]) | st.text("0123456789abcdef", min_size=64, max_size=64),
)
def test_any_token_name_and_binding_log_in_when_both_sides_agree(
    token: str, name: str, run_id: str, binding: str
) -> None:
    client, server, at_client, _ = login(
        LoginVerifier(token), agent_binding=binding, node_binding=binding, name=name, token=token, run_id=run_id
    )
    assert isinstance(at_client[0], LoginSucceeded), at_client
    assert server.user == "" and server.token == token
    assert client.run_id == (run_id or "run-new")


@settings(max_examples=60, deadline=None)
@given(
    seen_by_agent=st.text("0123456789abcdef", min_size=64, max_size=64) | st.just(NO_BINDING),
    seen_by_node=st.text("0123456789abcdef", min_size=64, max_size=64) | st.just(NO_BINDING),
)
def test_a_relay_with_its_own_certificate_makes_the_node_refuse(seen_by_agent: str, seen_by_node: str) -> None:
    # The relay holds no token: it passes the agent's LOGIN on to the node over its own TLS
    # connection. The agent bound the MAC to the relay's certificate, the node to its own.
    _, server, at_client, at_server = login(
        LoginVerifier(users=USERS), agent_binding=seen_by_agent, node_binding=seen_by_node
    )
    if seen_by_agent == seen_by_node:
        assert isinstance(at_server[0], LoginAccepted)
        return
    (refused,) = at_server
    assert isinstance(refused, LoginRefused) and "TLS relay" in refused.message
    assert isinstance(at_client[0], LoginFailed) and server.state == "closed"


def test_a_relay_replaying_the_login_over_its_own_tls_is_refused() -> None:
    """The relay records the agent's LOGIN (made for the relay's certificate) and sends it to
    the real node; then it tries the same LOGIN on a plain connection (binding "")."""
    cmux = Mux("client")
    agent(cmux, binding=RELAY_CERT).start(T0)
    recorded = cmux.data_to_send()
    for node_binding in (NODE_CERT, NO_BINDING):
        smux = Mux("server")
        server = node(smux, LoginVerifier(users=USERS), binding=node_binding)
        server.start(T0)
        (event,) = smux.receive_data(recorded)
        (refused,) = server.handle_event(event, T0)
        assert isinstance(refused, LoginRefused) and refused.message.startswith("authentication failed")


def _fake_node_answer(client_mux: Mux, client: ClientSession, proof_token: str, *, run_id: str = "run-x",
                      proof_run_id: str | None = None, binding: str = RELAY_CERT) -> list[Any]:  # fmt: skip
    """A node (or relay) that answers the agent's LOGIN with LOGIN_OK, its proof made with `proof_token`."""
    (frame,) = FrameDecoder().receive_data(client_mux.data_to_send())
    assert isinstance(frame, ControlFrame)
    login_msg = parse_message(frame.message, from_agent=True)
    assert isinstance(login_msg, Login)
    proof = node_digest(proof_token, login_msg, binding, "cd" * 16, proof_run_id or run_id)
    answer = LoginOk(run_id, PROTOCOL_VERSION, 10.0, 30.0, "cd" * 16, proof)
    out: list[Any] = []
    for event in client_mux.receive_data(encode_frame(ControlFrame(answer.to_wire()))):
        out += client.handle_event(event, T0)
    return out


def test_a_fake_node_without_the_token_cannot_prove_itself() -> None:
    cmux = Mux("client")
    client = agent(cmux, binding=RELAY_CERT)  # the agent does not verify: it sees the relay's certificate
    client.start(T0)
    events = _fake_node_answer(cmux, client, proof_token="a guess")
    assert events == [LoginFailed(NODE_NOT_PROVEN)]
    assert client.state == "closed"
    with pytest.raises(StreamError):  # nothing else is sent: no proxy, no visitor
        client.new_proxy("office.web", "tcp", {})


def test_a_proof_for_another_binding_or_run_id_is_refused_by_the_agent() -> None:
    # A relay that somehow got a proof from the real node (bound to the node's certificate)
    # cannot pass it on to an agent that sees the relay's certificate, nor change the run id.
    for kwargs in ({"binding": NODE_CERT}, {"proof_run_id": "run-y"}):
        cmux = Mux("client")
        client = agent(cmux, binding=RELAY_CERT)
        client.start(T0)
        assert _fake_node_answer(cmux, client, proof_token="t-office", **kwargs) == [LoginFailed(NODE_NOT_PROVEN)]
    cmux = Mux("client")
    client = agent(cmux, binding=RELAY_CERT)
    client.start(T0)
    assert isinstance(_fake_node_answer(cmux, client, proof_token="t-office")[0], LoginSucceeded)


# -- users ---------------------------------------------------------------------------------


def test_a_user_logs_in_with_its_own_token_only() -> None:
    verifier = LoginVerifier("shared", users=USERS)
    assert login(verifier, name="lab", token="t-lab")[3][0].user == "lab"
    _, _, at_client, _ = login(verifier, name="lab", token="t-office")  # another user's token
    assert isinstance(at_client[0], LoginFailed) and at_client[0].message.startswith("authentication failed")
    _, _, at_client, _ = login(verifier, name="office", token="shared")  # a user's name, the shared token
    assert isinstance(at_client[0], LoginFailed)
    assert "'office' is a tunnel user and logs in with its own token" in at_client[0].message
    _, server, at_client, _ = login(verifier, name="build-7", token="shared")  # the shared token, any other name
    assert isinstance(at_client[0], LoginSucceeded) and server.user == ""
    _, _, at_client, _ = login(verifier, name="build-7", token="t-office")  # a user's token, not as that user
    assert isinstance(at_client[0], LoginFailed)


def test_without_a_shared_token_only_users_log_in() -> None:
    verifier = LoginVerifier(users=USERS)
    assert isinstance(login(verifier, name="someone", token="")[2][0], LoginFailed)
    assert verifier.credential(
        Login(PROTOCOL_VERSION, "x", "", int(T0), "ab" * 16, "00" * 32, {}), NODE_CERT
    ).startswith("authentication failed")  # type: ignore[union-attr]
    assert Credential("t", "office").user == "office"


def test_a_presented_run_id_comes_back_only_when_the_node_allows_it() -> None:
    asked: list[tuple[str, str, str]] = []

    def never(run_id: str) -> bool:
        return False

    _, _, at_client, at_server = login(LoginVerifier(users=USERS), run_id="victim-run", may_resume=never)
    assert at_server[0].run_id == "run-new" and at_server[0].reconnect is False
    assert at_client[0].run_id == "run-new"  # the proof covers the run id the node gave

    def allowed(run_id: str) -> bool:
        asked.append((run_id, server2.name, server2.user))
        return True

    cmux, smux = Mux("client"), Mux("server")
    server2 = node(smux, LoginVerifier(users=USERS), may_resume=allowed)
    client2 = agent(cmux, run_id="my-run")
    server2.start(T0)
    client2.start(T0)
    _, at_server = pump(cmux, client2, smux, server2)
    assert at_server[0].run_id == "my-run" and at_server[0].reconnect is True
    assert asked == [("my-run", "office", "office")]  # asked once the login was authenticated
