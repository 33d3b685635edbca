"""Service registry REST API: services, instances, heartbeats, discovery and watches, events.

    GET    /api/v1/services?namespace=&group=&tag=&limit=&offset=
    POST   /api/v1/services                            create (ServiceSpec); 409 when the name exists
    GET    /api/v1/services/{name}
    PUT    /api/v1/services/{name}                     create or update (ServiceSpec)
    DELETE /api/v1/services/{name}[?force=true]        409 while it has instances, unless forced
    POST   /api/v1/services/{name}/instances           register (InstanceSpec); creates the service
    GET    /api/v1/services/{name}/instances?healthy=&tag=&version=&zone=&status=&index=&wait=
    GET    /api/v1/services/{name}/instances/{id}
    PATCH  /api/v1/services/{name}/instances/{id}      weight, metadata (merged), tags, status
    DELETE /api/v1/services/{name}/instances/{id}      deregister
    PUT    /api/v1/services/{name}/instances/{id}/heartbeat
    GET    /api/v1/services/{name}/watch               server-sent events
    POST   /api/v1/services:import  (= /api/v1/registry/import)   JSON or YAML, one index bump
    GET    /api/v1/events?since=&service=&limit=

Discovery answers carry `X-Flux-Index`, the service's modify index; with `?index=N` the
request waits (up to `wait`, default 30s, at most 5m) until that index passes N, then
answers the current result. Every call needs a token (controlplane.api.access): reads the
read role; instance writes (register, heartbeat, patch, deregister) the admin role or a
registry token of the service; the rest the admin role. Indexes, offsets and
event ids are at most 2**63-1 (422 beyond); YAML bodies may not use anchors or aliases.
"""

# No `from __future__ import annotations`: FastAPI reads the parameter types at runtime.

import json
import re
from collections.abc import AsyncIterator
from typing import Any, get_args

import yaml
from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import ConfigDict, Field, ValidationError

from controlplane.api import access
from controlplane.api.errors import validation_errors
from controlplane.api.state import get_cp, require_admin
from controlplane.registry.store import RegistryStore
from controlplane.registry.types import Instance, InstanceSpec, ServiceSpec, Status
from controlplane.spec._types import MAX_INT64
from controlplane.validation import ConfigError, FieldError
from fluxcommon import yamlsafe
from fluxcommon.durations import parse_duration_ms
from fluxcommon.textfields import TextChecked

router = APIRouter(prefix="/api/v1", tags=["registry"])

MAX_WAIT_MS = 5 * 60_000
DEFAULT_WAIT = "30s"
SSE_KEEPALIVE = 15.0
STATUSES = get_args(Status)


async def get_registry(request: Request) -> RegistryStore:
    registry = get_cp(request).registry
    if registry is None:
        raise HTTPException(503, "the service registry is not running")
    return registry


async def admin(request: Request) -> str:
    """`require_admin` without the thread-pool hop FastAPI makes for sync dependencies."""
    return require_admin(request, get_cp(request))


async def instance_writer(request: Request) -> str:
    """Who writes an instance: the admin, or a registry token of the service (checked for
    every route by controlplane.api.access.authorize, and stated here as well)."""
    principal = await access.principal_of(request)
    access.check_need(access.Need("registry", str(request.path_params.get("name", ""))), principal)
    return access.author_of(request, principal)


def _index_header(response: Response, index: int) -> None:
    response.headers["X-Flux-Index"] = str(index)


def _wait_seconds(wait: str) -> float:
    try:
        ms = parse_duration_ms(wait)
    except ValueError as exc:
        raise RequestValidationError([{"loc": ("query", "wait"), "msg": str(exc), "type": "value_error"}]) from None
    return min(ms, MAX_WAIT_MS) / 1000.0


# -- services -------------------------------------------------------------------------------


@router.get("/services", summary="List services (filters: namespace, group, tag)")
async def list_services(
    namespace: str = "",
    group: str = "",
    tag: list[str] = Query([]),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_INT64),
    reg: RegistryStore = Depends(get_registry),
) -> dict[str, Any]:
    found = reg.services(namespace=namespace, group=group, tags=tag)
    page = [s.as_dict(reg.instances(s.name)) for s in found[offset : offset + limit]]
    return {"items": page, "total": len(found), "limit": limit, "offset": offset, "index": reg.index}


