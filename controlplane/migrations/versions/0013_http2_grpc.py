"""HTTP/2 and gRPC: listener http2, cluster protocol, route grpc_web

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("listeners") as batch:
        batch.add_column(sa.Column("http2", sa.Boolean(), nullable=True))
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("protocol", sa.String(length=8), nullable=False, server_default="http1"))
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("grpc_web", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.drop_column("grpc_web")
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("protocol")
    with op.batch_alter_table("listeners") as batch:
        batch.drop_column("http2")
