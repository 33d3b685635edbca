"""Registry source: an external registry (etcd, ZooKeeper, Consul, Nacos, Eureka) to import
services from and, optionally, export this registry's services to."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from controlplane.spec._types import MASK, Duration, Name, Resource
from fluxcommon.wire import url_problem

_DEFAULT_PREFIX = {
    "etcd": "/services/",  # /services/<service>/<instance id> -> JSON instance
    "zookeeper": "/services",  # Curator service discovery layout: /services/<service>/<instance id>
    "consul": "",
    "nacos": "",
    "eureka": "",
}


_RESERVED_NAMES = ("status", "metrics")  # paths of controlplane.api.registry_sources


class RegistrySourceSpec(Resource):
    type: Literal["etcd", "zookeeper", "consul", "nacos", "eureka"]
    address: str = Field(min_length=1, description="etcd/ZooKeeper host:port list, or the HTTP base URL")
    services: list[Name] = Field(default=[], description="services to import (empty: every service)")
    prefix: str = ""
    namespace: str = ""
    group: str = ""
    import_: bool = Field(default=True, alias="import")
    export: bool = False
    export_services: list[Name] = Field(default=[], description="services to export (empty: every service)")
    interval: Duration = 10_000
    username: str = ""
    password: str = ""
    token: str = ""
    description: str = ""

    model_config = {**Resource.model_config, "populate_by_name": True}

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in _RESERVED_NAMES:
            raise ValueError(f"{v!r} is reserved: GET /api/v1/registries/{v} shows the sources' {v}")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> RegistrySourceSpec:
        if self.type in ("consul", "nacos", "eureka"):
            if not self.address.startswith(("http://", "https://")):
                raise ValueError(f"address: {self.type} is reached over HTTP; give http(s)://host:port")
            problem = url_problem(self.address)
            if problem:
                raise ValueError(f"address: {problem}")
        if not self.import_ and not self.export:
            raise ValueError("import: a source that neither imports nor exports does nothing")
        if self.interval < 500:
            raise ValueError("interval: at least 500ms")
        return self

    @property
    def effective_prefix(self) -> str:
        return self.prefix or _DEFAULT_PREFIX[self.type]

    secret_paths: ClassVar[tuple[str, ...]] = ("password", "token")

    def masked(self) -> dict[str, Any]:
        out = super().masked()
        for secret in self.secret_paths:
            if out.get(secret):
                out[secret] = MASK
        return out

    def keep_secrets_from(self, old: Resource | None) -> RegistrySourceSpec:
        update = {}
        for secret in ("password", "token"):
            if getattr(self, secret) == MASK:
                stored = getattr(old, secret, "") if isinstance(old, RegistrySourceSpec) else ""
                if not stored:
                    raise ValueError(f"{secret}: masked value but nothing stored to keep")
                update[secret] = stored
        return self.model_copy(update=update) if update else self
