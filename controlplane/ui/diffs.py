"""Line diffs of config documents, for the YAML dry run and the history page.

Documents are dumped as YAML (keys in the API's order) and compared with difflib; each diff
line is tagged so a template can colour it. Pure functions: no I/O.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

import yaml

Tag = Literal["add", "del", "ctx", "hunk"]


@dataclass(frozen=True)
class DiffLine:
    tag: Tag
    text: str


@dataclass(frozen=True)
class ResourceDiff:
    """One resource's change: `key` is "routes/orders-api", `action` create|update|delete."""

    key: str
    action: str
    lines: list[DiffLine]


def as_yaml(doc: Any) -> str:
    if doc is None:
        return ""
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)


def line_diff(before: str, after: str, context: int = 3) -> list[DiffLine]:
    """Unified diff lines of two texts, without the file header."""
    out: list[DiffLine] = []
    raw = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=context)
    for line in list(raw)[2:]:
        if line.startswith("@@"):
            out.append(DiffLine("hunk", line))
        elif line.startswith("+"):
            out.append(DiffLine("add", line))
        elif line.startswith("-"):
            out.append(DiffLine("del", line))
        else:
            out.append(DiffLine("ctx", line))
    return out


def dry_run_diffs(answer: dict[str, Any]) -> list[ResourceDiff]:
    """Per-resource diffs of a `POST /api/v1/apply?dry_run=true` answer (its `changes` and `diff`)."""
    diff = answer.get("diff") or {}
    out = []
    for change in answer.get("changes", []):
        if change.get("action") == "unchanged":
            continue
        key = f"{change['kind']}/{change['name']}"
        sides = diff.get(key, {})
        lines = line_diff(as_yaml(sides.get("before")), as_yaml(sides.get("after")))
        out.append(ResourceDiff(key, str(change["action"]), lines))
    return out


def _by_key(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{plural}/{item.get('name', '?')}": item
        for plural, items in doc.items()
        if isinstance(items, list)
        for item in items
        if isinstance(item, dict)
    }


def version_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[ResourceDiff]:
    """Per-resource diffs between two whole configs (`GET /api/v1/config/history/{version}`)."""
    a, b = _by_key(old), _by_key(new)
    out = []
    for key in [*a, *[k for k in b if k not in a]]:
        before, after = a.get(key), b.get(key)
        if before == after:
            continue
        action = "create" if before is None else "delete" if after is None else "update"
        out.append(ResourceDiff(key, action, line_diff(as_yaml(before), as_yaml(after))))
    return out
