"""ConfigSet: the whole gateway config at one version, as immutable specs.

A ConfigSet is a value: changes make a new one (`with_put`, `with_changes`),
sharing the untouched specs. Its canonical document (sorted, stored form,
secrets included) is what the history table keeps and what rollback restores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from controlplane.fingerprints import config_digest
from controlplane.spec._types import Resource
from controlplane.spec.alert import AlertSpec
from controlplane.spec.certificate import CertificateSpec
from controlplane.spec.cluster import ClusterSpec
from controlplane.spec.consumer import ConsumerSpec
from controlplane.spec.listener import ListenerSpec
from controlplane.spec.policy import PolicySpec
from controlplane.spec.registry_source import RegistrySourceSpec
from controlplane.spec.route import RouteSpec
from controlplane.spec.tunnel import TunnelSpec
from fluxcommon.didyoumean import suggest

ResourceSpec = Resource


@dataclass(frozen=True)
class Kind:
    plural: str
    singular: str
    spec: type[Resource]


KINDS: dict[str, Kind] = {
    k.plural: k
    for k in (
        Kind("listeners", "listener", ListenerSpec),
        Kind("clusters", "cluster", ClusterSpec),
        Kind("routes", "route", RouteSpec),
        Kind("policies", "policy", PolicySpec),
        Kind("consumers", "consumer", ConsumerSpec),
        Kind("certificates", "certificate", CertificateSpec),
        Kind("tunnels", "tunnel", TunnelSpec),
        Kind("registries", "registry", RegistrySourceSpec),
        Kind("alerts", "alert", AlertSpec),
    )
}
"""Config kinds in dependency order (what a resource refers to comes first when applying)."""

# Deletion order is the reverse: routes before the clusters they use, and so on.
APPLY_ORDER = [
    "certificates", "policies", "consumers", "clusters", "listeners", "routes", "tunnels", "registries", "alerts",
]  # fmt: skip


def kind_of(name: str) -> Kind:
    """The Kind for a plural or singular name ("routes", "route")."""
    for kind in KINDS.values():
        if name in (kind.plural, kind.singular):
            return kind
    names = [n for kind in KINDS.values() for n in (kind.plural, kind.singular)]
    raise KeyError(f"unknown kind {name!r}{suggest(name, names)}: one of {', '.join(KINDS)}")


class ConfigSet:
    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Mapping[str, Resource]] | None = None) -> None:
        items = items or {}
        self._items: dict[str, Mapping[str, Resource]] = {
            plural: MappingProxyType(dict(items.get(plural, {}))) for plural in KINDS
        }

    def __getitem__(self, plural: str) -> Mapping[str, Resource]:
        return self._items[plural]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigSet) and self._items == other._items

    def __hash__(self) -> int:  # pragma: no cover - ConfigSets are not dict keys
        raise TypeError("ConfigSet is not hashable")

    def get(self, plural: str, name: str) -> Resource | None:
        return self._items[plural].get(name)

    def iter_all(self) -> Iterator[tuple[str, Resource]]:
        for plural in KINDS:
            for name in sorted(self._items[plural]):
                yield plural, self._items[plural][name]

    def count(self) -> int:
        return sum(len(v) for v in self._items.values())

    def with_put(self, plural: str, spec: Resource) -> ConfigSet:
        new = dict(self._items)
        new[plural] = {**self._items[plural], spec.name: spec}
        return ConfigSet(new)

    def with_changes(self, puts: list[tuple[str, Resource]], deletes: list[tuple[str, str]]) -> ConfigSet:
        new = {plural: dict(items) for plural, items in self._items.items()}
        for plural, name in deletes:
            new[plural].pop(name, None)
        for plural, spec in puts:
            new[plural][spec.name] = spec
        return ConfigSet(new)

    def document(self) -> dict[str, list[dict[str, Any]]]:
        """Canonical stored form: kinds in fixed order, resources sorted by name, secrets included."""
        return {
            plural: [
                self._items[plural][name].model_dump(mode="json", by_alias=True, exclude_none=True)
                for name in sorted(self._items[plural])
            ]
            for plural in KINDS
        }

    def canonical_json(self) -> bytes:
        return json.dumps(self.document(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        """Names this config on reads; keyed (controlplane.fingerprints), so that it is no
        oracle for guessing the secrets it covers."""
        return config_digest(self.canonical_json())

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ConfigSet:
        """Parse a document (stored form); raises pydantic.ValidationError on bad input."""
        unknown = set(doc) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds: {', '.join(sorted(unknown))}")
        items: dict[str, dict[str, Resource]] = {}
        for plural, kind in KINDS.items():
            items[plural] = {}
            for raw in doc.get(plural) or []:
                spec = kind.spec.model_validate(raw)
                items[plural][spec.name] = spec
        return cls(items)
