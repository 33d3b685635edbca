"""Contract suite of the external registry adapters: every backend imports, follows changes,
exports and withdraws the same way.

etcd and ZooKeeper are real servers started by this module (support.registry_servers);
Consul, Nacos and Eureka cannot run on these machines, so their adapters talk to the
recorded-protocol fakes of support.registry_fakes (FakeConsulRecordedProtocol, ...), and
their parameters are named `*-fake`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from support.registry_backends import (
    Backend,
    ConsulFakeBackend,
    EtcdBackend,
    EurekaFakeBackend,
    NacosFakeBackend,
    ZooKeeperBackend,
    eventually,
    imported,
    run_bounded,
    running,
)
from support.registry_servers import EtcdServer, ZooKeeperServer

from controlplane.registry.adapters.base import EXPORT_MARK
from controlplane.registry.adapters.manager import adapter_class
from controlplane.registry.store import RegistryStore
from controlplane.registry.types import InstanceSpec

BACKENDS = ["etcd", "zookeeper", "consul-fake", "nacos-fake", "eureka-fake"]
_seq = itertools.count(1)
SCENARIO_TIMEOUT = 25.0


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="module")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    with ZooKeeperServer(tmp_path_factory.mktemp("zookeeper")) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    n = next(_seq)
    if request.param == "etcd":
        b: Backend = EtcdBackend(request.getfixturevalue("etcd_server"), f"/t{n}/services/")
    elif request.param == "zookeeper":
        b = ZooKeeperBackend(request.getfixturevalue("zk_server"), f"/t{n}/services")
    elif request.param == "consul-fake":
        b = ConsulFakeBackend()
    elif request.param == "nacos-fake":
        b = NacosFakeBackend()
    else:
        b = EurekaFakeBackend()
    yield b
    b.close()


def run(coro: Coroutine[Any, Any, None]) -> None:
    run_bounded(coro, SCENARIO_TIMEOUT)


def make_adapter(backend: Backend, registry: RegistryStore, **fields: object):  # type: ignore[no-untyped-def]
    spec = backend.spec(**fields)
    return adapter_class(spec.type)(spec, registry)


def spy_on_imports(adapter: Any) -> list[bool]:
    """A list that gets an entry each time the adapter's import side has published a state of the
    external registry that holds one of the adapter's own exports."""
    seen: list[bool] = []
    publish = adapter.publish

    async def spy(found: Any, unusable: int = 0) -> None:
        found = {name: list(specs) for name, specs in found.items()}
        await publish(found, unusable)
        if any(s.metadata.get(EXPORT_MARK) == adapter.source for specs in found.values() for s in specs):
            seen.append(True)

    adapter.publish = spy
    return seen


def spy_on_keepalives(adapter: Any) -> list[int]:
    """[how many export keepalives of the adapter went through]."""
    count = [0]
    keepalive = adapter.export_keepalive

    async def spy() -> None:
        await keepalive()
        count[0] += 1

    adapter.export_keepalive = spy
    return count


def test_import_follows_changes(backend: Backend, registry: RegistryStore) -> None:
    """Instances written to the external registry appear, follow updates and removals; other
    services stay out when `services` names the ones to import."""
    backend.put("orders", "o1", "10.0.0.1", 8081, metadata={"version": "v1"})
    backend.put("orders", "o2", "10.0.0.2", 8082)
    backend.put("users", "u1", "10.0.1.1", 9001)
    adapter = make_adapter(backend, registry, services=["orders"])

    async def scenario() -> None:
        async with running(adapter, registry):
            found = await eventually(lambda: len(imported(registry, "orders")) == 2 and imported(registry, "orders"))
            inst = found[("10.0.0.1", 8081)]
            assert inst.source == adapter.source == f"{backend.type}:t-{backend.type}"
            assert inst.version == "v1" and inst.metadata["version"] == "v1"
            assert not inst.ephemeral and inst.serves
            assert not registry.has_service("users")

            backend.put("orders", "o1", "10.0.0.1", 8081, metadata={"version": "v2"})  # update
            await eventually(lambda: imported(registry, "orders")[("10.0.0.1", 8081)].version == "v2")
            backend.remove("orders", "o2")  # removal
            await eventually(lambda: set(imported(registry, "orders")) == {("10.0.0.1", 8081)})
            backend.put("orders", "o3", "10.0.0.3", 8083)  # addition
            await eventually(lambda: set(imported(registry, "orders")) == {("10.0.0.1", 8081), ("10.0.0.3", 8083)})

            status = await eventually(
                lambda: (s := adapter.status())["state"] == "running" and s["instances"] == 2 and s
            )
            assert status["services"] == 1 and status["last_sync"]
            assert status["import"]["syncs"] >= 4 and status["export"] is None
        # stopping the adapter leaves the imported (persistent) instances in place
        assert set(imported(registry, "orders")) == {("10.0.0.1", 8081), ("10.0.0.3", 8083)}

    run(scenario())


