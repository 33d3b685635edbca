"""Registry writes as plans: pure decisions over a `Tx`, no database, no clock.

Each function reads the registry through `tx` and stages what changes, with the events
that say why; the store (`RegistryStore._write`) commits a plan with one index bump, or
none if it staged nothing. Errors are raised before anything is written: NotFound for
an unknown service or instance, ConfigError (naming the field) for a refused change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from controlplane.registry.records import ImportResult, Service, changes, copy_instance, instance_from_spec, same
from controlplane.registry.tx import Tx
from controlplane.registry.types import Instance, InstanceSpec, ServiceSpec, Status
from controlplane.store.config_store import NotFound
from controlplane.validation import ConfigError, FieldError

log = logging.getLogger("flux.registry")


def missing(tx: Tx, service: str, iid: str) -> NotFound:
    if tx.service(service) is None:
        return NotFound(f"service {service!r} not found")
    return NotFound(f"instance {iid!r} of service {service!r} not found")


def put_service(tx: Tx, spec: ServiceSpec, detail: str = "") -> str:
    """Create or update a service: "created", "updated" or "unchanged"."""
    current = tx.service(spec.name)
    if current is None:
        tx.put_service(Service(spec, created_at=tx.now), "service_registered", detail)
        return "created"
    if current.spec == spec:
        return "unchanged"
    fields = [f for f in ServiceSpec.model_fields if getattr(current.spec, f) != getattr(spec, f)]
    tx.put_service(replace(current, spec=spec), "service_updated", detail or ", ".join(fields) + " changed")
    return "updated"


def create_service(tx: Tx, spec: ServiceSpec) -> str:
    """Create a service; 409 when one of that name exists (POST /api/v1/services)."""
    if tx.service(spec.name) is not None:
        message = f"a service named {spec.name!r} exists (PUT /api/v1/services/{spec.name} changes it)"
        raise ConfigError([FieldError(f"services/{spec.name}", "name", message)], status=409)
    return put_service(tx, spec)


def ensure_service(tx: Tx, name: str, why: str) -> None:
    if tx.service(name) is None:
        tx.put_service(Service(ServiceSpec(name=name), created_at=tx.now), "service_registered", why)


def delete_service(tx: Tx, name: str, force: bool) -> int:
    """Delete a service (and, forced, its instances); returns how many instances went."""
    if tx.service(name) is None:
        raise NotFound(f"service {name!r} not found")
    ids = sorted(tx.instance_ids(name))
    if ids and not force:
        message = f"service {name!r} has {len(ids)} instance(s); deregister them first or delete with ?force=true"
        raise ConfigError([FieldError(f"services/{name}", "instances", message)], status=409)
    for iid in ids:
        tx.drop_instance(name, iid, "deregistered", "service deleted")
    tx.drop_service(name)
    return len(ids)


def register(tx: Tx, service: str, spec: InstanceSpec, source: str = "api", how: str = "") -> tuple[Instance, str]:
    """Register or re-register an instance: (instance, "registered" | "updated" | "unchanged").

    Re-registration replaces the registered fields and counts as a heartbeat; it keeps a
    status an operator set (draining, out_of_service, down) unless the body names one, and
    the health active checks gave a persistent instance.
    """
    ensure_service(tx, service, "created by an instance registration")
    inst = instance_from_spec(service, spec, tx.now, source)
    current = tx.instance(service, inst.id)
    if current is None:
        tx.put_instance(inst, [("registered", f"{inst.address}:{inst.port}{how}")])
        return inst, "registered"
    inst.registered_at = current.registered_at
    if "status" not in spec.model_fields_set:
        inst.status = current.status
    if not inst.ephemeral and not current.ephemeral:
        inst.health = current.health
    tx.reregistered.add((service, inst.id))
    if same(current, inst):
        return inst, "unchanged"
    tx.put_instance(inst, changes(current, inst))
    return inst, "updated"


def deregister(tx: Tx, service: str, iid: str) -> None:
    if tx.instance(service, iid) is None:
        raise missing(tx, service, iid)
    tx.drop_instance(service, iid, "deregistered")


def update_instance(
    tx: Tx,
    service: str,
    iid: str,
    *,
    weight: int | None = None,
    metadata: Mapping[str, str | None] | None = None,
    tags: list[str] | None = None,
    status: Status | None = None,
) -> None:
    """Operator changes: weight, metadata (merged; None deletes a key), tags (replaced), status."""
    current = tx.instance(service, iid)
    if current is None:
        raise missing(tx, service, iid)
    new = copy_instance(current)
    if weight is not None:
        new.weight = weight
    for key, value in (metadata or {}).items():
        if value is None:
            new.metadata.pop(key, None)
        else:
            new.metadata[key] = value
    if tags is not None:
        new.tags = list(tags)
    if status is not None:
        new.status = status
    if not same(current, new):
        tx.put_instance(new, changes(current, new))


def set_health(tx: Tx, service: str, iid: str, healthy: bool, detail: str) -> None:
    """An active check's verdict; an instance deregistered meanwhile is ignored."""
    health = "healthy" if healthy else "unhealthy"
    current = tx.instance(service, iid)
    if current is None or current.health == health:
        return
    tx.put_instance(replace(current, health=health), [(health, detail or f"health {current.health} -> {health}")])


def sync_source(tx: Tx, source: str, wanted: Mapping[str, list[InstanceSpec]]) -> None:
    """Make the instances of `source` exactly `wanted`; instances of other sources are left alone."""
    for name, specs in wanted.items():
        ensure_service(tx, name, f"created by {source}")
        for spec in specs:
            inst = instance_from_spec(name, spec, tx.now, source)
            current = tx.instance(name, inst.id)
            if current is None:
                tx.put_instance(inst, [("registered", f"{inst.address}:{inst.port} from {source}")])
                continue
            if current.source != source:
                log.warning("%s: instance %s of %s belongs to %s; left alone", source, inst.id, name, current.source)
                continue
            inst.registered_at, inst.last_heartbeat, inst.health = (
                current.registered_at,
                current.last_heartbeat,
                current.health,
            )
            if "status" not in spec.model_fields_set:
                inst.status = current.status
            if not same(current, inst):
                tx.put_instance(inst, changes(current, inst))
    keep = {(name, spec.instance_id()) for name, specs in wanted.items() for spec in specs}
    for name, iid in sorted(tx.keys_from_source(source) - keep):
        tx.drop_instance(name, iid, "deregistered", f"gone from {source}")


def import_services(tx: Tx, items: list[tuple[ServiceSpec, list[InstanceSpec]]]) -> ImportResult:
    """Create/update many services and (re-)register their instances; removes nothing."""
    result = ImportResult(index=0)
    for spec, instances in items:
        result.services[put_service(tx, spec, "imported")] += 1
        for ispec in instances:
            _, outcome = register(tx, spec.name, ispec, how=" (import)")
            result.instances[outcome] += 1
    return result
