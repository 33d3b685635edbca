"""RegistryStore on SQLite and MariaDB: index bumps, events, endpoints, sync, catch-up, lease, expiry."""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from support.registry_backends import eventually

from controlplane.registry.store import RegistryStore
from controlplane.registry.types import InstanceSpec, Selector, ServiceCheckSpec, ServiceSpec
from controlplane.store.config_store import NotFound
from controlplane.store.db import make_engine, migrate
from controlplane.validation import ConfigError

T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def engine(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'flux.db'}" if request.param == "sqlite" else request.getfixturevalue("mariadb_url")
    eng = make_engine(url)
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def mysql_engine(mariadb_url: str) -> Iterator[Engine]:
    eng = make_engine(mariadb_url)
    migrate(eng)
    yield eng
    eng.dispose()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_store(engine: Engine, node: str = "cp-a", clock: Clock | None = None, **kw: object) -> RegistryStore:
    store = RegistryStore(engine, node, clock=clock or Clock(), **kw)  # type: ignore[arg-type]
    store.load()
    return store


def inst(address: str = "10.0.0.1", port: int = 80, **kw: object) -> InstanceSpec:
    return InstanceSpec(address=address, port=port, **kw)  # type: ignore[arg-type]


def event_kinds(store: RegistryStore, service: str = "") -> list[str]:
    return [e.kind for e in store.events(service=service, limit=1000)]


def test_the_index_moves_once_per_change_and_never_for_heartbeats(engine: Engine) -> None:
    store = make_store(engine)
    assert store.index == 0
    store.register("orders", inst(tags=["v1"]))  # creates the service too: still one change
    assert store.index == 1 == store.service_index("orders") == store.db_index()
    store.register("orders", inst(tags=["v1"]))  # the same again: a heartbeat, no change
    store.heartbeat("orders", "10.0.0.1:80")
    assert store.flush_heartbeats() == 1
    assert store.index == 1 == store.db_index()
    store.put_service(ServiceSpec(name="orders"))  # unchanged spec
    assert store.index == 1

    store.register("orders", inst(tags=["v2"]))  # changed: one bump
    store.update_instance("orders", "10.0.0.1:80", weight=5, metadata={"a": "1"})  # two fields, one bump
    store.put_service(ServiceSpec(name="orders", group="shop"))
    store.register("billing", inst("10.0.0.2"))
    assert store.index == 5 == store.db_index()
    assert store.service_index("orders") == 4 and store.service_index("billing") == 5
    assert store.instance("orders", "10.0.0.1:80").modify_index == 3

    store.deregister("orders", "10.0.0.1:80")
    assert store.index == 6 == store.service_index("orders")
    assert event_kinds(store, "orders") == [
        "service_registered", "registered", "metadata", "weight", "metadata", "service_updated", "deregistered",
    ]  # fmt: skip
    with pytest.raises(NotFound):
        store.heartbeat("orders", "10.0.0.1:80")
    with pytest.raises(NotFound):
        store.deregister("orders", "10.0.0.1:80")
    with pytest.raises(NotFound):
        store.update_instance("nope", "x", weight=1)
    assert store.index == 6


def test_status_health_and_events(engine: Engine) -> None:
    store = make_store(engine)
    store.register("api", inst(ephemeral=False))
    assert store.instance("api", "10.0.0.1:80").health == "unknown"
    store.update_instance("api", "10.0.0.1:80", status="draining")
    store.update_instance("api", "10.0.0.1:80", status="out_of_service")
    store.update_instance("api", "10.0.0.1:80", status="up")
    store.set_health("api", "10.0.0.1:80", False, "GET /healthz: 503")
    store.set_health("api", "10.0.0.1:80", False, "again")  # no change, no event
    store.set_health("api", "10.0.0.1:80", True, "")
    store.set_health("api", "gone:1", True, "")  # unknown instance: ignored
    events = store.events(service="api")
    assert [e.kind for e in events] == [
        "service_registered", "registered", "draining", "out_of_service", "up", "unhealthy", "healthy",
    ]  # fmt: skip
    assert events[5].detail == "GET /healthz: 503" and events[5].instance == "10.0.0.1:80"
    assert [e.index for e in events] == [1, 1, 2, 3, 4, 5, 6]
    assert [e.kind for e in store.events(since=events[4].id)] == ["unhealthy", "healthy"]
    assert [e.kind for e in store.events(limit=2)] == ["unhealthy", "healthy"]


