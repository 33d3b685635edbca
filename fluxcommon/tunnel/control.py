"""Tunnel control protocol: messages, login authentication and each side's state machine.

This module gives meaning to the CONTROL frames and stream metadata carried by a `Mux`:
an agent (`ClientSession`) logs in to a node (`ServerSession`), registers proxies, keeps the
session alive with heartbeats, visits secret proxies and takes part in NAT hole punching.
It owns no socket and reads no clock: the driver feeds it the mux's events with the current
time (`now`, Unix seconds), calls `tick(now)` by `next_deadline()`, acts on the high-level
events it returns and flushes `mux.data_to_send()` afterwards. Replies go out through the mux.

Messages (CONTROL frames, JSON objects; unknown keys or types and bad field types are
`ProtocolError`s; the direction of each message is checked)::

    agent -> node                                    node -> agent
    login {version, name, run_id, auth, metas}       login_ok {run_id, version, heartbeat_interval,
                                                               heartbeat_timeout}
                                                     login_error {message}
    new_proxy {name, proxy_type, options}            new_proxy_ok {name, remote_addr}
                                                     new_proxy_error {name, message}
    close_proxy {name}                               close_proxy_ok {name}
    ping {seq}                                       pong {seq}
    visitor {proxy, user, timestamp, nonce, digest}  visitor_ok {proxy} / visitor_error {proxy, message}
    nat_hole_request {sid, proxy, role, local_addrs} nat_hole_invite {sid, proxy}
    nat_hole_result {sid, success, message}          nat_hole_response {sid, peer_addr,
                                                               peer_local_addrs, error}

Login and authentication
========================

The token never crosses the wire, TLS or not. LOGIN carries ``auth = {timestamp, nonce,
digest}`` with ``digest = hex(HMAC-SHA256(token, f"{version}|{name}|{timestamp}|{nonce}"))``.
The node (`LoginVerifier`) answers LOGIN_ERROR, in this order, when:

1. the protocol version differs (read before anything else in the message, so a future
   agent still gets the message): "protocol version mismatch: agent speaks X, node speaks Y";
2. the digest does not match the token ("authentication failed");
3. the timestamp is more than `REPLAY_WINDOW` (300 s) away from the node's clock;
4. the nonce was already used by this agent name within the window (`ReplayCache`, bounded
   per agent and in agents; a full cache refuses rather than forgets).

Then LOGIN_OK gives the run id (the agent's previous one, when it reconnects with it) and the
heartbeat interval and timeout. Before LOGIN_OK nothing but LOGIN, PING/PONG frames and
GOAWAY may arrive; anything else is a `ProtocolError`.

Streams and datagrams
=====================

A user connection to a proxy becomes a stream the node opens with meta ``{"kind": "work",
"proxy": NAME, ...}`` (`ServerSession.open_work_stream`); the agent's session reports it as
`WorkStreamOpened` when NAME is a proxy the node accepted, and resets it otherwise. A visitor
agent opens ``{"kind": "visitor", "proxy": NAME, ...}`` streams once the node accepted its
VISITOR message (`VisitorStreamOpened` on the node). UDP packets pass only for the session's
accepted udp/sudp proxies or visitors; others are dropped and counted. Every other mux event
(data, FIN, resets, window updates, pings, GOAWAY) is passed through unchanged.

Heartbeats
==========

Once logged in the agent sends PING every `heartbeat_interval`; the node answers PONG. Either
side reports `PeerTimedOut` when it has heard nothing from the other (any event counts) for
`heartbeat_timeout`, and both give up on a login that takes longer than `login_timeout`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fluxcommon.tunnel.frames import ProtocolError
from fluxcommon.tunnel.mux import (
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

PROTOCOL_VERSION = 1
REPLAY_WINDOW = 300.0
HEARTBEAT_INTERVAL = 30.0
HEARTBEAT_TIMEOUT = 90.0
LOGIN_TIMEOUT = 10.0
PROXY_TYPES = ("tcp", "udp", "http", "https", "stcp", "sudp", "xtcp")
DATAGRAM_TYPES = frozenset({"udp", "sudp"})
MAX_PROXIES = 256

# -- field validation ----------------------------------------------------------------------

_NAME = re.compile(r"[^\x00-\x1f\x7f|]{1,128}")
_TOKEN_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{16,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")

_Validator = Callable[[str, str, Any], Any]


def _fail(mtype: str, key: str, why: str) -> ProtocolError:
    return ProtocolError(f"{mtype} message: field {key!r} {why}")


def _int(lo: int, hi: int) -> _Validator:
    def check(mtype: str, key: str, value: Any) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise _fail(mtype, key, f"must be an integer in {lo}..{hi}")
        return value

    return check


def _number(lo: float, hi: float) -> _Validator:
    def check(mtype: str, key: str, value: Any) -> float:
        if type(value) not in (int, float) or not lo < value <= hi:
            raise _fail(mtype, key, f"must be a number in ({lo}, {hi}]")
        return float(value)

    return check


def _pattern(regex: re.Pattern[str], what: str, *, empty: bool = False) -> _Validator:
    def check(mtype: str, key: str, value: Any) -> str:
        if not isinstance(value, str) or not ((empty and value == "") or regex.fullmatch(value)):
            raise _fail(mtype, key, f"must be {what}")
        return value

    return check


def _text(max_len: int) -> _Validator:
    def check(mtype: str, key: str, value: Any) -> str:
        if not isinstance(value, str) or len(value) > max_len:
            raise _fail(mtype, key, f"must be a string of at most {max_len} characters")
        return value

    return check


def _bool(mtype: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(mtype, key, "must be true or false")
    return value


def _choice(options: tuple[str, ...]) -> _Validator:
    def check(mtype: str, key: str, value: Any) -> str:
        if value not in options or not isinstance(value, str):
            raise _fail(mtype, key, f"must be one of {', '.join(options)}")
        return value

    return check


def _object(max_keys: int, *, str_values: bool = False) -> _Validator:
    def check(mtype: str, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or len(value) > max_keys:
            raise _fail(mtype, key, f"must be an object with at most {max_keys} keys")
        if str_values and not all(isinstance(v, str) and len(v) <= 1024 for v in value.values()):
            raise _fail(mtype, key, "must map names to strings")
        return value

    return check


def _str_list(max_items: int, max_len: int) -> _Validator:
    def check(mtype: str, key: str, value: Any) -> list[str]:
        if (
            not isinstance(value, list)
            or len(value) > max_items
            or not all(isinstance(v, str) and len(v) <= max_len for v in value)
        ):
            raise _fail(mtype, key, f"must be a list of at most {max_items} strings")
        return list(value)

    return check


_name = _pattern(_NAME, "1..128 characters without control characters or '|'")
_run_id = _pattern(_TOKEN_ID, "1..64 of [A-Za-z0-9_.-]", empty=True)
_sid = _pattern(_TOKEN_ID, "1..64 of [A-Za-z0-9_.-]")
_nonce = _pattern(_HEX, "16..64 lower-case hex digits")
_digest = _pattern(_DIGEST, "64 lower-case hex digits")
_version = _int(0, 2**31 - 1)
_timestamp = _int(0, 2**40)
_seq = _int(0, 2**53)
_message = _text(1024)
_addr = _text(255)


# -- messages ------------------------------------------------------------------------------


class Message:
    """Base of the control messages: `to_wire()` gives the CONTROL payload."""

    __slots__ = ()
    TYPE: ClassVar[str]
    SPEC: ClassVar[dict[str, _Validator]]
    FROM_AGENT: ClassVar[bool]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, **{key: getattr(self, key) for key in self.SPEC}}

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Message:
        return _from_fields(cls, raw)


def _from_fields(cls: type[Message], raw: dict[str, Any]) -> Message:
    keys = set(raw) - {"type"}
    if keys != set(cls.SPEC):
        missing, extra = sorted(set(cls.SPEC) - keys), sorted(keys - set(cls.SPEC))
        raise ProtocolError(f"{cls.TYPE} message: missing fields {missing}, unknown fields {extra}")
    return cls(**{key: check(cls.TYPE, key, raw[key]) for key, check in cls.SPEC.items()})


@dataclass(frozen=True, slots=True)
class Login(Message):
    TYPE = "login"
    FROM_AGENT = True
    SPEC = {
        "version": _version,
        "name": _name,
        "run_id": _run_id,
        "timestamp": _timestamp,
        "nonce": _nonce,
        "digest": _digest,
        "metas": _object(64, str_values=True),
    }
    version: int
    name: str
    run_id: str
    timestamp: int
    nonce: str
    digest: str
    metas: dict[str, str] = field(default_factory=dict)

    _AUTH: ClassVar[tuple[str, ...]] = ("timestamp", "nonce", "digest")

    def to_wire(self) -> dict[str, Any]:
        wire = {"type": self.TYPE, "version": self.version, "name": self.name, "run_id": self.run_id}
        wire["auth"] = {key: getattr(self, key) for key in self._AUTH}
        wire["metas"] = self.metas
        return wire

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Message:
        auth = raw.get("auth")
        if not isinstance(auth, dict) or set(auth) != set(cls._AUTH):
            raise ProtocolError("login message: field 'auth' must be {timestamp, nonce, digest}")
        flat = {key: value for key, value in raw.items() if key != "auth"}
        if set(flat) & set(cls._AUTH):
            raise ProtocolError("login message: auth fields outside 'auth'")
        return _from_fields(cls, {**flat, **auth})


@dataclass(frozen=True, slots=True)
class LoginOk(Message):
    TYPE = "login_ok"
    FROM_AGENT = False
    SPEC = {
        "run_id": _sid,
        "version": _version,
        "heartbeat_interval": _number(0, 3600),
        "heartbeat_timeout": _number(0, 86400),
    }
    run_id: str
    version: int
    heartbeat_interval: float
    heartbeat_timeout: float


@dataclass(frozen=True, slots=True)
class LoginError(Message):
    TYPE = "login_error"
    FROM_AGENT = False
    SPEC = {"message": _message}
    message: str


@dataclass(frozen=True, slots=True)
class NewProxy(Message):
    TYPE = "new_proxy"
    FROM_AGENT = True
    SPEC = {"name": _name, "proxy_type": _choice(PROXY_TYPES), "options": _object(128)}
    name: str
    proxy_type: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewProxyOk(Message):
    TYPE = "new_proxy_ok"
    FROM_AGENT = False
    SPEC = {"name": _name, "remote_addr": _addr}
    name: str
    remote_addr: str


@dataclass(frozen=True, slots=True)
class NewProxyError(Message):
    TYPE = "new_proxy_error"
    FROM_AGENT = False
    SPEC = {"name": _name, "message": _message}
    name: str
    message: str


@dataclass(frozen=True, slots=True)
class CloseProxy(Message):
    TYPE = "close_proxy"
    FROM_AGENT = True
    SPEC = {"name": _name}
    name: str


@dataclass(frozen=True, slots=True)
class CloseProxyOk(Message):
    TYPE = "close_proxy_ok"
    FROM_AGENT = False
    SPEC = {"name": _name}
    name: str


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    TYPE = "ping"
    FROM_AGENT = True
    SPEC = {"seq": _seq}
    seq: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck(Message):
    TYPE = "pong"
    FROM_AGENT = False
    SPEC = {"seq": _seq}
    seq: int


@dataclass(frozen=True, slots=True)
class Visitor(Message):
    TYPE = "visitor"
    FROM_AGENT = True
    SPEC = {"proxy": _name, "user": _text(128), "timestamp": _timestamp, "nonce": _nonce, "digest": _digest}
    proxy: str
    user: str
    timestamp: int
    nonce: str
    digest: str


@dataclass(frozen=True, slots=True)
class VisitorOk(Message):
    TYPE = "visitor_ok"
    FROM_AGENT = False
    SPEC = {"proxy": _name}
    proxy: str


@dataclass(frozen=True, slots=True)
class VisitorError(Message):
    TYPE = "visitor_error"
    FROM_AGENT = False
    SPEC = {"proxy": _name, "message": _message}
    proxy: str
    message: str


@dataclass(frozen=True, slots=True)
class NatHoleInvite(Message):
    TYPE = "nat_hole_invite"
    FROM_AGENT = False
    SPEC = {"sid": _sid, "proxy": _name}
    sid: str
    proxy: str


@dataclass(frozen=True, slots=True)
class NatHoleRequest(Message):
    TYPE = "nat_hole_request"
    FROM_AGENT = True
    SPEC = {"sid": _sid, "proxy": _name, "role": _choice(("visitor", "provider")), "local_addrs": _str_list(16, 255)}
    sid: str
    proxy: str
    role: str
    local_addrs: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NatHoleResponse(Message):
    TYPE = "nat_hole_response"
    FROM_AGENT = False
    SPEC = {"sid": _sid, "peer_addr": _addr, "peer_local_addrs": _str_list(16, 255), "error": _message}
    sid: str
    peer_addr: str
    peer_local_addrs: list[str] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True, slots=True)
class NatHoleResult(Message):
    TYPE = "nat_hole_result"
    FROM_AGENT = True
    SPEC = {"sid": _sid, "success": _bool, "message": _message}
    sid: str
    success: bool
    message: str = ""


MESSAGES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Login,
        LoginOk,
        LoginError,
        NewProxy,
        NewProxyOk,
        NewProxyError,
        CloseProxy,
        CloseProxyOk,
        Heartbeat,
        HeartbeatAck,
        Visitor,
        VisitorOk,
        VisitorError,
        NatHoleInvite,
        NatHoleRequest,
        NatHoleResponse,
        NatHoleResult,
    )
}


def parse_message(raw: dict[str, Any], *, from_agent: bool) -> Message:
    """Validate one CONTROL payload received by the node (`from_agent`) or by the agent."""
    mtype = raw.get("type")
    cls = MESSAGES.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise ProtocolError(f"unknown control message type {str(mtype)[:40]!r}")
    if from_agent != cls.FROM_AGENT:
        raise ProtocolError(f"control message {mtype!r} sent in the wrong direction")
    return cls.from_wire(raw)


# -- authentication ------------------------------------------------------------------------


def login_digest(token: str, version: int, name: str, timestamp: int, nonce: str) -> str:
    """hex(HMAC-SHA256(token, f"{version}|{name}|{timestamp}|{nonce}"))."""
    text = f"{version}|{name}|{timestamp}|{nonce}"
    return hmac.new(token.encode(), text.encode(), hashlib.sha256).hexdigest()


def visitor_digest(secret_key: str, proxy: str, user: str, timestamp: int, nonce: str) -> str:
    """hex(HMAC-SHA256(secret_key, f"{proxy}|{user}|{timestamp}|{nonce}")) for stcp/sudp/xtcp visitors."""
    text = f"{proxy}|{user}|{timestamp}|{nonce}"
    return hmac.new(secret_key.encode(), text.encode(), hashlib.sha256).hexdigest()


def version_mismatch(agent: int, node: int) -> str:
    return (
        f"protocol version mismatch: agent speaks version {agent}, node speaks version {node}; "
        "run an agent and a node of the same protocol version"
    )


class ReplayCache:
    """Nonces seen within the replay window, per key (agent name); bounded both ways.

    `check_and_add` returns an error message, or None after recording the nonce. An entry
    lives until its timestamp leaves the window; when a key (or the key table) is full of live
    entries the login is refused instead of forgetting a nonce that could then be replayed.
    """

    def __init__(self, *, window: float = REPLAY_WINDOW, max_per_key: int = 4096, max_keys: int = 65536) -> None:
        self.window = window
        self.max_per_key = max_per_key
        self.max_keys = max_keys
        self._seen: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._seen.values())

    def check_and_add(self, key: str, nonce: str, timestamp: float, now: float) -> str | None:
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self.max_keys:
                self._purge_all(now)
                if len(self._seen) >= self.max_keys:
                    return "too many agents logging in; try again later"
            seen = self._seen[key] = {}
        else:
            self._purge(seen, now)
        if nonce in seen:
            return "replayed login refused: this nonce was already used within the replay window"
        if len(seen) >= self.max_per_key:
            return f"too many logins for {key!r} within the replay window; try again later"
        seen[nonce] = timestamp + self.window
        return None

    @staticmethod
    def _purge(seen: dict[str, float], now: float) -> None:
        for nonce in [n for n, expiry in seen.items() if expiry < now]:
            del seen[nonce]

    def _purge_all(self, now: float) -> None:
        for key in list(self._seen):
            self._purge(self._seen[key], now)
            if not self._seen[key]:
                del self._seen[key]


class LoginVerifier:
    """The node's login check; one instance outlives connections (it holds the nonce cache).

    `token` is the shared token, or a function from agent name to its token (None: unknown).
    """

    def __init__(
        self,
        token: str | Callable[[str], str | None],
        *,
        version: int = PROTOCOL_VERSION,
        window: float = REPLAY_WINDOW,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        self._token = token
        self.version = version
        self.window = window
        self.replay_cache = replay_cache or ReplayCache(window=window)

    def check(self, login: Login, now: float) -> str | None:
        """An error message for LOGIN_ERROR, or None when the login is accepted (nonce recorded)."""
        if login.version != self.version:
            return version_mismatch(login.version, self.version)
        token = self._token(login.name) if callable(self._token) else self._token
        expected = login_digest(token or "", login.version, login.name, login.timestamp, login.nonce)
        if token is None or not hmac.compare_digest(expected, login.digest):
            return "authentication failed: the token digest does not match"
        skew = login.timestamp - now
        if abs(skew) > self.window:
            return (
                f"login timestamp is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the node's clock "
                f"(replay window ±{self.window:.0f} s); check the agent's clock"
            )
        return self.replay_cache.check_and_add(login.name, login.nonce, login.timestamp, now)


def check_visitor(
    secret_key: str,
    visitor: VisitorRequested,
    now: float,
    *,
    window: float = REPLAY_WINDOW,
    replay_cache: ReplayCache | None = None,
) -> str | None:
    """Verify a visitor's digest against the target proxy's secret key; error message or None."""
    expected = visitor_digest(secret_key, visitor.proxy, visitor.user, visitor.timestamp, visitor.nonce)
    if not hmac.compare_digest(expected, visitor.digest):
        return f"visitor of {visitor.proxy!r} refused: wrong secret key"
    if abs(visitor.timestamp - now) > window:
        return f"visitor of {visitor.proxy!r} refused: timestamp outside the replay window (±{window:.0f} s)"
    if replay_cache is not None:
        return replay_cache.check_and_add(f"visitor:{visitor.proxy}", visitor.nonce, visitor.timestamp, now)
    return None


# -- session events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginAccepted:
    name: str
    run_id: str
    reconnect: bool  # the agent presented its previous run id
    metas: dict[str, str]


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
    | ProxyCloseConfirmed
    | VisitorAccepted
    | VisitorRejected
    | NatHoleInvited
    | NatHoleAnswered
    | WorkStreamOpened
    | PeerTimedOut
)

State = Literal["idle", "login", "active", "closed"]
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
    ) -> None:
        self.mux = mux
        self.verifier = verifier
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.login_timeout = login_timeout
        self.max_proxies = max_proxies
        self._new_run_id = new_run_id
        self.state: State = "idle"
        self.name = ""
        self.run_id = ""
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
            error = self.verifier.check(msg, now)
            if error is not None:
                return self._refuse(error)
            self.state = "active"
            self.name = msg.name
            self.run_id = msg.run_id or self._new_run_id()
            _send(
                self.mux, LoginOk(self.run_id, self.verifier.version, self.heartbeat_interval, self.heartbeat_timeout)
            )
            return [LoginAccepted(msg.name, self.run_id, bool(msg.run_id), dict(msg.metas))]
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
    ) -> None:
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
        self.state: State = "idle"
        self.server_version = 0
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self.heartbeat_timeout = HEARTBEAT_TIMEOUT
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
        digest = login_digest(self._token, self.version, self.name, timestamp, nonce)
        login = Login(self.version, self.name, self.run_id, timestamp, nonce, digest, self.metas)
        _send(self.mux, login)
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
            self.state = "active"
            self.run_id = msg.run_id
            self.server_version = msg.version
            self.heartbeat_interval = msg.heartbeat_interval
            self.heartbeat_timeout = msg.heartbeat_timeout
            self._next_ping = now + msg.heartbeat_interval
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
