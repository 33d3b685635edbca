"""ConfigStore (controlplane/store) on a real SQLite file: versions, atomicity, history, rollback."""

from __future__ import annotations

import hashlib
import pathlib
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlmodel import Session
from support.store_samples import full_config

from controlplane.spec import (
    ClusterSpec,
    ConfigSet,
    ListenerSpec,
    RouteSpec,
    TunnelSpec,
)
from controlplane.spec._types import MASK
from controlplane.store.config_store import ConfigStore, NotFound, decode_document
from controlplane.store.db import make_engine, migrate
from controlplane.store.models import ConfigHistoryRow
from controlplane.validation import ConfigError


def sqlite_engine(path: pathlib.Path) -> Engine:
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    return engine


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "flux.db"


@pytest.fixture
def store(db_path: pathlib.Path) -> Iterator[ConfigStore]:
    engine = sqlite_engine(db_path)
    yield ConfigStore(engine)
    engine.dispose()


def cluster(name: str, port: int = 9001, weight: int = 1) -> ClusterSpec:
    return ClusterSpec(name=name, endpoints=[{"address": "127.0.0.1", "port": port, "weight": weight}])


def route(name: str, cluster_name: str, **kw: Any) -> RouteSpec:
    return RouteSpec(name=name, cluster=cluster_name, **kw)


def dump_tables(engine: Engine) -> dict[str, list[tuple]]:
    """Every row of every table, for "nothing changed" checks."""
    out = {}
    with engine.connect() as conn:
        for table in ["config_state", "config_history"]:
            out[table] = [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
    return out


def test_versions_are_monotonic_gap_free_one_per_write(store: ConfigStore) -> None:
    assert store.db_version() == 0
    versions = []
    writes: list[tuple[list, list]] = [
        ([("clusters", cluster("a"))], []),
        ([("clusters", cluster("b"))], []),
        ([("routes", route("r", "a"))], []),
        ([("clusters", cluster("a", weight=5)), ("clusters", cluster("c"))], []),  # two changes, one version
        ([], [("clusters", "c")]),
        ([("routes", route("r", "b"))], [("clusters", "a")]),
    ]
    for puts, deletes in writes:
        result = store.apply(puts, deletes, author="test")
        assert result.committed
        versions.append(result.version)
    assert versions == list(range(1, len(writes) + 1))
    assert store.db_version() == len(writes)
    total, entries = store.history(limit=100)
    assert total == len(writes)
    assert [e.version for e in entries] == versions[::-1]  # newest first
    assert all(e.author == "test" for e in entries)
    version, cfg = store.current()
    assert version == len(writes)
    assert set(cfg["clusters"]) == {"b"} and cfg.get("routes", "r").cluster == "b"  # type: ignore[union-attr]


def test_concurrent_writers_on_one_database_never_share_or_skip_a_version(db_path: pathlib.Path) -> None:
    engines = [sqlite_engine(db_path), sqlite_engine(db_path)]
    stores = [ConfigStore(e) for e in engines]  # like two processes: no shared lock or cache
    results: list[int] = []
    lock = threading.Lock()

    def writer(idx: int) -> None:
        for i in range(15):
            r = stores[idx].apply([("clusters", cluster(f"w{idx}-{i}"))])
            with lock:
                results.append(r.version)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 31))
    version, cfg = stores[0].current()
    assert version == 30 and len(cfg["clusters"]) == 30
    total, entries = stores[1].history(limit=100)
    assert total == 30 and sorted(e.version for e in entries) == list(range(1, 31))
    # Each history document is the whole config after that write: counts grow one by one.
    assert sorted(e.resources for e in entries) == list(range(1, 31))
    for e in engines:
        e.dispose()


