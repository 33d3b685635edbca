"""ZooKeeper adapter (kazoo): the Curator service-discovery layout that Dubbo 3 and Spring Cloud
Zookeeper use.

Layout (base path = the resource's `prefix`, default `/services`, which is Curator's
`ServiceDiscoveryBuilder.basePath` in Dubbo 3 application-level discovery and Spring Cloud
Zookeeper's default root):

    <base>/<service>/<instance id>  ->  Curator ServiceInstance JSON

    /services/orders/0d3c...  ->  {"name": "orders", "id": "0d3c...", "address": "10.0.0.1",
                                   "port": 8080, "sslPort": null,
                                   "payload": {"@class": "org.apache.dubbo.registry.zookeeper.ZookeeperInstance",
                                               "id": "0d3c...", "name": "orders",
                                               "metadata": {"version": "v1"}},
                                   "registrationTimeUTC": 1700000000000, "serviceType": "DYNAMIC",
                                   "uriSpec": null, "enabled": true}

Import reads, per instance node: `address`, `port` (or `sslPort` when `port` is null), the
instance id from the node name, `enabled: false` as status out_of_service, and
`payload.metadata` (Dubbo's and Spring Cloud's payload classes both carry one; a payload
without it gives its own string fields) as metadata, from which `version`, `zone` and
`weight` are taken when present. The service name is the parent node's name.
Export writes the same JSON as EPHEMERAL nodes (Curator's `serviceType: DYNAMIC`) with the
Dubbo payload class, `metadata["flux-exported-by"] = "zookeeper:<resource name>"`, and
persistent parent nodes, so a control plane that dies takes its entries with its session.

Import is watch-driven: each read of the tree sets ZooKeeper (one-shot) child and data
watches; any watch firing, a reconnect, or `interval` passing triggers the next read (a
burst of changes is read once). The whole tree under the base is read each time: fine for
hundreds of instances, not for hundreds of thousands.

kazoo is blocking: calls run in worker threads; its watch and connection-state callbacks
come back to the event loop with `call_soon_threadsafe`. One kazoo client (one session)
serves import and export; kazoo reconnects by itself, and after a session expiry (the
ephemeral nodes are gone) every exported entry is written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError

from controlplane.registry.adapters.base import (
    Publish,
    RegistryAdapter,
    export_metadata,
    make_instance,
    safe_instance_id,
    string_map,
    wait_event,
)
from controlplane.registry.types import Instance, InstanceSpec

log = logging.getLogger("flux.registry.adapters")

PAYLOAD_CLASS = "org.apache.dubbo.registry.zookeeper.ZookeeperInstance"
SESSION_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0  # seconds for one ZooKeeper request (kazoo's own calls wait forever)
READ_COALESCE = 0.02


def _wait(result: Any) -> Any:
    """The value of a kazoo async result, waiting at most CALL_TIMEOUT (raises its error)."""
    return result.get(timeout=CALL_TIMEOUT)


def parse_node(node_name: str, data: bytes) -> InstanceSpec | None:
    """One Curator ServiceInstance node as an instance (None: unusable)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    port = doc.get("port") if doc.get("port") is not None else doc.get("sslPort")
    payload = doc.get("payload")
    if isinstance(payload, dict):
        meta = string_map(payload["metadata"]) if isinstance(payload.get("metadata"), dict) else {
            k: v for k, v in string_map(payload).items() if k not in ("id", "name")
        }  # fmt: skip
    else:
        meta = {}
    return make_instance(
        id=safe_instance_id(node_name),
        address=doc.get("address"),
        port=port,
        metadata=meta,
        status="out_of_service" if doc.get("enabled") is False else None,
    )


def instance_node(inst: Instance, source: str) -> bytes:
    """The Curator ServiceInstance JSON of an exported instance."""
    return json.dumps(
        {
            "name": inst.service,
            "id": inst.id,
            "address": inst.address,
            "port": inst.port,
            "sslPort": None,
            "payload": {
                "@class": PAYLOAD_CLASS,
                "id": inst.id,
                "name": inst.service,
                "metadata": export_metadata(inst, source),
            },
            "registrationTimeUTC": int(time.time() * 1000),
            "serviceType": "DYNAMIC",
            "uriSpec": None,
            "enabled": True,
        },
        sort_keys=True,
    ).encode()