def _service_spec(body: dict[str, Any], where: str) -> ServiceSpec:
    """`body` read as a service; ConfigError naming every bad field (unknown ones with a did-you-mean)."""
    try:
        return ServiceSpec.model_validate(body)
    except ValidationError as exc:
        found = validation_errors(exc.errors(include_url=False), located=False, model=ServiceSpec)  # type: ignore[arg-type]
        raise ConfigError([FieldError(where, e["field"], e["message"]) for e in found]) from None


@router.post("/services", status_code=201, summary="Create a service (409 when the name exists)")
async def create_service(
    response: Response,
    body: dict[str, Any] = Body(...),
    reg: RegistryStore = Depends(get_registry),
    _author: str = Depends(admin),
) -> dict[str, Any]:
    name = body.get("name")
    spec = _service_spec(body, f"services/{name}" if isinstance(name, str) else "services")
    svc = await run_in_threadpool(reg.create_service, spec)
    _index_header(response, svc.modify_index)
    return svc.as_dict(reg.instances(spec.name))


@router.get("/services/{name}", summary="One service, with instance counts")
async def get_service(name: str, response: Response, reg: RegistryStore = Depends(get_registry)) -> dict[str, Any]:
    svc = reg.service(name)
    _index_header(response, svc.modify_index)
    return svc.as_dict(reg.instances(name))


@router.put("/services/{name}", summary="Create or update a service")
async def put_service(
    name: str,
    response: Response,
    body: dict[str, Any] = Body(...),
    reg: RegistryStore = Depends(get_registry),
    _author: str = Depends(admin),
) -> dict[str, Any]:
    body.setdefault("name", name)
    if body["name"] != name:
        raise ConfigError([FieldError(f"services/{name}", "name", f"body names {body['name']!r}, URL names {name!r}")])
    spec = _service_spec(body, f"services/{name}")
    svc, created = await run_in_threadpool(reg.put_service, spec)
    if created:
        response.status_code = 201
    _index_header(response, svc.modify_index)
    return svc.as_dict(reg.instances(name))


@router.delete("/services/{name}", summary="Delete a service (409 while it has instances, unless ?force=true)")
async def delete_service(
    name: str,
    response: Response,
    force: bool = False,
    reg: RegistryStore = Depends(get_registry),
    _author: str = Depends(admin),
) -> dict[str, Any]:
    index = await run_in_threadpool(lambda: reg.delete_service(name, force=force))
    _index_header(response, index)
    return {"deleted": f"services/{name}", "index": index}


# -- instances -------------------------------------------------------------------------------


@router.post("/services/{name}/instances", status_code=201, summary="Register an instance")
async def register_instance(
    name: str,
    body: InstanceSpec,
    response: Response,
    reg: RegistryStore = Depends(get_registry),
    _author: str = Depends(instance_writer),
) -> dict[str, Any]:
    inst, created = await run_in_threadpool(reg.register, name, body)
    if not created:
        response.status_code = 200
    _index_header(response, reg.service_index(name))
    return inst.as_dict()


def _instances_body(name: str, index: int, instances: list[Instance]) -> dict[str, Any]:
    return {"service": name, "index": index, "instances": [i.as_dict() for i in instances]}


@router.get("/services/{name}/instances", summary="Discover instances; ?index=N&wait=30s blocks until a change")
async def list_instances(
    name: str,
    response: Response,
    healthy: bool | None = None,
    tag: list[str] = Query([]),
    version: str = "",
    zone: str = "",
    status: str = Query("", description="up, down, draining or out_of_service"),
    index: int | None = Query(None, ge=0, le=MAX_INT64),
    wait: str = DEFAULT_WAIT,
    reg: RegistryStore = Depends(get_registry),
) -> dict[str, Any]:
    if status and status not in STATUSES:
        message = f"unknown status {status!r}: one of {', '.join(STATUSES)}"
        raise RequestValidationError([{"loc": ("query", "status"), "msg": message, "type": "value_error"}])
    if index is not None:
        current = await reg.wait(name, index, _wait_seconds(wait))
    else:
        reg.service(name)  # 404 when unknown (a blocking query may wait for the service to appear)
        current = reg.watch_index(name)
    found = reg.select(name, healthy=healthy, tags=tag, version=version, zone=zone, status=status)
    _index_header(response, current)
    return _instances_body(name, current, found)


@router.get("/services/{name}/instances/{iid}", summary="One instance")
async def get_instance(name: str, iid: str, response: Response, reg: RegistryStore = Depends(get_registry)) -> Any:
    inst = reg.instance(name, iid)
    _index_header(response, inst.modify_index)
    return inst.as_dict()


