"""Tunnel users: tunnels.users (their tokens sealed), tunnels.domains, tunnels.vhost_overrides_routes

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # JSON columns take no server default on MariaDB: add them nullable, fill them, then make them NOT NULL.
    with op.batch_alter_table("tunnels") as batch:
        batch.add_column(sa.Column("users", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("domains", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("vhost_overrides_routes", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE tunnels SET users = '[]', domains = '[]'")
    with op.batch_alter_table("tunnels") as batch:
        batch.alter_column("users", existing_type=sa.JSON(), nullable=False)
        batch.alter_column("domains", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("tunnels") as batch:
        for name in ("vhost_overrides_routes", "domains", "users"):
            batch.drop_column(name)
