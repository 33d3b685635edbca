"""Policy: a named traffic policy (auth, access control, CORS, limits, ...)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from controlplane.spec._types import MASK, Resource
from fluxcommon.secrets import url_password, with_url_password

PolicyType = Literal[
    "jwt",
    "oauth2",
    "api_key",
    "basic_auth",
    "ip_acl",
    "ua_filter",
    "domain_acl",
    "api_acl",
    "cors",
    "rate_limit",
    "circuit_breaker",
    "request_rewrite",
    "response_rewrite",
    "redirect",
]

# Config keys whose values are secrets (masked on read).
_SECRET_KEYS = {"client_secret", "secret", "password"}
# Config keys holding a URL whose userinfo password is a secret (rate_limit's `redis`).
_URL_KEYS = {"redis"}


class PolicySpec(Resource):
    type: PolicyType
    config: dict[str, Any] = {}
    global_: bool = Field(default=False, alias="global")
    description: str = ""

    model_config = {**Resource.model_config, "populate_by_name": True}
    # The type's schema (fluxcommon.policy_config) applies the text rule to every config string,
    # knowing which may span lines (the circuit breaker's fallback body).
    text_checked_elsewhere = frozenset({"config"})

    @model_validator(mode="after")
    def _config(self) -> PolicySpec:
        from fluxcommon.policy_config import validate_policy_config

        validate_policy_config(self.type, self.config)
        return self

    secret_paths: ClassVar[tuple[str, ...]] = tuple(f"config.{k}" for k in sorted(_SECRET_KEYS))

    @classmethod
    def config_problems(cls, raw: Any) -> list[tuple[str, str]] | None:
        """Every problem of the config of `raw` (a policy body) by its type's schema, as
        ("config.FIELD", message): the model itself stops at the config's first. None when
        the type or the config cannot be read (their own errors say why)."""
        from fluxcommon.policy_config import SCHEMAS, config_problems

        if not isinstance(raw, dict) or raw.get("type") not in SCHEMAS:
            return None
        config = raw.get("config", {})
        return config_problems(raw["type"], config) if isinstance(config, dict) else None

    def masked(self) -> dict[str, Any]:
        out = super().masked()
        out["config"] = {k: (MASK if k in _SECRET_KEYS and v else v) for k, v in self.config.items()}
        for key in _URL_KEYS & out["config"].keys():
            if url_password(out["config"][key]):
                out["config"][key] = with_url_password(out["config"][key], MASK)
        return out

    def keep_secrets_from(self, old: Resource | None) -> PolicySpec:
        stored = old.config if isinstance(old, PolicySpec) else {}
        restored = {}
        for key, value in self.config.items():
            if value == MASK:
                if key not in stored:
                    raise ValueError(f"config.{key}: masked value but nothing stored to keep")
                value = stored[key]
            elif key in _URL_KEYS and url_password(value) == MASK:  # redis://:********@host: the stored password
                if not url_password(stored.get(key)):
                    raise ValueError(f"config.{key}: masked password but nothing stored to keep")
                value = with_url_password(value, url_password(stored[key]))
            restored[key] = value
        return self if restored == self.config else self.model_copy(update={"config": restored})
