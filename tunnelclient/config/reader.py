"""Reading a config: files (TOML, YAML, JSON; `{{ .Envs.NAME }}` templates; `includes`) into
raw data, and raw data walked against the frp field table (`frp_fields`) into canonical dicts,
with every problem and note collected (`Reader`). No semantic checks: those are the builder's.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fluxcommon import yamlsafe
from tunnelclient.config.frp_fields import BOOL, INT, ITEMS_SCHEMA, MAP, STR, STRS, Ignored, Refused, Tables, snake_case
from tunnelclient.config.model import ConfigError, Problem


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path and not path.endswith(":") else f"{path}{key}"


def describe(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "null" if value is None else type(value).__name__


_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
_ENV_REF = re.compile(r"\s*\.Envs\.([A-Za-z_][A-Za-z0-9_]*)\s*")


def _render_text(text: str, env: Mapping[str, str]) -> tuple[str, list[tuple[int, str]]]:
    """Replace ``{{ .Envs.NAME }}`` in raw file text; unknown names stay, listed with their line."""
    missing: list[tuple[int, str]] = []

    def sub(m: re.Match[str]) -> str:
        ref = _ENV_REF.fullmatch(m.group(1))
        if ref and ref.group(1) in env:
            return env[ref.group(1)]
        if ref:
            missing.append((text.count("\n", 0, m.start()) + 1, ref.group(1)))
        return m.group(0)

    return _TEMPLATE.sub(sub, text), missing


# --------------------------------------------------------------------------- reading fields


class Reader:
    """Walks raw data against the schema, collecting problems and notes; one per config load."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self._seen: set[str] = set()

    def problem(self, path: str, message: str) -> None:
        """Record a problem; the first one found for a field wins (no echoes of one mistake)."""
        if path and path in self._seen:
            return
        self._seen.add(path)
        self.problems.append((path, message))

    def has_problem_under(self, prefix: str) -> bool:
        return any(p == prefix or p.startswith((prefix + ".", prefix + "[")) for p, _ in self.problems)

    # -- templating and scalars

    def _text(self, value: str, path: str) -> str | None:
        bad = False

        def sub(m: re.Match[str]) -> str:
            nonlocal bad
            ref = _ENV_REF.fullmatch(m.group(1))
            if ref and ref.group(1) in self.env:
                return self.env[ref.group(1)]
            bad = True
            if ref:
                self.problem(path, f"environment variable {ref.group(1)} is not set ({m.group(0)})")
            else:
                self.problem(path, f"unsupported template {m.group(0)}: only {{{{ .Envs.NAME }}}} is supported")
            return ""

        out = _TEMPLATE.sub(sub, value)
        return None if bad else out

    def scalar(self, kind: str, value: Any, path: str) -> Any:
        """The value checked and converted for `kind`, or None after recording a problem."""
        if isinstance(value, str):
            text = self._text(value, path)
            if text is None:
                return None
            value = text
        if kind == STR:
            if isinstance(value, str):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):  # YAML: password: 1234
                return str(value)
            self.problem(path, f"expected a string, got {describe(value)}")
        elif kind == INT:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
                return int(value)
            self.problem(path, f"expected a whole number, got {describe(value)}")
        elif kind == BOOL:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            self.problem(path, f"expected true or false, got {describe(value)}")
        elif kind == STRS:
            if not isinstance(value, list):
                self.problem(path, f'expected a list of strings (e.g. ["a", "b"]), got {describe(value)}')
                return None
            items = [self.scalar(STR, item, f"{path}[{i}]") for i, item in enumerate(value)]
            return None if any(i is None for i in items) else items
        elif kind == MAP:
            if not isinstance(value, dict):
                self.problem(path, f"expected a table of string values, got {describe(value)}")
                return None
            out: dict[str, str] = {}
            for key, item in value.items():
                if isinstance(item, bool):
                    item = "true" if item else "false"
                text = self.scalar(STR, item, join_path(path, str(key)))
                if text is None:
                    return None
                out[str(key)] = text
            return out
        return None

    # -- sections

    def section(self, data: Any, schema: dict[str, Any], path: str) -> dict[str, Any] | None:
        """`data` with canonical (frp) keys, values checked; unknown keys are problems."""
        if not isinstance(data, dict):
            self.problem(path, f"expected a table of fields, got {describe(data)}")
            return None
        aliases = {name: name for name in schema} | {snake_case(name): name for name in schema}
        data = self._expand_dotted(data, schema, aliases)
        out: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for raw_key, value in data.items():
            key = str(raw_key)
            here = join_path(path, key)
            canon = aliases.get(key)
            if canon is None:
                self.problem(here, "unknown field" + _suggest(key, schema))
                continue
            if canon in spelled:
                self.problem(join_path(path, canon), f"given twice (as {spelled[canon]} and {key})")
                continue
            spelled[canon] = key
            here = join_path(path, canon)
            spec = schema[canon]
            if isinstance(spec, Ignored):
                if value != spec.quiet_if:
                    self.notes.append(f"{here}: ignored: {spec.why}")
            elif isinstance(spec, Refused):
                kind = f" (plugin type {value['type']!r})" if isinstance(value, dict) and "type" in value else ""
                self.problem(here, f"not supported{kind}: {spec.why}")
            elif isinstance(spec, dict):
                sub = self.section(value, spec, here)
                if sub is not None:
                    out[canon] = sub
            elif isinstance(spec, Tables):
                items = self.tables(value, spec.item, here, canon)
                if items is not None:
                    out[canon] = items
            else:
                checked = self.scalar(spec, value, here)
                if checked is not None:
                    out[canon] = checked
        return out

    def tables(self, value: Any, schema: dict[str, Any], path: str, name: str) -> list[dict[str, Any] | None] | None:
        if not isinstance(value, list):
            self.problem(path, f"expected a list of tables ([[{name}]] in TOML), got {describe(value)}")
            return None
        return [self.section(item, schema, f"{path}[{i}]") for i, item in enumerate(value)]

    def _expand_dotted(self, data: dict[Any, Any], schema: dict[str, Any], aliases: dict[str, str]) -> dict[Any, Any]:
        """{"transport.tls.enable": true} -> {"transport": {"tls.enable": true}} (split further below)."""
        if not any(isinstance(k, str) and "." in k and k not in aliases for k in data):
            return data
        out: dict[Any, Any] = {}
        for key, value in data.items():
            head, dot, rest = key.partition(".") if isinstance(key, str) else (key, "", "")
            if dot and key not in aliases and isinstance(schema.get(aliases.get(head, "")), dict):
                target = out.get(head)
                if target is None:
                    target = out[head] = {}
                elif isinstance(target, dict):
                    target = out[head] = dict(target)
                else:
                    out[key] = value  # both a value and a dotted key: reported as unknown below
                    continue
                target[rest] = value
            elif key in out and isinstance(out[key], dict) and isinstance(value, dict):
                out[key] = {**value, **out[key]}
            else:
                out[key] = value
        return out


