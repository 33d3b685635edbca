"""API tokens with roles: who may call the REST API, kept in the database.

A token reads `flux_<id>_<secret>`: `flux_` says what it is (secret scanners and people
recognise it), `<id>` is 12 hex digits that find its row without scanning, `<secret>` is
256 random bits (43 base64url characters). The database keeps the SHA-256 of the whole
token, never the token: a fast hash is enough for a random 256-bit value (nothing to guess),
and the presented token's hash is compared in constant time.

Roles: `read` may GET everything (secrets stay masked, as for every reader); `registry` may
register, heartbeat, patch and deregister the instances of its `services` and read those
services; `admin` may do everything. Which request needs which role is decided in
`controlplane.api.access`; the bootstrap admin token (controlplane.auth) is an admin too.

Several control planes may share one database, so a check reads the row again when its
cached copy is older than `CACHE_TTL` (1 s): a token revoked on another control plane stops
working there within a second, on this one at once. `last_used_at` is written at most once
a minute per token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from controlplane.spec._types import Name
from controlplane.store.config_store import NotFound
from controlplane.store.models import ApiTokenRow, utcnow
from controlplane.validation import ConfigError, FieldError
from fluxcommon.durations import parse_duration_ms
from fluxcommon.textfields import TextChecked

Role = Literal["read", "registry", "admin"]
ROLES: tuple[Role, ...] = ("read", "registry", "admin")
PREFIX = "flux_"
CACHE_TTL = 1.0
"""Seconds a token row read from the database is trusted before it is read again."""
LAST_USED_EVERY = 60.0
_CACHE_MAX = 10_000
_TOKEN = re.compile(r"flux_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")

ServiceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


def _ttl_ms(value: Any) -> int | None:
    if value is None:
        return None
    ms = parse_duration_ms(value)
    if ms < 1000:
        raise ValueError("a token lives at least 1s")
    return ms


class TokenSpec(TextChecked):
    """Body of `POST /api/v1/tokens`."""

    model_config = ConfigDict(extra="forbid")
    name: Name
    role: Role
    services: list[ServiceName] = Field(
        default=[], max_length=1000, description="role registry: the services whose instances it may manage"
    )
    ttl: Annotated[int | None, BeforeValidator(_ttl_ms)] = Field(
        default=None, description="lifetime, e.g. '90d' (at most 365d; default: until revoked)"
    )

    @model_validator(mode="after")
    def _services_fit_the_role(self) -> TokenSpec:
        if self.role == "registry" and not self.services:
            raise ValueError("services: a registry token needs the services whose instances it may manage")
        if self.role != "registry" and self.services:
            raise ValueError(f"services: only registry tokens are limited to services; a {self.role} token is not")
        self.services = sorted(set(self.services))
        return self


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: the bootstrap admin or the holder of an API token."""

    name: str
    role: Role
    services: frozenset[str] = frozenset()
    bootstrap: bool = False

    def label(self) -> str:
        return "the admin token" if self.bootstrap else f"token {self.name!r} (role {self.role})"


BOOTSTRAP_ADMIN = Principal("admin", "admin", bootstrap=True)


@dataclass(frozen=True)
class TokenInfo:
    """What a list shows of a token: everything but the token."""

    name: str
    role: Role
    services: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, row: ApiTokenRow) -> TokenInfo:
        return cls(
            row.name,
            row.role,  # type: ignore[arg-type]
            list(row.services),
            row.created_at,
            row.created_by,
            row.expires_at,
            row.last_used_at,
        )

    def as_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {
            "name": self.name,
            "role": self.role,
            "services": self.services,
            "created_at": iso(self.created_at),
            "created_by": self.created_by,
            "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at),
            "expired": self.expires_at is not None and self.expires_at <= utcnow(),
        }


class TokenRefused(Exception):
    """The presented token is malformed, unknown, revoked or expired (a 401)."""


