"""Eureka adapter: the REST apps API (Netflix Eureka / Spring Cloud Netflix), polled every `interval`.

Paths are under the address's path, `/eureka` when it has none (`http://host:8761` ->
`http://host:8761/eureka/apps`; a Netflix server at `http://host:8080/eureka/v2` works as
given). JSON throughout (`Accept: application/json`); `username`/`password` go as basic auth.

Import, every `interval`: `GET /apps` -> `{"applications": {"application": [{"name": "ORDERS",
"instance": [...]}]}}` (a single application or instance may come as an object instead of a
list, as XStream-encoded servers write it). Service names are the application names in
lower case (Eureka upper-cases them); `services` is compared the same way. An instance:

    id       instanceId (else "<ipAddr>:<port>")
    address  ipAddr (else hostName)
    port     port.$ when port.@enabled is true, else securePort.$
    status   UP -> up, OUT_OF_SERVICE -> out_of_service, DOWN/STARTING/UNKNOWN -> down
    metadata metadata (version, zone and weight taken from it)

Export: `POST /apps/<APP>` with `{"instance": {instanceId, hostName, app, ipAddr, status: UP,
port {"$", "@enabled"}, securePort, dataCenterInfo (MyOwn), leaseInfo {renewalIntervalInSecs:
interval, durationInSecs: max(90, 3 x interval)}, metadata (+ flux-exported-by:
"eureka:<resource name>"), vipAddress, ...}}`; a renewal every `interval` with
`PUT /apps/<APP>/<instanceId>?status=UP` (404: Eureka forgot it, register again);
`DELETE /apps/<APP>/<instanceId>` to remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
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
from controlplane.registry.adapters.httpclient import HttpClient, HttpError, path_quote
from controlplane.registry.types import Instance, InstanceSpec

_STATUS = {"UP": "up", "OUT_OF_SERVICE": "out_of_service"}
DATA_CENTER = {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"}


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []


def _port(value: Any) -> tuple[int | None, bool]:
    """(number, enabled) of Eureka's {"$": 8080, "@enabled": "true"} (or a bare number)."""
    if isinstance(value, dict):
        enabled = str(value.get("@enabled", "true")).lower() == "true"
        value = value.get("$")
    else:
        enabled = True
    try:
        return int(value), enabled
    except (TypeError, ValueError):
        return None, False


def parse_apps(doc: Any) -> tuple[dict[str, list[InstanceSpec]], int]:
    """The answer of GET /apps as instances by service (lower-cased app name), and the unusable count."""
    apps = (doc.get("applications") or {}).get("application") if isinstance(doc, dict) else None
    found: dict[str, list[InstanceSpec]] = {}
    unusable = 0
    for app in _as_list(apps):
        name = str(app.get("name", "")).lower()
        for raw in _as_list(app.get("instance")):
            port, enabled = _port(raw.get("port"))
            if not enabled:
                port, enabled = _port(raw.get("securePort"))
            address = raw.get("ipAddr") or raw.get("hostName")
            spec = make_instance(
                id=safe_instance_id(raw.get("instanceId") or f"{address}:{port}"),
                address=address,
                port=port if enabled else None,
                metadata=string_map(raw.get("metadata")),
                status=_STATUS.get(str(raw.get("status", "UP")).upper(), "down"),
            )
            if spec is None or not name:
                unusable += 1
            else:
                found.setdefault(name, []).append(spec)
    return found, unusable


class EurekaAdapter(RegistryAdapter):
    kind = "eureka"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        basic = (self.spec.username, self.spec.password) if self.spec.username else None
        self.http = HttpClient(self.spec.address, default_path="/eureka", basic_auth=basic)
        self.polls = 0

    def detail(self) -> dict[str, Any]:
        return {"polls": self.polls}

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.http.aclose()

    def wants(self, service: str) -> bool:
        return not self.spec.services or service.lower() in {s.lower() for s in self.spec.services}

    # -- import --------------------------------------------------------------------------------

    async def watch(self, publish: Publish) -> None:
        while True:
            resp = await self.http.call("GET", "/apps")
            found, unusable = parse_apps(resp.json())
            wanted = {n: specs for n, specs in found.items() if self.wants(n)}
            self.polls += 1
            await publish(wanted, unusable)
            await asyncio.sleep(self.interval)

    # -- export --------------------------------------------------------------------------------

    def _instance_doc(self, inst: Instance) -> dict[str, Any]:
        now = str(int(time.time() * 1000))
        base = f"http://{inst.address}:{inst.port}"
        renew = max(1, math.ceil(self.interval))
        return {
            "instance": {
                "instanceId": inst.id,
                "hostName": inst.address,
                "app": inst.service.upper(),
                "ipAddr": inst.address,
                "status": "UP",
                "overriddenStatus": "UNKNOWN",
                "port": {"$": inst.port, "@enabled": "true"},
                "securePort": {"$": 443, "@enabled": "false"},
                "countryId": 1,
                "dataCenterInfo": DATA_CENTER,
                "leaseInfo": {"renewalIntervalInSecs": renew, "durationInSecs": max(90, 3 * renew)},
                "metadata": export_metadata(inst, self.source),
                "homePageUrl": f"{base}/",
                "statusPageUrl": f"{base}/info",
                "healthCheckUrl": f"{base}/health",
                "vipAddress": inst.service,
                "secureVipAddress": inst.service,
                "isCoordinatingDiscoveryServer": "false",
                "lastUpdatedTimestamp": now,
                "lastDirtyTimestamp": now,
            }
        }

    def _path(self, inst: Instance) -> str:
        return f"/apps/{path_quote(inst.service.upper())}/{path_quote(inst.id)}"

    async def export_put(self, inst: Instance) -> None:
        await self.http.call("POST", f"/apps/{path_quote(inst.service.upper())}", json_body=self._instance_doc(inst))

    async def export_delete(self, inst: Instance) -> None:
        await self.http.call("DELETE", self._path(inst), ok=(200, 204, 404))

    async def export_keepalive(self) -> None:
        for inst in self.written_exports():
            try:
                await self.http.call("PUT", self._path(inst), params={"status": "UP"})
            except HttpError as exc:
                if exc.status != 404:
                    raise
                self.rewrite(inst)  # Eureka forgot it (expired, restarted): register again
