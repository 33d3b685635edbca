"""Which values of a stored resource are sealed, and sealing or opening them.

A resource's dict form has its secret fields named by the spec's `secret_paths` (see
`controlplane.spec._types.Resource`):

    "key"                  the field key
    "tokens[]"             every item of the list tokens
    "credentials[].secret" the field secret of every item of the list credentials
    "config.client_secret" the key client_secret of the object config
    "headers.*"            every value of the object headers

`seal_fields` replaces each such value (not None, not "") by `SecretBox.seal(value)`
(a value that merely looks sealed is sealed again, so it reads back as it was written);
`open_fields` does the reverse and passes through values that are not sealed (plaintext
written by an earlier version). Since the config is stored as whole sealed documents, these
serve reading the resource tables of earlier versions (controlplane.store.legacy_rows,
migration 0015) and the tests that look for secrets.
Both return new dicts and leave their input alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from controlplane.secretbox import SecretBox, is_sealed

Visit = Callable[[Any, str], Any]


def _walk(node: Any, steps: list[str], visit: Visit, where: str) -> None:
    """Apply `visit` to every value `steps` reach under `node`, in place."""
    step, rest = steps[0], steps[1:]
    each = step.endswith("[]")
    key = step.removesuffix("[]")
    if not isinstance(node, dict):
        return
    if key == "*":
        targets = list(node)
    elif key in node:
        targets = [key]
    else:
        return
    for k in targets:
        value = node[k]
        here = f"{where}.{k}" if where else str(k)
        if each:
            if not isinstance(value, list):
                continue
            for i, item in enumerate(value):
                if rest:
                    _walk(item, rest, visit, f"{here}[{i}]")
                else:
                    value[i] = visit(item, f"{here}[{i}]")
        elif rest:
            _walk(value, rest, visit, here)
        else:
            node[k] = visit(value, here)


def _apply(data: dict[str, Any], paths: tuple[str, ...], visit: Visit) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for path in paths:
        _walk(out, path.split("."), visit, "")
    return out


def seal_fields(box: SecretBox, paths: tuple[str, ...], data: dict[str, Any]) -> dict[str, Any]:
    """`data` (plaintext, as in memory) with every secret value sealed under the box's key."""

    def seal(value: Any, where: str) -> Any:
        return value if value is None or value == "" else box.seal(value)

    return _apply(data, paths, seal)


def open_fields(box: SecretBox | None, paths: tuple[str, ...], data: dict[str, Any], what: str) -> dict[str, Any]:
    """`data` with every sealed secret value opened (plaintext ones are left as they are)."""

    def open_(value: Any, where: str) -> Any:
        if not is_sealed(value):
            return value
        if box is None:
            raise RuntimeError(f"{what}: {where} is encrypted, but this store has no secret key")
        return box.open(value, f"{what}: the stored {where}")

    return _apply(data, paths, open_)


def secret_values(paths: tuple[str, ...], data: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(where, value) of every secret value of `data` that is set (sealed or not)."""
    found: list[tuple[str, Any]] = []

    def note(value: Any, where: str) -> Any:
        if value is not None and value != "":
            found.append((where, value))
        return value

    _apply(data, paths, note)
    return iter(found)