class ZooKeeperAdapter(RegistryAdapter):
    kind = "zookeeper"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base = self.spec.effective_prefix.rstrip("/")
        self.base = base if base.startswith("/") else "/" + base
        self._zk: KazooClient | None = None
        self._zk_lock: asyncio.Lock | None = None
        self._dirty: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reads = 0
        self.session_losses = 0

    def detail(self) -> dict[str, Any]:
        zk = self._zk
        return {
            "base": self.base,
            "connection": str(zk.state) if zk is not None else "closed",
            "reads": self.reads,
            "session_losses": self.session_losses,
        }

    # -- connection ----------------------------------------------------------------------------

    async def _client(self) -> KazooClient:
        if self._zk_lock is None:
            self._zk_lock = asyncio.Lock()
            self._dirty = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        async with self._zk_lock:
            if self._zk is None:
                auth = [("digest", f"{self.spec.username}:{self.spec.password}")] if self.spec.username else None
                zk = KazooClient(
                    hosts=self.spec.address,
                    timeout=SESSION_TIMEOUT,
                    auth_data=auth,
                    connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": self.backoff_max},
                )
                zk.add_listener(self._on_state)
                # stops the client itself on timeout
                await asyncio.to_thread(zk.start, min(CALL_TIMEOUT, max(2.0, 2 * self.interval)))
                self._zk = zk
            return self._zk

    def _threadsafe(self, fn: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed
                loop.call_soon_threadsafe(fn)

    def _on_state(self, state: str) -> None:  # kazoo's thread
        if state == KazooState.LOST:
            self.session_losses += 1
            self._threadsafe(self.invalidate_exports)  # our ephemeral nodes went with the session
        self._threadsafe(self._mark_dirty)

    def _on_watch(self, _event: Any) -> None:  # kazoo's thread
        self._threadsafe(self._mark_dirty)

    def _mark_dirty(self) -> None:
        if self._dirty is not None:
            self._dirty.set()

    async def close(self) -> None:
        zk, self._zk = self._zk, None
        if zk is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(zk.stop)
                await asyncio.to_thread(zk.close)

    # -- import --------------------------------------------------------------------------------

    async def watch(self, publish: Publish) -> None:
        zk = await self._client()
        assert self._dirty is not None
        while True:
            self._dirty.clear()
            found, unusable = await asyncio.to_thread(self._read_tree, zk)
            self.reads += 1
            await publish(found, unusable)
            await wait_event(self._dirty, self.interval)
            await asyncio.sleep(READ_COALESCE)

    def _read_tree(self, zk: KazooClient) -> tuple[dict[str, list[InstanceSpec]], int]:
        """Every instance under the base, setting watches on what was read (blocking)."""
        watch = self._on_watch
        try:
            services = _wait(zk.get_children_async(self.base, watch=watch))
        except NoNodeError:
            _wait(zk.exists_async(self.base, watch=watch))  # fires when the base is created
            return {}, 0
        found: dict[str, list[InstanceSpec]] = {}
        unusable = 0
        for service in sorted(services):
            if not self.wants(service):
                continue
            path = f"{self.base}/{service}"
            try:
                nodes = _wait(zk.get_children_async(path, watch=watch))
            except NoNodeError:
                continue
            for node in nodes:
                try:
                    data, _ = _wait(zk.get_async(f"{path}/{node}", watch=watch))
                except NoNodeError:
                    continue
                spec = parse_node(node, data or b"")
                if spec is None:
                    unusable += 1
                else:
                    found.setdefault(service, []).append(spec)
        return found, unusable

    # -- export --------------------------------------------------------------------------------

    def _path(self, service: str, instance_id: str) -> str:
        return f"{self.base}/{service}/{instance_id}"

    async def export_open(self) -> None:
        await self._client()

    async def export_put(self, inst: Instance) -> None:
        zk = await self._client()
        await asyncio.to_thread(self._put_node, zk, self._path(inst.service, inst.id), instance_node(inst, self.source))

    @staticmethod
    def _put_node(zk: KazooClient, path: str, data: bytes) -> None:
        try:
            _wait(zk.create_async(path, data, ephemeral=True, makepath=True))
            return
        except NodeExistsError:
            pass
        _, stat = _wait(zk.get_async(path))
        session = zk.client_id[0] if zk.client_id else None
        if stat.ephemeralOwner == session:
            _wait(zk.set_async(path, data, version=stat.version))
        else:  # left by an earlier session (a previous leader, or ours before it expired)
            with contextlib.suppress(NoNodeError):
                _wait(zk.delete_async(path, version=stat.version))
            _wait(zk.create_async(path, data, ephemeral=True, makepath=True))

    async def export_delete(self, inst: Instance) -> None:
        zk = await self._client()

        def delete() -> None:
            with contextlib.suppress(NoNodeError):
                _wait(zk.delete_async(self._path(inst.service, inst.id)))

        await asyncio.to_thread(delete)

    async def export_keepalive(self) -> None:
        zk = await self._client()
        if not zk.connected:
            raise ConnectionError(f"ZooKeeper connection {zk.state}")
