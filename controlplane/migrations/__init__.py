"""Alembic migrations of the store (run by `controlplane.store.db.migrate`)."""