def test_import_everything_and_count_unusable(backend: Backend, registry: RegistryStore) -> None:
    backend.put("alpha", "a1", "10.0.2.1", 7001)
    backend.put("beta", "b1", "10.0.2.2", 7002)
    backend.put_unusable("beta", "bad")
    adapter = make_adapter(backend, registry)

    async def scenario() -> None:
        async with running(adapter, registry):
            await eventually(lambda: imported(registry, "alpha") and imported(registry, "beta"))
            assert set(imported(registry, "beta")) == {("10.0.2.2", 7002)}
            status = await eventually(lambda: (s := adapter.status())["skipped"] == 1 and s["instances"] == 2 and s)
            assert status["services"] == 2
            backend.remove("alpha", "a1")  # a service that empties leaves no instances behind
            await eventually(lambda: not imported(registry, "alpha"))

    run(scenario())


def test_export_writes_our_instances(backend: Backend, registry: RegistryStore) -> None:
    """Our own instances of the exported services are written, updated and removed; imported
    ones, unhealthy ones and other services are not."""
    registry.register("billing", InstanceSpec(address="10.1.0.1", port=7001, metadata={"team": "pay"}, version="v3"))
    registry.register("billing", InstanceSpec(address="10.1.0.2", port=7002, weight=0))  # takes no traffic
    registry.register("hidden", InstanceSpec(address="10.1.0.9", port=7009))
    adapter = make_adapter(backend, registry, export=True, export_services=["billing"], services=["billing"])
    own_seen = spy_on_imports(adapter)
    keepalives = spy_on_keepalives(adapter)

    async def scenario() -> None:
        async with running(adapter, registry):
            found = await eventually(lambda: backend.exported("billing"))
            assert set(found) == {("10.1.0.1", 7001)}
            meta = found[("10.1.0.1", 7001)]
            assert meta[EXPORT_MARK] == adapter.source and meta["team"] == "pay" and meta["version"] == "v3"
            assert not backend.exported("hidden")
            # what we exported is not imported back as a second copy: the import side has been
            # handed (and has published) a state of the external registry holding our export
            await eventually(lambda: own_seen, message="the import side seeing our export")
            assert {i.source for i in registry.instances("billing")} == {"api"}

            await asyncio.to_thread(registry.register, "billing", InstanceSpec(address="10.1.0.3", port=7003))
            await eventually(lambda: set(backend.exported("billing")) == {("10.1.0.1", 7001), ("10.1.0.3", 7003)})
            await asyncio.to_thread(registry.deregister, "billing", "10.1.0.1:7001")
            await eventually(lambda: set(backend.exported("billing")) == {("10.1.0.3", 7003)})
            await asyncio.to_thread(registry.update_instance, "billing", "10.1.0.3:7003", metadata={"team": "ops"})
            await eventually(lambda: backend.exported("billing")[("10.1.0.3", 7003)].get("team") == "ops")

            status = await eventually(lambda: adapter.status()["state"] == "running" and adapter.status())
            assert status["exported"] == 1 and status["export"]["syncs"] >= 3
            done = keepalives[0]
            await eventually(lambda: keepalives[0] > done, message="a keepalive round")
            assert adapter.status()["export"]["errors"] == 0
            await adapter.withdraw()
            assert not backend.exported("billing")

    run(scenario())


def test_import_and_export_together(backend: Backend, registry: RegistryStore) -> None:
    """One service both imported and exported: external instances come in, ours go out, no loop."""
    backend.put("mixed", "ext1", "10.2.0.1", 6001)
    registry.register("mixed", InstanceSpec(address="10.2.0.9", port=6009))
    adapter = make_adapter(backend, registry, export=True, services=["mixed"], export_services=["mixed"])

    async def scenario() -> None:
        async with running(adapter, registry):
            await eventually(lambda: set(backend.exported("mixed")) >= {("10.2.0.9", 6009)})
            await eventually(lambda: set(imported(registry, "mixed")) == {("10.2.0.1", 6001), ("10.2.0.9", 6009)})
            sources = {(i.address, i.source) for i in registry.instances("mixed")}
            assert sources == {("10.2.0.1", adapter.source), ("10.2.0.9", "api")}
            assert set(backend.exported("mixed")) <= {("10.2.0.9", 6009), ("10.2.0.1", 6001)}

    run(scenario())


def test_unreachable_registry_is_reported_and_retried(backend: Backend, registry: RegistryStore) -> None:
    """An address where nothing answers: the status says error with the reason; nothing is imported."""
    spec = backend.spec().model_copy(
        update={"address": "http://127.0.0.1:9" if backend.type in ("consul", "nacos", "eureka") else "127.0.0.1:9"}
    )
    adapter = adapter_class(spec.type)(spec, registry)

    async def scenario() -> None:
        async with running(adapter, registry):
            status = await eventually(lambda: adapter.status()["state"] == "error" and adapter.status(), within=15)
            assert status["last_error"] and status["import"]["errors"] >= 1
            assert not registry.services()

    run(scenario())
