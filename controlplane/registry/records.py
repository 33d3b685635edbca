"""Registry records: services, events and import results, and their database rows.

Pure conversions between `controlplane.registry.types` records, `Service`, and the
dict rows of `controlplane.registry.models`; `changes` names what differs between two
versions of an instance as (event kind, detail) pairs. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from controlplane.registry.types import Instance, InstanceSpec, ServiceSpec
from fluxcommon.durations import parse_duration_ms


@dataclass
class Service:
    """A service as the registry holds it."""

    spec: ServiceSpec
    modify_index: int = 0
    created_at: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    def as_dict(self, instances: list[Instance] | None = None) -> dict[str, Any]:
        out = self.spec.model_dump(mode="json")
        out["modify_index"] = self.modify_index
        out["created_at"] = self.created_at
        if instances is not None:
            out["instances"] = len(instances)
            out["healthy_instances"] = sum(1 for i in instances if i.serves)
        return out


@dataclass(frozen=True)
class Event:
    id: int
    time: float
    index: int
    kind: str
    service: str
    instance: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "index": self.index,
            "kind": self.kind,
            "service": self.service,
            "instance": self.instance,
            "detail": self.detail,
        }


@dataclass
class ImportResult:
    index: int
    services: dict[str, int] = field(default_factory=lambda: {"created": 0, "updated": 0, "unchanged": 0})
    instances: dict[str, int] = field(default_factory=lambda: {"registered": 0, "updated": 0, "unchanged": 0})

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "services": dict(self.services), "instances": dict(self.instances)}


# -- rows <-> records ---------------------------------------------------------------------


def service_row(svc: Service) -> dict[str, Any]:
    s = svc.spec
    return {
        "name": s.name,
        "namespace": s.namespace,
        "group": s.group,
        "tags": list(s.tags),
        "metadata": dict(s.metadata),
        "owner": s.owner,
        "health_check": s.health_check.model_dump(mode="json") if s.health_check else None,
        "strategy": s.strategy,
        "description": s.description,
        "created_at": svc.created_at,
        "modify_index": svc.modify_index,
    }


def service_from_row(m: Mapping[str, Any]) -> Service:
    spec = ServiceSpec.model_validate(
        {
            "name": m["name"],
            "namespace": m["namespace"],
            "group": m["group"],
            "tags": m["tags"] or [],
            "metadata": m["metadata"] or {},
            "owner": m["owner"],
            "health_check": m["health_check"],
            "strategy": m["strategy"],
            "description": m["description"],
        }
    )
    return Service(spec, int(m["modify_index"]), float(m["created_at"]))


def instance_row(inst: Instance) -> dict[str, Any]:
    return {
        "service": inst.service,
        "instance_id": inst.id,
        "address": inst.address,
        "port": inst.port,
        "weight": inst.weight,
        "version": inst.version,
        "zone": inst.zone,
        "tags": list(inst.tags),
        "metadata": dict(inst.metadata),
        "status": inst.status,
        "health": inst.health,
        "ephemeral": inst.ephemeral,
        "ttl_ms": inst.ttl_ms,
        "last_heartbeat": inst.last_heartbeat,
        "registered_at": inst.registered_at,
        "source": inst.source,
        "modify_index": inst.modify_index,
    }


def instance_from_row(m: Mapping[str, Any]) -> Instance:
    return Instance(
        id=m["instance_id"],
        service=m["service"],
        address=m["address"],
        port=int(m["port"]),
        weight=int(m["weight"]),
        version=m["version"],
        zone=m["zone"],
        tags=list(m["tags"] or []),
        metadata=dict(m["metadata"] or {}),
        status=m["status"],
        health=m["health"],
        ephemeral=bool(m["ephemeral"]),
        ttl_ms=int(m["ttl_ms"]),
        last_heartbeat=float(m["last_heartbeat"]),
        registered_at=float(m["registered_at"]),
        source=m["source"],
        modify_index=int(m["modify_index"]),
    )


def instance_from_spec(service: str, spec: InstanceSpec, now: float, source: str) -> Instance:
    ephemeral = spec.ephemeral and source == "api"  # instances of external registries never TTL-expire
    return Instance(
        id=spec.instance_id(),
        service=service,
        address=spec.address,
        port=spec.port,
        weight=spec.weight,
        version=spec.version,
        zone=spec.zone,
        tags=list(spec.tags),
        metadata=dict(spec.metadata),
        status=spec.status,
        health="healthy" if ephemeral else "unknown",
        ephemeral=ephemeral,
        ttl_ms=parse_duration_ms(spec.ttl),
        last_heartbeat=now,
        registered_at=now,
        source=source,
    )


COMPARED = ("address", "port", "weight", "version", "zone", "tags", "metadata", "status", "health", "ephemeral",
             "ttl_ms", "source")  # fmt: skip


def changes(old: Instance, new: Instance) -> list[tuple[str, str]]:
    """(event kind, detail) for each kind of change between two versions of an instance."""
    out: list[tuple[str, str]] = []
    if old.status != new.status:
        out.append((new.status, f"status {old.status} -> {new.status}"))
    if old.health != new.health and new.health in ("healthy", "unhealthy"):
        out.append((new.health, f"health {old.health} -> {new.health}"))
    if old.weight != new.weight:
        out.append(("weight", f"weight {old.weight} -> {new.weight}"))
    meta = [f for f in ("metadata", "tags") if getattr(old, f) != getattr(new, f)]
    if meta:
        out.append(("metadata", " and ".join(meta) + " changed"))
    other = [f for f in ("address", "port", "version", "zone", "ephemeral", "ttl_ms", "source")
             if getattr(old, f) != getattr(new, f)]  # fmt: skip
    if other or (old.health != new.health and new.health not in ("healthy", "unhealthy")):
        out.append(("updated", ", ".join(other or ["health"]) + " changed"))
    return out


def same(a: Instance, b: Instance) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in COMPARED)


def copy_instance(inst: Instance) -> Instance:
    return replace(inst, tags=list(inst.tags), metadata=dict(inst.metadata))
