"""secrets at rest: room for sealed values, and the sealed per-install secret

Sealed values (enc:v1:...) are longer than the plaintext they hold, so the columns that
hold secrets of bounded width become wider. The values themselves are sealed at the
first start after this migration (controlplane.store.encryption.seal_database), not
here: that needs the secret key, which migrations do not have.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    with op.batch_alter_table("config_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("install_secret", sa.Text(), nullable=True))
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.alter_column("key_sha256", existing_type=_str(64), type_=_str(255), existing_nullable=True)
        batch_op.alter_column("password_hash", existing_type=_str(255), type_=sa.Text(), existing_nullable=True)
    with op.batch_alter_table("tunnels", schema=None) as batch_op:
        batch_op.alter_column("token", existing_type=_str(255), type_=sa.Text(), existing_nullable=True)


def downgrade() -> None:
    # Only for a database whose secrets were never sealed (or were opened again): sealed
    # values do not fit the narrower columns.
    with op.batch_alter_table("tunnels", schema=None) as batch_op:
        batch_op.alter_column("token", existing_type=sa.Text(), type_=_str(255), existing_nullable=True)
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.alter_column("password_hash", existing_type=sa.Text(), type_=_str(255), existing_nullable=True)
        batch_op.alter_column("key_sha256", existing_type=_str(255), type_=_str(64), existing_nullable=True)
    with op.batch_alter_table("config_state", schema=None) as batch_op:
        batch_op.drop_column("install_secret")
