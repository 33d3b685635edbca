"""node trust: the node CA (key sealed), join tokens (hashed) and issued node certificates

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "node_ca",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("key_sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_id", _str(32), nullable=False),
        sa.Column("secret_sha256", _str(64), nullable=False),
        sa.Column("node_group", _str(63), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("created_by", _str(255), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("join_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_join_tokens_token_id"), ["token_id"], unique=True)
    op.create_table(
        "node_certificates",
        sa.Column("serial", _str(40), nullable=False),
        sa.Column("node_id", _str(255), nullable=False),
        sa.Column("node_group", _str(63), nullable=False),
        sa.Column("issued_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("not_after", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("join_token", _str(32), nullable=False),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("serial"),
    )
    with op.batch_alter_table("node_certificates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_certificates_node_id"), ["node_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("node_certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_certificates_node_id"))
    op.drop_table("node_certificates")
    with op.batch_alter_table("join_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_join_tokens_token_id"))
    op.drop_table("join_tokens")
    op.drop_table("node_ca")
