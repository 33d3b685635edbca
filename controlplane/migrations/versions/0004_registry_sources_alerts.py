"""config kinds: external registry sources and alert rules

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _common() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _str(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "registries",
        *_common(),
        sa.Column("type", _str(16), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("prefix", _str(255), nullable=False),
        sa.Column("namespace", _str(255), nullable=False),
        sa.Column("group", _str(255), nullable=False),
        sa.Column("import_enabled", sa.Boolean(), nullable=False),
        sa.Column("export", sa.Boolean(), nullable=False),
        sa.Column("export_services", sa.JSON(), nullable=False),
        sa.Column("interval", sa.Integer(), nullable=False),
        sa.Column("username", _str(255), nullable=False),
        sa.Column("password", sa.Text(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("registries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registries_name"), ["name"], unique=True)
    op.create_table(
        "alerts",
        *_common(),
        sa.Column("kind", _str(16), nullable=False),
        sa.Column("service", _str(63), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("window", sa.Integer(), nullable=False),
        sa.Column("webhook", sa.Text(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("cooldown", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_name"), ["name"], unique=True)


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("registries")
