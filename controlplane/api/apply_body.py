"""The body of `POST /api/v1/apply`: JSON or YAML, with every problem of it reported at once.

- `apply_document` (a dependency) reads the body as JSON, or as YAML when it is sent as YAML
  (`application/yaml`, `text/yaml`, ...) or is no JSON (`curl --data-binary @flux.yaml`);
  YAML goes through fluxcommon.yamlsafe, which refuses anchors and aliases.
- `parse_apply` reads the resources; when some are bad it raises one ConfigError naming
  every problem: each bad resource's fields (unknown ones with a did-you-mean, a policy's
  whole config), and the cross-resource checks (controlplane.validation) of the good ones,
  leaving out what only says a bad resource is missing.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from controlplane.api.errors import validation_errors
from controlplane.spec import KINDS, ConfigSet, ResourceSpec
from controlplane.validation import ConfigError, FieldError, check_config
from fluxcommon import yamlsafe
from fluxcommon.didyoumean import suggest

OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "{listeners: [...], clusters: [...], routes: [...], ...}: the contract's shape, "
        "as JSON or YAML (no anchors or aliases)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "object"}},
        },
    }
}
"""What the OpenAPI document says `POST /api/v1/apply` takes (the body is read by hand)."""

_WHERE = "apply"
SERVICES_HINT = "POST the file to /api/v1/services:import (as examples/services.yaml), or each to /api/v1/services"


def _refused(message: str, status: int = 400) -> ConfigError:
    return ConfigError([FieldError(_WHERE, "", message)], status=status)


def read_document(raw: bytes, content_type: str) -> dict[str, Any]:
    """An apply body as a mapping of kinds; ConfigError (400, 422) when it is none."""
    yaml_type = "yaml" in content_type.lower()
    try:
        if yaml_type:
            doc = yamlsafe.load(raw)
        else:
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                if raw.lstrip().startswith((b"{", b"[")):  # meant as JSON: 400 malformed_json, as elsewhere
                    error = {"type": "json_invalid", "loc": ("body",), "msg": "JSON", "ctx": {"error": str(exc)}}
                    raise RequestValidationError([error]) from None
                doc = yamlsafe.load(raw)  # YAML sent without its content type
    except yamlsafe.YamlAliasError as exc:
        raise _refused(str(exc)) from None
    except yaml.YAMLError as exc:
        raise _refused(f"request body is neither JSON nor YAML: {exc}") from None
    except RecursionError:
        raise _refused("request body is nested too deeply") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _refused("the body must be a mapping of kinds: {listeners: [...], routes: [...], ...}", 422)
    return doc


async def apply_document(request: Request) -> dict[str, Any]:
    """Dependency: the apply body (JSON or YAML) as a mapping of kinds."""
    return read_document(await request.body(), request.headers.get("content-type", ""))


def parse_apply(body: dict[str, Any], current: ConfigSet) -> tuple[list[tuple[str, ResourceSpec]], set[str]]:
    """The specs of an apply document and the kinds it names; ConfigError with every problem."""
    puts: list[tuple[str, ResourceSpec]] = []
    kinds_named: set[str] = set()
    broken: set[tuple[str, str]] = set()
    errors: list[FieldError] = []
    for plural, items in body.items():
        if plural not in KINDS:
            message = f"unknown kind{suggest(str(plural), KINDS)}; the kinds are {', '.join(KINDS)}"
            if plural == "services":
                message = f"registry services are no config kind: {SERVICES_HINT}"
            errors.append(FieldError("", str(plural), message))
            continue
        kinds_named.add(plural)
        if not isinstance(items, list):
            errors.append(FieldError("", plural, "must be a list of resources"))
            continue
        spec_type = KINDS[plural].spec
        for i, raw in enumerate(items):
            name = raw.get("name") if isinstance(raw, dict) else None
            label = f"{plural}/{name}" if isinstance(name, str) and name else f"{plural}[{i}]"
            try:
                puts.append((plural, spec_type.model_validate(raw)))
            except ValidationError as exc:
                if isinstance(name, str):
                    broken.add((plural, name))
                found = validation_errors(exc.errors(include_url=False), located=False, model=spec_type, raw=raw)  # type: ignore[arg-type]
                errors += [FieldError(label, e["field"], e["message"]) for e in found]
    if errors:
        raise ConfigError(errors + _cross_checks(current, puts, broken))
    return puts, kinds_named


def _cross_checks(
    current: ConfigSet, puts: list[tuple[str, ResourceSpec]], broken: set[tuple[str, str]]
) -> list[FieldError]:
    """What controlplane.validation finds in the config the good resources would make, but
    for what only says that a bad one (left out) is missing."""
    stored: list[tuple[str, ResourceSpec]] = []
    for plural, spec in puts:
        try:
            stored.append((plural, spec.keep_secrets_from(current.get(plural, spec.name))))
        except ValueError:
            continue  # its own error shows when the rest is fixed
    names = {(p, n) for p, n in broken if current.get(p, n) is not None}
    target = current.with_changes(stored, sorted(names))
    missing = {re.escape(f"unknown {KINDS[p].singular} {n!r}") for p, n in broken}
    about_broken = re.compile("|".join(missing)) if missing else None
    return [e for e in check_config(target) if about_broken is None or not about_broken.search(e.message)]
