"""Walk a pydantic schema together with a valid sample document, and list every place a string
(or an integer) can sit: each field, list item, dict key and dict value, in nested models,
lists of models and discriminated unions. The security tests plant hostile values there
(CR/LF/NUL, integers past int64) and expect a refusal that names the field.

New fields are found from the models; a nested model with strings in it that no sample
document holds is reported in `Walk.missing`, so a test can fail asking for a sample
instead of silently skipping it.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Slot:
    """One place in a document: `put(doc, value)` gives a copy with `value` there."""

    label: str  # "endpoints[].zone", "headers key", "credentials[jwt].public_key"
    leaf: str  # the field name a refusal must name
    how: Literal["value", "item", "key", "dict_value"]
    path: Path  # keys and list indexes down to the field
    multiline: bool = False
    key_default: Any = "v"  # the value planted beside a hostile key

    def put(self, doc: dict[str, Any], value: Any) -> dict[str, Any]:
        out = copy.deepcopy(doc)
        node: Any = out
        for step in self.path[:-1]:
            node = node[step]
        last = self.path[-1]
        if self.how == "value":
            node[last] = value
        elif self.how == "item":
            node[last] = [value]
        elif self.how == "key":
            node[last] = {value: self.key_default}
        else:
            node[last] = {"k": value}
        return out


@dataclass
class Walk:
    strings: list[Slot] = field(default_factory=list)
    ints: list[Slot] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def extend(self, other: Walk) -> None:
        seen = {s.label for s in self.strings}
        self.strings += [s for s in other.strings if s.label not in seen]
        seen = {s.label for s in self.ints}
        self.ints += [s for s in other.ints if s.label not in seen]
        self.missing += other.missing


def _members(tp: Any) -> list[Any]:
    """`tp` without Annotated and Optional: the union's members (one for a plain type)."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (typing.Union, types.UnionType):
        return [m for a in get_args(tp) if a is not type(None) for m in _members(a)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _is_int(tp: Any) -> bool:
    return tp is int


def _has_strings(model: type[BaseModel], depth: int = 0) -> bool:
    for info in model.model_fields.values():
        for m in _members(info.annotation):
            inner = [m, *[x for a in get_args(m) for x in _members(a)]]
            if any(x is str for x in inner):
                return True
            if depth < 5 and any(_is_model(x) and _has_strings(x, depth + 1) for x in inner):
                return True
    return False


def _pick(models: list[type[BaseModel]], item: Any) -> type[BaseModel] | None:
    """The member of a discriminated union that `item` is (by its `type`)."""
    if len(models) == 1:
        return models[0]
    for model in models:
        tag = model.model_fields.get("type")
        if tag is not None and isinstance(item, dict) and item.get("type") in get_args(tag.annotation):
            return model
    return None


def _tag(model: type[BaseModel], members: list[type[BaseModel]]) -> str:
    """How a list item shows in labels: "[]", or "[jwt]" for a member of a tagged union."""
    if len(members) == 1:
        return "[]"
    return f"[{get_args(model.model_fields['type'].annotation)[0]}]"


def walk_samples(model: type[BaseModel], docs: list[dict[str, Any]]) -> Walk:
    """`walk` over several samples of one model (for fields that exclude each other); a
    nested object is missing only when no sample reaches the strings in it."""
    out = Walk()
    for doc in docs:
        out.extend(walk(model, doc))
    labels = [s.label for s in out.strings]
    out.missing = sorted({m for m in out.missing if not any(label.startswith(m) for label in labels)})
    return out


def walk(model: type[BaseModel], doc: dict[str, Any], path: Path = (), label: str = "") -> Walk:
    """Every string and int place of `model` that `doc` (a valid instance of it) can carry."""
    out = Walk()
    multiline: frozenset[str] = getattr(model, "multiline_fields", frozenset())
    skipped: frozenset[str] = getattr(model, "text_checked_elsewhere", frozenset())
    for name, info in model.model_fields.items():
        key = info.alias or name
        here = f"{label}.{key}" if label else key
        at = (*path, key)
        members = _members(info.annotation)
        if any(get_origin(m) is Literal for m in members) or members == [bool] or name in skipped:
            continue
        if str in members:
            out.strings.append(Slot(here, key, "value", at, name in multiline))
            continue
        if any(_is_int(m) for m in members):
            out.ints.append(Slot(here, key, "value", at))
            continue
        models = [m for m in members if _is_model(m)]
        if models:
            sub = doc.get(key)
            if isinstance(sub, dict):
                out.extend(walk(models[0], sub, at, here))
            elif _has_strings(models[0]):
                out.missing.append(here)
            continue
        for container in members:
            origin, args = get_origin(container), get_args(container)
            if origin in (list, tuple, set, frozenset) and args:
                inner = _members(args[0])
                if str in inner:
                    out.strings.append(Slot(f"{here}[]", key, "item", at, name in multiline))
                elif any(_is_int(m) for m in inner):
                    out.ints.append(Slot(f"{here}[]", key, "item", at))
                elif any(_is_model(m) for m in inner):
                    item_models = [m for m in inner if _is_model(m)]
                    items = doc.get(key) if isinstance(doc.get(key), list) else []
                    covered = set()
                    for i, item in enumerate(items):
                        chosen = _pick(item_models, item)
                        if chosen is None or not isinstance(item, dict):
                            continue
                        covered.add(chosen)
                        out.extend(walk(chosen, item, (*at, i), f"{here}{_tag(chosen, item_models)}"))
                    out.missing += [
                        f"{here}{_tag(m, item_models)}" for m in item_models if m not in covered and _has_strings(m)
                    ]
                break
            if origin is dict and args:
                key_types, value_types = _members(args[0]), _members(args[1])
                value_default: Any = 1 if any(_is_int(m) for m in value_types) else "v"
                if str in key_types:
                    out.strings.append(Slot(f"{here} key", key, "key", at, False, value_default))
                if str in value_types:
                    out.strings.append(Slot(f"{here} value", key, "dict_value", at, name in multiline))
                elif any(_is_int(m) for m in value_types):
                    out.ints.append(Slot(f"{here} value", key, "dict_value", at))
                break
    return out


def upper_bounded(info: FieldInfo | Any) -> bool:
    """Whether an int field (or an Annotated int) carries an upper bound (le / lt)."""
    metadata = list(getattr(info, "metadata", []))
    if get_origin(info) is Annotated:
        for extra in get_args(info)[1:]:
            metadata += [extra, *getattr(extra, "metadata", [])]
    return any(getattr(m, "le", None) is not None or getattr(m, "lt", None) is not None for m in metadata)


def unbounded_ints(model: type[BaseModel], label: str = "", depth: int = 0) -> list[str]:
    """Labels of the int fields (and int list items / dict values) of `model`, nested models
    included, that have no upper bound."""
    out = []
    for name, info in model.model_fields.items():
        here = f"{label}.{name}" if label else name
        members = _members(info.annotation)
        if int in members and not (upper_bounded(info) or upper_bounded(_annotated_of(info.annotation))):
            out.append(here)  # (a bound may sit on the int member of a union: Annotated[int, Field(le=..)] | str)
        for m in members:
            if _is_model(m) and depth < 6:
                out += unbounded_ints(m, here, depth + 1)
            for arg in get_args(m):
                for inner in _members(arg):
                    if inner is int and get_origin(m) in (list, dict) and not upper_bounded(_annotated_of(arg)):
                        out.append(f"{here}[]")
                    if _is_model(inner) and depth < 6:
                        out += unbounded_ints(inner, f"{here}[]", depth + 1)
    return sorted(set(out))


def _annotated_of(tp: Any) -> Any:
    """The Annotated form of `tp` (through Optional), for its metadata."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        for a in get_args(tp):
            if get_origin(a) is Annotated:
                return a
    return tp
