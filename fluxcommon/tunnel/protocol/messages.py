"""Tunnel control messages: their fields and checks, and login and visitor authentication.

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
                                                               heartbeat_timeout, nonce, proof}
                                                     login_error {message}
    new_proxy {name, proxy_type, options}            new_proxy_ok {name, remote_addr}
                                                     assign_proxy {name, proxy_type, local_ip,
                                                               local_port, remote_addr}
                                                     new_proxy_error {name, message}
    close_proxy {name}                               close_proxy_ok {name}
    ping {seq}                                       pong {seq}
    visitor {proxy, user, timestamp, nonce, digest}  visitor_ok {proxy} / visitor_error {proxy, message}
    nat_hole_request {sid, proxy, role, local_addrs} nat_hole_invite {sid, proxy}
    nat_hole_result {sid, success, message}          nat_hole_response {sid, peer_addr,
                                                               peer_local_addrs, error}

Login and authentication
========================

The token never crosses the wire, TLS or not, and the login is mutual and bound to the TLS
connection (`fluxcommon.tunnel.protocol.binding`: `B` is the SHA-256 of the node's certificate as each
side sees it, "" without TLS). LOGIN carries ``auth = {timestamp, nonce, digest}`` with::

    digest = hex(HMAC-SHA256(token, f"agent|{version}|{name}|{run_id}|{timestamp}|{nonce}|{B}"))

The token is the agent's user's (``user = NAME`` in frpc.toml, `LoginVerifier` `users`) when
NAME is a tunnel user, else one of the tunnel's shared tokens. The node answers LOGIN_ERROR,
in this order, when:

1. the protocol version differs (read before anything else in the message, so a future
   agent still gets the message): "protocol version mismatch: agent speaks X, node speaks Y";
2. the digest does not match ("authentication failed": a wrong token or user, or a TLS relay
   in the middle, which makes the agent bind to the relay's certificate); a user's name with
   a shared token is refused with its own message;
3. the timestamp is more than `REPLAY_WINDOW` (300 s) away from the node's clock;
4. the nonce was already used by this agent name within the window (`ReplayCache`, bounded
   per agent and in agents; a full cache refuses rather than forgets).

Then LOGIN_OK gives the run id, the heartbeat interval and timeout, a fresh node nonce and the
node's proof that it holds the same token and sees the same TLS connection::

    proof = hex(HMAC-SHA256(token, f"node|{version}|{name}|{run_id}|{timestamp}|{nonce}|{B}"
                                   f"|{node_nonce}|{assigned_run_id}"))

The agent checks the proof before it sends anything else (no proxy, no visitor): a fake node
or a relay without the token cannot make it. The agent's digest is fresh by its timestamp and
nonce (replay cache); the proof is fresh by the agent's nonce. The run id given back is the
presented one only when the node allows it (a run id already in use by another credential
gets a new one: see `ServerSession`). Before LOGIN_OK nothing but LOGIN, PING/PONG frames and
GOAWAY may arrive; anything else is a `ProtocolError`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from fluxcommon.tunnel.protocol.frames import ProtocolError

if TYPE_CHECKING:
    from fluxcommon.tunnel.protocol.control import VisitorRequested

PROTOCOL_VERSION = 2  # 2: the login is mutual and bound to the TLS connection
REPLAY_WINDOW = 300.0
HEARTBEAT_INTERVAL = 30.0
HEARTBEAT_TIMEOUT = 90.0
LOGIN_TIMEOUT = 10.0
PROXY_TYPES = ("tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp")
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
        "nonce": _nonce,
        "proof": _digest,
    }
    run_id: str
    version: int
    heartbeat_interval: float
    heartbeat_timeout: float
    nonce: str  # the node's
    proof: str  # the node's MAC (see the module docstring)


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
class AssignProxy(Message):
    """Node -> agent: a static mapping stored in the control plane that this agent serves.

    The node already listens on `remote_addr`; work streams for `name` go to the agent, which
    dials `local_ip:local_port`. Sent after login, once per mapping, on every connection.
    """

    TYPE = "assign_proxy"
    FROM_AGENT = False
    SPEC = {
        "name": _name,
        "proxy_type": _choice(("tcp", "udp")),
        "local_ip": _addr,
        "local_port": _int(1, 65535),
        "remote_addr": _addr,
    }
    name: str
    proxy_type: str
    local_ip: str
    local_port: int
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
        AssignProxy,
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


def login_digest(
    token: str, version: int, name: str, timestamp: int, nonce: str, *, run_id: str = "", binding: str = ""
) -> str:
    """The agent's MAC: hex(HMAC-SHA256(token, f"agent|{version}|{name}|{run_id}|{timestamp}|{nonce}|{binding}"))."""
    text = f"agent|{version}|{name}|{run_id}|{timestamp}|{nonce}|{binding}"
    return hmac.new(token.encode(), text.encode(), hashlib.sha256).hexdigest()


