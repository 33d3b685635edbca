"""Nacos adapter: the open API v2 (Nacos 2.2+), polled every `interval` (it has no blocking queries).

Paths are under the address's path, `/nacos` when it has none (`http://host:8848` ->
`http://host:8848/nacos/v2/...`). Every answer is `{"code": 0, "message": "success",
"data": ...}`; a non-zero code is an error.

Import, every `interval`: the service names from `GET /v2/ns/service/list?pageNo&pageSize`
(`data: {"count", "services"}`, pages of 500; or the resource's `services`), then per service
`GET /v2/ns/instance/list?serviceName&healthyOnly=false` (`data.hosts`). An instance:

    id       "<ip>:<port>", with "@<clusterName>" when the cluster is not DEFAULT
    address  ip;  port  port;  metadata  metadata (version, zone taken from it)
    weight   the Nacos weight (a double) rounded, at least 1 when positive
    status   out_of_service when enabled is false, down when healthy is false, else up

Export: `POST /v2/ns/instance` (form: serviceName, groupName, namespaceId, ip, port,
weight, enabled, healthy, ephemeral=true, metadata as JSON with flux-exported-by:
"nacos:<resource name>"), `DELETE /v2/ns/instance` to remove, and a beat for each every
min(interval, 5 s): `PUT /v2/ns/instance/beat?serviceName=<group>@@<name>&beat=<JSON>`,
whose answer `{"code": 10200, "clientBeatInterval": ...}` (not wrapped) says the instance is
known; code 20404 makes the adapter register it again.

`namespace` is the namespaceId, `group` the groupName (DEFAULT_GROUP when empty). With a
`username`, the adapter logs in (`POST /v1/auth/login`) and sends `accessToken`, logging in
again when the token is near its end or refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from controlplane.registry.adapters.base import (
    Publish,
    RegistryAdapter,
    export_metadata,
    make_instance,
    safe_instance_id,
    string_map,
)
from controlplane.registry.adapters.httpclient import HttpClient, HttpError, HttpResponse
from controlplane.registry.types import Instance, InstanceSpec

DEFAULT_GROUP = "DEFAULT_GROUP"
DEFAULT_CLUSTER = "DEFAULT"
PAGE_SIZE = 500
BEAT_OK = 10200
BEAT_NOT_FOUND = 20404
MAX_BEAT_INTERVAL = 5.0


def parse_hosts(data: Any) -> tuple[list[InstanceSpec], int]:
    """`data` of /v2/ns/instance/list as instances (and how many were unusable)."""
    hosts = data.get("hosts") if isinstance(data, dict) else None
    out: list[InstanceSpec] = []
    unusable = 0
    for h in hosts if isinstance(hosts, list) else []:
        if not isinstance(h, dict):
            unusable += 1
            continue
        cluster = h.get("clusterName") or DEFAULT_CLUSTER
        raw_id = f"{h.get('ip')}:{h.get('port')}" + ("" if cluster == DEFAULT_CLUSTER else f"@{cluster}")
        weight = h.get("weight", 1.0)
        try:
            w = float(weight)
            weight_int = 0 if w <= 0 else max(1, round(w))
        except (TypeError, ValueError):
            weight_int = 1
        status = "out_of_service" if h.get("enabled") is False else "down" if h.get("healthy") is False else "up"
        spec = make_instance(
            id=safe_instance_id(raw_id),
            address=h.get("ip"),
            port=h.get("port"),
            weight=weight_int,
            metadata=string_map(h.get("metadata")),
            status=status,
        )
        if spec is None:
            unusable += 1
        else:
            out.append(spec)
    return out, unusable


class NacosAdapter(RegistryAdapter):
    kind = "nacos"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http = HttpClient(self.spec.address, default_path="/nacos")
        self.group = self.spec.group or DEFAULT_GROUP
        self.params: dict[str, Any] = {"namespaceId": self.spec.namespace or None, "groupName": self.group}
        self._token = ""
        self._token_until = 0.0
        self._login_lock = asyncio.Lock()
        self.polls = 0

    def detail(self) -> dict[str, Any]:
        return {"polls": self.polls, "group": self.group, "namespace": self.spec.namespace or "public"}

    @property
    def keepalive_interval(self) -> float:
        return min(self.interval, MAX_BEAT_INTERVAL)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.http.aclose()

    # -- requests ------------------------------------------------------------------------------

    async def _login(self) -> None:
        if not self.spec.username:
            return
        async with self._login_lock:  # import and export share one token
            if self._token and time.time() < self._token_until:
                return
            resp = await self.http.call(
                "POST", "/v1/auth/login", form={"username": self.spec.username, "password": self.spec.password}
            )
            doc = resp.json()
            self._token = str(doc.get("accessToken", ""))
            self._token_until = time.time() + max(10.0, float(doc.get("tokenTtl", 18000)) * 0.8)

    async def _send(self, method: str, path: str, *, params: dict[str, Any] | None = None, form: Any = None) -> Any:
        for attempt in (1, 2):
            await self._login()
            query = dict(params or {})
            if self._token:
                query["accessToken"] = self._token
            resp = await self.http.request(method, path, params=query, form=form)
            if resp.status == 403 and self.spec.username and attempt == 1:
                self._token = ""  # expired or revoked: log in again
                continue
            return self._data(method, path, resp)
        raise AssertionError("unreachable")

    @staticmethod
    def _data(method: str, path: str, resp: HttpResponse) -> Any:
        if resp.status != 200:
            raise HttpError(resp.status, f"{method} {path}: {resp.text()[:300]}")
        doc = resp.json()
        if not isinstance(doc, dict):
            raise HttpError(resp.status, f"{method} {path}: unexpected answer {resp.text()[:200]}")
        if "code" in doc and doc["code"] not in (0, BEAT_OK) and "data" in doc:
            raise HttpError(resp.status, f"{method} {path}: code {doc['code']}: {doc.get('message')}")
        return doc.get("data", doc)

    # -- import --------------------------------------------------------------------------------

    async def _service_names(self) -> list[str]:
        if self.spec.services:
            return list(self.spec.services)
        names: list[str] = []
        page = 1
        while True:
            data = await self._send(
                "GET", "/v2/ns/service/list", params={**self.params, "pageNo": page, "pageSize": PAGE_SIZE}
            )
            batch = data.get("services") or [] if isinstance(data, dict) else []
            names += [str(n) for n in batch]
            count = int(data.get("count", 0)) if isinstance(data, dict) else 0
            if not batch or len(names) >= count:
                return names
            page += 1

    async def watch(self, publish: Publish) -> None:
        while True:
            found: dict[str, list[InstanceSpec]] = {}
            unusable = 0
            for name in await self._service_names():
                data = await self._send(
                    "GET", "/v2/ns/instance/list", params={**self.params, "serviceName": name, "healthyOnly": "false"}
                )
                specs, bad = parse_hosts(data)
                found[name] = specs
                unusable += bad
            self.polls += 1
            await publish(found, unusable)
            await asyncio.sleep(self.interval)

    # -- export --------------------------------------------------------------------------------

    def _instance_form(self, inst: Instance) -> dict[str, Any]:
        return {
            **self.params,
            "serviceName": inst.service,
            "ip": inst.address,
            "port": inst.port,
            "clusterName": DEFAULT_CLUSTER,
            "weight": float(inst.weight),
            "enabled": "true",
            "healthy": "true",
            "ephemeral": "true",
            "metadata": json.dumps(export_metadata(inst, self.source), sort_keys=True),
        }

    async def export_put(self, inst: Instance) -> None:
        await self._send("POST", "/v2/ns/instance", form=self._instance_form(inst))

    async def export_delete(self, inst: Instance) -> None:
        params = {**self.params, "serviceName": inst.service, "ip": inst.address, "port": inst.port,
                  "clusterName": DEFAULT_CLUSTER, "ephemeral": "true"}  # fmt: skip
        try:
            await self._send("DELETE", "/v2/ns/instance", params=params)
        except HttpError as exc:
            if exc.status not in (400, 404):  # 4xx: already gone
                raise

    async def export_keepalive(self) -> None:
        for inst in self.written_exports():
            grouped = f"{self.group}@@{inst.service}"
            beat = {
                "ip": inst.address,
                "port": inst.port,
                "cluster": DEFAULT_CLUSTER,
                "serviceName": grouped,
                "weight": float(inst.weight),
                "metadata": export_metadata(inst, self.source),
                "scheduled": True,
            }
            params = {"namespaceId": self.spec.namespace or None, "serviceName": grouped, "beat": json.dumps(beat)}
            data = await self._send("PUT", "/v2/ns/instance/beat", params=params)
            if isinstance(data, dict) and data.get("code") == BEAT_NOT_FOUND:
                self.rewrite(inst)  # Nacos dropped it: register again