@pytest.mark.parametrize(
    "bad_write, error",
    [
        (lambda s: s.apply([("routes", route("r2", "missing"))]), ConfigError),  # unknown cluster
        (lambda s: s.apply(deletes=[("clusters", "a")]), ConfigError),  # in use by route r
        (lambda s: s.apply([("clusters", cluster("a"))], create_only=True), ConfigError),  # exists: 409
        (lambda s: s.apply(deletes=[("clusters", "ghost")]), NotFound),
        (lambda s: s.apply([("clusters", cluster("x")), ("clusters", cluster("x", 2))]), ConfigError),
        (lambda s: s.apply([("clusters", cluster("x"))], deletes=[("clusters", "x")]), ConfigError),
        (  # valid first put, invalid second: nothing of either is written
            lambda s: s.apply([("clusters", cluster("fine")), ("routes", route("bad", "ghost"))]),
            ConfigError,
        ),
        (  # port conflict with the existing listener
            lambda s: s.apply([("listeners", ListenerSpec(name="l2", port=8080))]),
            ConfigError,
        ),
        (  # masked secret with nothing stored
            lambda s: s.apply([("tunnels", TunnelSpec(name="t", token=MASK))]),
            ConfigError,
        ),
        (lambda s: s.rollback(999), NotFound),
    ],
)
def test_a_failed_write_changes_nothing(store: ConfigStore, bad_write: Any, error: type) -> None:
    store.apply([("clusters", cluster("a")), ("routes", route("r", "a"))])
    store.apply([("listeners", ListenerSpec(name="l", port=8080))])
    before = dump_tables(store.engine)
    version_before, cfg_before = store.current()
    with pytest.raises(error):
        bad_write(store)
    assert dump_tables(store.engine) == before
    assert store.current() == (version_before, cfg_before)
    # The next good write takes the very next version: the failed one left no gap.
    assert store.apply([("clusters", cluster("after"))]).version == version_before + 1


def test_config_error_names_resource_and_field(store: ConfigStore) -> None:
    store.apply([("clusters", cluster("a")), ("routes", route("r", "a"))])
    with pytest.raises(ConfigError) as exc:
        store.apply(deletes=[("clusters", "a")])
    assert exc.value.status == 409
    assert "routes/r" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        store.apply([("routes", route("r2", "nope"))])
    assert exc.value.status == 422
    assert [(e.resource, e.field) for e in exc.value.errors] == [("routes/r2", "cluster")]


def test_no_op_writes_do_not_bump_the_version(store: ConfigStore) -> None:
    store.apply([("clusters", cluster("a")), ("routes", route("r", "a"))])
    before = dump_tables(store.engine)
    again = store.apply([("clusters", cluster("a")), ("routes", route("r", "a"))])
    assert not again.committed and not again.changed
    assert again.version == 1
    assert [c.action for c in again.changes] == ["unchanged", "unchanged"]
    dry = store.apply([("clusters", cluster("a", weight=9))], dry_run=True)
    assert not dry.committed and [c.action for c in dry.changes] == ["update"]
    missing_ok = store.apply(deletes=[("clusters", "ghost")], allow_missing_deletes=True)
    assert not missing_ok.committed
    assert dump_tables(store.engine) == before
    assert store.db_version() == 1
    assert store.history()[0] == 1


def test_history_rows_hold_the_whole_document(store: ConfigStore) -> None:
    specs = full_config()
    store.apply(specs[:5])
    store.apply(specs[5:])
    store.apply([("clusters", cluster("extra"))])
    _, cfg3 = store.current()
    with Session(store.engine) as s:
        docs = {r.version: r for r in s.execute(select(ConfigHistoryRow)).scalars()}
    assert sorted(docs) == [1, 2, 3]
    for version, row in docs.items():
        cfg = decode_document(row.document)
        assert cfg == store.config_at(version)
        assert row.digest == cfg.digest()
        assert row.resources == cfg.count()
    # Version 3 changed one cluster but its row still holds everything.
    assert decode_document(docs[3].document) == cfg3
    assert cfg3.count() == len(specs) + 1
    assert {p for p, _ in cfg3.iter_all()} == {
        "certificates",
        "policies",
        "consumers",
        "clusters",
        "listeners",
        "routes",
        "tunnels",
    }


def test_secrets_never_reach_the_database_in_the_clear(store: ConfigStore, db_path: pathlib.Path) -> None:
    store.apply(full_config())
    store.engine.dispose()
    raw = db_path.read_bytes() + (
        pathlib.Path(str(db_path) + "-wal").read_bytes() if pathlib.Path(str(db_path) + "-wal").exists() else b""
    )
    with Session(store.engine) as s:
        docs = [zlib.decompress(r.document) for r in s.execute(select(ConfigHistoryRow)).scalars()]
    for blob in (raw, *docs):
        assert b"plain-api-key-of-alice" not in blob
        assert b"alice-password" not in blob
    assert hashlib.sha256(b"plain-api-key-of-alice").hexdigest().encode() in docs[0]


