"""etcd (v3 API) adapter: watch-based import that resumes from its revision, lease-based export.

Key layout (prefix = the resource's `prefix`, default `/services/`; a missing trailing `/`
is added):

    <prefix><service>/<instance id>  ->  JSON instance

    /services/orders/10.0.0.1:8080  ->  {"address": "10.0.0.1", "port": 8080, "weight": 1,
                                         "version": "v1", "zone": "z1", "tags": ["a"],
                                         "metadata": {"k": "v"}, "status": "up"}

Only `address` and `port` are required; `status` is one of up | down | draining |
out_of_service. Also read on import, for registries written by other tools: gRPC-go's etcd
naming layout `{"Addr": "10.0.0.1:8080", "Metadata": ...}`, `"address": "host:port"`
without `port`, `host`/`ip` for `address`, and a bare `host:port` string value. Keys with
no `/` after the service name, and values that give no address and port, are skipped (and
counted in the status). Exported instances are written in the first form, with
`metadata["flux-exported-by"] = "etcd:<resource name>"`, attached to one lease of TTL
max(10 s, 3 x interval) that the adapter keeps alive every `interval`; when the control
plane dies its keys vanish with the lease, and `withdraw` revokes the lease.

Import: one range read of the prefix gives the state and its revision R, then a watch from
R + 1 delivers every later change in order. The adapter remembers the last revision it
applied; after a disconnect (server restart, network) it watches again from that revision
+ 1, so changes made meanwhile are replayed, not missed, and no full read is needed. It
falls back to a full read when the revision was compacted away, when the server's revision
went backwards or its cluster id changed (data lost / another cluster).

pyetcd (`etcd-sdk-python`, python-etcd3's maintained fork) is blocking: every call runs in
a worker thread (`asyncio.to_thread`) with a 5 s deadline; the watch runs in pyetcd's own
thread and feeds its responses to an asyncio queue with `call_soon_threadsafe`. A pyetcd
client marks its endpoint failed for minutes after an error, so each session makes a new
client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import Any

import grpc
import pyetcd
import pyetcd.exceptions
import pyetcd.watch

from controlplane.registry.adapters.base import (
    Publish,
    RegistryAdapter,
    export_metadata,
    make_instance,
    safe_instance_id,
    string_map,
)
from controlplane.registry.types import Instance, InstanceSpec
from fluxcommon.netaddr import split_host_port

log = logging.getLogger("flux.registry.adapters")

RPC_TIMEOUT = 5.0
_GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
_STATUSES = {"up", "down", "draining", "out_of_service"}


class WatchLost(ConnectionError):
    pass


class _Compacted(Exception):
    """The revision to watch from was compacted away: read everything."""


def parse_value(raw_id: str, value: bytes) -> InstanceSpec | None:
    """One etcd value as an instance (None: unusable)."""
    try:
        data: Any = json.loads(value)
    except ValueError:
        data = value.decode("utf-8", "replace").strip()
    fields: dict[str, Any] = {"id": safe_instance_id(raw_id)}
    if isinstance(data, str):
        try:
            fields["address"], fields["port"] = split_host_port(data)
        except ValueError:
            return None
        return make_instance(**fields)
    if not isinstance(data, dict):
        return None
    address = data.get("address") or data.get("Addr") or data.get("host") or data.get("ip")
    port = data.get("port")
    if port is None and isinstance(address, str):
        try:
            address, port = split_host_port(address)
        except ValueError:
            return None
    tags = data.get("tags")
    status = data.get("status")
    fields.update(
        address=address,
        port=port,
        weight=data.get("weight"),
        version=data.get("version"),
        zone=data.get("zone"),
        tags=[str(t) for t in tags] if isinstance(tags, list) else None,
        metadata=string_map(data.get("metadata") if "metadata" in data else data.get("Metadata")),
        status=status if status in _STATUSES else None,
    )
    return make_instance(**fields)


def instance_value(inst: Instance, source: str) -> str:
    """The JSON an exported instance is written as."""
    return json.dumps(
        {
            "address": inst.address,
            "port": inst.port,
            "weight": inst.weight,
            "version": inst.version,
            "zone": inst.zone,
            "tags": list(inst.tags),
            "metadata": export_metadata(inst, source),
            "status": "up",
        },
        sort_keys=True,
    )


class EtcdAdapter(RegistryAdapter):
    kind = "etcd"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        prefix = self.spec.effective_prefix
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._prefix_b = self.prefix.encode()
        self.secure = self.spec.address.startswith("https://")
        self.endpoints = [
            split_host_port(part.strip().removeprefix("http://").removeprefix("https://"), 2379)
            for part in self.spec.address.split(",")
            if part.strip()
        ]
        # import state: key -> (service, instance or None when unusable); the revision it reflects
        self._entries: dict[bytes, tuple[str, InstanceSpec | None]] = {}
        self.revision = 0
        self.cluster_id = 0
        self.full_reads = 0
        self.resumes = 0
        self.compactions = 0
        self._export_client: Any = None
        self._lease: Any = None

    @property
    def lease_ttl(self) -> int:
        return max(10, math.ceil(3 * self.interval))

    def detail(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "full_reads": self.full_reads,
            "resumes": self.resumes,
            "compactions": self.compactions,
            "prefix": self.prefix,
            "lease": self._lease.id if self._lease is not None else None,
        }

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> Any:
        """A new client (blocking: authenticates when a username is set)."""
        creds = grpc.ssl_channel_credentials() if self.secure else None
        endpoints = [
            pyetcd.Endpoint(host, port, secure=self.secure, creds=creds, time_retry=1.0, opts=_GRPC_OPTIONS)
            for host, port in self.endpoints
        ]
        user = self.spec.username or None
        password = self.spec.password if user else None
        return pyetcd.MultiEndpointEtcd3Client(
            endpoints=endpoints, timeout=RPC_TIMEOUT, user=user, password=password, failover=True
        )

    @staticmethod
    async def _close(client: Any) -> None:
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.close)

    # -- import --------------------------------------------------------------------------------

    async def watch(self, publish: Publish) -> None:
        client = await asyncio.to_thread(self._connect)
        try:
            header = (await asyncio.to_thread(client.get_response, self.prefix)).header
            resume = self.revision > 0 and header.cluster_id == self.cluster_id and header.revision >= self.revision
            while True:
                try:
                    await self._follow(client, publish, resume)
                except _Compacted:
                    log.info("%s: revision %d was compacted; reading everything", self.source, self.revision)
                    self.compactions += 1
                    resume = False
        finally:
            await self._close(client)

    async def _follow(self, client: Any, publish: Publish, resume: bool) -> None:
        """Watch from the remembered revision (`resume`), or read everything and watch from there."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def on_watch(item: Any) -> None:  # pyetcd's watch thread
            with contextlib.suppress(RuntimeError):  # the loop closed
                loop.call_soon_threadsafe(queue.put_nowait, item)

        watch_id = None
        try:
            if resume:
                log.info("%s: resuming the watch from revision %d", self.source, self.revision + 1)
                self.resumes += 1
            else:
                response = await asyncio.to_thread(client.get_prefix_response, self.prefix)
                self._entries = {}
                for kv in response.kvs:
                    self._put(kv.key, kv.value)
                self.revision = response.header.revision
                self.cluster_id = response.header.cluster_id
                self.full_reads += 1
            try:
                watch_id = await asyncio.to_thread(
                    client.add_watch_prefix_callback,
                    self.prefix,
                    on_watch,
                    start_revision=self.revision + 1,
                    progress_notify=True,
                )
            except pyetcd.exceptions.RevisionCompactedError:
                raise _Compacted from None
            await publish(*self._found())
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                for item in batch:
                    if isinstance(item, pyetcd.exceptions.RevisionCompactedError):
                        raise _Compacted
                    if not isinstance(item, pyetcd.watch.WatchResponse):
                        raise WatchLost(f"watch ended: {item!r}" if item is not None else "watch stream closed")
                    self._apply(item)
                await publish(*self._found())
        finally:
            if watch_id is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(client.cancel_watch, watch_id)

    def _apply(self, response: Any) -> None:
        for event in response.events:
            if isinstance(event, pyetcd.events.DeleteEvent):
                self._entries.pop(event.key, None)
            else:
                self._put(event.key, event.value)
            self.revision = max(self.revision, event.mod_revision)
        if not response.events:  # progress notification: nothing of ours changed up to this revision
            self.revision = max(self.revision, response.header.revision)

    def _put(self, key: bytes, value: bytes) -> None:
        rest = key[len(self._prefix_b) :].decode("utf-8", "replace")
        service, _, raw_id = rest.partition("/")
        if not service or not raw_id:
            self._entries.pop(key, None)
            return
        self._entries[key] = (service, parse_value(raw_id, value))

    def _found(self) -> tuple[dict[str, list[InstanceSpec]], int]:
        found: dict[str, list[InstanceSpec]] = {}
        unusable = 0
        for service, spec in self._entries.values():
            if not self.wants(service):
                continue
            if spec is None:
                unusable += 1
            else:
                found.setdefault(service, []).append(spec)
        return found, unusable

    # -- export --------------------------------------------------------------------------------

    def _key(self, service: str, instance_id: str) -> str:
        return f"{self.prefix}{service}/{instance_id}"

    async def export_open(self) -> None:
        if self._export_client is not None and self._lease is not None:
            return
        await self._close(self._export_client)
        self._export_client = self._lease = None
        client = await asyncio.to_thread(self._connect)
        try:
            self._lease = await asyncio.to_thread(client.lease, self.lease_ttl)
        except BaseException:
            await self._close(client)
            raise
        self._export_client = client

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A call on the export client; a failure drops the client so the next session reconnects."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception:
            client, self._export_client, self._lease = self._export_client, None, None
            await self._close(client)
            raise

    async def export_put(self, inst: Instance) -> None:
        await self.export_open()
        client = self._export_client
        await self._call(
            client.put, self._key(inst.service, inst.id), instance_value(inst, self.source), self._lease.id
        )

    async def export_delete(self, inst: Instance) -> None:
        await self.export_open()
        await self._call(self._export_client.delete, self._key(inst.service, inst.id))

    async def export_keepalive(self) -> None:
        if self._export_client is None or self._lease is None:
            raise WatchLost("export connection lost")
        responses = await self._call(lambda: list(self._export_client.refresh_lease(self._lease.id)))
        if not responses or responses[0].TTL <= 0:
            log.info("%s: export lease %x expired; writing every entry again", self.source, self._lease.id)
            self._lease = await self._call(self._export_client.lease, self.lease_ttl)
            self.invalidate_exports()

    async def withdraw(self) -> None:
        if not self._exported:
            return
        await self.export_open()
        await self._call(self._export_client.revoke_lease, self._lease.id)  # deletes every key on it
        self._exported.clear()
        self._lease = None

    async def close(self) -> None:
        client, self._export_client, self._lease = self._export_client, None, None
        await self._close(client)