def test_reregistration_keeps_an_operator_status_unless_the_body_names_one(engine: Engine) -> None:
    store = make_store(engine)
    store.register("api", inst())
    store.update_instance("api", "10.0.0.1:80", status="out_of_service")
    again, created = store.register("api", inst(weight=3))
    assert not created and again.status == "out_of_service" and again.weight == 3
    again, _ = store.register("api", inst(weight=3, status="up"))
    assert again.status == "up"


def test_endpoints_filter_by_state_tags_version_zone_and_namespace(engine: Engine) -> None:
    store = make_store(engine)
    store.put_service(ServiceSpec(name="orders", namespace="prod", strategy="prefer_zone"))
    specs = {
        "a": inst("10.0.0.1", tags=["v1", "canary"], version="1.0", zone="z1", metadata={"k": "v"}),
        "b": inst("10.0.0.2", tags=["v1"], version="1.0", zone="z2"),
        "c": inst("10.0.0.3", tags=["v2"], version="2.0", zone="z1"),
        "d": inst("10.0.0.4", weight=0),
        "e": inst("10.0.0.5", status="out_of_service"),
        "f": inst("10.0.0.6", status="draining", zone="z1"),
        "g": inst("10.0.0.7", ephemeral=False),
        "h": inst("10.0.0.8", status="down"),
    }
    for spec in specs.values():
        store.register("orders", spec)
    store.set_health("orders", "10.0.0.7:80", False, "down")

    def addrs(**kw: object) -> list[str]:
        return [e.address for e in store.endpoints(Selector("orders", **kw))]  # type: ignore[arg-type]

    assert addrs() == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.6"]
    assert addrs(tags=("v1",)) == ["10.0.0.1", "10.0.0.2"]
    assert addrs(tags=("v1", "canary")) == ["10.0.0.1"]
    assert addrs(version="2.0") == ["10.0.0.3"]
    assert addrs(zone="z1") == ["10.0.0.1", "10.0.0.3", "10.0.0.6"]
    assert addrs(namespace="prod") == addrs()
    assert addrs(namespace="dev") == []
    assert store.endpoints(Selector("nope")) == []
    first, *_, draining = store.endpoints(Selector("orders"))
    assert (first.port, first.weight, first.zone, first.version, dict(first.metadata)) == (
        80,
        1,
        "z1",
        "1.0",
        {"k": "v"},
    )
    assert draining.draining and not first.draining
    assert store.service_spec("orders").strategy == "prefer_zone"  # type: ignore[union-attr]
    assert [i.address for i in store.select("orders", healthy=False)] == [
        "10.0.0.4",
        "10.0.0.5",
        "10.0.0.7",
        "10.0.0.8",
    ]
    assert [i.id for i in store.select("orders", status="draining")] == ["10.0.0.6:80"]


def test_sync_source_adds_updates_and_removes_with_one_bump(engine: Engine) -> None:
    store = make_store(engine)
    store.register("orders", inst("10.0.0.9"))  # an API instance: never touched by the source
    store.sync_source("registry:etcd", {"orders": [inst("10.0.1.1"), inst("10.0.1.2")], "users": [inst("10.0.2.1")]})
    assert store.index == 2
    assert {(i.address, i.source, i.ephemeral) for i in store.instances("orders")} == {
        ("10.0.0.9", "api", True), ("10.0.1.1", "registry:etcd", False), ("10.0.1.2", "registry:etcd", False),
    }  # fmt: skip
    store.sync_source("registry:etcd", {"orders": [inst("10.0.1.1", weight=7), inst("10.0.1.2")], "users": []})
    assert store.index == 3
    assert store.instance("orders", "10.0.1.1:80").weight == 7
    assert store.instances("users") == [] and store.has_service("users")
    store.sync_source("registry:etcd", {"orders": [inst("10.0.1.1", weight=7), inst("10.0.1.2")]})
    assert store.index == 3  # same again: no change
    store.sync_source("registry:etcd", {})
    assert store.index == 4
    assert [i.address for i in store.instances("orders")] == ["10.0.0.9"]
    assert "deregistered" in event_kinds(store, "orders")


