"""Forms of the console, made from the same pydantic models the API validates with.

`fields_of(model)` turns a spec's top-level fields into form fields: a choice list for a
`Literal`, a checkbox for a `bool`, a comma-separated line for a list of strings, a text box
(a text area for PEM blocks and descriptions) for text and numbers, and a small YAML box for
everything nested (endpoints, health checks, policy config, credentials). `to_form` fills a
form from a resource as the API reads it back (secrets masked: writing the mask back keeps
the stored secret), `from_form` builds the JSON body the API takes, and `place_errors`
puts the API's field errors next to the field they name. No validation happens here beyond
reading YAML: the API is the one judge, so the console can never accept what the API refuses.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter

from fluxcommon import yamlsafe

Widget = Literal["text", "password", "textarea", "select", "checkbox", "list", "yaml"]
SECRET_NAMES = frozenset({"token", "password", "secret", "client_secret"})
"""Single-line fields typed as passwords (what the API reads back of them is the mask)."""
_INT = re.compile(r"^-?\d+$")
_NONE = type(None)


@dataclass(frozen=True)
class FormField:
    name: str  # the JSON key (alias when the model has one: "global", "import")
    widget: Widget
    required: bool = False
    choices: tuple[str, ...] = ()
    numeric: bool = False  # digits are sent as a number ("8080" -> 8080; "5s" stays text)
    help: str = ""


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without `| None`, whether None was allowed)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not _NONE]
        optional = len(args) < len(get_args(annotation))
        return (args[0] if len(args) == 1 else annotation), optional
    return annotation, False


def _base(annotation: Any) -> Any:
    """`Annotated[str, ...]` -> str."""
    while get_origin(annotation) is not None and hasattr(annotation, "__metadata__"):
        annotation = get_args(annotation)[0]
    return annotation


def _widget(name: str, annotation: Any, multiline: frozenset[str]) -> tuple[Widget, tuple[str, ...], bool]:
    inner, _ = _unwrap(annotation)
    inner = _base(inner)
    if get_origin(inner) is Literal:
        return "select", tuple(str(a) for a in get_args(inner)), False
    if inner is bool:
        return "checkbox", (), False
    if inner is int:
        return "text", (), True
    if inner is str:
        if name in multiline:
            return "textarea", (), False
        return ("password" if name in SECRET_NAMES else "text"), (), False
    if get_origin(inner) is list:
        (item,) = get_args(inner) or (Any,)
        if _base(_unwrap(item)[0]) is str:
            return "list", (), False
    return "yaml", (), False


def fields_of(model: type[BaseModel]) -> list[FormField]:
    """The form fields of a spec model, in the model's order."""
    multiline = frozenset(getattr(model, "multiline_fields", frozenset()))
    out = []
    for attr, info in model.model_fields.items():
        name = info.alias or attr
        widget, choices, numeric = _widget(name, info.annotation, multiline)
        _, optional = _unwrap(info.annotation)
        if widget == "select" and optional:
            choices = ("", *choices)
        out.append(FormField(name, widget, info.is_required(), choices, numeric, info.description or ""))
    return out


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_form(fields: list[FormField], resource: dict[str, Any]) -> dict[str, Any]:
    """Input values of a resource as the API reads it (masked): text per field, bool for checkboxes."""
    values: dict[str, Any] = {}
    for f in fields:
        value = resource.get(f.name)
        if f.widget == "checkbox":
            values[f.name] = bool(value)
        elif f.widget == "list":
            values[f.name] = ", ".join(_text(v) for v in value or [])
        elif f.widget == "yaml":
            empty = value is None or value == [] or value == {}
            values[f.name] = "" if empty else yaml.safe_dump(value, sort_keys=False, default_flow_style=False)
        else:
            values[f.name] = _text(value)
    return values


def defaults(fields: list[FormField], model: type[BaseModel]) -> dict[str, Any]:
    """Input values of a new resource: the model's defaults."""
    resource: dict[str, Any] = {}
    for attr, info in model.model_fields.items():
        if info.is_required():
            continue
        default = info.get_default(call_default_factory=True)
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        typed: TypeAdapter[Any] = TypeAdapter(annotation)  # durations read "1m", not 60000
        resource[info.alias or attr] = typed.dump_python(default, mode="json", by_alias=True, exclude_none=True)
    return to_form(fields, resource)


def from_form(fields: list[FormField], form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the JSON body for the API, errors of fields whose YAML does not parse). An empty
    optional field is left out, so the API applies its default."""
    body: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in fields:
        raw = form.get(f.name, "")
        if f.widget == "checkbox":
            body[f.name] = raw in ("on", "true", "1")
            continue
        text = raw.strip() if f.widget not in ("textarea", "yaml") else raw.replace("\r\n", "\n")
        if not text.strip():
            if f.required:
                body[f.name] = ""  # the API names the field
            continue
        if f.widget == "list":
            body[f.name] = [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]
        elif f.widget == "yaml":
            try:
                body[f.name] = yamlsafe.load(text)
            except yaml.YAMLError as exc:
                errors[f.name] = f"not valid YAML: {str(exc).splitlines()[0]}"
        elif f.numeric and _INT.match(text):
            body[f.name] = int(text)
        else:
            body[f.name] = text
    return body, errors


def _top(field_path: str) -> str:
    return re.split(r"[.\[]", field_path, maxsplit=1)[0]


def place_errors(fields: list[FormField], api_errors: list[dict[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """(messages by form field, messages that name no field of the form)."""
    names = {f.name for f in fields}
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    for e in api_errors:
        path, message = e.get("field", ""), e.get("message", "")
        top = _top(path)
        if top in names:
            by_field.setdefault(top, []).append(f"{path}: {message}" if path != top else message)
        else:
            general.append(f"{path}: {message}" if path else message)
    return by_field, general
