"""Persistence: SQLModel tables, engine set-up and Alembic migrations, and the
ConfigStore that turns validated changes into one new config version each."""