@router.delete("/services/{name}/instances/{iid}", summary="Deregister an instance")
async def deregister_instance(
    name: str,
    iid: str,
    response: Response,
    reg: RegistryStore = Depends(get_registry),
    _author: str = Depends(instance_writer),
) -> dict[str, Any]:
    index = await run_in_threadpool(reg.deregister, name, iid)
    _index_header(response, index)
    return {"deregistered": f"{name}/{iid}", "index": index}


@router.put("/services/{name}/instances/{iid}/heartbeat", summary="Heartbeat (404: unknown, register again)")
async def heartbeat(
    name: str,
    iid: str,
    reg: RegistryStore = Depends(get_registry),
    _author: str = Depends(instance_writer),
) -> dict[str, Any]:
    inst = reg.heartbeat(name, iid)  # memory only: safe on the event loop
    return {"id": inst.id, "service": name, "status": inst.status, "last_heartbeat": inst.last_heartbeat}


class InstancePatch(TextChecked):
    """PATCH body: what an operator changes on a running instance."""

    model_config = ConfigDict(extra="forbid")
    weight: int | None = Field(default=None, ge=0, le=10_000)
    metadata: dict[str, str | None] | None = None  # merged; null deletes a key
    tags: list[str] | None = None  # replaces
    status: Status | None = None  # enable: up, disable: out_of_service, drain: draining


@router.patch("/services/{name}/instances/{iid}", summary="Change weight, metadata, tags or status")
async def patch_instance(
    name: str,
    iid: str,
    body: InstancePatch,
    response: Response,
    reg: RegistryStore = Depends(get_registry),
    _author: str = Depends(instance_writer),
) -> dict[str, Any]:
    inst = await run_in_threadpool(
        lambda: reg.update_instance(
            name, iid, weight=body.weight, metadata=body.metadata, tags=body.tags, status=body.status
        )
    )
    _index_header(response, inst.modify_index)
    return inst.as_dict()


# -- watch (server-sent events) ------------------------------------------------------------


def _sse(index: int, instances: list[Instance]) -> str:
    data = json.dumps([i.as_dict() for i in instances], separators=(",", ":"))
    return f"id: {index}\nevent: instances\ndata: {data}\n\n"


@router.get("/services/{name}/watch", summary="Server-sent events: the instances on every change")
async def watch(
    name: str,
    healthy: bool | None = None,
    tag: list[str] = Query([]),
    version: str = "",
    zone: str = "",
    index: int | None = Query(None, ge=0, le=MAX_INT64),
    last_event_id: str | None = Header(None),
    reg: RegistryStore = Depends(get_registry),
) -> StreamingResponse:
    since = index
    if since is None and last_event_id and re.fullmatch(r"[0-9]{1,18}", last_event_id):
        since = int(last_event_id)  # anything else (not an index we gave): start from now

    async def stream() -> AsyncIterator[str]:
        seen = since
        while not reg.hub.closing:
            current = reg.watch_index(name)
            if seen is None or current > seen:
                found = reg.select(name, healthy=healthy, tags=tag, version=version, zone=zone)
                yield _sse(current, found)
                seen = current
            if await reg.wait(name, seen, SSE_KEEPALIVE) <= seen and not reg.hub.closing:
                yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# -- batch import --------------------------------------------------------------------------


def _parse_import(raw: bytes, content_type: str) -> list[tuple[ServiceSpec, list[InstanceSpec]]]:
    where = "services:import"
    try:
        if "yaml" in content_type:
            doc = yamlsafe.load(raw)
        else:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = yamlsafe.load(raw)  # a YAML file sent without its content type
    except yamlsafe.YamlAliasError as exc:
        raise ConfigError([FieldError(where, "", str(exc))], status=400) from None
    except yaml.YAMLError as exc:
        raise ConfigError([FieldError(where, "", f"body is neither JSON nor YAML: {exc}")], status=400) from None
    except RecursionError:
        raise ConfigError([FieldError(where, "", "body is nested too deeply")], status=400) from None
    items = doc.get("services") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ConfigError([FieldError(where, "services", "expected {services: [...]} or a list of services")])
    out: list[tuple[ServiceSpec, list[InstanceSpec]]] = []
    errors: list[FieldError] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        base = f"services[{i}]"
        if not isinstance(item, dict):
            errors.append(FieldError(where, base, "expected a mapping"))
            continue
        item = dict(item)
        raw_instances = item.pop("instances", None) or []
        label = f"services/{item.get('name', i)}"
        try:
            spec = ServiceSpec.model_validate(item)
        except ValidationError as exc:
            errors += _import_errors(label, base, exc, ServiceSpec)
            continue
        if spec.name in seen:
            errors.append(FieldError(label, f"{base}.name", "named twice in one import"))
            continue
        seen.add(spec.name)
        if not isinstance(raw_instances, list):
            errors.append(FieldError(label, f"{base}.instances", "expected a list"))
            continue
        instances: list[InstanceSpec] = []
        ids: set[str] = set()
        for j, raw_inst in enumerate(raw_instances):
            try:
                ispec = InstanceSpec.model_validate(raw_inst)
            except ValidationError as exc:
                errors += _import_errors(label, f"{base}.instances[{j}]", exc, InstanceSpec)
                continue
            if ispec.instance_id() in ids:
                errors.append(FieldError(label, f"{base}.instances[{j}].id", "named twice in one service"))
                continue
            ids.add(ispec.instance_id())
            instances.append(ispec)
        out.append((spec, instances))
    if errors:
        raise ConfigError(errors)
    return out


