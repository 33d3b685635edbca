"""Engine set-up for SQLite (embedded default) and MySQL/MariaDB, and migrations.

A SQLite database and its -wal/-shm files are private to the control plane's user (0600).
"""

from __future__ import annotations

import logging
import pathlib

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from controlplane.filemodes import SQLITE_SUFFIXES, private_dir, private_file, private_sqlite
from controlplane.secretbox import SecretBox

log = logging.getLogger("flux.store")

MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"


def normalize_url(url: str) -> str:
    """Accept `mysql://` and `mariadb://` as PyMySQL URLs."""
    for prefix in ("mysql://", "mariadb://", "mariadb+pymysql://"):
        if url.startswith(prefix):
            return "mysql+pymysql://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        db_file: pathlib.Path | None = None
        if parsed.database and parsed.database != ":memory:":
            db_file = pathlib.Path(parsed.database).expanduser().resolve()
            if not db_file.parent.exists():
                private_dir(db_file.parent)
            private_sqlite(db_file)  # 0600 before SQLite opens it, so -wal and -shm are 0600 too
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            if db_file is not None:  # -wal/-shm left open by an earlier version
                for suffix in SQLITE_SUFFIXES[1:]:
                    private_file(db_file.with_name(db_file.name + suffix))

        return engine
    if parsed.get_backend_name() == "mysql":
        query = dict(parsed.query)
        query.setdefault("charset", "utf8mb4")
        return create_engine(
            parsed.set(query=query), pool_pre_ping=True, pool_recycle=1800, pool_size=10, max_overflow=20
        )
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or mysql+pymysql://USER@HOST/DB")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def migrate(engine: Engine, revision: str = "head", *, secrets: SecretBox | None = None) -> None:
    """Bring the schema up to `revision`; existing data is kept.

    `secrets`: the box of the secret key, for a migration that has to read or write sealed
    values (0015 writes the current config document from the sealed resource tables of an
    earlier version); the control plane's start passes it."""
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["secrets"] = secrets
        command.upgrade(cfg, revision)
    log.info("database schema at %s", revision)
