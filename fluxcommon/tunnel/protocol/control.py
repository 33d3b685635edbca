"""Tunnel control sessions: each side's state machine over a `Mux`.

The messages they exchange and the login rules are in `fluxcommon.tunnel.protocol.messages`.
An agent (`ClientSession`) logs in to a node (`ServerSession`), registers proxies, keeps the
session alive with heartbeats, visits secret proxies and takes part in NAT hole punching.
It owns no socket and reads no clock: the driver feeds it the mux's events with the current
time (`now`, Unix seconds), calls `tick(now)` by `next_deadline()`, acts on the high-level
events it returns and flushes `mux.data_to_send()` afterwards.

Streams and datagrams
=====================

A user connection to a proxy becomes a stream the node opens with meta ``{"kind": "work",
"proxy": NAME, ...}`` (`ServerSession.open_work_stream`); the agent's session reports it as
`WorkStreamOpened` when NAME is a proxy the node accepted, and resets it otherwise. A visitor
agent opens ``{"kind": "visitor", "proxy": NAME, ...}`` streams once the node accepted its
VISITOR message (`VisitorStreamOpened` on the node). UDP packets pass only for the session's
accepted udp/sudp proxies or visitors; others are dropped and counted. Every other mux event
(data, FIN, resets, window updates, pings, GOAWAY) is passed through unchanged.

Login
=====

The login is mutual and bound to the connection's TLS session (see `fluxcommon.tunnel.protocol.messages`
and `fluxcommon.tunnel.protocol.binding`): each side is given the channel binding it sees
(`channel_binding`), the node proves in LOGIN_OK that it holds the agent's token, and the agent
refuses a LOGIN_OK without that proof (`LoginFailed`) before it sends anything else. The node's
session knows whom the agent logged in as (`ServerSession.user`: a tunnel user, "" for a shared
token). A presented run id is given back only when the driver's `may_resume(run_id)` allows it
(the node allows it unless another credential's session holds that run id); otherwise the
agent gets a new one, so knowing a run id never lets anyone replace a session.

Heartbeats
==========

Once logged in the agent sends PING every `heartbeat_interval`; the node answers PONG. Either
side reports `PeerTimedOut` when it has heard nothing from the other (any event counts) for
`heartbeat_timeout`, and both give up on a login that takes longer than `login_timeout`.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fluxcommon.tunnel.protocol.frames import ProtocolError
from fluxcommon.tunnel.protocol.messages import (
    DATAGRAM_TYPES,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    LOGIN_TIMEOUT,
    MAX_PROXIES,
    PROTOCOL_VERSION,
    AssignProxy,
    CloseProxy,
    CloseProxyOk,
    Heartbeat,
    HeartbeatAck,
    Login,
    LoginError,
    LoginOk,
    LoginVerifier,
    Message,
    NatHoleInvite,
    NatHoleRequest,
    NatHoleResponse,
    NatHoleResult,
    NewProxy,
    NewProxyError,
    NewProxyOk,
    Visitor,
    VisitorError,
    VisitorOk,
    _name,
    login_digest,
    node_digest,
    parse_message,
    version_mismatch,
    visitor_digest,
)
from fluxcommon.tunnel.protocol.mux import (
    ControlMessage,
    Event,
    GoAway,
    Mux,
    Ping,
    Pong,
    ResetCode,
    StreamError,
    StreamOpened,
    UdpPacket,
)

# -- session events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginAccepted:
    name: str
    run_id: str
    reconnect: bool  # the agent presented its previous run id, and got it back
    metas: dict[str, str]
    user: str = ""  # the tunnel user it logged in as ("" for a shared token)


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """LOGIN_ERROR is queued; the driver flushes the mux and closes the connection."""

    message: str


@dataclass(frozen=True, slots=True)
class ProxyRequested:
    """Answer with `ServerSession.accept_proxy` or `reject_proxy`."""

    name: str
    proxy_type: str
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProxyClosed:
    name: str


@dataclass(frozen=True, slots=True)
class VisitorRequested:
    """Check with `check_visitor`, answer with `accept_visitor` or `reject_visitor`."""

    proxy: str
    user: str
    timestamp: int
    nonce: str
    digest: str


@dataclass(frozen=True, slots=True)
class VisitorStreamOpened:
    stream_id: int
    proxy: str
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NatHoleRequested:
    sid: str
    proxy: str
    role: str
    local_addrs: list[str]


@dataclass(frozen=True, slots=True)
class NatHoleReported:
    sid: str
    success: bool
    message: str


@dataclass(frozen=True, slots=True)
class LoginSucceeded:
    run_id: str
    server_version: int
    heartbeat_interval: float


@dataclass(frozen=True, slots=True)
class LoginFailed:
    message: str


@dataclass(frozen=True, slots=True)
class ProxyAccepted:
    name: str
    remote_addr: str


@dataclass(frozen=True, slots=True)
class ProxyAssigned:
    """The node gave this agent a static mapping to serve (see `AssignProxy`)."""

    name: str
    proxy_type: str
    local_ip: str
    local_port: int
    remote_addr: str


@dataclass(frozen=True, slots=True)
class ProxyRejected:
    name: str
    message: str


@dataclass(frozen=True, slots=True)
class ProxyCloseConfirmed:
    name: str


@dataclass(frozen=True, slots=True)
class VisitorAccepted:
    proxy: str


@dataclass(frozen=True, slots=True)
class VisitorRejected:
    proxy: str
    message: str


@dataclass(frozen=True, slots=True)
class NatHoleInvited:
    sid: str
    proxy: str


@dataclass(frozen=True, slots=True)
class NatHoleAnswered:
    sid: str
    peer_addr: str
    peer_local_addrs: list[str]
    error: str


@dataclass(frozen=True, slots=True)
class WorkStreamOpened:
    stream_id: int
    proxy: str
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PeerTimedOut:
    reason: str


SessionEvent = (
    Event
    | LoginAccepted
    | LoginRefused
    | ProxyRequested
    | ProxyClosed
    | VisitorRequested
    | VisitorStreamOpened
    | NatHoleRequested
    | NatHoleReported
    | LoginSucceeded
    | LoginFailed
    | ProxyAccepted
    | ProxyRejected
    | ProxyAssigned
    | ProxyCloseConfirmed
    | VisitorAccepted
    | VisitorRejected
    | NatHoleInvited
    | NatHoleAnswered
    | WorkStreamOpened
    | PeerTimedOut
)

State = Literal["idle", "login", "active", "closed"]
NODE_NOT_PROVEN = (
    "the node did not prove that it holds this agent's token: a TLS relay or an impostor is between the "
    "agent and the node (or the node's token for this user differs); nothing was registered. Set "
    "transport.tls.trustedCaFile to verify the node's certificate"
)
_ALWAYS = (Ping, Pong, GoAway)  # mux events allowed before login


def _stream_target(meta: dict[str, Any], kind: str) -> str | None:
    proxy = meta.get("proxy")
    return proxy if meta.get("kind") == kind and isinstance(proxy, str) else None


def _send(mux: Mux, message: Message) -> None:
    """Queue `message`, validated as the peer will: a field the peer would refuse is a `ValueError` here."""
    wire = message.to_wire()
    try:
        type(message).from_wire(wire)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    mux.send_control(wire)


# -- the node's side -----------------------------------------------------------------------


class ServerSession:
    """The node's state machine for one agent connection.

    States: idle --start--> login --valid LOGIN--> active; login --bad LOGIN--> closed
    (LOGIN_ERROR queued); any --timeout--> closed.
    """

    def __init__(
        self,
        mux: Mux,
        verifier: LoginVerifier,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        login_timeout: float = LOGIN_TIMEOUT,
        max_proxies: int = MAX_PROXIES,
        new_run_id: Callable[[], str] = lambda: secrets.token_hex(8),
        new_nonce: Callable[[], str] = lambda: secrets.token_hex(16),
        channel_binding: str = "",
        may_resume: Callable[[str], bool] = lambda run_id: True,
    ) -> None:
        """`channel_binding`: the node's `binding.own_end_point` on a TLS connection, "" on a
        plain one. `may_resume(run_id)`: whether the agent, now authenticated (`name`, `user`,
        `token` set), gets back the run id it presented."""
        self.mux = mux
        self.verifier = verifier
        self.channel_binding = channel_binding
        self.may_resume = may_resume
        self._new_nonce = new_nonce
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.login_timeout = login_timeout
        self.max_proxies = max_proxies
        self._new_run_id = new_run_id
        self.state: State = "idle"
        self.name = ""
        self.run_id = ""
        self.token = ""  # the accepted token this agent logged in with (keys its payload encryption)
        self.user = ""  # the tunnel user it logged in as ("" for a shared token)
        self.pending_proxies: dict[str, NewProxy] = {}
        self.proxies: dict[str, tuple[NewProxy, str]] = {}  # name -> (request, remote_addr)
        self.pending_visitors: set[str] = set()
        self.visitors: set[str] = set()
        self.invited: dict[str, str] = {}  # NAT hole sid -> proxy
        self.udp_dropped = 0
        self._since = 0.0
        self._last_seen = 0.0

    def start(self, now: float) -> None:
        """The connection is up; the login clock starts."""
        self.state = "login"
        self._since = self._last_seen = now

    def next_deadline(self) -> float | None:
        if self.state == "login":
            return self._since + self.login_timeout
        if self.state == "active":
            return self._last_seen + self.heartbeat_timeout
        return None

    def tick(self, now: float) -> list[SessionEvent]:
        if self.state == "login" and now >= self._since + self.login_timeout:
            self.state = "closed"
            return [PeerTimedOut(f"no login within {self.login_timeout:.0f} s")]
        if self.state == "active" and now >= self._last_seen + self.heartbeat_timeout:
            self.state = "closed"
            return [PeerTimedOut(f"nothing heard from agent {self.name!r} for {now - self._last_seen:.0f} s")]
        return []

    def handle_event(self, event: Event, now: float) -> list[SessionEvent]:
        if self.state == "closed":
            return []
        if self.state == "idle":
            raise StreamError("ServerSession.start(now) was not called")
        self._last_seen = now
        if isinstance(event, ControlMessage):
            return self._control(event.message, now)
        if self.state != "active":
            if isinstance(event, _ALWAYS):
                return [event]
            raise ProtocolError(f"{type(event).__name__} before login")
        if isinstance(event, StreamOpened):
            proxy = _stream_target(event.meta, "visitor")
            if proxy is None or proxy not in self.visitors:
                self.mux.reset(event.stream_id, "not an accepted visitor stream", ResetCode.REFUSED)
                return []
            return [VisitorStreamOpened(event.stream_id, proxy, event.meta)]
        if isinstance(event, UdpPacket):
            entry = self.proxies.get(event.proxy)
            ok = event.proxy in self.visitors or (entry is not None and entry[0].proxy_type in DATAGRAM_TYPES)
            if not ok:
                self.udp_dropped += 1
                return []
        return [event]

    def _control(self, raw: dict[str, Any], now: float) -> list[SessionEvent]:
        if self.state == "login":
            if raw.get("type") != "login":
                raise ProtocolError(f"control message {str(raw.get('type'))[:40]!r} before login")
            version = raw.get("version")
            if type(version) is int and version != self.verifier.version:  # before strict parsing
                return self._refuse(version_mismatch(version, self.verifier.version))
        msg = parse_message(raw, from_agent=True)
        if isinstance(msg, Login):
            if self.state != "login":
                raise ProtocolError("second login on one connection")
            found = self.verifier.verify(msg, now, self.channel_binding)
            if isinstance(found, str):
                return self._refuse(found)
            self.token, self.user = found.token, found.user
            self.state = "active"
            self.name = msg.name
            resumed = bool(msg.run_id) and self.may_resume(msg.run_id)
            self.run_id = msg.run_id if resumed else self._new_run_id()
            nonce = self._new_nonce()
            proof = node_digest(self.token, msg, self.channel_binding, nonce, self.run_id)
            hb_interval, hb_timeout = self.heartbeat_interval, self.heartbeat_timeout
            _send(self.mux, LoginOk(self.run_id, self.verifier.version, hb_interval, hb_timeout, nonce, proof))
            return [LoginAccepted(msg.name, self.run_id, resumed, dict(msg.metas), found.user)]
        if isinstance(msg, Heartbeat):
            _send(self.mux, HeartbeatAck(msg.seq))
            return []
        if isinstance(msg, NewProxy):
            if msg.name in self.proxies or msg.name in self.pending_proxies:
                _send(self.mux, NewProxyError(msg.name, f"proxy {msg.name!r} is already registered"))
                return []
            if len(self.proxies) + len(self.pending_proxies) >= self.max_proxies:
                _send(self.mux, NewProxyError(msg.name, f"too many proxies (limit {self.max_proxies})"))
                return []
            self.pending_proxies[msg.name] = msg
            return [ProxyRequested(msg.name, msg.proxy_type, dict(msg.options))]
        if isinstance(msg, CloseProxy):
            known = self.proxies.pop(msg.name, None) or self.pending_proxies.pop(msg.name, None)
            _send(self.mux, CloseProxyOk(msg.name))
            return [ProxyClosed(msg.name)] if known else []
        if isinstance(msg, Visitor):
            self.pending_visitors.add(msg.proxy)
            return [VisitorRequested(msg.proxy, msg.user, msg.timestamp, msg.nonce, msg.digest)]
        if isinstance(msg, NatHoleRequest):
            if msg.role == "visitor" and msg.proxy not in self.visitors:
                raise ProtocolError(f"NAT hole request for {msg.proxy!r} without an accepted visitor")
            if msg.role == "provider" and self.invited.get(msg.sid) != msg.proxy:
                raise ProtocolError(f"NAT hole request {msg.sid!r} without an invitation")
            return [NatHoleRequested(msg.sid, msg.proxy, msg.role, list(msg.local_addrs))]
        if isinstance(msg, NatHoleResult):
            self.invited.pop(msg.sid, None)
            return [NatHoleReported(msg.sid, msg.success, msg.message)]
        raise ProtocolError(f"unexpected {msg.TYPE} message")  # pragma: no cover - parse_message filters

    def _refuse(self, message: str) -> list[SessionEvent]:
        self.state = "closed"
        _send(self.mux, LoginError(message))
        self.mux.go_away(message, ResetCode.REFUSED)
        return [LoginRefused(message)]

    # -- the driver's answers --------------------------------------------------------------

    def accept_proxy(self, name: str, remote_addr: str) -> None:
        request = self._take_pending(name)
        self.proxies[name] = (request, remote_addr)
        _send(self.mux, NewProxyOk(name, remote_addr))

    def assign_proxy(self, name: str, proxy_type: str, local_ip: str, local_port: int, remote_addr: str) -> None:
        """Give the agent a static mapping to serve; work streams for `name` may follow at once."""
        if name in self.proxies or name in self.pending_proxies:
            raise StreamError(f"proxy {name!r} is already registered on this session")
        _send(self.mux, AssignProxy(name, proxy_type, local_ip, local_port, remote_addr))
        self.proxies[name] = (NewProxy(name, proxy_type, {}), remote_addr)

    def reject_proxy(self, name: str, message: str) -> None:
        self._take_pending(name)
        _send(self.mux, NewProxyError(name, message[:1024]))

    def accept_visitor(self, proxy: str) -> None:
        self.pending_visitors.discard(proxy)
        self.visitors.add(proxy)
        _send(self.mux, VisitorOk(proxy))

    def reject_visitor(self, proxy: str, message: str) -> None:
        self.pending_visitors.discard(proxy)
        _send(self.mux, VisitorError(proxy, message[:1024]))

    def open_work_stream(self, proxy: str, meta: dict[str, Any] | None = None) -> int:
        """Open a stream to the agent carrying one user connection of `proxy`."""
        if proxy not in self.proxies:
            raise StreamError(f"proxy {proxy!r} is not registered on this session")
        return self.mux.open_stream({**(meta or {}), "kind": "work", "proxy": proxy})

    def invite_nat_hole(self, sid: str, proxy: str) -> None:
        """Ask the agent that serves xtcp `proxy` to take part in hole punching `sid`."""
        if proxy not in self.proxies:
            raise StreamError(f"proxy {proxy!r} is not registered on this session")
        self.invited[sid] = proxy
        _send(self.mux, NatHoleInvite(sid, proxy))

    def answer_nat_hole(self, sid: str, peer_addr: str, peer_local_addrs: list[str], error: str = "") -> None:
        _send(self.mux, NatHoleResponse(sid, peer_addr, list(peer_local_addrs), error[:1024]))

    def _take_pending(self, name: str) -> NewProxy:
        request = self.pending_proxies.pop(name, None)
        if request is None:
            raise StreamError(f"no pending request for proxy {name!r}")
        return request


# -- the agent's side ----------------------------------------------------------------------


class ClientSession:
    """The agent's state machine for its connection to a node.

    States: idle --start (LOGIN sent)--> login --LOGIN_OK--> active;
    login --LOGIN_ERROR--> closed; any --timeout--> closed.
    """

    def __init__(
        self,
        mux: Mux,
        *,
        name: str,
        token: str,
        run_id: str = "",
        version: int = PROTOCOL_VERSION,
        metas: dict[str, str] | None = None,
        login_timeout: float = LOGIN_TIMEOUT,
        new_nonce: Callable[[], str] = lambda: secrets.token_hex(16),
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        channel_binding: str = "",
    ) -> None:
        """`heartbeat_interval` / `heartbeat_timeout`: the agent's own settings; after login the
        shorter of them and the node's apply (None: the node's). `channel_binding`: the
        `binding.peer_end_point` of the TLS connection ("" on a plain one)."""
        try:
            _name("login", "name", name)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        self.mux = mux
        self.name = name
        self._token = token
        self.run_id = run_id
        self.version = version
        self.metas = dict(metas or {})
        self.login_timeout = login_timeout
        self._new_nonce = new_nonce
        self.channel_binding = channel_binding
        self._login: Login | None = None
        self.state: State = "idle"
        self.server_version = 0
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self.heartbeat_timeout = HEARTBEAT_TIMEOUT
        self._own_heartbeat = (heartbeat_interval, heartbeat_timeout)
        self.requested: dict[str, NewProxy] = {}
        self.proxies: dict[str, tuple[NewProxy, str]] = {}  # accepted: name -> (request, remote_addr)
        self.pending_visitors: set[str] = set()
        self.visitors: set[str] = set()
        self.rtt: float | None = None
        self.udp_dropped = 0
        self._since = 0.0
        self._last_seen = 0.0
        self._next_ping = 0.0
        self._seq = 0
        self._ping_sent: tuple[int, float] | None = None

    def start(self, now: float) -> None:
        """Queue the LOGIN; the connection has just been made (and TLS, if on, is up)."""
        if self.state != "idle":
            raise StreamError("session already started")
        nonce = self._new_nonce()
        timestamp = int(now)
        digest = login_digest(
            self._token, self.version, self.name, timestamp, nonce, run_id=self.run_id, binding=self.channel_binding
        )
        login = Login(self.version, self.name, self.run_id, timestamp, nonce, digest, self.metas)
        _send(self.mux, login)
        self._login = login
        self.state = "login"
        self._since = self._last_seen = now

    def next_deadline(self) -> float | None:
        if self.state == "login":
            return self._since + self.login_timeout
        if self.state == "active":
            return min(self._next_ping, self._last_seen + self.heartbeat_timeout)
        return None

    def tick(self, now: float) -> list[SessionEvent]:
        if self.state == "login" and now >= self._since + self.login_timeout:
            self.state = "closed"
            return [PeerTimedOut(f"no login answer from the node within {self.login_timeout:.0f} s")]
        if self.state != "active":
            return []
        if now >= self._last_seen + self.heartbeat_timeout:
            self.state = "closed"
            return [PeerTimedOut(f"nothing heard from the node for {now - self._last_seen:.0f} s")]
        if now >= self._next_ping:
            self._seq += 1
            self._ping_sent = (self._seq, now)
            _send(self.mux, Heartbeat(self._seq))
            self._next_ping = now + self.heartbeat_interval
        return []

    def handle_event(self, event: Event, now: float) -> list[SessionEvent]:
        if self.state == "closed":
            return []
        if self.state == "idle":
            raise StreamError("ClientSession.start(now) was not called")
        self._last_seen = now
        if isinstance(event, ControlMessage):
            return self._control(parse_message(event.message, from_agent=False), now)
        if self.state != "active":
            if isinstance(event, _ALWAYS):
                return [event]
            raise ProtocolError(f"{type(event).__name__} before login succeeded")
        if isinstance(event, StreamOpened):
            proxy = _stream_target(event.meta, "work")
            if proxy is None or proxy not in self.proxies:
                self.mux.reset(event.stream_id, f"no proxy {str(proxy)[:128]!r} on this agent", ResetCode.REFUSED)
                return []
            return [WorkStreamOpened(event.stream_id, proxy, event.meta)]
        if isinstance(event, UdpPacket):
            entry = self.proxies.get(event.proxy)
            ok = event.proxy in self.visitors or (entry is not None and entry[0].proxy_type in DATAGRAM_TYPES)
            if not ok:
                self.udp_dropped += 1
                return []
        return [event]

    def _control(self, msg: Message, now: float) -> list[SessionEvent]:
        if self.state == "login":
            if isinstance(msg, LoginError):
                self.state = "closed"
                return [LoginFailed(msg.message)]
            if not isinstance(msg, LoginOk):
                raise ProtocolError(f"{msg.TYPE} message before login succeeded")
            if msg.version != self.version:
                self.state = "closed"
                return [LoginFailed(version_mismatch(self.version, msg.version))]
            assert self._login is not None
            expected = node_digest(self._token, self._login, self.channel_binding, msg.nonce, msg.run_id)
            if not hmac.compare_digest(expected, msg.proof):
                self.state = "closed"
                return [LoginFailed(NODE_NOT_PROVEN)]
            self.state = "active"
            self.run_id = msg.run_id
            self.server_version = msg.version
            own_interval, own_timeout = self._own_heartbeat
            self.heartbeat_interval = min(msg.heartbeat_interval, own_interval or msg.heartbeat_interval)
            self.heartbeat_timeout = min(msg.heartbeat_timeout, own_timeout or msg.heartbeat_timeout)
            self._next_ping = now + self.heartbeat_interval
            return [LoginSucceeded(msg.run_id, msg.version, msg.heartbeat_interval)]
        if isinstance(msg, LoginOk | LoginError):
            raise ProtocolError(f"{msg.TYPE} message after login")
        if isinstance(msg, HeartbeatAck):
            if self._ping_sent and self._ping_sent[0] == msg.seq:
                self.rtt = now - self._ping_sent[1]
            return []
        if isinstance(msg, NewProxyOk | NewProxyError):
            request = self.requested.pop(msg.name, None)
            if request is None:
                raise ProtocolError(f"{msg.TYPE} for proxy {msg.name!r}, which was not requested")
            if isinstance(msg, NewProxyError):
                return [ProxyRejected(msg.name, msg.message)]
            self.proxies[msg.name] = (request, msg.remote_addr)
            return [ProxyAccepted(msg.name, msg.remote_addr)]
        if isinstance(msg, CloseProxyOk):
            return [ProxyCloseConfirmed(msg.name)]
        if isinstance(msg, AssignProxy):
            if msg.name in self.proxies or msg.name in self.requested:
                raise ProtocolError(f"assign_proxy for {msg.name!r}, a name this agent already uses")
            options = {"local_ip": msg.local_ip, "local_port": msg.local_port}
            self.proxies[msg.name] = (NewProxy(msg.name, msg.proxy_type, options), msg.remote_addr)
            return [ProxyAssigned(msg.name, msg.proxy_type, msg.local_ip, msg.local_port, msg.remote_addr)]
        if isinstance(msg, VisitorOk | VisitorError):
            if msg.proxy not in self.pending_visitors:
                raise ProtocolError(f"{msg.TYPE} for {msg.proxy!r}, which was not visited")
            self.pending_visitors.discard(msg.proxy)
            if isinstance(msg, VisitorError):
                return [VisitorRejected(msg.proxy, msg.message)]
            self.visitors.add(msg.proxy)
            return [VisitorAccepted(msg.proxy)]
        if isinstance(msg, NatHoleInvite):
            if msg.proxy not in self.proxies:
                raise ProtocolError(f"NAT hole invitation for {msg.proxy!r}, which is not served here")
            return [NatHoleInvited(msg.sid, msg.proxy)]
        if isinstance(msg, NatHoleResponse):
            return [NatHoleAnswered(msg.sid, msg.peer_addr, list(msg.peer_local_addrs), msg.error)]
        raise ProtocolError(f"unexpected {msg.TYPE} message")  # pragma: no cover - parse_message filters

    # -- the driver's requests -------------------------------------------------------------

    def _check_active(self) -> None:
        if self.state != "active":
            raise StreamError(f"session is {self.state}, not logged in")

    def new_proxy(self, name: str, proxy_type: str, options: dict[str, Any] | None = None) -> None:
        self._check_active()
        request = NewProxy(name, proxy_type, dict(options or {}))
        if name in self.requested or name in self.proxies:
            raise StreamError(f"proxy {name!r} already requested")
        _send(self.mux, request)
        self.requested[name] = request

    def close_proxy(self, name: str) -> None:
        self._check_active()
        self.requested.pop(name, None)
        self.proxies.pop(name, None)
        _send(self.mux, CloseProxy(name))

    def visit(self, proxy: str, user: str, secret_key: str, now: float) -> None:
        """Ask to visit stcp/sudp/xtcp `proxy` (another agent's) with its secret key."""
        self._check_active()
        nonce, timestamp = self._new_nonce(), int(now)
        digest = visitor_digest(secret_key, proxy, user, timestamp, nonce)
        self.pending_visitors.add(proxy)
        _send(self.mux, Visitor(proxy, user, timestamp, nonce, digest))

    def open_visitor_stream(self, proxy: str, meta: dict[str, Any] | None = None) -> int:
        """Open a stream carrying one local user connection to the visited `proxy`."""
        self._check_active()
        if proxy not in self.visitors:
            raise StreamError(f"visitor of {proxy!r} was not accepted")
        return self.mux.open_stream({**(meta or {}), "kind": "visitor", "proxy": proxy})

    def request_nat_hole(self, sid: str, proxy: str, role: str, local_addrs: list[str]) -> None:
        self._check_active()
        _send(self.mux, NatHoleRequest(sid, proxy, role, list(local_addrs)))

    def report_nat_hole(self, sid: str, success: bool, message: str = "") -> None:
        self._check_active()
        _send(self.mux, NatHoleResult(sid, success, message[:1024]))