def _import_errors(label: str, base: str, exc: ValidationError, model: Any) -> list[FieldError]:
    """Every problem of one imported item, its field under `base` (services[2].instances[0])."""
    found = validation_errors(exc.errors(include_url=False), located=False, model=model)  # type: ignore[arg-type]
    return [FieldError(label, f"{base}.{e['field']}" if e["field"] else base, e["message"]) for e in found]


async def _import(request: Request, reg: RegistryStore) -> dict[str, Any]:
    raw = await request.body()
    items = _parse_import(raw, request.headers.get("content-type", ""))
    result = await run_in_threadpool(reg.import_services, items)
    return result.as_dict()


@router.post("/services:import", summary="Import many services and instances (JSON or YAML), one index bump")
async def import_services(
    request: Request, reg: RegistryStore = Depends(get_registry), _author: str = Depends(admin)
) -> dict[str, Any]:
    return await _import(request, reg)


@router.post("/registry/import", summary="Same as POST /api/v1/services:import")
async def import_services_alias(
    request: Request, reg: RegistryStore = Depends(get_registry), _author: str = Depends(admin)
) -> dict[str, Any]:
    return await _import(request, reg)


# -- events --------------------------------------------------------------------------------


@router.get("/events", tags=["registry"], summary="Registry events (registered, expired, up, down, ...)")
def list_events(
    since: int | None = Query(None, ge=0, le=MAX_INT64),
    service: str = "",
    limit: int = Query(100, ge=1, le=1000),
    reg: RegistryStore = Depends(get_registry),
) -> dict[str, Any]:
    events = reg.events(since=since, service=service, limit=limit)
    last = events[-1].id if events else since or 0
    return {"items": [e.as_dict() for e in events], "last_id": last, "index": reg.index}


# -- metrics -------------------------------------------------------------------------------


class RegistryCollector:
    """Prometheus metrics of the registry, added to the control plane's /metrics."""

    def __init__(self, registry: RegistryStore) -> None:
        self.registry = registry

    def collect(self) -> Any:
        reg = self.registry
        instances = GaugeMetricFamily(
            "flux_registry_instances", "Registered instances", labels=["service", "status", "health"]
        )
        for (service, status, health), count in sorted(reg.counts().items()):
            instances.add_metric([service, status, health], count)
        yield instances
        yield GaugeMetricFamily("flux_registry_services", "Registered services", value=len(reg.services()))
        yield GaugeMetricFamily("flux_registry_index", "Registry index", value=reg.index)
        yield GaugeMetricFamily("flux_registry_leader", "1 when this control plane runs expiry", value=reg.is_leader)
        yield GaugeMetricFamily("flux_registry_watches", "Open long-polls and streams", value=reg.hub.waiting())
        for name, key, help_text in (
            ("flux_registry_heartbeats", "heartbeats", "Heartbeats received"),
            ("flux_registry_heartbeats_unknown", "heartbeats_unknown", "Heartbeats of unknown instances (404)"),
            ("flux_registry_heartbeats_flushed", "heartbeats_flushed", "Heartbeat times written to the database"),
            ("flux_registry_heartbeat_flushes", "heartbeat_flushes", "Batched heartbeat writes"),
            ("flux_registry_expirations", "expired", "Instances expired by TTL"),
            ("flux_registry_registrations", "registered", "Instances registered"),
            ("flux_registry_deregistrations", "deregistered", "Instances deregistered"),
            ("flux_registry_writes", "writes", "Committed registry writes"),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], reg.counters.get(key, 0))
            yield counter
