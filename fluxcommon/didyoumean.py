"""Unknown-field messages with a did-you-mean, for config read into pydantic models.

`unknown_field(Model, ("endpoints", 0, "wieght"))` -> "unknown field (did you mean weight?)":
the names a misspelt key is compared with are the fields of the object at that place in the
model (through lists, maps, optional values and tagged unions), aliases as users write them.
A key that differs only in case, `-` or `_` (`pathtype`, `path-type`, `PathType`) always finds
its field; otherwise the closest name at least 60% alike, if any.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["field_names_at", "suggest", "unknown_field"]

_WRAPPERS = ("function-after[", "function-before[", "function-wrap[", "tagged-union[")
_SEQUENCES = (list, tuple, set, frozenset, Sequence)
_MAPPINGS = (dict, Mapping)


def _plain(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


def suggest(key: str, names: Iterable[str]) -> str:
    """' (did you mean NAME?)' for the name `key` was most likely meant to be, else ''."""
    names = [n for n in names if n != key]
    same = {_plain(n): n for n in names}
    match = same.get(_plain(key))
    if match is None:
        close = difflib.get_close_matches(_plain(key), list(same), n=1, cutoff=0.6)
        match = same[close[0]] if close else None
    return f" (did you mean {match}?)" if match else ""


def _alternatives(tp: Any) -> list[Any]:
    """`tp` without Annotated / Optional / Union wrappers: the types a value may have."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        return [alt for arg in get_args(tp) for alt in _alternatives(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_type(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _tagged(model: type[BaseModel], tag: str) -> bool:
    """Whether `tag` is the value of one of the model's Literal fields (a tagged union's tag)."""
    return any(
        get_origin(alt) is Literal and tag in get_args(alt)
        for info in model.model_fields.values()
        for alt in _alternatives(info.annotation)
    )


def _step(tp: Any, part: str | int) -> list[Any]:
    out: list[Any] = []
    for alt in _alternatives(tp):
        origin = get_origin(alt) or alt
        if isinstance(part, int):
            if origin in _SEQUENCES and get_args(alt):
                out.append(get_args(alt)[0])
        elif _is_model(alt):
            found = _field_type(alt, part)
            if found is not None:
                out.append(found)
            elif _tagged(alt, part):  # pydantic names a tagged union's member by its tag
                out.append(alt)
        elif origin in _MAPPINGS and len(get_args(alt)) == 2:
            out.append(get_args(alt)[1])
    return out


def field_names_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The field names (aliases where set) of the object at `loc` in `model`; [] when unknown."""
    current: list[Any] = [model]
    for part in loc:
        if isinstance(part, str) and part.startswith(_WRAPPERS):
            continue
        current = [t for tp in current for t in _step(tp, part)]
    names: list[str] = []
    for tp in current:
        for alt in _alternatives(tp):
            if _is_model(alt):
                names += [info.alias or name for name, info in alt.model_fields.items()]
    return list(dict.fromkeys(names))


def unknown_field(model: type[BaseModel], loc: Sequence[str | int]) -> str:
    """The message for the unknown key at the end of `loc`, with a did-you-mean when one fits."""
    if not loc:
        return "unknown field"
    return "unknown field" + suggest(str(loc[-1]), field_names_at(model, loc[:-1]))
