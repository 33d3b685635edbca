"""Alembic environment: runs migrations on the connection the store hands over."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import controlplane.registry.models  # registers the registry tables
import controlplane.store.models  # noqa: F401  (registers the tables)

target_metadata = SQLModel.metadata
config = context.config
connection = config.attributes.get("connection")

if connection is None:
    raise RuntimeError("run migrations through controlplane.store.db.migrate()")

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
