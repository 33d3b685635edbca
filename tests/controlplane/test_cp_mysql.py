"""The control plane on the real MariaDB server: store, REST, discovery and restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from support.discovery import DiscoveryClient
from support.processes import ControlPlaneProcess, mariadb_database, mariadb_unreachable, wait_until

from controlplane.spec import ClusterSpec, RouteSpec
from controlplane.store.config_store import ConfigStore
from controlplane.store.db import make_engine, migrate
from controlplane.validation import ConfigError

pytestmark = [pytest.mark.mysql]


@pytest.fixture(scope="module")
def mysql_url() -> Iterator[str]:
    reason = mariadb_unreachable()
    if reason:
        pytest.skip(reason)
    with mariadb_database() as url:
        yield url


@pytest.fixture(scope="module")
def cp(mysql_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    with ControlPlaneProcess(tmp_path_factory.mktemp("cp-mysql"), mysql_url, cp_id="cp-mysql") as proc:
        yield proc


@pytest.fixture
def client(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client() as c:
        yield c


def test_database_url_is_mysql(cp: ControlPlaneProcess) -> None:
    assert cp.db.startswith("mysql+pymysql://")
    assert any("database     mysql+pymysql://" in line for line in cp.stdout_lines)


def test_crud_on_mariadb(client: httpx.Client) -> None:
    v0 = int(client.get("/api/v1/config").json()["version"])
    r = client.post("/api/v1/clusters", json={"name": "orders", "endpoints": [{"address": "10.0.0.1", "port": 9001}]})
    assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/routes",
        json={
            "name": "orders-api",
            "cluster": "orders",
            "hosts": ["api.example.com"],
            "path": "/orders",
            "timeout": "15s",
        },
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/consumers",
        json={"name": "alice", "credentials": [{"type": "api_key", "key": "alice-mysql-key"}]},
    )
    assert r.status_code == 201, r.text
    assert client.get("/api/v1/config").json()["version"] == v0 + 3
    route = client.get("/api/v1/routes/orders-api").json()
    assert route["timeout"] == "15s" and route["hosts"] == ["api.example.com"]
    assert client.get("/api/v1/consumers/alice").json()["credentials"][0]["key"] == "********"

    r = client.put(
        "/api/v1/clusters/orders",
        json={"name": "orders", "endpoints": [{"address": "10.0.0.2", "port": 9001}]},
    )
    assert r.status_code == 200 and r.headers["x-flux-config-version"] == str(v0 + 4)

    before = client.get("/api/v1/config").json()
    r = client.delete("/api/v1/clusters/orders")
    assert r.status_code == 409 and "routes/orders-api" in r.json()["message"]
    r = client.post("/api/v1/routes", json={"name": "x", "cluster": "ghost"})
    assert r.status_code == 422 and r.json()["field"] == "cluster"
    assert client.get("/api/v1/config").json()["version"] == before["version"]
    assert client.get("/api/v1/config").json()["digest"] == before["digest"]

    r = client.post("/api/v1/clusters", json={"name": "temp", "endpoints": []})
    assert r.status_code == 201
    assert client.delete("/api/v1/clusters/temp").status_code == 200
    assert client.get("/api/v1/clusters/temp").status_code == 404
    history = client.get("/api/v1/config/history", params={"limit": 100}).json()
    assert history["total"] == client.get("/api/v1/config").json()["version"]


def test_discovery_on_mariadb(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    client.put("/api/v1/listeners/pub", json={"name": "pub", "port": 18080})
    client.put("/api/v1/clusters/disc", json={"name": "disc", "endpoints": [{"address": "10.0.0.1", "port": 1}]})
    client.put("/api/v1/routes/disc", json={"name": "disc", "listener": "pub", "cluster": "disc"})
    current = cp.version()
    rejected: set[int] = set()
    with DiscoveryClient(
        cp.grpc_addr, "mysql-node", nack_if=lambda p: "cannot bind" if p.version_int in rejected else None
    ) as node:
        first = node.wait_for_pushes(1)[0]
        assert first.version_int == current and first.control_plane_id == "cp-mysql"
        assert "disc" in [r.name for r in first.snapshot.routes]
        r = client.put(
            "/api/v1/clusters/disc", json={"name": "disc", "endpoints": [{"address": "10.0.0.1", "port": 2}]}
        )
        bad = int(r.headers["x-flux-config-version"])
        rejected.add(bad)
        node.wait_for_version(bad)
        r = client.put(
            "/api/v1/clusters/disc", json={"name": "disc", "endpoints": [{"address": "10.0.0.1", "port": 3}]}
        )
        good = int(r.headers["x-flux-config-version"])
        push = node.wait_for_version(good)
        assert push.snapshot.clusters[0].endpoints[0].port == 3

        def shown() -> dict | None:
            st = client.get("/api/v1/nodes/mysql-node").json()
            return st if st.get("acked_version") == str(good) and st.get("last_nack") else None

        st = wait_until(shown, 5, message="ACK and NACK on /api/v1/nodes")
        assert st["last_nack"] == {**st["last_nack"], "version": str(bad), "message": "cannot bind"}
        assert st["control_plane"] == "cp-mysql"
    # The node status reaches the database (that is how other control planes see it).
    engine = make_engine(cp.db)
    try:

        def saved() -> bool:
            with engine.connect() as conn:
                row = conn.execute(
                    text("SELECT acked_version, last_nack_message FROM nodes WHERE node_id = 'mysql-node'")
                ).first()
            return row is not None and tuple(row) == (str(good), "cannot bind")

        wait_until(saved, 5, message="node row in MariaDB")
    finally:
        engine.dispose()


@pytest.mark.slow
def test_restart_keeps_config_and_history(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    client.put("/api/v1/clusters/keep", json={"name": "keep", "endpoints": [{"address": "10.9.0.1", "port": 1}]})
    cfg = client.get("/api/v1/config").json()
    export = client.get("/api/v1/config/export").json()
    history = client.get("/api/v1/config/history", params={"limit": 1000}).json()
    old = client.get("/api/v1/config/history/1").json()
    client.close()

    cp.restart()
    with cp.client() as c:
        after = c.get("/api/v1/config").json()
        assert (after["version"], after["digest"], after["resources"]) == (
            cfg["version"],
            cfg["digest"],
            cfg["resources"],
        )
        assert c.get("/api/v1/config/export").json() == export
        assert c.get("/api/v1/config/history", params={"limit": 1000}).json() == history
        assert c.get("/api/v1/config/history/1").json() == old
        with DiscoveryClient(cp.grpc_addr, "after-restart") as node:
            assert node.wait_for_pushes(1)[0].version_int == cfg["version"]
            r = c.put(
                "/api/v1/clusters/keep",
                json={"name": "keep", "endpoints": [{"address": "10.9.0.2", "port": 1}]},
            )
            assert r.headers["x-flux-config-version"] == str(cfg["version"] + 1)
            node.wait_for_version(cfg["version"] + 1)


def test_store_on_mariadb_is_gap_free_under_concurrent_writers(mariadb_url: str) -> None:
    """Two stores (as two processes would) writing at once serialise on the version row."""
    engines = [make_engine(mariadb_url), make_engine(mariadb_url)]
    try:
        migrate(engines[0])
        stores = [ConfigStore(e) for e in engines]
        versions: list[int] = []
        failures: list[BaseException] = []
        lock = threading.Lock()

        def writer(idx: int) -> None:
            try:
                for i in range(15):
                    r = stores[idx].apply([("clusters", ClusterSpec(name=f"w{idx}-{i}"))])
                    with lock:
                        versions.append(r.version)
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
        assert sorted(versions) == list(range(1, 31))
        total, entries = stores[0].history(limit=100)
        assert total == 30 and sorted(e.resources for e in entries) == list(range(1, 31))
        assert len(stores[1].current()[1]["clusters"]) == 30

        before = stores[0].current()
        with pytest.raises(ConfigError):
            stores[1].apply([("clusters", ClusterSpec(name="ok")), ("routes", RouteSpec(name="r", cluster="ghost"))])
        assert stores[0].current() == before and stores[1].db_version() == 30
        with engines[0].connect() as conn:
            assert conn.execute(text("SELECT max(version) FROM config_history")).scalar() == 30  # nothing written
    finally:
        for e in engines:
            e.dispose()
