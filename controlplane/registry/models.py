"""SQLModel tables of the service registry (migration 0003).

- `reg_services`: one row per service (ServiceSpec fields, JSON for lists and maps).
  Service names are unique across namespaces: the REST API and the `Registry`
  protocol address a service by name; `namespace` is a label selectors filter on.
- `reg_instances`: one row per instance, unique by (service, instance_id).
  `last_heartbeat` is the only column heartbeats touch (batched once a second).
- `reg_state`: one row (id=1): the registry index every change bumps, and the
  leader lease (holder + expiry, unix seconds) that decides which control plane
  of several on one database runs TTL expiry.
- `reg_events`: what happened (registered, expired, up, down, ...), each with the
  registry index it made; the newest `EVENTS_KEPT` are kept. Other control planes
  read it as a change log to refresh their in-memory view.

Times are unix seconds in DOUBLE columns (MySQL FLOAT would round them to minutes).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Column, Double, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

EVENTS_KEPT = 10_000

# SQLite auto-increments only an INTEGER PRIMARY KEY; MySQL gets a 64-bit one.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _json(default: Any) -> Any:
    factory = (lambda: list(default)) if isinstance(default, list) else (lambda: dict(default))
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


def _time() -> Any:
    return Field(default=0.0, sa_column=Column(Double, nullable=False))


def _index() -> Any:
    return Field(default=0, sa_column=Column(BigInteger, nullable=False))


class RegServiceRow(SQLModel, table=True):
    __tablename__ = "reg_services"
    __table_args__ = (UniqueConstraint("name", name="uq_reg_services_name"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63)
    namespace: str = Field(default="default", max_length=63, index=True)
    group: str = Field(default="", max_length=63, index=True)
    tags: list[str] = _json([])
    metadata_: dict[str, str] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    owner: str = Field(default="", max_length=255)
    health_check: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    strategy: str = Field(default="round_robin", max_length=32)
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: float = _time()
    modify_index: int = _index()


class RegInstanceRow(SQLModel, table=True):
    __tablename__ = "reg_instances"
    __table_args__ = (UniqueConstraint("service", "instance_id", name="uq_reg_instances_service_id"),)
    id: int | None = Field(default=None, primary_key=True)
    service: str = Field(max_length=63)
    instance_id: str = Field(max_length=128)
    address: str = Field(max_length=255)
    port: int
    weight: int = 1
    version: str = Field(default="", max_length=63)
    zone: str = Field(default="", max_length=63)
    tags: list[str] = _json([])
    metadata_: dict[str, str] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    status: str = Field(default="up", max_length=16)
    health: str = Field(default="unknown", max_length=16)
    ephemeral: bool = Field(default=True, sa_column=Column(Boolean, nullable=False))
    ttl_ms: int = 30_000
    last_heartbeat: float = _time()
    registered_at: float = _time()
    source: str = Field(default="api", max_length=255, index=True)
    modify_index: int = _index()


class RegStateRow(SQLModel, table=True):
    """One row (id=1): the registry index and the expiry leader's lease."""

    __tablename__ = "reg_state"
    id: int = Field(default=1, primary_key=True)
    registry_index: int = _index()
    leader: str = Field(default="", max_length=255)
    lease_until: float = _time()


class RegEventRow(SQLModel, table=True):
    __tablename__ = "reg_events"
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    time: float = _time()
    registry_index: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, index=True))
    kind: str = Field(max_length=32)
    service: str = Field(max_length=63, index=True)
    instance: str = Field(default="", max_length=128)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False))
