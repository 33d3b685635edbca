"""Consul adapter: catalog/health HTTP API with blocking queries for import, the agent API for export.

Import. Without `services`, `GET /v1/catalog/services` (a blocking query) gives the service
names (Consul's own `consul` service is left out); each service then has its own blocking
query on `GET /v1/health/service/<name>`: with `?index=<X-Consul-Index of the last
answer>&wait=30s` Consul answers when the service (or its checks) changed, or after the
wait. Index rules as Consul documents them: an index that goes backwards resets to 0 (the
next query does not block), and an index below 1 is taken as 1. The first sync waits until
every service was read once. An instance:

    id       Service.ID (made unique with "@<node>" when two nodes use one ID)
    address  Service.Address, else Node.Address;  port  Service.Port
    weight   Service.Weights.Passing (Weights.Warning while a check warns)
    tags     Service.Tags;  metadata  Service.Meta (version, zone, weight taken from it)
    status   down while any of its checks is critical (maintenance mode included), else up

Export registers each of our instances with the agent at `address`:
`PUT /v1/agent/service/register` {ID: "flux-<service>-<instance id>", Name, Address, Port,
Tags, Meta (+ flux-exported-by: "consul:<resource name>"), Weights, Check: a TTL check of
3 x interval with DeregisterCriticalServiceAfter max(1m, 10 x interval)}; the adapter
passes every check each `interval` (`PUT /v1/agent/check/pass/service:<ID>`; a check the
agent no longer knows makes it register that instance again), and deregisters removed
instances (`PUT /v1/agent/service/deregister/<ID>`).

`token` is sent as X-Consul-Token; `namespace` (Consul Enterprise) as `ns`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from typing import Any

from controlplane.registry.adapters.base import (
    Publish,
    RegistryAdapter,
    export_metadata,
    make_instance,
    safe_instance_id,
    string_map,
)
from controlplane.registry.adapters.httpclient import HttpClient, HttpError, path_quote
from controlplane.registry.types import Instance, InstanceSpec

BLOCKING_WAIT = 30.0  # seconds a blocking query may wait at Consul
COALESCE = 0.02
_META_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")


def next_index(previous: int, returned: int) -> int:
    """Consul's blocking-query index rules: reset when it goes backwards, never below 1."""
    if returned < previous:
        return 0
    return max(returned, 1)


def parse_health(entries: Any) -> tuple[list[InstanceSpec], int]:
    """The answer of /v1/health/service/<name> as instances (and how many were unusable)."""
    if not isinstance(entries, list):
        return [], 0
    ids: dict[str, int] = {}
    for e in entries:
        sid = str(((e or {}).get("Service") or {}).get("ID", ""))
        ids[sid] = ids.get(sid, 0) + 1
    out: list[InstanceSpec] = []
    unusable = 0
    for e in entries:
        svc = (e or {}).get("Service") or {}
        node = (e or {}).get("Node") or {}
        checks = [c for c in (e or {}).get("Checks") or [] if isinstance(c, dict)]
        states = {c.get("Status") for c in checks}
        weights = svc.get("Weights") or {}
        weight = weights.get("Warning", 1) if "warning" in states else weights.get("Passing", 1)
        sid = str(svc.get("ID", ""))
        raw_id = sid if ids.get(sid, 0) <= 1 else f"{sid}@{node.get('Node', '')}"
        tags = svc.get("Tags")
        spec = make_instance(
            id=safe_instance_id(raw_id),
            address=svc.get("Address") or node.get("Address"),
            port=svc.get("Port"),
            weight=weight if isinstance(weight, int) else None,
            tags=[str(t) for t in tags] if isinstance(tags, list) else None,
            metadata=string_map(svc.get("Meta")),
            status="down" if "critical" in states else "up",
        )
        if spec is None:
            unusable += 1
        else:
            out.append(spec)
    return out, unusable


def consul_meta(meta: dict[str, str]) -> dict[str, str]:
    """Metadata as Consul accepts it: keys [A-Za-z0-9_-]{1,64}, values up to 512 chars, 64 pairs."""
    out: dict[str, str] = {}
    for k, v in meta.items():
        key = _META_KEY_BAD.sub("_", k)[:64]
        if key and not key.startswith("consul-") and len(out) < 64:
            out[key] = v[:512]
    return out


