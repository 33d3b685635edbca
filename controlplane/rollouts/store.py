"""RolloutStore: rollouts in the database, shared by every control plane of it.

One rollout runs at a time. It is created inside the transaction that commits its config
version (`create_in`, called by ConfigStore.apply), so a control plane that sees the new
version sees the rollout too and pins the nodes before it pushes anything. While one
runs, every other config write is refused with 409 (`guard`), except the rollout's own
rollback. The control plane holding the lease (`owner`, `lease_until`) moves it on;
`claim` takes the lease when it is ours or has run out, `save` writes only while ours.
Blocking (SQLAlchemy sessions): call from a worker thread.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlmodel import Session

from controlplane.store.models import RolloutRow, utcnow
from controlplane.validation import ConfigError, FieldError

LEASE = timedelta(seconds=5)
EVENTS_KEPT = 200


def new_rollout_id() -> str:
    return "r-" + secrets.token_hex(6)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def event(row: RolloutRow, message: str, now: datetime | None = None) -> None:
    """Add a line to the rollout's log (what `fluxctl` prints as it waits)."""
    row.events = [*row.events, {"at": (now or utcnow()).isoformat(timespec="seconds"), "message": message}][
        -EVENTS_KEPT:
    ]


def as_dict(row: RolloutRow) -> dict[str, Any]:
    iso = lambda d: _aware(d).isoformat(timespec="seconds") if d else None  # noqa: E731
    return {
        "id": row.rollout_id,
        "status": row.status,
        "from_version": row.from_version,
        "to_version": row.to_version,
        "canary_percent": row.canary_percent,
        "bake_ms": row.bake_ms,
        "by_group": row.by_group,
        "groups": row.groups,
        "canaries": row.canaries,
        "stage": row.stage,
        "released_groups": row.released_groups,
        "stage_started_at": iso(row.stage_started_at),
        "stage_acked_at": iso(row.stage_acked_at),
        "criteria": row.criteria,
        "analysis": row.analysis,
        "events": row.events,
        "reason": row.reason,
        "rollback_version": row.rollback_version,
        "owner": row.owner,
        "author": row.author,
        "created_at": iso(row.created_at),
        "finished_at": iso(row.finished_at),
    }


class RolloutStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- inside ConfigStore.apply's transaction -----------------------------------------

    @staticmethod
    def guard(session: Session, rollout_id: str) -> None:
        """Refuse (409) a config write while a rollout other than `rollout_id` runs."""
        running = session.execute(
            select(RolloutRow.rollout_id, RolloutRow.to_version).where(RolloutRow.status == "running")
        ).first()
        if running is not None and running[0] != rollout_id:
            raise ConfigError(
                [
                    FieldError(
                        "",
                        "",
                        f"rollout {running[0]} of version {running[1]} is running: config writes wait until it is "
                        f"promoted or rolled back (fluxctl rollouts abort {running[0]} rolls it back now)",
                    )
                ],
                status=409,
            )

    @staticmethod
    def create_in(session: Session, row: RolloutRow) -> None:
        session.add(row)

    # -- reading ------------------------------------------------------------------------

    def active(self) -> RolloutRow | None:
        with Session(self.engine) as s:
            row = s.execute(select(RolloutRow).where(RolloutRow.status == "running")).scalars().first()
            return _detached(s, row)

    def get(self, rollout_id: str) -> RolloutRow | None:
        with Session(self.engine) as s:
            row = s.execute(select(RolloutRow).where(RolloutRow.rollout_id == rollout_id)).scalars().first()
            return _detached(s, row)

    def list(self, limit: int = 50) -> list[RolloutRow]:
        with Session(self.engine) as s:
            rows = (
                s.execute(select(RolloutRow).order_by(RolloutRow.id.desc()).limit(limit))  # type: ignore[union-attr]
                .scalars()
                .all()
            )
            for row in rows:
                s.expunge(row)
            return list(rows)

    # -- the lease ----------------------------------------------------------------------

    def claim(self, rollout_id: str, owner: str, *, force: bool = False, now: datetime | None = None) -> bool:
        """Take (or renew) the lease of a running rollout: ours already, run out, or `force`."""
        now = now or utcnow()
        q = update(RolloutRow).where(RolloutRow.rollout_id == rollout_id, RolloutRow.status == "running")
        if not force:
            q = q.where(or_(RolloutRow.owner == owner, RolloutRow.lease_until < now))  # type: ignore[arg-type]
        with Session(self.engine) as s:
            done = s.execute(q.values(owner=owner, lease_until=now + LEASE))
            s.commit()
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def save(self, row: RolloutRow, owner: str, now: datetime | None = None) -> bool:
        """Write `row` back if the lease is still `owner`'s (renewing it); False when another took it."""
        now = now or utcnow()
        values = {
            k: getattr(row, k)
            for k in (
                "status", "stage", "released_groups", "stage_started_at", "stage_acked_at", "marks", "analysis",
                "events", "reason", "rollback_version", "finished_at", "canaries",
            )
        }  # fmt: skip
        values.update(owner=owner, lease_until=now + LEASE, updated_at=now)
        with Session(self.engine) as s:
            done = s.execute(
                update(RolloutRow)
                .where(RolloutRow.rollout_id == row.rollout_id, RolloutRow.owner == owner)
                .values(**values)
            )
            s.commit()
            return bool(done.rowcount)  # type: ignore[attr-defined]


def _detached(s: Session, row: RolloutRow | None) -> RolloutRow | None:
    if row is None:
        return None
    s.expunge(row)
    for attr in ("stage_started_at", "stage_acked_at", "lease_until", "created_at", "updated_at", "finished_at"):
        setattr(row, attr, _aware(getattr(row, attr)))
    return row
