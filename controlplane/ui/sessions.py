"""Console sessions: who is logged in, with which API token, and the CSRF token of each session.

A login keeps the API token the operator typed in a server-side `Session`, found by a random
256-bit session id that the browser holds in an HttpOnly, SameSite=Strict cookie scoped to
`/ui`. Sessions are rows of the database (`console_sessions`), so every control plane of
the database serves every logged-in browser (several control planes behind one load
balancer need no sticky routing) and a restart logs nobody out. A row keeps the SHA-256 of
the id, never the id, and the API token and CSRF token sealed with the secret key (the
SecretBox of the stored config), so neither a copy of the database nor a memory dump gives
a usable cookie or token. Sessions end on logout, after `IDLE` without a request, after
`LIFETIME` in all, when the API refuses the token (revoked, expired), and when the secret
key is rotated (controlplane.store.encryption).

Every state-changing request (POST) must carry the session's CSRF token (a hidden form field)
and, when the browser sends one, an `Origin` of the console's own origin (`check_write`).

The store reads the clock only through `now` arguments. `last_used_at` is written at most
every `TOUCH_EVERY` seconds per session (a page view is a read, not a write).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, func, or_, select, update
from sqlmodel import Session as DbSession

from controlplane.api_tokens import Principal
from controlplane.secretbox import SecretBox, SecretKeyError
from controlplane.store.models import ConsoleSessionRow

log = logging.getLogger("flux.console")

COOKIE = "flux_console"
COOKIE_PATH = "/ui"
IDLE = 3600.0
"""Seconds without a request after which a session ends."""
LIFETIME = 12 * 3600.0
"""Seconds after login at which a session ends, used or not."""
MAX_SESSIONS = 10_000
"""Past this many live sessions the oldest is dropped (a flood of logins cannot fill the table)."""
TOUCH_EVERY = 60.0
"""Seconds between two writes of a session's last use."""
MAX_FLASHES = 20
"""Messages kept for the next page; older ones are dropped."""


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass
class Session:
    """One logged-in browser: the API token it acts with, and who that token is."""

    key: str = field(repr=False)  # the SHA-256 of the cookie's id: the row's key
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


def _principal_doc(p: Principal) -> dict[str, Any]:
    return {"name": p.name, "role": p.role, "services": sorted(p.services), "bootstrap": p.bootstrap}


def _principal_of(doc: dict[str, Any]) -> Principal:
    return Principal(doc["name"], doc["role"], frozenset(doc.get("services", ())), bool(doc.get("bootstrap")))


class SessionStore:
    """Live sessions in the database, by the SHA-256 of their id; safe to share between threads
    and between the control planes of one database."""

    def __init__(
        self,
        engine: Engine,
        box: SecretBox,
        *,
        idle: float = IDLE,
        lifetime: float = LIFETIME,
        limit: int = MAX_SESSIONS,
        touch_every: float = TOUCH_EVERY,
    ) -> None:
        self.engine = engine
        self.box = box
        self.idle = idle
        self.lifetime = lifetime
        self.limit = limit
        self.touch_every = touch_every

    def create(self, token: str, principal: Principal, now: float) -> tuple[str, Session]:
        """A new session; returns the id for the cookie (shown nowhere else) and the session."""
        session_id = secrets.token_urlsafe(32)
        session = Session(_digest(session_id), token, principal, secrets.token_urlsafe(32), now, now)
        row = ConsoleSessionRow(
            id=session.key,
            secrets_sealed=self.box.seal({"token": token, "csrf": session.csrf}),
            principal=_principal_doc(principal),
            flashes=[],
            created_at=int(now),
            last_used_at=int(now),
        )
        with DbSession(self.engine) as db:
            db.execute(delete(ConsoleSessionRow).where(self._dead(now)))
            over = db.execute(select(func.count()).select_from(ConsoleSessionRow)).scalar_one() - self.limit + 1
            if over > 0:
                oldest = select(ConsoleSessionRow.id).order_by(ConsoleSessionRow.created_at).limit(over)
                doomed = list(db.execute(oldest).scalars())
                db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.id.in_(doomed)))  # type: ignore[attr-defined]
            db.add(row)
            db.commit()
        return session_id, session

    def get(self, session_id: str, now: float) -> Session | None:
        """The live session of a cookie value (its idle clock restarted), or None."""
        if not session_id or len(session_id) > 128:
            return None
        key = _digest(session_id)
        with DbSession(self.engine) as db:
            row = db.get(ConsoleSessionRow, key)
            if row is None:
                return None
            sealed = None
            if now - row.last_used_at <= self.idle and now - row.created_at <= self.lifetime:
                try:
                    sealed = self.box.open(row.secrets_sealed, "a console session")
                except SecretKeyError:  # sealed under a key this control plane does not hold
                    log.warning("a console session sealed under another secret key was ended")
            if sealed is None:  # over, or unreadable here: ended
                db.delete(row)
                db.commit()
                return None
            if now - row.last_used_at >= self.touch_every:
                row.last_used_at = int(now)
                db.commit()
            return Session(
                key,
                sealed["token"],
                _principal_of(row.principal),
                sealed["csrf"],
                float(row.created_at),
                float(row.last_used_at),
                [(str(k), str(t)) for k, t in row.flashes],
            )

    def save_flashes(self, session: Session) -> None:
        """Keep `session.flashes` for the next page (of whichever control plane serves it)."""
        kept = [list(f) for f in session.flashes[-MAX_FLASHES:]]
        with DbSession(self.engine) as db:
            db.execute(update(ConsoleSessionRow).where(ConsoleSessionRow.id == session.key).values(flashes=kept))
            db.commit()

    def end(self, session_id: str) -> None:
        if not session_id:
            return
        with DbSession(self.engine) as db:
            db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.id == _digest(session_id)))
            db.commit()

    def __len__(self) -> int:
        with DbSession(self.engine) as db:
            return int(db.execute(select(func.count()).select_from(ConsoleSessionRow)).scalar_one())

    def _dead(self, now: float) -> Any:
        return or_(
            ConsoleSessionRow.last_used_at < int(now - self.idle),
            ConsoleSessionRow.created_at < int(now - self.lifetime),
        )


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
