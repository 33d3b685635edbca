"""service registry: services, instances, the registry index and leader lease, events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "reg_services",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _str(63), nullable=False),
        sa.Column("namespace", _str(63), nullable=False),
        sa.Column("group", _str(63), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("owner", _str(255), nullable=False),
        sa.Column("health_check", sa.JSON(), nullable=True),
        sa.Column("strategy", _str(32), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("modify_index", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", name="uq_reg_services_name"),
    )
    with op.batch_alter_table("reg_services", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reg_services_group"), ["group"], unique=False)
        batch_op.create_index(batch_op.f("ix_reg_services_namespace"), ["namespace"], unique=False)

    op.create_table(
        "reg_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service", _str(63), nullable=False),
        sa.Column("instance_id", _str(128), nullable=False),
        sa.Column("address", _str(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("version", _str(63), nullable=False),
        sa.Column("zone", _str(63), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("health", _str(16), nullable=False),
        sa.Column("ephemeral", sa.Boolean(), nullable=False),
        sa.Column("ttl_ms", sa.Integer(), nullable=False),
        sa.Column("last_heartbeat", sa.Double(), nullable=False),
        sa.Column("registered_at", sa.Double(), nullable=False),
        sa.Column("source", _str(255), nullable=False),
        sa.Column("modify_index", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("service", "instance_id", name="uq_reg_instances_service_id"),
    )
    with op.batch_alter_table("reg_instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reg_instances_source"), ["source"], unique=False)

    op.create_table(
        "reg_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("registry_index", sa.BigInteger(), nullable=False),
        sa.Column("leader", _str(255), nullable=False),
        sa.Column("lease_until", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(sa.text("INSERT INTO reg_state (id, registry_index, leader, lease_until) VALUES (1, 0, '', 0)"))

    op.create_table(
        "reg_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("registry_index", sa.BigInteger(), nullable=False),
        sa.Column("kind", _str(32), nullable=False),
        sa.Column("service", _str(63), nullable=False),
        sa.Column("instance", _str(128), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reg_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reg_events_registry_index"), ["registry_index"], unique=False)
        batch_op.create_index(batch_op.f("ix_reg_events_service"), ["service"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reg_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reg_events_service"))
        batch_op.drop_index(batch_op.f("ix_reg_events_registry_index"))
    op.drop_table("reg_events")
    op.drop_table("reg_state")
    with op.batch_alter_table("reg_instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reg_instances_source"))
    op.drop_table("reg_instances")
    with op.batch_alter_table("reg_services", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reg_services_namespace"))
        batch_op.drop_index(batch_op.f("ix_reg_services_group"))
    op.drop_table("reg_services")
