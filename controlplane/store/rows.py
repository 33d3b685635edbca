"""Conversion between specs and table rows, and the row-level writes.

Tables mirror spec fields by name, so conversion is generic: scalar fields are
copied (durations as milliseconds), nested objects go through their JSON form,
and the child lists (cluster endpoints, consumer credentials, tunnel mappings)
live in child tables ordered by `position`. With a SecretBox, the spec's secret fields
are sealed on the way in and opened on the way out (controlplane.store.sealing).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, delete, select
from sqlmodel import Session, SQLModel

from controlplane.secretbox import SecretBox
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
from controlplane.store.sealing import Visit, map_fields, open_fields, seal_fields


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


def upsert_resource(s: Session, plural: str, spec: ResourceSpec, box: SecretBox | None = None) -> None:
    """Write `spec` (insert or update by name); its secret fields sealed when `box` is given."""
    table = TABLES[plural]
    py = spec.model_dump(mode="python")
    js = spec.model_dump(mode="json")
    if box is not None:
        paths = KINDS[plural].spec.secret_paths
        py, js = seal_fields(box, paths, py), seal_fields(box, paths, js)
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


def _map_row(table: type[SQLModel], row: Any, paths: tuple[str, ...], visit: Visit, where: str) -> int:
    before = _from_row(table, row)
    after = map_fields(before, paths, lambda value, field: visit(value, f"{where}{field}"))
    changed = 0
    for attr in _COLUMNS[table]:
        key = _spec_key(attr)
        if key in before and after[key] != before[key]:
            setattr(row, attr, after[key])
            changed += 1
    return changed


def map_secrets(s: Session, visit: Visit) -> int:
    """Replace every stored secret value (as stored: sealed or not) by `visit(value, where)`,
    row by row, without reading specs (nothing is validated, nothing else is touched).
    Returns how many column values changed; the caller commits."""
    changed = 0
    for plural, table in TABLES.items():
        paths = KINDS[plural].spec.secret_paths
        ch = table.children
        nested = f"{ch.field}[]." if ch else None
        own = tuple(p for p in paths if nested is None or not p.startswith(nested))
        names: dict[int, str] = {}
        for row in s.execute(select(table.row)).scalars():
            names[row.id] = row.name  # type: ignore[attr-defined]
            changed += _map_row(table.row, row, own, visit, f"{plural}/{row.name} ")  # type: ignore[attr-defined]
        if ch is None or nested is None:
            continue
        inner = tuple(p.removeprefix(nested) for p in paths if p.startswith(nested))
        if not inner:
            continue
        for child in s.execute(select(ch.table)).scalars():
            parent = names.get(getattr(child, ch.parent_column), "?")
            where = f"{plural}/{parent} {ch.field}[{child.position}]."  # type: ignore[attr-defined]
            changed += _map_row(ch.table, child, inner, visit, where)
    s.flush()
    return changed


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


def _raw_resources(s: Session) -> Iterator[tuple[str, dict[str, Any]]]:
    """(plural, dict form) of every stored resource, secret fields as stored (sealed or not)."""
    for plural, table in TABLES.items():
        children: dict[int, list[dict[str, Any]]] = defaultdict(list)
        if table.children:
            ch = table.children
            for child in s.execute(select(ch.table).order_by(ch.table.position)).scalars():  # type: ignore[attr-defined]
                children[getattr(child, ch.parent_column)].append(_drop_none(_from_row(ch.table, child)))
        for row in s.execute(select(table.row)).scalars():
            data = _drop_none(_from_row(table.row, row))
            for key in _duration_fields(KINDS[plural].spec):
                if isinstance(data.get(key), int):
                    data[key] = f"{data[key]}ms"
            if table.children:
                data[table.children.field] = children.get(row.id, [])  # type: ignore[attr-defined]
            yield plural, data


def _spec_from_raw(plural: str, data: dict[str, Any], box: SecretBox | None) -> ResourceSpec:
    """The spec of one stored resource, its sealed fields opened with `box`."""
    spec_type = KINDS[plural].spec
    opened = open_fields(box, spec_type.secret_paths, data, f"{plural}/{data.get('name', '?')}")
    return spec_type.model_validate(opened)


def load_config(s: Session, box: SecretBox | None = None) -> ConfigSet:
    """Read every resource table into a ConfigSet (validating each spec again)."""
    items: dict[str, dict[str, ResourceSpec]] = {plural: {} for plural in TABLES}
    for plural, data in _raw_resources(s):
        spec = _spec_from_raw(plural, data, box)
        items[plural][spec.name] = spec
    return ConfigSet(items)
