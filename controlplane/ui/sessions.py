"""Console sessions: who is logged in, with which API token, and the CSRF token of each session.

A login keeps the API token the operator typed in a server-side `Session`, found by a random
256-bit session id that the browser holds in an HttpOnly, SameSite=Strict cookie scoped to
`/ui`. The table keeps only the SHA-256 of each id, so a memory dump shows no usable cookie;
it never writes the API token anywhere. Sessions end on logout, after `IDLE` without a
request, after `LIFETIME` in all, and when the API refuses the token (revoked, expired).

Every state-changing request (POST) must carry the session's CSRF token (a hidden form field)
and, when the browser sends one, an `Origin` of the console's own origin (`check_write`).

Sessions live in the memory of one control-plane process: a restart logs everyone out, and
behind several control planes the console needs sticky routing (or a login per process).
This module does no I/O and reads the clock only through `now` arguments.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field

from controlplane.api_tokens import Principal

COOKIE = "flux_console"
COOKIE_PATH = "/ui"
IDLE = 3600.0
"""Seconds without a request after which a session ends."""
LIFETIME = 12 * 3600.0
"""Seconds after login at which a session ends, used or not."""
MAX_SESSIONS = 10_000
"""Past this many live sessions the oldest is dropped (a flood of logins cannot fill memory)."""


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass
class Session:
    """One logged-in browser: the API token it acts with, and who that token is."""

    token: str = field(repr=False)
    principal: Principal
    csrf: str = field(repr=False)
    created: float
    last_used: float
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) shown on the next page

    @property
    def role(self) -> str:
        return self.principal.role

    @property
    def can_write(self) -> bool:
        """Whether config writes (resources, apply, rollback) are allowed: the admin role."""
        return self.principal.role == "admin"

    def label(self) -> str:
        return "admin token" if self.principal.bootstrap else f"{self.principal.name} ({self.principal.role})"


class SessionStore:
    """Live sessions by the SHA-256 of their id; thread-safe."""

    def __init__(self, idle: float = IDLE, lifetime: float = LIFETIME, limit: int = MAX_SESSIONS) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.limit = limit
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, token: str, principal: Principal, now: float) -> tuple[str, Session]:
        """A new session; returns the id for the cookie (shown nowhere else) and the session."""
        session_id = secrets.token_urlsafe(32)
        session = Session(token, principal, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._expire(now)
            while len(self._sessions) >= self.limit:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].created)
                del self._sessions[oldest]
            self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str, now: float) -> Session | None:
        """The live session of a cookie value (its idle clock restarted), or None."""
        if not session_id:
            return None
        key = _digest(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if now - session.last_used > self.idle or now - session.created > self.lifetime:
                del self._sessions[key]
                return None
            session.last_used = now
            return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        dead = [
            k for k, s in self._sessions.items() if now - s.last_used > self.idle or now - s.created > self.lifetime
        ]
        for k in dead:
            del self._sessions[k]


class CsrfRefused(Exception):
    """A write without the session's CSRF token, or from another origin."""


def same_origin(origin: str, expected: str) -> bool:
    """Whether an `Origin` header names the console's origin ("": none sent, nothing to check;
    "null", from a sandboxed or privacy-stripped context, is no match)."""
    return not origin or origin.rstrip("/") == expected.rstrip("/")


def check_write(session: Session, presented: str, origin: str, expected_origin: str) -> None:
    """Raise CsrfRefused unless `presented` is the session's CSRF token and the origin is ours."""
    if not same_origin(origin, expected_origin):
        raise CsrfRefused(f"cross-origin write refused (Origin {origin!r})")
    if not presented or not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        raise CsrfRefused("missing or wrong CSRF token: reload the page and try again")
