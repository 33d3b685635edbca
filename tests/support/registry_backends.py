"""Harnesses for the registry adapter tests: one per backend, so one contract suite runs on all.

A `Backend` writes instances into its external registry as another client of it would
(`put`, `remove`), reads what an adapter exported (`exported`), and makes the
`RegistrySourceSpec` that points an adapter at it. etcd and ZooKeeper harnesses drive real
servers (support.registry_servers) with their own client libraries; the Consul, Nacos and
Eureka harnesses drive the recorded-protocol fakes (support.registry_fakes).

Also here: `make_registry` (a RegistryStore on a fresh SQLite file), `running` (an adapter
task for the length of a block) and `eventually` (a bounded async poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from sqlalchemy import Engine

from controlplane.registry.adapters.base import RegistryAdapter
from controlplane.registry.store import RegistryStore
from controlplane.registry.types import Instance
from controlplane.spec.registry_source import RegistrySourceSpec
from controlplane.store.db import make_engine, migrate
from support.registry_fakes import FakeConsulRecordedProtocol, FakeEurekaRecordedProtocol, FakeNacosRecordedProtocol
from support.registry_servers import EtcdServer, ZooKeeperServer

T = TypeVar("T")

Endpoint = tuple[str, int]


def run_bounded(coro: Coroutine[Any, Any, None], timeout: float) -> None:
    """Run one asyncio scenario, failing it when it takes longer than `timeout` seconds."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro

    asyncio.run(bounded())


def make_registry(tmp: pathlib.Path, node_id: str = "cp-test") -> tuple[RegistryStore, Engine]:
    engine = make_engine(f"sqlite:///{tmp / 'flux.db'}")
    migrate(engine)
    store = RegistryStore(engine, node_id)
    store.load()
    return store, engine


