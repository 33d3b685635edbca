"""Disconnected nodes are dropped after a grace period (issue 18): `NodeRegistry` on a real SQLite
database and a fake clock. A node disconnected for longer than `forget_after` (the control
plane's `--forget-nodes-after`, default 24h) leaves `list()` (what /api/v1/nodes shows) at
once, and `prune()` deletes it from memory and its row from the nodes table, also the rows of
a control plane that stopped updating them. Connected nodes are never dropped."""

from __future__ import annotations

import pathlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from controlplane.discovery.nodes import FORGET_AFTER, STALE_AFTER, NodeRegistry, NodeState
from controlplane.main import parse_args
from controlplane.store.db import make_engine, migrate
from controlplane.store.models import NodeRow


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One migrated database file; each test works on a copy (migrating takes a while)."""
    path = tmp_path_factory.mktemp("nodes") / "flux.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture
def engine(migrated: pathlib.Path, tmp_path: pathlib.Path) -> Engine:
    copy = tmp_path / "flux.db"
    copy.write_bytes(migrated.read_bytes())
    return make_engine(f"sqlite:///{copy}")


def _rows(engine: Engine) -> set[str]:
    with Session(engine) as s:
        return {row.node_id for row in s.execute(select(NodeRow)).scalars()}


def _connect(nodes: NodeRegistry, node_id: str, group: str = "default") -> NodeState:
    return nodes.connect(node_id, group, address="127.0.0.1", hostname="h", build_version="test")


def test_a_disconnected_node_is_listed_for_the_grace_period_then_dropped(engine: Engine) -> None:
    clock = FakeClock()
    nodes = NodeRegistry(engine, "cp1", forget_after=timedelta(hours=24), clock=clock)
    gone = _connect(nodes, "edge-1")
    _connect(nodes, "edge-2")
    nodes.disconnect(gone)
    nodes.flush()
    assert _rows(engine) == {"edge-1", "edge-2"}

    clock.now += timedelta(hours=23, minutes=59)
    listed = {n.node_id: n.connected for n in nodes.list()}
    assert listed == {"edge-1": False, "edge-2": True}  # shown as disconnected within the grace period
    assert nodes.prune() == []

    clock.now += timedelta(minutes=2)  # past 24h since it went away
    assert [n.node_id for n in nodes.list()] == ["edge-2"]  # gone from /api/v1/nodes before any prune
    assert nodes.prune() == ["edge-1"]
    assert _rows(engine) == {"edge-2"}
    assert nodes.get("edge-1") is None and nodes.get("edge-2") is not None
    assert [n.node_id for n in nodes.list()] == ["edge-2"]


def test_a_node_that_reconnects_within_the_grace_period_stays(engine: Engine) -> None:
    clock = FakeClock()
    nodes = NodeRegistry(engine, "cp1", forget_after=timedelta(hours=1), clock=clock)
    nodes.disconnect(_connect(nodes, "edge-1"))
    clock.now += timedelta(minutes=50)
    _connect(nodes, "edge-1")
    clock.now += timedelta(hours=5)  # connected all along: never dropped, however long
    assert nodes.prune() == []
    assert [(n.node_id, n.connected) for n in nodes.list()] == [("edge-1", True)]


def test_rows_of_a_control_plane_that_stopped_are_dropped_by_another(engine: Engine) -> None:
    """cp2 dies with its node still marked connected in the table: the row goes stale after
    STALE_AFTER (shown disconnected), and cp1 drops it once the grace period has passed."""
    clock = FakeClock()
    dead = NodeRegistry(engine, "cp2", clock=clock)
    _connect(dead, "edge-9")
    dead.flush()
    alive = NodeRegistry(engine, "cp1", clock=clock)

    clock.now += STALE_AFTER + timedelta(seconds=1)
    assert [(n.node_id, n.connected) for n in alive.list()] == [("edge-9", False)]
    clock.now += FORGET_AFTER - STALE_AFTER
    assert alive.list() == []
    assert alive.prune() == ["edge-9"]
    assert _rows(engine) == set()


def test_without_a_database_and_with_no_grace_period() -> None:
    clock = FakeClock()
    memory = NodeRegistry(None, "cp1", forget_after=timedelta(seconds=10), clock=clock)
    _connect(memory, "quiet")  # connected, nothing heard for days: kept
    memory.disconnect(_connect(memory, "left"))
    clock.now += timedelta(days=3)
    assert memory.prune() == ["left"]
    assert [n.node_id for n in memory.list()] == ["quiet"]

    forever = NodeRegistry(None, "cp1", forget_after=None, clock=clock)
    forever.disconnect(_connect(forever, "left"))
    clock.now += timedelta(days=365)
    assert forever.prune() == [] and [n.node_id for n in forever.list()] == ["left"]


def test_the_control_plane_flag() -> None:
    assert parse_args([]).forget_nodes_after == timedelta(hours=24)
    assert parse_args(["--forget-nodes-after", "90m"]).forget_nodes_after == timedelta(minutes=90)
    assert parse_args(["--forget-nodes-after", "0"]).forget_nodes_after is None
    for bad in ("500ms", "soon"):
        with pytest.raises(SystemExit):
            parse_args(["--forget-nodes-after", bad])


def test_the_flag_error_names_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--forget-nodes-after", "500ms"])
    err = capsys.readouterr().err
    assert "--forget-nodes-after" in err and "at least 1s" in err
