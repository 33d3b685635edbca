"""TLS at the edge: listener tls/mode/forward, cluster tls, mtls credentials

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("listeners") as batch:
        batch.add_column(sa.Column("tls", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("mode", sa.String(length=8), nullable=False, server_default="reverse"))
        batch.add_column(sa.Column("forward", sa.JSON(), nullable=True))
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("tls", sa.JSON(), nullable=True))
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("subject", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("subject")
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("tls")
    with op.batch_alter_table("listeners") as batch:
        for name in ("forward", "mode", "tls"):
            batch.drop_column(name)
