"""The generic text rule of every config schema, as a pydantic base: no string anywhere in a
model (field, list item, dict key or value, at any depth of plain containers) may hold CR, LF,
NUL or another control character, unless the field is declared multi-line, where LF, CR and
TAB are allowed but NUL and other controls are not.

Used by the control plane's resource specs (`controlplane.spec._types.Strict`), the policy
config schemas (`fluxcommon.policy_config`) and the registry's service and instance models.
Semantic checks of fields that go on the wire (header names, paths, hosts, URLs) sit on top,
in each schema, using `fluxcommon.wire`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationInfo, field_validator

from fluxcommon.wire import multiline_text_problem, text_problem

__all__ = ["TextChecked", "text_in_value_problem"]


def text_in_value_problem(value: Any, check: Callable[[str], str | None] = text_problem) -> str | None:
    """The first problem `check` finds in any string of `value` (str, list/tuple/set items,
    dict keys and values, recursively), said with where it is; models are skipped (they
    check their own fields)."""
    if isinstance(value, str):
        return check(value)
    if isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            problem = text_in_value_problem(item, check)
            if problem:
                return f"item {i}: {problem}" if isinstance(value, list | tuple) else problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = text_in_value_problem(key, check)
            if problem:
                return f"key {key!r}: {problem}"
            problem = text_in_value_problem(item, check)
            if problem:
                return f"value of {key!r}: {problem}"
    return None


class TextChecked(BaseModel):
    """Base of every config schema: every string of every field follows the text rule.

    Subclasses name their multi-line fields (PEM blocks, bodies, descriptions) in
    `multiline_fields`, and fields whose text another validator checks in full (a policy's
    `config`, checked by its own schema) in `text_checked_elsewhere`.
    """

    multiline_fields: ClassVar[frozenset[str]] = frozenset({"description"})
    text_checked_elsewhere: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _text_rule(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        if name in cls.text_checked_elsewhere:
            return value
        check = multiline_text_problem if name in cls.multiline_fields else text_problem
        problem = text_in_value_problem(value, check)
        if problem:
            raise ValueError(problem)
        return value
