"""listeners: client timeouts, connection limits and path normalisation

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COLUMNS = ("timeouts", "limits", "path_normalization")


def upgrade() -> None:
    with op.batch_alter_table("listeners") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("listeners") as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