async def eventually(
    predicate: Callable[[], T | Awaitable[T]], within: float = 10.0, message: str = "", interval: float = 0.02
) -> T:
    """Poll `predicate` (sync or async) until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            last = result
        except Exception as exc:
            result, last = None, exc  # type: ignore[assignment]
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within}s waiting for {message or predicate} (last: {last!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(adapter: RegistryAdapter, registry: RegistryStore) -> AsyncIterator[RegistryAdapter]:
    """Run `adapter` (told of registry changes) for the length of the block, then stop and close it."""
    registry.bind_loop(asyncio.get_running_loop())
    registry.subscribe(adapter.registry_changed)
    task = asyncio.create_task(adapter.run())
    try:
        yield adapter
    finally:
        task.cancel()
        async with asyncio.timeout(10):  # an adapter that does not stop fails the test, not hangs it
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await adapter.close()


def imported(registry: RegistryStore, service: str) -> dict[Endpoint, Instance]:
    """Instances of `service` in the registry, by (address, port)."""
    return {(i.address, i.port): i for i in registry.instances(service)}


class Backend:
    """One external registry as the tests drive it."""

    type = ""
    name = ""

    def spec(self, **fields: Any) -> RegistrySourceSpec:
        body = {"name": f"t-{self.type}", "type": self.type, "address": self.address, "interval": "500ms", **fields}
        return RegistrySourceSpec.model_validate(body)

    @property
    def address(self) -> str:
        raise NotImplementedError

    def put(self, service: str, iid: str, address: str, port: int, *, metadata: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def put_unusable(self, service: str, iid: str) -> None:
        """An entry the adapter cannot use (no port); counted as skipped."""
        raise NotImplementedError

    def remove(self, service: str, iid: str) -> None:
        raise NotImplementedError

    def exported(self, service: str) -> dict[Endpoint, dict[str, str]]:
        """What an adapter exported for `service`: (address, port) -> metadata."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class EtcdBackend(Backend):
    type = name = "etcd"

    def __init__(self, server: EtcdServer, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import pyetcd  # here: a broken pyetcd fails the etcd tests only

            self._client = pyetcd.client(host=self.server.host, port=self.server.port, timeout=5)
        return self._client

    def reconnect(self) -> None:
        """A new client (after the server restarted)."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None

    @property
    def address(self) -> str:
        return self.server.address

    def spec(self, **fields: Any) -> RegistrySourceSpec:
        return super().spec(prefix=self.prefix, **fields)

    def put(self, service: str, iid: str, address: str, port: int, *, metadata: dict[str, str] | None = None) -> None:
        value = {"address": address, "port": port, "metadata": metadata or {}}
        self.client.put(f"{self.prefix}{service}/{iid}", json.dumps(value))

    def put_unusable(self, service: str, iid: str) -> None:
        self.client.put(f"{self.prefix}{service}/{iid}", '{"address": "10.9.9.9"}')

    def remove(self, service: str, iid: str) -> None:
        self.client.delete(f"{self.prefix}{service}/{iid}")

    def exported(self, service: str) -> dict[Endpoint, dict[str, str]]:
        out = {}
        for value, _meta in self.client.get_prefix(f"{self.prefix}{service}/"):
            doc = json.loads(value)
            out[(doc["address"], doc["port"])] = doc.get("metadata", {})
        return out

    def close(self) -> None:
        self.reconnect()


class ZooKeeperBackend(Backend):
    type = name = "zookeeper"

    def __init__(self, server: ZooKeeperServer, base: str) -> None:
        self.server = server
        self.base = base
        self.zk = KazooClient(hosts=server.address, timeout=10)
        self.zk.start(timeout=15)

    @property
    def address(self) -> str:
        return self.server.address

    def spec(self, **fields: Any) -> RegistrySourceSpec:
        return super().spec(prefix=self.base, **fields)

    def put(self, service: str, iid: str, address: str, port: int, *, metadata: dict[str, str] | None = None) -> None:
        doc = {
            "name": service,
            "id": iid,
            "address": address,
            "port": port,
            "sslPort": None,
            "payload": {
                "@class": "org.apache.dubbo.registry.zookeeper.ZookeeperInstance",
                "id": iid,
                "name": service,
                "metadata": metadata or {},
            },
            "registrationTimeUTC": int(time.time() * 1000),
            "serviceType": "DYNAMIC",
            "uriSpec": None,
        }
        path = f"{self.base}/{service}/{iid}"
        data = json.dumps(doc).encode()
        if self.zk.exists(path):
            self.zk.set(path, data)
        else:
            self.zk.create(path, data, makepath=True)

    def put_unusable(self, service: str, iid: str) -> None:
        self.zk.create(f"{self.base}/{service}/{iid}", b"not json", makepath=True)

    def remove(self, service: str, iid: str) -> None:
        self.zk.delete(f"{self.base}/{service}/{iid}")

    def exported(self, service: str) -> dict[Endpoint, dict[str, str]]:
        out = {}
        try:
            nodes = self.zk.get_children(f"{self.base}/{service}")
        except NoNodeError:
            return {}
        for node in nodes:
            try:
                data, stat = self.zk.get(f"{self.base}/{service}/{node}")
            except NoNodeError:
                continue
            doc = json.loads(data)
            if stat.ephemeralOwner:  # what the adapter writes is ephemeral (Curator DYNAMIC)
                out[(doc["address"], doc["port"])] = doc["payload"]["metadata"]
        return out

    def close(self) -> None:
        self.zk.stop()
        self.zk.close()


class ConsulFakeBackend(Backend):
    type = "consul"
    name = "consul-fake"

    def __init__(self) -> None:
        self.fake = FakeConsulRecordedProtocol().start()

    @property
    def address(self) -> str:
        return self.fake.url

    def put(self, service: str, iid: str, address: str, port: int, *, metadata: dict[str, str] | None = None) -> None:
        self.fake.register(service, iid, address, port, meta=metadata)

    def put_unusable(self, service: str, iid: str) -> None:
        self.fake.register(service, iid, "", 0)

    def remove(self, service: str, iid: str) -> None:
        self.fake.deregister(iid)

    def exported(self, service: str) -> dict[Endpoint, dict[str, str]]:
        found = self.fake.instances(service, node=self.fake.AGENT_NODE)
        return {(s["Address"], s["Port"]): s["Meta"] for s in found.values()}

    def close(self) -> None:
        self.fake.stop()


class NacosFakeBackend(Backend):
    type = "nacos"
    name = "nacos-fake"

    def __init__(self) -> None:
        self.fake = FakeNacosRecordedProtocol().start()
        self.ids: dict[tuple[str, str], Endpoint] = {}

    @property
    def address(self) -> str:
        return self.fake.url

    def put(self, service: str, iid: str, address: str, port: int, *, metadata: dict[str, str] | None = None) -> None:
        old = self.ids.get((service, iid))
        if old is not None and old != (address, port):
            self.fake.remove(service, *old)
        self.ids[(service, iid)] = (address, port)
        self.fake.add(service, address, port, metadata=metadata)

    def put_unusable(self, service: str, iid: str) -> None:
        self.fake.add(service, "not an address!", 80)

    def remove(self, service: str, iid: str) -> None:
        self.fake.remove(service, *self.ids.pop((service, iid)))

    def exported(self, service: str) -> dict[Endpoint, dict[str, str]]:
        return {(h["ip"], h["port"]): h["metadata"] for h in self.fake.instances(service)}

    def close(self) -> None:
        self.fake.stop()


class EurekaFakeBackend(Backend):
    type = "eureka"
    name = "eureka-fake"

    def __init__(self) -> None:
        self.fake = FakeEurekaRecordedProtocol().start()

    @property
    def address(self) -> str:
        return self.fake.url

    def put(self, service: str, iid: str, address: str, port: int, *, metadata: dict[str, str] | None = None) -> None:
        self.fake.add(service, iid, address, port, metadata=metadata)

    def put_unusable(self, service: str, iid: str) -> None:
        self.fake.add(service, iid, "", 80)

    def remove(self, service: str, iid: str) -> None:
        self.fake.remove(service, iid)

    def exported(self, service: str) -> dict[Endpoint, dict[str, str]]:
        found = self.fake.instances(service)
        return {(i["ipAddr"], i["port"]["$"]): i["metadata"] for i in found.values()}

    def close(self) -> None:
        self.fake.stop()