def node_digest(token: str, login: Login, binding: str, node_nonce: str, assigned_run_id: str) -> str:
    """The node's MAC over the agent's LOGIN, the channel binding, its nonce and the run id it gives."""
    text = (
        f"node|{login.version}|{login.name}|{login.run_id}|{login.timestamp}|{login.nonce}|{binding}"
        f"|{node_nonce}|{assigned_run_id}"
    )
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


@dataclass(frozen=True, slots=True)
class Credential:
    """Whom a login authenticated as: tunnel user `user`, or a shared token (`user` "")."""

    token: str
    user: str = ""


_AUTH_FAILED = (
    "authentication failed: the token digest does not match (a wrong token or user, or a TLS relay "
    "between the agent and the node)"
)


class LoginVerifier:
    """The node's login check; one instance outlives connections (it holds the nonce cache).

    `token` is the shared token, several accepted tokens, or a function from agent name to
    its token (None: unknown). `users` maps tunnel user names to their own tokens: an agent
    whose name is a user's must log in with that user's token, never a shared one.
    """

    def __init__(
        self,
        token: str | Sequence[str] | Callable[[str], str | None] = (),
        *,
        users: Mapping[str, str] | None = None,
        version: int = PROTOCOL_VERSION,
        window: float = REPLAY_WINDOW,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        self._token = token
        self.users = dict(users or {})
        self.version = version
        self.window = window
        self.replay_cache = replay_cache or ReplayCache(window=window)

    def verify(self, login: Login, now: float, binding: str = "") -> Credential | str:
        """The credential of an accepted login (its nonce recorded), or the LOGIN_ERROR message."""
        if login.version != self.version:
            return version_mismatch(login.version, self.version)
        found = self.credential(login, binding)
        if isinstance(found, str):
            return found
        skew = login.timestamp - now
        if abs(skew) > self.window:
            return (
                f"login timestamp is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the node's clock "
                f"(replay window ±{self.window:.0f} s); check the agent's clock"
            )
        error = self.replay_cache.check_and_add(login.name, login.nonce, login.timestamp, now)
        return found if error is None else error

    def check(self, login: Login, now: float, binding: str = "") -> str | None:
        """An error message for LOGIN_ERROR, or None when the login is accepted (nonce recorded)."""
        found = self.verify(login, now, binding)
        return found if isinstance(found, str) else None

    def credential(self, login: Login, binding: str = "") -> Credential | str:
        """Whose token the login's digest was made with (no clock or replay checks), or why none."""
        user_token = self.users.get(login.name)
        if user_token is not None:
            if _matches(user_token, login, binding):
                return Credential(user_token, login.name)
            if self._shared(login, binding) is not None:
                return (
                    f"authentication failed: {login.name!r} is a tunnel user and logs in with its own token, "
                    "not the shared one"
                )
            return _AUTH_FAILED
        shared = self._shared(login, binding)
        return Credential(shared) if shared is not None else _AUTH_FAILED

    def matching_token(self, login: Login, binding: str = "") -> str | None:
        """The accepted token whose digest the login carries."""
        found = self.credential(login, binding)
        return None if isinstance(found, str) else found.token

    def _shared(self, login: Login, binding: str) -> str | None:
        """The shared token the login's digest was made with (each compared in constant time)."""
        if callable(self._token):
            one = self._token(login.name)
            candidates: Sequence[str] = [one] if one is not None else []
        elif isinstance(self._token, str):
            candidates = [self._token]
        else:
            candidates = self._token
        found = None
        for token in candidates:
            if _matches(token, login, binding) and found is None:
                found = token
        return found


def _matches(token: str, login: Login, binding: str) -> bool:
    expected = login_digest(
        token, login.version, login.name, login.timestamp, login.nonce, run_id=login.run_id, binding=binding
    )
    return hmac.compare_digest(expected, login.digest)


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