class ConsulAdapter(RegistryAdapter):
    kind = "consul"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        headers = {"x-consul-token": self.spec.token} if self.spec.token else None
        basic = (self.spec.username, self.spec.password) if self.spec.username else None
        self.http = HttpClient(self.spec.address, headers=headers, basic_auth=basic)
        self.params: dict[str, Any] = {"ns": self.spec.namespace or None}
        self.blocking_wait = BLOCKING_WAIT
        self.queries = 0
        self.index: dict[str, int] = {}

    def detail(self) -> dict[str, Any]:
        return {"queries": self.queries, "index": max(self.index.values(), default=0)}

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.http.aclose()

    # -- import --------------------------------------------------------------------------------

    async def _blocking(self, path: str, index: int) -> tuple[int, Any]:
        params = dict(self.params)
        if index:
            params.update(index=index, wait=f"{int(self.blocking_wait)}s")
        resp = await self.http.call("GET", path, params=params, time_limit=self.blocking_wait + 15)
        self.queries += 1
        try:
            returned = int(resp.headers.get("x-consul-index", "0"))
        except ValueError:
            returned = 0
        return next_index(index, returned), resp.json()

    async def watch(self, publish: Publish) -> None:
        try:
            await self._watch(publish)
        except ExceptionGroup as group:
            raise group.exceptions[0] from None

    async def _watch(self, publish: Publish) -> None:
        state: dict[str, tuple[list[InstanceSpec], int]] = {}
        names: set[str] | None = set(self.spec.services) if self.spec.services else None
        changed = asyncio.Event()
        tasks: dict[str, asyncio.Task[None]] = {}

        async def follow_service(name: str) -> None:
            index = 0
            while True:
                index, entries = await self._blocking(f"/v1/health/service/{path_quote(name)}", index)
                self.index[name] = index
                state[name] = parse_health(entries)
                changed.set()

        async with asyncio.TaskGroup() as tg:

            def set_names(wanted: set[str]) -> None:
                nonlocal names
                for name in sorted(wanted - tasks.keys()):
                    tasks[name] = tg.create_task(follow_service(name))
                for name in sorted(tasks.keys() - wanted):
                    tasks.pop(name).cancel()
                    state.pop(name, None)
                    self.index.pop(name, None)
                names = wanted
                changed.set()

            async def follow_names() -> None:
                index = 0
                while True:
                    index, doc = await self._blocking("/v1/catalog/services", index)
                    self.index[""] = index
                    found = doc if isinstance(doc, dict) else {}
                    set_names({n for n in found if n != "consul" and self.wants(n)})

            if names is not None:
                set_names(names)
            else:
                tg.create_task(follow_names())
            while True:
                await changed.wait()
                await asyncio.sleep(COALESCE)
                changed.clear()
                if names is None or not names <= state.keys():
                    continue  # the first answer of every service is not in yet
                found = {n: state[n][0] for n in names}
                await publish(found, sum(state[n][1] for n in names))

    # -- export --------------------------------------------------------------------------------

    @staticmethod
    def service_id(service: str, instance_id: str) -> str:
        return f"flux-{service}-{instance_id}"

    @property
    def check_ttl(self) -> int:
        return max(2, math.ceil(3 * self.interval))

    async def export_put(self, inst: Instance) -> None:
        sid = self.service_id(inst.service, inst.id)
        body = {
            "ID": sid,
            "Name": inst.service,
            "Address": inst.address,
            "Port": inst.port,
            "Tags": list(inst.tags),
            "Meta": consul_meta(export_metadata(inst, self.source)),
            "Weights": {"Passing": max(1, inst.weight), "Warning": 1},
            "Check": {
                "CheckID": f"service:{sid}",
                "Name": "flux export TTL",
                "TTL": f"{self.check_ttl}s",
                "Status": "passing",
                "DeregisterCriticalServiceAfter": f"{max(60, math.ceil(10 * self.interval))}s",
            },
        }
        await self.http.call("PUT", "/v1/agent/service/register", params=self.params, json_body=body)

    async def export_delete(self, inst: Instance) -> None:
        sid = path_quote(self.service_id(inst.service, inst.id))
        await self.http.call("PUT", f"/v1/agent/service/deregister/{sid}", params=self.params, ok=(200, 404))

    async def export_keepalive(self) -> None:
        for inst in self.written_exports():
            check = path_quote(f"service:{self.service_id(inst.service, inst.id)}")
            try:
                await self.http.call("PUT", f"/v1/agent/check/pass/{check}", params=self.params)
            except HttpError as exc:
                if exc.status in (0, 401, 403):
                    raise
                self.rewrite(inst)  # the agent forgot it (restarted, reaped): register again