@dataclass
class _Entry:
    """A token row as cached: what a check needs."""

    name: str
    role: Role
    services: frozenset[str]
    sha256: str
    expires_at: datetime | None
    last_used_at: datetime | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiTokens:
    """Create, list, revoke and check API tokens. Thread-safe; `create`, `list`, `delete`
    and `check` read or write the database (call them from a worker thread); `cached` never does."""

    def __init__(self, engine: Engine, *, cache_ttl: float = CACHE_TTL, clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, _Entry | None] = {}
        self._fetched: dict[str, float] = {}

    # -- management ----------------------------------------------------------------------

    def create(self, spec: TokenSpec, author: str = "") -> tuple[str, TokenInfo]:
        """A new token (returned once, never stored) and its row; 409 when the name is taken."""
        token_id = secrets.token_hex(6)
        token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        row = ApiTokenRow(
            name=spec.name,
            token_id=token_id,
            sha256=_digest(token),
            role=spec.role,
            services=list(spec.services),
            created_by=author[:255],
            created_at=now,
            expires_at=now + timedelta(milliseconds=spec.ttl) if spec.ttl else None,
        )
        taken = ConfigError([FieldError(f"tokens/{spec.name}", "name", f"a token named {spec.name!r} exists")], 409)
        with Session(self.engine) as s:
            if s.execute(select(ApiTokenRow.id).where(ApiTokenRow.name == spec.name)).first() is not None:
                raise taken
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                raise taken from None  # the same name created at the same moment elsewhere
            s.refresh(row)
            return token, TokenInfo.of(row)

    def list(self) -> list[TokenInfo]:
        with Session(self.engine) as s:
            rows = s.execute(select(ApiTokenRow).order_by(ApiTokenRow.name)).scalars().all()
            return [TokenInfo.of(r) for r in rows]

    def get(self, name: str) -> TokenInfo:
        with Session(self.engine) as s:
            row = s.execute(select(ApiTokenRow).where(ApiTokenRow.name == name)).scalars().first()
            if row is None:
                raise NotFound(f"token {name!r} not found")
            return TokenInfo.of(row)

    def delete(self, name: str) -> TokenInfo:
        """Revoke: the row goes, and this process forgets it at once."""
        with Session(self.engine) as s:
            row = s.execute(select(ApiTokenRow).where(ApiTokenRow.name == name)).scalars().first()
            if row is None:
                raise NotFound(f"token {name!r} not found")
            info = TokenInfo.of(row)
            token_id = row.token_id
            s.delete(row)
            s.commit()
        with self._lock:
            self._cache.pop(token_id, None)
            self._fetched.pop(token_id, None)
        return info

    # -- checks --------------------------------------------------------------------------

    @staticmethod
    def looks_like(presented: str) -> bool:
        return presented.startswith(PREFIX)

    def cached(self, presented: str) -> Principal | None:
        """The principal from the cache alone, or None when the row must be read first
        (`check`). Raises TokenRefused as `check` does."""
        token_id = self._token_id(presented)
        with self._lock:
            fetched = self._fetched.get(token_id)
            if fetched is None or self._clock() - fetched > self.cache_ttl:
                return None
            entry = self._cache.get(token_id)
        return self._verify(presented, entry)

    def check(self, presented: str) -> Principal:
        """The principal a token stands for; reads its row when the cached one is stale."""
        principal = self.cached(presented)
        if principal is not None:
            return principal
        token_id = self._token_id(presented)
        entry = self._load(token_id)
        principal = self._verify(presented, entry)
        assert entry is not None  # _verify refused it otherwise
        now = utcnow()
        if entry.last_used_at is None or (now - entry.last_used_at).total_seconds() > LAST_USED_EVERY:
            with Session(self.engine) as s:
                s.execute(update(ApiTokenRow).where(ApiTokenRow.token_id == token_id).values(last_used_at=now))
                s.commit()
            entry.last_used_at = now
        return principal

    def _token_id(self, presented: str) -> str:
        m = _TOKEN.fullmatch(presented)
        if m is None:
            raise TokenRefused("malformed API token: expected flux_<id>_<secret>")
        return m.group(1)

    def _load(self, token_id: str) -> _Entry | None:
        with Session(self.engine) as s:
            row = s.execute(select(ApiTokenRow).where(ApiTokenRow.token_id == token_id)).scalars().first()
            entry = (
                None
                if row is None
                else _Entry(
                    row.name,
                    row.role,  # type: ignore[arg-type]
                    frozenset(row.services),
                    row.sha256,
                    row.expires_at,
                    row.last_used_at,
                )
            )
        with self._lock:
            if len(self._fetched) >= _CACHE_MAX:  # made-up ids must not grow it without bound
                self._cache.clear()
                self._fetched.clear()
            self._cache[token_id] = entry
            self._fetched[token_id] = self._clock()
        return entry

    @staticmethod
    def _verify(presented: str, entry: _Entry | None) -> Principal:
        if entry is None or not hmac.compare_digest(entry.sha256, _digest(presented)):
            raise TokenRefused("unknown or revoked API token")
        if entry.expires_at is not None and entry.expires_at <= utcnow():
            raise TokenRefused(f"API token {entry.name!r} expired at {entry.expires_at.isoformat()}")
        return Principal(entry.name, entry.role, entry.services)
