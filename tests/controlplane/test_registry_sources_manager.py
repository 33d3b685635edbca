"""RegistrySourceManager: adapters per `registries` resource, on the leader only; restarts on
change; withdraws exports and drops imports when a resource goes; status and metrics.

The external registry here is the FakeConsulRecordedProtocol of support.registry_fakes
(Consul cannot run on these machines); the manager does not depend on the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.registry_backends import eventually, imported, run_bounded
from support.registry_fakes import FakeConsulRecordedProtocol

from controlplane.registry.adapters.manager import RegistrySourceManager
from controlplane.registry.store import RegistryStore
from controlplane.registry.types import InstanceSpec
from controlplane.spec.registry_source import RegistrySourceSpec

SCENARIO_TIMEOUT = 20.0


@pytest.fixture
def consul() -> Iterator[FakeConsulRecordedProtocol]:
    with FakeConsulRecordedProtocol() as fake:
        yield fake  # type: ignore[misc]


def run(coro: Coroutine[Any, Any, None]) -> None:
    run_bounded(coro, SCENARIO_TIMEOUT)


def source(address: str, name: str = "main", **fields: object) -> RegistrySourceSpec:
    return RegistrySourceSpec.model_validate(
        {"name": name, "type": "consul", "address": address, "interval": "500ms", **fields}
    )


class Leader:
    def __init__(self, value: bool = True) -> None:
        self.value = value

    def __call__(self) -> bool:
        return self.value


def test_adapters_run_on_the_leader_only(consul: FakeConsulRecordedProtocol, registry: RegistryStore) -> None:
    consul.register("web", "web-1", "10.0.0.1", 80)
    registry.register("billing", InstanceSpec(address="10.5.0.1", port=7001))
    leader = Leader(False)
    manager = RegistrySourceManager(registry, is_leader=leader)
    manager.set_specs({"main": source(consul.url, export=True, export_services=["billing"])})

    async def scenario() -> None:
        registry.bind_loop(asyncio.get_running_loop())
        await manager.reconcile()
        assert manager.status()["items"][0]["state"] == "standby" and not manager.status()["leader"]
        # nothing runs on a standby: no adapter, and the registry never heard from us
        assert manager.adapter("main") is None and not consul.requests
        assert not registry.has_service("web")

        leader.value = True
        await manager.reconcile()
        await eventually(lambda: imported(registry, "web"))
        await eventually(lambda: consul.instances("billing"))

        leader.value = False  # lease lost: stop, but leave imports and exports to the next leader
        await manager.reconcile()
        assert manager.adapter("main") is None
        assert imported(registry, "web") and consul.instances("billing")
        await manager.close()

    run(scenario())


def test_change_restarts_delete_withdraws_and_drops(
    consul: FakeConsulRecordedProtocol, registry: RegistryStore
) -> None:
    consul.register("web", "web-1", "10.0.0.1", 80)
    consul.register("api", "api-1", "10.0.0.2", 81)
    registry.register("billing", InstanceSpec(address="10.5.0.1", port=7001))
    manager = RegistrySourceManager(registry, is_leader=lambda: True)
    manager.set_specs({"main": source(consul.url, services=["web", "api"], export=True)})

    async def scenario() -> None:
        registry.bind_loop(asyncio.get_running_loop())
        await manager.reconcile()
        await eventually(lambda: imported(registry, "web") and imported(registry, "api"))
        await eventually(lambda: consul.instances("billing"))
        first = manager.adapter("main")

        manager.set_specs({"main": source(consul.url, services=["web"], export=True)})
        await manager.reconcile()
        assert manager.adapter("main") is not first and manager.starts == 2
        await eventually(lambda: not imported(registry, "api"))  # the new set no longer has it
        await eventually(lambda: consul.instances("billing"))  # written again by the new adapter

        manager.set_specs({})
        await manager.reconcile()
        assert not consul.instances("billing")  # withdrawn
        await eventually(lambda: not imported(registry, "web"))  # imports of a deleted source dropped
        assert imported(registry, "billing")  # our own instance stays
        await manager.close()

    run(scenario())


def test_orphan_imports_are_dropped_on_taking_the_lease(registry: RegistryStore) -> None:
    """Instances of a source whose resource was deleted while no control plane ran."""
    registry.sync_source("etcd:gone", {"old": [InstanceSpec(address="10.9.0.1", port=1, ephemeral=False)]})
    registry.sync_source("custom", {"old": [InstanceSpec(address="10.9.0.2", port=2, ephemeral=False)]})
    manager = RegistrySourceManager(registry, is_leader=lambda: True)

    async def scenario() -> None:
        await manager.reconcile()
        assert set(imported(registry, "old")) == {("10.9.0.2", 2)}  # not an adapter's source: left alone

    run(scenario())


def test_status_and_metrics(consul: FakeConsulRecordedProtocol, registry: RegistryStore) -> None:
    consul.register("web", "web-1", "10.0.0.1", 80)
    manager = RegistrySourceManager(
        registry, is_leader=lambda: True, adapters={"consul": "controlplane.registry.adapters.consul:ConsulAdapter",
                                                    "nacos": "no.such.module:NacosAdapter"}
    )  # fmt: skip
    manager.set_specs({
        "main": source(consul.url),
        "broken": RegistrySourceSpec(name="broken", type="nacos", address="http://127.0.0.1:9"),
    })  # fmt: skip

    async def scenario() -> None:
        await manager.reconcile()
        await eventually(lambda: manager.source_status("main")["state"] == "running")  # type: ignore[index]
        status = manager.status()
        assert status["leader"] and status["total"] == 2
        main = next(i for i in status["items"] if i["name"] == "main")
        assert main["type"] == "consul" and main["source"] == "consul:main" and main["address"] == consul.url
        assert main["services"] == 1 and main["instances"] == 1 and main["last_sync"] and main["last_error"] is None
        assert main["import"]["state"] == "synced" and main["export"] is None and main["detail"]["queries"] >= 1
        broken = next(i for i in status["items"] if i["name"] == "broken")
        assert broken["state"] == "failed" and "cannot load the nacos adapter" in broken["last_error"]

        collector = CollectorRegistry()
        collector.register(manager)  # type: ignore[arg-type]
        text = generate_latest(collector).decode()
        assert 'flux_registry_source_up{name="main",type="consul"} 1.0' in text
        assert 'flux_registry_source_up{name="broken",type="nacos"} 0.0' in text
        assert 'flux_registry_source_instances{name="main",type="consul"} 1.0' in text
        assert 'flux_registry_source_syncs_total{direction="import",name="main",type="consul"} 1.0' in text
        assert "flux_registry_source_errors_total" in text
        await manager.close()
        assert manager.adapter("main") is None

    run(scenario())


def test_reserved_names_are_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        RegistrySourceSpec(name="status", type="etcd", address="127.0.0.1:2379")
