"""The ZooKeeper adapter against a real ZooKeeper (Debian zookeeperd, a child process per test):
Curator/Dubbo layout, a server restart, and ephemeral exports written again after a session loss."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from support.registry_backends import ZooKeeperBackend, eventually, imported, run_bounded, running
from support.registry_servers import ZooKeeperServer

from controlplane.registry.adapters.base import EXPORT_MARK
from controlplane.registry.adapters.zookeeper import PAYLOAD_CLASS, ZooKeeperAdapter, parse_node
from controlplane.registry.store import RegistryStore
from controlplane.registry.types import InstanceSpec

SCENARIO_TIMEOUT = 25.0


@pytest.fixture
def zk(tmp_path: pathlib.Path) -> Iterator[ZooKeeperServer]:
    with ZooKeeperServer(tmp_path / "zookeeper") as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def backend(zk: ZooKeeperServer) -> Iterator[ZooKeeperBackend]:
    b = ZooKeeperBackend(zk, "/services")
    yield b
    b.close()


def run(coro: Coroutine[Any, Any, None]) -> None:
    run_bounded(coro, SCENARIO_TIMEOUT)


def test_survives_server_restart(zk: ZooKeeperServer, backend: ZooKeeperBackend, registry: RegistryStore) -> None:
    backend.put("orders", "o1", "10.0.0.1", 8081)
    registry.register("billing", InstanceSpec(address="10.5.0.1", port=7001))
    adapter = ZooKeeperAdapter(backend.spec(export=True, services=["orders"], export_services=["billing"]), registry)

    async def scenario() -> None:
        async with running(adapter, registry):
            await eventually(lambda: set(imported(registry, "orders")) == {("10.0.0.1", 8081)})
            await eventually(lambda: backend.exported("billing"))
            await asyncio.to_thread(zk.kill)
            await asyncio.to_thread(zk.start)  # same data directory and port
            await asyncio.to_thread(backend.put, "orders", "o2", "10.0.0.2", 8082)
            # generous bounds: on a loaded 2-core machine the JVM restart and kazoo's reconnect
            # back-off alone can take over 15 s (seen once in a full run)
            await eventually(
                lambda: set(imported(registry, "orders")) == {("10.0.0.1", 8081), ("10.0.0.2", 8082)}, within=40
            )
            await eventually(lambda: backend.exported("billing"), within=40)
            await eventually(lambda: adapter.status()["state"] == "running", within=40)

    run(scenario())


def test_session_loss_writes_exports_again(backend: ZooKeeperBackend, registry: RegistryStore) -> None:
    """Ephemeral nodes go with their session; after the adapter's session expires it writes them again."""
    registry.register("billing", InstanceSpec(address="10.5.0.1", port=7001))
    adapter = ZooKeeperAdapter(backend.spec(export=True, **{"import": False}), registry)

    async def scenario() -> None:
        async with running(adapter, registry):
            await eventually(lambda: backend.exported("billing"))
            zk = adapter._zk
            assert zk is not None
            session_id, password = zk.client_id
            # another client that takes over the adapter's session and closes it: the server expires it
            thief = KazooClient(hosts=backend.server.address, client_id=(session_id, password), timeout=10)
            await asyncio.to_thread(thief.start, 10)
            await asyncio.to_thread(thief.stop)
            await asyncio.to_thread(thief.close)
            await eventually(lambda: adapter.detail()["session_losses"] >= 1, within=15)
            await eventually(lambda: backend.exported("billing"), within=15)
            data, stat = backend.zk.get("/services/billing/10.5.0.1:7001")
            assert stat.ephemeralOwner == adapter._zk.client_id[0]  # type: ignore[union-attr]
            doc = json.loads(data)
            assert doc["payload"]["@class"] == PAYLOAD_CLASS and doc["serviceType"] == "DYNAMIC"
            assert doc["payload"]["metadata"][EXPORT_MARK] == "zookeeper:t-zookeeper"

    run(scenario())


def test_parse_curator_nodes() -> None:
    dubbo = {
        "name": "orders",
        "id": "10.0.0.1:20880",
        "address": "10.0.0.1",
        "port": 20880,
        "sslPort": None,
        "payload": {"@class": PAYLOAD_CLASS, "id": "x", "name": "orders", "metadata": {"dubbo.metadata.revision": "7"}},
        "registrationTimeUTC": 1700000000000,
        "serviceType": "DYNAMIC",
        "uriSpec": None,
    }
    spec = parse_node("10.0.0.1:20880", json.dumps(dubbo).encode())
    assert spec is not None and (spec.address, spec.port, spec.id) == ("10.0.0.1", 20880, "10.0.0.1:20880")
    assert spec.metadata == {"dubbo.metadata.revision": "7"} and spec.status == "up"
    ssl_only = {**dubbo, "port": None, "sslPort": 8443, "enabled": False, "payload": {"zone": "z1", "n": 3}}
    spec = parse_node("u-u-i-d", json.dumps(ssl_only).encode())
    assert spec is not None and spec.port == 8443 and spec.status == "out_of_service"
    assert spec.metadata == {"zone": "z1", "n": "3"} and spec.zone == "z1"
    assert parse_node("x", b"not json") is None
    assert parse_node("x", json.dumps({**dubbo, "address": None}).encode()) is None
