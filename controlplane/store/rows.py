"""Conversion between specs and table rows, and the row-level writes.

Tables mirror spec fields by name, so conversion is generic: scalar fields are
copied (durations as milliseconds), nested objects go through their JSON form,
and the child lists (cluster endpoints, consumer credentials, tunnel mappings)
live in child tables ordered by `position`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, delete, select
from sqlmodel import Session, SQLModel

from controlplane.spec import KINDS, ConfigSet, ResourceSpec
from controlplane.store.models import (
    AlertRow,
    CertificateRow,
    ClusterRow,
    ConsumerRow,
    CredentialRow,
    EndpointRow,
    ListenerRow,
    PolicyRow,
    RegistrySourceRow,
    RouteRow,
    TunnelMappingRow,
    TunnelRow,
    utcnow,
)


@dataclass(frozen=True)
class _Children:
    field: str  # spec field holding the list
    table: type[SQLModel]
    parent_column: str


@dataclass(frozen=True)
class _Table:
    row: type[SQLModel]
    children: _Children | None = None


TABLES: dict[str, _Table] = {
    "listeners": _Table(ListenerRow),
    "clusters": _Table(ClusterRow, _Children("endpoints", EndpointRow, "cluster_id")),
    "routes": _Table(RouteRow),
    "policies": _Table(PolicyRow),
    "consumers": _Table(ConsumerRow, _Children("credentials", CredentialRow, "consumer_id")),
    "certificates": _Table(CertificateRow),
    "tunnels": _Table(TunnelRow, _Children("mappings", TunnelMappingRow, "tunnel_id")),
    "registries": _Table(RegistrySourceRow),
    "alerts": _Table(AlertRow),
}

_SKIP = {"id", "created_at", "updated_at", "position"}


def _columns(table: type[SQLModel]) -> dict[str, bool]:
    """Model attribute -> whether its column is JSON."""
    return {
        prop.key: isinstance(prop.columns[0].type, JSON)
        for prop in table.__mapper__.column_attrs  # type: ignore[attr-defined]
        if prop.key not in _SKIP
    }


_COLUMNS = {
    t: _columns(t) for spec in TABLES.values() for t in ([spec.row] + ([spec.children.table] if spec.children else []))
}


def _spec_key(attr: str) -> str:
    return attr.rstrip("_") if attr in ("metadata_",) else attr


def _to_row_values(table: type[SQLModel], py: dict[str, Any], js: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for attr, is_json in _COLUMNS[table].items():
        key = _spec_key(attr)
        if key in py:
            values[attr] = js[key] if is_json else py[key]
    return values


def _from_row(table: type[SQLModel], row: Any) -> dict[str, Any]:
    return {_spec_key(attr): getattr(row, attr) for attr in _COLUMNS[table] if not attr.endswith("_id")}


def upsert_resource(s: Session, plural: str, spec: ResourceSpec) -> None:
    table = TABLES[plural]
    py = spec.model_dump(mode="python")
    js = spec.model_dump(mode="json")
    values = _to_row_values(table.row, py, js)
    row = s.execute(select(table.row).where(table.row.name == spec.name)).scalars().first()  # type: ignore[attr-defined]
    if row is None:
        row = table.row(**values)
        s.add(row)
    else:
        for attr, value in values.items():
            setattr(row, attr, value)
        row.updated_at = utcnow()  # type: ignore[attr-defined]
    s.flush()
    if table.children:
        ch = table.children
        s.execute(delete(ch.table).where(getattr(ch.table, ch.parent_column) == row.id))  # type: ignore[attr-defined]
        for pos, (child_py, child_js) in enumerate(zip(py[ch.field], js[ch.field], strict=True)):
            child_values = _to_row_values(ch.table, child_py, child_js)
            s.add(ch.table(**child_values, position=pos, **{ch.parent_column: row.id}))  # type: ignore[attr-defined]


def delete_resource(s: Session, plural: str, name: str) -> None:
    table = TABLES[plural]
    row = s.execute(select(table.row).where(table.row.name == name)).scalars().first()  # type: ignore[attr-defined]
    if row is None:
        return
    if table.children:
        ch = table.children
        s.execute(delete(ch.table).where(getattr(ch.table, ch.parent_column) == row.id))
    s.delete(row)
    s.flush()


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _duration_fields(spec_type: type[ResourceSpec]) -> set[str]:
    """Top-level Duration fields: their columns hold milliseconds, but a bare number given
    to a Duration means seconds, so they are read back as "<N>ms"."""
    from controlplane.spec._types import format_duration_ms

    return {
        name
        for name, info in spec_type.model_fields.items()
        if any(getattr(m, "func", None) is format_duration_ms for m in info.metadata)
    }


def load_config(s: Session) -> ConfigSet:
    """Read every resource table into a ConfigSet (validating each spec again)."""
    items: dict[str, dict[str, ResourceSpec]] = {}
    for plural, table in TABLES.items():
        children: dict[int, list[dict[str, Any]]] = defaultdict(list)
        if table.children:
            ch = table.children
            for child in s.execute(select(ch.table).order_by(ch.table.position)).scalars():  # type: ignore[attr-defined]
                children[getattr(child, ch.parent_column)].append(_drop_none(_from_row(ch.table, child)))
        items[plural] = {}
        for row in s.execute(select(table.row)).scalars():
            data = _drop_none(_from_row(table.row, row))
            for key in _duration_fields(KINDS[plural].spec):
                if isinstance(data.get(key), int):
                    data[key] = f"{data[key]}ms"
            if table.children:
                data[table.children.field] = children.get(row.id, [])  # type: ignore[attr-defined]
            spec = KINDS[plural].spec.model_validate(data)
            items[plural][spec.name] = spec
    return ConfigSet(items)
