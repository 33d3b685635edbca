"""Alembic migrations: the migrated schema is exactly the models' schema, on SQLite and MariaDB."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel

import controlplane.registry.models  # registers the registry tables
import controlplane.store.models  # noqa: F401  (registers the tables)
from controlplane.spec import ClusterSpec, RouteSpec
from controlplane.store.config_store import ConfigStore
from controlplane.store.db import alembic_config, make_engine, migrate


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'flux.db'}" if request.param == "sqlite" else request.getfixturevalue("mariadb_url")
    engine = make_engine(url)
    yield engine
    engine.dispose()


def schema_diff(engine: Engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
        return compare_metadata(ctx, SQLModel.metadata)


def head_revision(engine: Engine) -> str:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()  # type: ignore[return-value]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_upgrade_of_an_empty_database_matches_the_models(empty_engine: Engine) -> None:
    assert inspect(empty_engine).get_table_names() == []
    migrate(empty_engine)
    assert schema_diff(empty_engine) == []
    assert current_revision(empty_engine) == head_revision(empty_engine)
    tables = set(inspect(empty_engine).get_table_names())
    assert set(SQLModel.metadata.tables) <= tables
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT id, version FROM config_state")).all() == [(1, 0)]


def test_migrating_twice_keeps_data(empty_engine: Engine) -> None:
    migrate(empty_engine)
    store = ConfigStore(empty_engine)
    store.apply([("clusters", ClusterSpec(name="c", endpoints=[{"address": "10.0.0.1", "port": 80}]))])
    store.apply([("routes", RouteSpec(name="r", cluster="c", timeout="3s"))])
    version, cfg = store.current()
    history = store.history()

    migrate(empty_engine)  # a restart runs it again
    migrate(empty_engine)

    fresh = ConfigStore(empty_engine)
    assert fresh.current() == (version, cfg)
    assert fresh.history() == history
    assert schema_diff(empty_engine) == []
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM config_state")).scalar() == 1


def test_models_differ_from_an_unmigrated_database(empty_engine: Engine) -> None:
    """The diff check is not vacuous: an empty database is reported as missing every table."""
    diff = schema_diff(empty_engine)
    added = {d[1].name for d in diff if d[0] == "add_table"}
    assert added == set(SQLModel.metadata.tables)