def _suggest(key: str, schema: dict[str, Any]) -> str:
    names = list(schema)
    if "_" in key:
        names = [snake_case(n) for n in names]
    lowered = {n.lower(): n for n in names}
    match = lowered.get(key.lower()) or next(iter(difflib.get_close_matches(key, names, n=1, cutoff=0.6)), None)
    return f" (did you mean {match}?)" if match else ""


def lookup(d: dict[str, Any] | None, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


# --------------------------------------------------------------------------- files


def parse_text(text: str, fmt: str, source: str = "<config>") -> dict[str, Any]:
    """Parse one document of `fmt` ("toml", "yaml", "json" or "" to guess); ConfigError when it is not one."""
    if not fmt:
        if re.search(r"^\s*\[common\]\s*$", text, re.M):
            fmt = "ini"
        elif text.lstrip().startswith("{"):
            fmt = "json"
        else:
            try:
                return parse_text(text, "toml", source)
            except ConfigError as toml_error:
                try:
                    data = yamlsafe.load(text)
                except yaml.YAMLError:
                    raise toml_error from None
                if not isinstance(data, dict):
                    raise toml_error from None
                return data
    if fmt == "ini":
        raise ConfigError(
            [("", "frp's legacy INI format (frpc.ini) is not read: write TOML with frp v0.52+ field names")], source
        )
    try:
        if fmt == "toml":
            data: Any = tomllib.loads(text)
        elif fmt == "yaml":
            data = yamlsafe.load(text)  # no anchors/aliases: no expansion bombs
            data = {} if data is None else data
        else:
            data = json.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError([("", f"not valid {fmt.upper()}: {' '.join(str(exc).split())}")], source) from None
    if not isinstance(data, dict):
        raise ConfigError([("", f"the top level must be a table of fields, not {describe(data)}")], source)
    return data


def _format_of(path: Path) -> str:
    return {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".ini": "ini"}.get(
        path.suffix.lower(), ""
    )


def read_file(path: Path, env: Mapping[str, str], source: str) -> dict[str, Any]:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read: {exc.strerror or exc}")], source) from None
    except UnicodeDecodeError:
        raise ConfigError([("", "cannot read: not UTF-8 text")], source) from None
    text, missing = _render_text(raw, env)
    try:
        return parse_text(text, _format_of(path), source)
    except ConfigError as exc:
        unset = [(f"line {n}", f"environment variable {name} is not set") for n, name in missing]
        raise ConfigError(unset + exc.problems, source) from None


def read_includes(
    patterns: list[str], base: Path, source: str, reader: Reader
) -> list[tuple[str, str, dict[str, Any] | None]]:
    items: list[tuple[str, str, dict[str, Any] | None]] = []
    main = Path(source).resolve() if not source.startswith("<") else None
    seen: set[Path] = set()
    for i, pattern in enumerate(patterns):
        full = Path(os.path.expanduser(pattern))
        full = full if full.is_absolute() else base / full
        matches = [Path(m).resolve() for m in sorted(glob.glob(str(full)))]
        matches = [m for m in matches if m.is_file() and m != main and m not in seen]
        if not matches:
            reader.notes.append(f"includes[{i}]: {pattern!r} matches no file")
        for match in matches:
            seen.add(match)
            shown = os.path.relpath(match, base) if match.is_relative_to(base) else str(match)
            try:
                data = read_file(match, reader.env, shown)
            except ConfigError as exc:
                for path, msg in exc.problems:
                    reader.problem(f"{shown}:{path}" if path else shown, msg)
                continue
            part = reader.section(data, ITEMS_SCHEMA, f"{shown}:") or {}
            for kind in ("proxies", "visitors"):
                items += [(kind, f"{shown}:{kind}[{j}]", d) for j, d in enumerate(part.get(kind, []))]
    return items
