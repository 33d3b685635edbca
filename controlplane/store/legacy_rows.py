"""Reading the resource tables of earlier versions (up to migration 0014), for migration 0015 only.

Until 0015 the config was stored twice: one row per resource (tables `listeners`, `clusters` +
`endpoints`, `routes`, `policies`, `consumers` + `credentials`, `certificates`, `tunnels` +
`tunnel_mappings`, `registries`, `alerts`) and one document per version in `config_history`.
Since 0015 the history document is the one storage; this module turns the rows of an earlier
database into a ConfigSet once, so that migration can write the current version's document
when the history lacks it, before it drops the tables.

Columns mirror spec fields by name: scalars as they are (top-level durations in milliseconds),
nested objects and lists as JSON text, child lists in child tables ordered by `position`.
Secret fields hold sealed values (controlplane.secretbox) or, written before 0006, plaintext;
`load_config` opens the sealed ones with the box it is given.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from controlplane.secretbox import SecretBox, is_sealed
from controlplane.spec import KINDS, ConfigSet, ResourceSpec
from controlplane.store.sealing import open_fields, secret_values


@dataclass(frozen=True)
class _Children:
    field: str  # spec field holding the list
    table: str
    parent_column: str
    json_columns: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Table:
    table: str
    json_columns: frozenset[str]
    children: _Children | None = None


def _j(*names: str) -> frozenset[str]:
    return frozenset(names)


TABLES: dict[str, _Table] = {
    "listeners": _Table(
        "listeners", _j("policies", "certificates", "timeouts", "limits", "path_normalization", "tls", "forward")
    ),
    "clusters": _Table(
        "clusters",
        _j("session_affinity", "service", "health_check", "outlier_detection", "timeouts", "pool", "tls", "policies"),
        _Children("endpoints", "endpoints", "cluster_id", _j("metadata")),
    ),
    "routes": _Table("routes", _j("hosts", "methods", "headers", "clusters", "policies", "retry")),
    "policies": _Table("policies", _j("config")),
    "consumers": _Table("consumers", _j("groups", "metadata"), _Children("credentials", "credentials", "consumer_id")),
    "certificates": _Table("certificates", _j("snis")),
    "tunnels": _Table(
        "tunnels", _j("tokens", "tls", "users", "domains"), _Children("mappings", "tunnel_mappings", "tunnel_id")
    ),
    "registries": _Table("registries", _j("services", "export_services")),
    "alerts": _Table("alerts", _j("headers")),
}

# Children first: the order in which migration 0015 drops them.
TABLE_NAMES: tuple[str, ...] = tuple(
    name for t in TABLES.values() for name in ((t.children.table,) if t.children else ()) + (t.table,)
)

_SKIP = {"id", "created_at", "updated_at", "position"}
_RENAMED = {"is_global": "global_", "import_enabled": "import_"}  # column -> spec field


def _values(row: dict[str, Any], json_columns: frozenset[str], parent_column: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column, value in row.items():
        if column in _SKIP or column == parent_column or value is None:
            continue
        if column in json_columns and isinstance(value, str | bytes):
            value = json.loads(value)
            if value is None:
                continue
        out[_RENAMED.get(column, column)] = value
    return out


def _duration_fields(spec_type: type[ResourceSpec]) -> set[str]:
    """Top-level Duration fields: their columns hold milliseconds, but a bare number given
    to a Duration means seconds, so they are read back as "<N>ms"."""
    from controlplane.spec._types import format_duration_ms

    return {
        name
        for name, info in spec_type.model_fields.items()
        if any(getattr(m, "func", None) is format_duration_ms for m in info.metadata)
    }


def _select(conn: Connection, table: str) -> Iterator[dict[str, Any]]:
    for row in conn.execute(text(f"SELECT * FROM {table}")):
        yield dict(row._mapping)


def raw_resources(conn: Connection) -> Iterator[tuple[str, dict[str, Any]]]:
    """(plural, dict form) of every resource row, secret fields as stored (sealed or not)."""
    for plural, table in TABLES.items():
        children: dict[int, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        ch = table.children
        if ch is not None:
            for child in _select(conn, ch.table):
                children[child[ch.parent_column]].append(
                    (child["position"], _values(child, ch.json_columns, ch.parent_column))
                )
        durations = _duration_fields(KINDS[plural].spec)
        for row in _select(conn, table.table):
            data = _values(row, table.json_columns)
            for key in durations:
                if isinstance(data.get(key), int):
                    data[key] = f"{data[key]}ms"
            if ch is not None:
                data[ch.field] = [d for _, d in sorted(children.get(row["id"], []), key=lambda c: c[0])]
            yield plural, data


def has_sealed_values(conn: Connection) -> bool:
    """Whether any secret field of the rows is sealed (the database was started since 0006)."""
    for plural, data in raw_resources(conn):
        for _, value in secret_values(KINDS[plural].spec.secret_paths, data):
            if is_sealed(value):
                return True
    return False


def load_config(conn: Connection, box: SecretBox | None = None) -> ConfigSet:
    """Every resource row as a ConfigSet (each spec validated again), sealed fields opened."""
    items: dict[str, dict[str, ResourceSpec]] = {plural: {} for plural in TABLES}
    for plural, data in raw_resources(conn):
        spec_type = KINDS[plural].spec
        opened = open_fields(box, spec_type.secret_paths, data, f"{plural}/{data.get('name', '?')}")
        spec = spec_type.model_validate(opened)
        items[plural][spec.name] = spec
    return ConfigSet(items)
