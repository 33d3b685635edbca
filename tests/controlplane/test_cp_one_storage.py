"""Migration 0015 (one config storage), on SQLite and MariaDB: a database of an earlier version,
its config stored as resource rows and as history documents, is upgraded; the current version's
document is written from the rows where the history lacks it; the resource tables are gone;
the config is intact and rollback works."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, inspect, text
from support.legacy_store import LegacyStore
from support.store_samples import full_config

from controlplane.secretbox import SecretBox, SecretKey, is_sealed_blob
from controlplane.spec import ClusterSpec, ConfigSet
from controlplane.store import encryption
from controlplane.store.config_store import ConfigStore
from controlplane.store.db import make_engine, migrate
from controlplane.store.legacy_rows import TABLE_NAMES


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def engine(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'flux.db'}" if request.param == "sqlite" else request.getfixturevalue("mariadb_url")
    eng = make_engine(url)
    yield eng
    eng.dispose()


def every_kind() -> ConfigSet:
    """One resource of every kind, in the stored form (secrets hashed where the store hashes them)."""
    return ConfigSet().with_changes([(p, spec.keep_secrets_from(None)) for p, spec in full_config()], [])


def small() -> ConfigSet:
    return ConfigSet().with_put("clusters", ClusterSpec(name="first", endpoints=[{"address": "10.0.0.9", "port": 80}]))


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def history_versions(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [(int(v), a) for v, a in conn.execute(text("SELECT version, author FROM config_history ORDER BY 1"))]


def assert_upgraded(engine: Engine, store: ConfigStore, version: int, cfg: ConfigSet) -> None:
    assert not tables(engine) & set(TABLE_NAMES), "resource tables left"
    assert {"config_state", "config_history", "nodes", "rollouts", "api_tokens", "node_ca"} <= tables(engine)
    assert store.current() == (version, cfg)
    # Rollback to the version before and back again.
    back = store.rollback(1)
    assert back.committed and back.version == version + 1 and store.current()[1] == store.config_at(1)
    again = store.rollback(version)
    assert again.version == version + 2 and store.current()[1] == cfg
    # A write on top, read back by a store without cache.
    store.apply([("clusters", ClusterSpec(name="after", endpoints=[{"address": "10.0.0.2", "port": 81}]))])
    fresh = ConfigStore(engine, secrets=store.secrets)
    assert fresh.current()[1].get("clusters", "after") is not None


def test_rows_and_history_are_upgraded(engine: Engine) -> None:
    old = LegacyStore(engine)
    old.apply(small())
    cfg = every_kind()
    old.apply(cfg)
    migrate(engine)
    assert history_versions(engine) == [(1, "legacy"), (2, "legacy")]  # nothing to write: the history had it
    assert_upgraded(engine, ConfigStore(engine), 2, cfg)


def test_rows_without_the_current_document_are_written_to_the_history(engine: Engine) -> None:
    old = LegacyStore(engine)
    old.apply(small())
    cfg = every_kind()
    old.apply(cfg, history=False)  # as if pruned: only the rows hold version 2
    migrate(engine)
    assert history_versions(engine) == [(1, "legacy"), (2, "migration 0015")]
    assert_upgraded(engine, ConfigStore(engine), 2, cfg)
    migrate(engine)  # a restart runs it again: nothing left to do


def test_an_empty_database_of_an_earlier_version_is_version_0(engine: Engine) -> None:
    LegacyStore(engine)
    migrate(engine)
    assert not tables(engine) & set(TABLE_NAMES)
    assert ConfigStore(engine).current() == (0, ConfigSet())
    assert history_versions(engine) == []


def test_sealed_rows_are_written_as_a_sealed_document_with_the_key(engine: Engine) -> None:
    box = SecretBox(SecretKey.generate())
    old = LegacyStore(engine, box)
    old.apply(small())
    cfg = every_kind()
    old.apply(cfg, history=False)
    # Without the key the rows cannot be read: the upgrade stops, nothing is changed.
    with pytest.raises(RuntimeError, match="needs the secret key"):
        migrate(engine)
    assert set(TABLE_NAMES) <= tables(engine)
    migrate(engine, secrets=box)
    assert history_versions(engine) == [(1, "legacy"), (2, "migration 0015")]
    with engine.connect() as conn:
        document, digest = conn.execute(text("SELECT document, digest FROM config_history WHERE version = 2")).one()
    assert is_sealed_blob(bytes(document)) and box.is_current_blob(bytes(document)[:16])
    for secret in (b"plain-api-key-of-alice", b"cs-1", b"jwt-secret-0123456789"):
        assert secret not in bytes(document)
    report = encryption.seal_database(engine, box)  # the start right after: nothing left to seal
    assert report.documents == 0 and not report.created
    assert digest == cfg.digest()  # keyed with the install secret, as the start computes it
    assert_upgraded(engine, ConfigStore(engine, secrets=box), 2, cfg)