def test_import_is_one_bump_and_reports_what_changed(engine: Engine) -> None:
    store = make_store(engine)
    items = [
        (ServiceSpec(name=f"svc{n}", group="g", tags=["t"]), [inst(f"10.0.{n}.{i}", 8000) for i in range(1, 4)])
        for n in range(20)
    ]
    result = store.import_services(items)
    assert result.as_dict() == {
        "index": 1,
        "services": {"created": 20, "updated": 0, "unchanged": 0},
        "instances": {"registered": 60, "updated": 0, "unchanged": 0},
    }
    items[0] = (ServiceSpec(name="svc0", group="other"), [inst("10.0.0.1", 8000), inst("10.0.0.2", 8000, weight=2)])
    result = store.import_services(items)
    assert result.index == 2
    assert result.services == {"created": 0, "updated": 1, "unchanged": 19}
    assert result.instances == {"registered": 0, "updated": 1, "unchanged": 58}  # an import removes nothing
    assert [s.name for s in store.services(group="other")] == ["svc0"]
    assert len(store.services(tags=["t"])) == 19


def test_deleting_a_service_with_instances_needs_force(engine: Engine) -> None:
    store = make_store(engine)
    store.register("orders", inst())
    with pytest.raises(ConfigError) as err:
        store.delete_service("orders")
    assert err.value.status == 409 and err.value.errors[0].field == "instances"
    index = store.delete_service("orders", force=True)
    assert index == 2 and not store.has_service("orders")
    assert store.service_index("orders") == 0 and store.watch_index("orders") == 2
    with pytest.raises(NotFound):
        store.delete_service("orders")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM reg_instances")).scalar() == 0
    with pytest.raises(ConfigError):
        store.register("bad name!", inst())


def test_a_second_store_catches_up_from_the_events_and_after_retention_from_the_tables(engine: Engine) -> None:
    a = make_store(engine, "cp-a")
    b = make_store(engine, "cp-b", events_kept=3)
    a.register("orders", inst("10.0.0.1"))
    a.register("orders", inst("10.0.0.2"))
    a.put_service(ServiceSpec(name="users"))
    assert b.poll() == {"orders", "users"}
    assert [i.address for i in b.instances("orders")] == ["10.0.0.1", "10.0.0.2"]
    assert b.index == a.index == 3 and b.service_index("orders") == 2

    b.deregister("orders", "10.0.0.1:80")  # b writes: a catches up when it writes next
    a.register("orders", inst("10.0.0.3"))
    assert a.index == 5 and [i.address for i in a.instances("orders")] == ["10.0.0.2", "10.0.0.3"]

    a.delete_service("users")
    for n in range(5):
        a.register("more", inst(f"10.0.9.{n + 1}"))
    assert b.prune_events() > 0  # only the newest 3 events are left: b reloads everything
    assert b.poll() >= {"orders", "users", "more"}
    assert not b.has_service("users") and b.watch_index("users") == b.index
    assert len(b.instances("more")) == 5 and b.index == a.index


