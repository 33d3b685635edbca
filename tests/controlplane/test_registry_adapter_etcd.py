"""The etcd adapter against a real etcd (Debian etcd-server, a child process per test): it resumes
its watch from the last revision after a disconnect or a server restart, falls back to a full
read when that revision was compacted or the server lost its data, and keeps its exports on a
lease."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from support.registry_backends import EtcdBackend, eventually, imported, run_bounded, running
from support.registry_servers import EtcdServer

from controlplane.registry.adapters.base import EXPORT_MARK
from controlplane.registry.adapters.etcd import EtcdAdapter, parse_value
from controlplane.registry.store import RegistryStore
from controlplane.registry.types import InstanceSpec

SCENARIO_TIMEOUT = 25.0


@pytest.fixture
def etcd(tmp_path: pathlib.Path) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path / "etcd") as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def backend(etcd: EtcdServer) -> Iterator[EtcdBackend]:
    b = EtcdBackend(etcd, "/services/")
    yield b
    b.close()


def run(coro: Coroutine[Any, Any, None]) -> None:
    run_bounded(coro, SCENARIO_TIMEOUT)


def endpoints(registry: RegistryStore, service: str) -> set[tuple[str, int]]:
    return set(imported(registry, service))


def test_survives_server_restart_and_resumes_from_its_revision(
    etcd: EtcdServer, backend: EtcdBackend, registry: RegistryStore
) -> None:
    backend.put("orders", "o1", "10.0.0.1", 8081)
    backend.put("orders", "o2", "10.0.0.2", 8082)
    registry.register("billing", InstanceSpec(address="10.5.0.1", port=7001))
    adapter = EtcdAdapter(backend.spec(export=True, services=["orders"], export_services=["billing"]), registry)

    async def scenario() -> None:
        async with running(adapter, registry):
            await eventually(lambda: endpoints(registry, "orders") == {("10.0.0.1", 8081), ("10.0.0.2", 8082)})
            await eventually(lambda: backend.exported("billing"))
            revision = adapter.revision
            assert adapter.full_reads == 1 and adapter.resumes == 0

            await asyncio.to_thread(etcd.kill)  # a crash: the watch and the lease keepalive fail
            status = await eventually(lambda: adapter.status()["state"] == "error" and adapter.status())
            assert status["last_error"]
            assert endpoints(registry, "orders") == {("10.0.0.1", 8081), ("10.0.0.2", 8082)}  # kept meanwhile

            await asyncio.to_thread(etcd.start)  # same data directory and ports
            backend.reconnect()
            await asyncio.to_thread(backend.remove, "orders", "o1")  # changes right after the restart
            await asyncio.to_thread(backend.put, "orders", "o3", "10.0.0.3", 8083)
            await eventually(
                lambda: endpoints(registry, "orders") == {("10.0.0.2", 8082), ("10.0.0.3", 8083)}, within=15
            )
            await eventually(lambda: adapter.status()["state"] == "running", within=15)
            assert adapter.resumes >= 1 and adapter.full_reads == 1  # watched on from its revision
            assert adapter.revision > revision
            await eventually(lambda: backend.exported("billing"))  # the lease lived through the restart

            await asyncio.to_thread(backend.put, "orders", "o2", "10.0.0.2", 9999)  # and it follows changes
            await eventually(lambda: ("10.0.0.2", 9999) in endpoints(registry, "orders"))

    run(scenario())


def test_resume_replays_changes_made_while_disconnected(backend: EtcdBackend, registry: RegistryStore) -> None:
    """An adapter that was away watches from its revision + 1: puts and deletes made meanwhile
    arrive as watch events, without a full read."""
    backend.put("orders", "o1", "10.0.0.1", 8081)
    backend.put("orders", "o2", "10.0.0.2", 8082)
    adapter = EtcdAdapter(backend.spec(), registry)

    async def scenario() -> None:
        async with running(adapter, registry):
            await eventually(lambda: len(endpoints(registry, "orders")) == 2)
        backend.remove("orders", "o2")
        backend.put("orders", "o1", "10.0.0.1", 8081, metadata={"version": "v9"})
        backend.put("payments", "p1", "10.0.9.1", 9001)
        async with running(adapter, registry):
            await eventually(lambda: endpoints(registry, "orders") == {("10.0.0.1", 8081)})
            await eventually(lambda: endpoints(registry, "payments") == {("10.0.9.1", 9001)})
            assert imported(registry, "orders")[("10.0.0.1", 8081)].version == "v9"
            assert (adapter.full_reads, adapter.resumes) == (1, 1)

    run(scenario())


def test_compacted_revision_falls_back_to_a_full_read(backend: EtcdBackend, registry: RegistryStore) -> None:
    backend.put("orders", "o1", "10.0.0.1", 8081)
    adapter = EtcdAdapter(backend.spec(), registry)

    async def scenario() -> None:
        async with running(adapter, registry):
            await eventually(lambda: endpoints(registry, "orders") == {("10.0.0.1", 8081)})
        backend.remove("orders", "o1")
        backend.put("orders", "o2", "10.0.0.2", 8082)
        response = backend.client.put("/other/key", "x")
        backend.client.compact(response.header.revision, physical=True)
        async with running(adapter, registry):
            await eventually(lambda: endpoints(registry, "orders") == {("10.0.0.2", 8082)})
            assert (adapter.full_reads, adapter.resumes, adapter.compactions) == (2, 1, 1)

    run(scenario())


def test_server_that_lost_its_data_is_read_again(
    etcd: EtcdServer, backend: EtcdBackend, registry: RegistryStore
) -> None:
    """A new cluster on the same address (data directory wiped): its revision went backwards and
    its cluster id changed, so the adapter reads everything again instead of waiting for a
    revision that will not come."""
    for i in range(5):
        backend.put("orders", f"o{i}", "10.0.0.1", 8080 + i)
    adapter = EtcdAdapter(backend.spec(), registry)

    async def scenario() -> None:
        async with running(adapter, registry):
            await eventually(lambda: len(endpoints(registry, "orders")) == 5)
            await asyncio.to_thread(etcd.kill)
            shutil.rmtree(etcd.data_dir)
            await asyncio.to_thread(etcd.start)
            backend.reconnect()
            await asyncio.to_thread(backend.put, "orders", "fresh", "10.0.0.9", 9000)
            await eventually(lambda: endpoints(registry, "orders") == {("10.0.0.9", 9000)}, within=15)
            assert adapter.full_reads == 2

    run(scenario())


def test_export_lease_and_withdraw(backend: EtcdBackend, registry: RegistryStore) -> None:
    """Exported keys hang on one lease (TTL max(10 s, 3 x interval)); withdraw revokes it."""
    registry.register("billing", InstanceSpec(address="10.5.0.1", port=7001, tags=["a"], zone="z1"))
    adapter = EtcdAdapter(backend.spec(export=True, **{"import": False}), registry)

    async def scenario() -> None:
        async with running(adapter, registry):
            await eventually(lambda: backend.exported("billing"))
            value, meta = next(iter(backend.client.get_prefix("/services/billing/")))
            doc = json.loads(value)
            assert doc["address"] == "10.5.0.1" and doc["port"] == 7001 and doc["tags"] == ["a"]
            assert doc["zone"] == "z1" and doc["metadata"][EXPORT_MARK] == "etcd:t-etcd"
            assert meta.key == b"/services/billing/10.5.0.1:7001"
            assert meta.lease_id == adapter.detail()["lease"] and adapter.lease_ttl == 10
            await adapter.withdraw()
            assert not backend.exported("billing")

    run(scenario())


def test_parse_value_layouts() -> None:
    full = parse_value("i1", b'{"address": "10.0.0.1", "port": 80, "weight": 5, "tags": ["x"], "status": "draining"}')
    assert full is not None and (full.id, full.weight, full.tags, full.status) == ("i1", 5, ["x"], "draining")
    grpc_naming = parse_value("10.0.0.2:81", b'{"Addr": "10.0.0.2:81", "Metadata": {"k": 1}}')
    assert grpc_naming is not None and (grpc_naming.address, grpc_naming.port) == ("10.0.0.2", 81)
    assert grpc_naming.metadata == {"k": "1"}
    bare = parse_value("b", b"10.0.0.3:82")
    assert bare is not None and (bare.address, bare.port) == ("10.0.0.3", 82)
    assert parse_value("x", b'{"address": "10.0.0.4"}') is None
    assert parse_value("x", b"[1, 2]") is None
    assert parse_value("x", b'{"address": "10.0.0.5", "port": 70000}') is None
    odd = parse_value("has space/and#hash", b'{"address": "10.0.0.6", "port": 83, "status": "weird"}')
    assert odd is not None and odd.id == "has_space_and_hash" and odd.status == "up"
