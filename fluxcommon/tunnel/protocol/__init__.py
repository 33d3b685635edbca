"""The tunnel wire protocol, shared by the node's tunnel server and the `flux-tunnel` agent.

Sans-IO throughout: bytes and events in, bytes and events out, time passed in as `now`.
Nothing here imports trio, socket or any other I/O library (tests/test_layers.py checks it);
the trio shell that drives it over a connection is `fluxcommon.tunnel.transport`.

- `frames`: the binary framing (layout documented there), `FrameDecoder`, `encode_frame`.
- `mux`: `Mux`, streams with per-stream flow control over one connection.
- `messages`: control messages, login and visitor authentication.
- `binding`: the channel binding that ties the login to the TLS connection.
- `control`: `ServerSession` / `ClientSession`, each side's state machine.
- `proxies`: the options a NEW_PROXY may carry, validated.
- `crypto`: optional per-proxy payload encryption and compression.

Peer misbehaviour raises `ProtocolError` (close the connection); local misuse raises
`StreamError` or `ValueError`.
"""

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
    ProxyAssigned,
    ProxyCloseConfirmed,
    ProxyClosed,
    ProxyRejected,
    ProxyRequested,
    ServerSession,
    SessionEvent,
    VisitorAccepted,
    VisitorRejected,
    VisitorRequested,
    VisitorStreamOpened,
    WorkStreamOpened,
)
from fluxcommon.tunnel.protocol.crypto import Inbound, Outbound, TransformError
from fluxcommon.tunnel.protocol.frames import FRAMING_VERSION, FrameDecoder, ProtocolError, encode_frame
from fluxcommon.tunnel.protocol.messages import (
    PROTOCOL_VERSION,
    PROXY_TYPES,
    REPLAY_WINDOW,
    Credential,
    LoginVerifier,
    ReplayCache,
    check_visitor,
    login_digest,
    node_digest,
    visitor_digest,
)
from fluxcommon.tunnel.protocol.mux import (
    INITIAL_WINDOW,
    ControlMessage,
    Data,
    Event,
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

__all__ = [
    "FRAMING_VERSION",
    "INITIAL_WINDOW",
    "PROTOCOL_VERSION",
    "PROXY_TYPES",
    "REPLAY_WINDOW",
    "ClientSession",
    "ControlMessage",
    "Credential",
    "Data",
    "Event",
    "FrameDecoder",
    "GoAway",
    "Inbound",
    "LoginAccepted",
    "LoginFailed",
    "LoginRefused",
    "LoginSucceeded",
    "LoginVerifier",
    "Mux",
    "NatHoleAnswered",
    "NatHoleInvited",
    "NatHoleReported",
    "NatHoleRequested",
    "Outbound",
    "PeerTimedOut",
    "Ping",
    "Pong",
    "ProtocolError",
    "ProxyAccepted",
    "ProxyAssigned",
    "ProxyCloseConfirmed",
    "ProxyClosed",
    "ProxyRejected",
    "ProxyRequested",
    "ReplayCache",
    "ResetCode",
    "ServerSession",
    "SessionEvent",
    "StreamAccepted",
    "StreamEnded",
    "StreamError",
    "StreamOpened",
    "StreamReset",
    "TransformError",
    "UdpPacket",
    "VisitorAccepted",
    "VisitorRejected",
    "VisitorRequested",
    "VisitorStreamOpened",
    "WindowUpdated",
    "WorkStreamOpened",
    "check_visitor",
    "encode_frame",
    "login_digest",
    "node_digest",
    "visitor_digest",
]
