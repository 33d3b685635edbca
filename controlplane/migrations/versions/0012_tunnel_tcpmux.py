"""Tunnel tcpmux: tunnels.tcpmux_httpconnect_port, tunnels.tcpmux_passthrough

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tunnels") as batch:
        batch.add_column(sa.Column("tcpmux_httpconnect_port", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("tcpmux_passthrough", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("tunnels") as batch:
        for name in ("tcpmux_passthrough", "tcpmux_httpconnect_port"):
            batch.drop_column(name)
