"""The one YAML loader for text that comes from users (REST bodies, `fluxctl apply` files, the
tunnel agent's config): PyYAML's safe loader that refuses anchors and aliases (`&a`, `*a`,
`<<: *a`), so that a small document cannot expand into a huge one ("billion laughs").

`load(text)` and `load_all(text)` behave as `yaml.safe_load` / `yaml.safe_load_all` otherwise;
a refused document raises `YamlAliasError`, a `yaml.YAMLError`, so callers that catch YAML
errors report it like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

__all__ = ["YamlAliasError", "load", "load_all"]


class YamlAliasError(yaml.YAMLError):
    """A document used an anchor or an alias."""


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that stops at the first anchor or alias event, before composing it."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise YamlAliasError(f"YAML anchors and aliases (&name, *name, <<: *name) are not accepted{where}")
        return super().compose_node(parent, index)


def load(text: str | bytes) -> Any:
    """The one document in `text`, as `yaml.safe_load` gives it; anchors and aliases refused."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_all(text: str | bytes) -> Iterator[Any]:
    """Every document in `text`, as `yaml.safe_load_all` gives them; anchors and aliases refused."""
    loader = _NoAliasLoader(text)
    try:
        while loader.check_data():
            yield loader.get_data()
    finally:
        loader.dispose()