def test_concurrent_writes_are_group_committed_each_with_its_own_index(engine: Engine) -> None:
    store = make_store(engine)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                store.register(f"svc{n % 4}", inst(f"10.1.{n}.{i + 1}"))
            with pytest.raises(NotFound):
                store.deregister("svc0", "nope:1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.index == 80 == store.db_index()  # one per registration (creating a service is part of it)
    events = store.events(limit=1000)
    assert sorted({e.index for e in events}) == list(range(1, 81))
    fresh = make_store(engine, "cp-c")
    assert sum(len(fresh.instances(f"svc{n}")) for n in range(4)) == 80
    assert {s: fresh.service_index(s) for s in ("svc0", "svc1")} == {
        s: store.service_index(s) for s in ("svc0", "svc1")
    }


def test_expiry_and_heartbeats(engine: Engine) -> None:
    clock = Clock()
    store = make_store(engine, clock=clock)
    store.register("orders", inst("10.0.0.1", ttl="10s"))
    store.register("orders", inst("10.0.0.2", ttl="10s"))
    store.register("orders", inst("10.0.0.3", ephemeral=False))
    clock.now += 6
    store.heartbeat("orders", "10.0.0.1:80")
    clock.now += 4  # exactly at the deadline of .2: not yet
    assert store.maintenance_tick() == []
    clock.now += 0.001
    assert [i.id for i in store.maintenance_tick()] == ["10.0.0.2:80"]
    clock.now += 1000
    assert [i.id for i in store.maintenance_tick()] == ["10.0.0.1:80"]
    assert [i.id for i in store.instances("orders")] == ["10.0.0.3:80"]  # persistent: never expires
    assert store.counters["expired"] == 2
    assert event_kinds(store, "orders")[-2:] == ["expired", "expired"]


def test_changes_reach_subscribers_on_the_loop_coalesced(engine: Engine) -> None:
    store = make_store(engine)
    seen: list[tuple[set[str], bool]] = []

    async def main() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        store.bind_loop(loop)
        store.subscribe(lambda names: seen.append((names, asyncio.get_running_loop() is loop)))
        waiter = asyncio.create_task(store.wait("orders", 0, 5))
        late = asyncio.create_task(store.wait("users", 100, 0.05))
        await eventually(lambda: store.hub.waiting() == 2, within=2, message="both watches waiting")
        t0 = time.perf_counter()
        await asyncio.to_thread(store.import_services, [(ServiceSpec(name="orders"), [inst()])])
        index = await waiter
        elapsed = time.perf_counter() - t0
        assert await late == 0
        await asyncio.to_thread(lambda: [store.register(s, inst()) for s in ("a", "b", "c")])
        await eventually(lambda: set().union(*(names for names, _ in seen)) >= {"a", "b", "c"}, within=2)
        return elapsed, index

    elapsed, index = asyncio.run(main())
    assert index == 1 and elapsed < 1
    assert all(on_loop for _, on_loop in seen)
    assert set().union(*(names for names, _ in seen)) == {"orders", "a", "b", "c"}
    assert len(seen) <= 4


@pytest.mark.mysql
def test_only_the_lease_holder_expires_and_another_takes_over(mysql_engine: Engine) -> None:
    clock = Clock()
    a = make_store(mysql_engine, "cp-a", clock=clock, lease_duration=3.0)
    b = make_store(mysql_engine, "cp-b", clock=clock, lease_duration=3.0)
    a.register("orders", inst("10.0.0.1", ttl="5s"))
    a.register("orders", inst("10.0.0.2", ttl="5s"))
    b.poll()
    assert a.lease_tick() and not b.lease_tick()
    assert a.lease().held_by("cp-a", clock.now)

    clock.now += 2
    assert a.lease_tick()  # renewed every tick
    clock.now += 2
    b.heartbeat("orders", "10.0.0.2:80")  # received by b only: a learns of it through the database
    b.flush_heartbeats()
    clock.now += 2  # both past their registration deadline; .2 heartbeated 2 s ago
    assert a.lease_tick()
    assert b.maintenance_tick() == []  # not the leader: expires nothing
    assert [i.id for i in a.maintenance_tick()] == ["10.0.0.1:80"]
    assert a.instance("orders", "10.0.0.2:80").last_heartbeat == T0 + 4

    # a stops renewing (crashed): b takes over once the lease has run out
    clock.now += 2
    assert not b.lease_tick()
    clock.now += 1.1
    assert b.lease_tick() and not a.lease_tick()
    clock.now += 2  # .2's last heartbeat was 5.1 s ago
    b.poll()
    assert [i.id for i in b.maintenance_tick()] == ["10.0.0.2:80"]
    a.poll()
    assert a.instances("orders") == []

    b.release_lease()  # a graceful stop hands over at once
    assert a.lease_tick()


def test_schema_keeps_times_exact(engine: Engine) -> None:
    """last_heartbeat is a DOUBLE: MySQL FLOAT would round unix times to minutes."""
    store = make_store(engine, clock=Clock(T0 + 0.123))
    store.register("orders", inst(ttl="2s", metadata={"x": "y"}), now=T0 + 0.123)
    store.heartbeat("orders", "10.0.0.1:80", now=T0 + 1.456)
    store.flush_heartbeats()
    fresh = make_store(engine, "other")
    got = fresh.instance("orders", "10.0.0.1:80")
    assert got.last_heartbeat == pytest.approx(T0 + 1.456, abs=1e-6)
    assert got.registered_at == pytest.approx(T0 + 0.123, abs=1e-6)
    assert (got.ttl_ms, got.metadata) == (2000, {"x": "y"})
    store.put_service(ServiceSpec(name="orders", health_check=ServiceCheckSpec(path="/ping")))
    fresh.poll()
    assert fresh.service_spec("orders").health_check.path == "/ping"  # type: ignore[union-attr]