def test_rollback_makes_a_new_version_equal_to_the_old_one(store: ConfigStore) -> None:
    store.apply([("clusters", cluster("a")), ("routes", route("r", "a"))])  # 1
    store.apply([("clusters", cluster("b"))])  # 2
    store.apply([("routes", route("r", "b"))], deletes=[("clusters", "a")])  # 3
    store.apply([("clusters", cluster("b", weight=7))])  # 4
    result = store.rollback(1, author="ops")
    assert result.committed and result.version == 5
    assert store.config_at(5) == store.config_at(1)
    assert store.current() == (5, store.config_at(1))
    _, entries = store.history(limit=1)
    assert entries[0].summary == "rollback to version 1" and entries[0].author == "ops"
    assert entries[0].digest == store.config_at(1).digest()
    assert {c.action for c in result.changes} >= {"create", "delete", "update"}
    # Rolling back to what is current is a no-op.
    again = store.rollback(5)
    assert not again.committed and store.db_version() == 5
    # History is not rewritten: versions 2-4 are still there.
    assert [e.version for e in store.history(limit=10)[1]] == [5, 4, 3, 2, 1]


def test_restart_keeps_config_and_history(db_path: pathlib.Path) -> None:
    engine = sqlite_engine(db_path)
    store = ConfigStore(engine)
    store.apply(full_config(), author="first")
    store.apply([("clusters", cluster("more"))])
    store.apply(deletes=[("clusters", "more")])
    version, cfg = store.current()
    history = store.history(limit=100)
    engine.dispose()

    engine2 = sqlite_engine(db_path)  # migrate() again on the existing file
    store2 = ConfigStore(engine2)
    assert store2.current() == (version, cfg)
    assert store2.history(limit=100) == history
    assert store2.config_at(2).get("clusters", "more") is not None
    assert store2.apply([("clusters", cluster("after-restart"))]).version == version + 1
    engine2.dispose()


def test_history_limit_prunes_old_versions_but_not_current(db_path: pathlib.Path) -> None:
    engine = sqlite_engine(db_path)
    store = ConfigStore(engine, history_limit=3)
    for i in range(6):
        store.apply([("clusters", cluster(f"c{i}"))])
    total, entries = store.history(limit=100)
    assert total == 3 and [e.version for e in entries] == [6, 5, 4]
    with pytest.raises(NotFound):
        store.config_at(2)
    fresh = ConfigStore(engine)  # no cache: reads version 6 from history
    assert fresh.current()[1] == store.current()[1]
    engine.dispose()


@pytest.mark.parametrize("limit", [1, 0, -1])
def test_the_current_version_is_kept_whatever_the_history_limit(db_path: pathlib.Path, limit: int) -> None:
    """The current version's document is the config itself: no limit prunes it (1 keeps only it,
    0 or less keeps every version)."""
    engine = sqlite_engine(db_path)
    store = ConfigStore(engine, history_limit=limit)
    assert store.current() == (0, ConfigSet())  # version 0: the empty config, nothing stored
    for i in range(4):
        store.apply([("clusters", cluster(f"c{i}"))])
    _, entries = store.history(limit=100)
    assert [e.version for e in entries] == ([4] if limit == 1 else [4, 3, 2, 1])
    fresh = ConfigStore(engine)  # no cache: the config is read from the current version's document
    assert fresh.current() == (4, store.current()[1]) and len(fresh.current()[1]["clusters"]) == 4
    assert fresh.rollback(4 if limit == 1 else 1).version == (4 if limit == 1 else 5)
    engine.dispose()


def test_secrets_written_back_masked_keep_the_stored_ones(store: ConfigStore) -> None:
    store.apply(full_config())
    _, cfg = store.current()
    masked_back = []
    for plural, spec in cfg.iter_all():
        masked_back.append((plural, type(spec).model_validate(spec.masked())))
    result = store.apply(masked_back)
    assert not result.committed, [c for c in result.changes if c.action != "unchanged"]
    assert store.current()[1] == cfg
