"""Alert rule: a webhook called when a registry condition starts (and stops) holding."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from controlplane.spec._types import MASK, Duration, Resource
from fluxcommon.wire import checked_headers, require, url_problem


class AlertSpec(Resource):
    kind: Literal["min_healthy", "flapping"]
    service: str = Field(default="*", description="a service name, or * for every service")
    threshold: int = Field(
        ge=0,
        le=1_000_000,
        description="min_healthy: fire below this many healthy instances; flapping: state changes in window",
    )
    window: Duration = 60_000
    webhook: str
    headers: dict[str, str] = {}
    cooldown: Duration = 300_000
    description: str = ""

    @field_validator("webhook")
    @classmethod
    def _url(cls, v: str) -> str:
        require(url_problem(v))
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return checked_headers(v)  # sent with every webhook call

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        if v != "*" and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", v):
            raise ValueError("a service name, or *")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AlertSpec:
        if self.kind == "flapping" and self.threshold < 2:
            raise ValueError("threshold: flapping needs at least 2 state changes in the window")
        return self

    # Every header value is sealed in the database, not only the ones masked on reads.
    secret_paths: ClassVar[tuple[str, ...]] = ("headers.*",)

    def masked(self) -> dict[str, Any]:
        """Every header value masked: any header (X-Token, X-Auth, Cookie, ...) may be the
        webhook's credential, and readers (the read role) must see none."""
        out = super().masked()
        out["headers"] = {k: MASK for k in self.headers}
        return out

    def keep_secrets_from(self, old: Resource | None) -> AlertSpec:
        if MASK not in self.headers.values():
            return self
        stored = old.headers if isinstance(old, AlertSpec) else {}
        headers = {}
        for k, v in self.headers.items():
            if v == MASK:
                if k not in stored:
                    raise ValueError(f"headers.{k}: masked value but nothing stored to keep")
                v = stored[k]
            headers[k] = v
        return self.model_copy(update={"headers": headers})
