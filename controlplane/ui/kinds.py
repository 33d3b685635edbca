"""What the console lists and edits: every config kind, registry services and API tokens.

One `UiKind` per page of the Resources menu: where the API keeps it, the model its form
is made from, the columns of its list, and how a write goes (config kinds: POST to create,
PUT to replace; services: PUT; tokens: create and revoke only, and even a list needs the
admin role).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel

from controlplane.api_tokens import TokenSpec
from controlplane.registry.types import ServiceSpec
from controlplane.spec import KINDS


@dataclass(frozen=True)
class UiKind:
    plural: str
    title: str
    singular: str
    model: type[BaseModel]
    api: str  # the list path; one item is at f"{api}/{name}"
    columns: tuple[str, ...]
    create: Literal["post", "put"] = "post"
    editable: bool = True  # tokens: create and revoke only
    admin_read: bool = False  # tokens: even listing needs the admin role

    def item(self, name: str) -> str:
        # "." and ".." would be dot segments, which the HTTP client resolves: /ui/resources/routes/..
        # read /api/v1 and showed it as a route. Encoded, they reach the API as names (404).
        return f"{self.api}/{quote(name, safe='') if name not in ('.', '..') else name.replace('.', '%2E')}"


_COLUMNS: dict[str, tuple[str, ...]] = {
    "listeners": ("name", "protocol", "address", "port", "node_group"),
    "clusters": ("name", "lb", "endpoints", "service", "health_check"),
    "routes": ("name", "listener", "hosts", "path", "cluster", "clusters", "policies"),
    "policies": ("name", "type", "global"),
    "consumers": ("name", "groups", "credentials"),
    "certificates": ("name", "snis"),
    "tunnels": ("name", "node_group", "bind_port", "allow_ports", "vhost_http_port"),
    "registries": ("name", "type", "address", "import", "export"),
    "alerts": ("name", "kind", "service", "threshold", "webhook"),
}

UI_KINDS: dict[str, UiKind] = {
    **{
        k.plural: UiKind(k.plural, k.plural.capitalize(), k.singular, k.spec, f"/api/v1/{k.plural}", _COLUMNS[k.plural])
        for k in KINDS.values()
    },
    "services": UiKind(
        "services",
        "Services",
        "service",
        ServiceSpec,
        "/api/v1/services",
        ("name", "namespace", "group", "tags", "healthy_instances", "instances"),
        create="put",
    ),
    "tokens": UiKind(
        "tokens",
        "API tokens",
        "token",
        TokenSpec,
        "/api/v1/tokens",
        ("name", "role", "services", "created_at", "expires_at", "last_used_at"),
        editable=False,
        admin_read=True,
    ),
}


def cell(value: Any) -> str:
    """A list cell: short text for any JSON value (lists of objects are counted, not shown)."""
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        if all(isinstance(v, str | int | float) for v in value):
            return ", ".join(str(v) for v in value)
        if all(isinstance(v, dict) and "name" in v for v in value):
            return ", ".join(f"{v['name']} ({v['weight']})" if "weight" in v else str(v["name"]) for v in value)
        return f"{len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict | list))[:80] or "…"
    return str(value)
