"""SQLModel tables of the store.

The config itself is the version row (`config_state`) and one document per version
(`config_history`, controlplane.store.config_store); the other tables hold what is not
config: nodes, API tokens, node trust, rollouts, console sessions. (Earlier versions also kept one table per
resource kind; migration 0015 dropped them.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, LargeBinary, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlmodel import Field, SQLModel

Blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql")
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(default: Any = None) -> Any:
    factory = (lambda: list(default)) if isinstance(default, list) else (lambda: dict(default or {}))
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


def _json_opt() -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True))


class ConfigStateRow(SQLModel, table=True):
    """One row (id=1) holding the current config version."""

    __tablename__ = "config_state"
    id: int = Field(default=1, primary_key=True)
    version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)
    # This installation's secret for keyed fingerprints (controlplane.fingerprints), sealed
    # with the secret key; opening it at start proves the key is the one that wrote the database.
    install_secret: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class ConfigHistoryRow(SQLModel, table=True):
    """Every committed version: the whole config document (zlib JSON) and who made it."""

    __tablename__ = "config_history"
    version: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    created_at: datetime = Field(default_factory=utcnow)
    author: str = Field(default="", max_length=255)
    summary: str = Field(default="", sa_column=Column(Text, nullable=False))
    digest: str = Field(max_length=64)
    resources: int = 0
    document: bytes = Field(sa_column=Column(Blob, nullable=False))


class NodeRow(SQLModel, table=True):
    """Last known state of a data-plane node, written by the control plane it streams from."""

    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("node_id"),)
    id: int | None = Field(default=None, primary_key=True)
    node_id: str = Field(max_length=255, index=True)
    node_group: str = Field(max_length=63)
    address: str = Field(default="", max_length=255)
    hostname: str = Field(default="", max_length=255)
    build_version: str = Field(default="", max_length=63)
    control_plane_id: str = Field(default="", max_length=255)
    connected: bool = False
    acked_version: str = Field(default="", max_length=32)
    sent_version: str = Field(default="", max_length=32)
    last_nack_version: str | None = Field(default=None, max_length=32)
    last_nack_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_nack_at: datetime | None = None
    connected_since: datetime | None = None
    last_seen: datetime | None = None
    # The node's last load report (controlplane.rollouts): cumulative request counters.
    load: dict[str, Any] | None = _json_opt()
    load_at: datetime | None = None
    # Resources of the acked version the node could not apply (controlplane.discovery.nodes).
    failing_resources: list[dict[str, Any]] | None = _json_opt()


class ApiTokenRow(SQLModel, table=True):
    """An API token (controlplane.api_tokens): found by `token_id`, checked against `sha256`,
    the hash of the whole token; the token itself is never stored."""

    __tablename__ = "api_tokens"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True, index=True)
    token_id: str = Field(max_length=32, unique=True, index=True)
    sha256: str = Field(max_length=64)
    role: str = Field(max_length=16)
    services: list[str] = _json([])
    created_by: str = Field(default="", max_length=255)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None


class NodeCaRow(SQLModel, table=True):
    """The CA that signs nodes' client certificates (controlplane.store.trust): one row (id=1),
    shared by every control plane on the database; the private key is sealed with the secret key."""

    __tablename__ = "node_ca"
    id: int = Field(default=1, primary_key=True)
    cert_pem: str = Field(sa_column=Column(Text, nullable=False))
    key_sealed: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class JoinTokenRow(SQLModel, table=True):
    """A node join token: found by `token_id`, checked against `secret_sha256`; the secret
    itself is never stored."""

    __tablename__ = "join_tokens"
    id: int | None = Field(default=None, primary_key=True)
    token_id: str = Field(max_length=32, unique=True, index=True)
    secret_sha256: str = Field(max_length=64)
    node_group: str = Field(max_length=63)
    uses: int = 1  # enrolments it allows
    used: int = 0
    expires_at: datetime
    created_by: str = Field(default="", max_length=255)
    created_at: datetime = Field(default_factory=utcnow)


class NodeCertificateRow(SQLModel, table=True):
    """A client certificate issued to a node (enrolment or renewal); `revoked_at` set by
    `DELETE /api/v1/nodes/{id}` or by a later enrolment of the same node id."""

    __tablename__ = "node_certificates"
    serial: str = Field(max_length=40, primary_key=True)  # hex
    node_id: str = Field(max_length=255, index=True)
    node_group: str = Field(max_length=63)
    issued_at: datetime = Field(default_factory=utcnow)
    not_after: datetime
    join_token: str = Field(default="", max_length=32)  # the token of the enrolment it comes from
    revoked_at: datetime | None = None


class RolloutRow(SQLModel, table=True):
    """A staged config rollout (controlplane.rollouts): canary nodes first and/or node groups
    one after another. While `status` is `running`, the nodes of `groups` not yet released
    stay on `from_version`; `owner` drives it while its lease holds, any control plane after."""

    __tablename__ = "rollouts"
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(max_length=32, unique=True, index=True)
    status: str = Field(default="running", max_length=16, index=True)  # running | promoted | rolled_back
    from_version: int = Field(sa_type=BigInteger)
    to_version: int = Field(sa_type=BigInteger)
    canary_percent: int = 0
    bake_ms: int = Field(default=0, sa_type=BigInteger)
    by_group: bool = False
    groups: list[str] = _json([])  # the affected groups, in the order they are released
    canaries: list[str] = _json([])  # node ids (without a worker suffix) that got to_version first
    stage: int = 0  # index into the stages (controlplane.rollouts.plan)
    released_groups: list[str] = _json([])
    stage_started_at: datetime = Field(default_factory=utcnow)
    stage_acked_at: datetime | None = None  # every node of the stage answered: the bake starts
    marks: dict[str, Any] = _json({})  # node id -> its load report when the bake started
    criteria: dict[str, Any] = _json({})
    analysis: dict[str, Any] | None = _json_opt()
    events: list[Any] = _json([])
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    rollback_version: int | None = Field(default=None, sa_type=BigInteger)
    owner: str = Field(default="", max_length=255)
    lease_until: datetime = Field(default_factory=utcnow)
    author: str = Field(default="", max_length=255)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class ConsoleSessionRow(SQLModel, table=True):
    """A web console session (controlplane.ui.sessions): found by the SHA-256 of the cookie's
    id (the id itself is never stored); the API token it acts with and its CSRF token are
    sealed with the secret key. Every control plane of the database sees every session."""

    __tablename__ = "console_sessions"
    id: str = Field(max_length=64, primary_key=True)
    secrets_sealed: str = Field(sa_column=Column(Text, nullable=False))
    principal: dict[str, Any] = _json()
    flashes: list[Any] = _json([])
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    last_used_at: int = Field(sa_column=Column(BigInteger, nullable=False))
