"""ConfigStore: validated, versioned writes of the gateway config.

Every committed change, whatever its size, runs in one transaction that
  1. takes the single version row's lock (`UPDATE config_state SET version = version + 1`),
  2. applies the change to the current ConfigSet in memory and checks the result whole,
  3. writes the new version's document to `config_history`.
A write that fails validation changes nothing. Two control planes on one MySQL
database serialise on the version row, so versions stay monotonic and gap-free.

The history documents are the config's one storage: the current config is the document of
the current version (version 0, nothing written yet, is the empty config), an earlier one is
what a rollback reads. Pruning (`history_limit`) never deletes the current version's document.
(Earlier versions also kept one row per resource; migration 0015 moved them into the history.)

With a SecretBox (`secrets=`, what the control plane always passes), every history document
is stored sealed whole (controlplane.secretbox); the config in memory, and everything the API
and the snapshots see, is plaintext.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, delete, func, select, update
from sqlmodel import Session

from controlplane.secretbox import SecretBox, is_sealed_blob
from controlplane.spec import KINDS, ConfigSet, ResourceSpec
from controlplane.store.models import ConfigHistoryRow, ConfigStateRow, utcnow
from controlplane.validation import ConfigError, FieldError, check_config, referrers

log = logging.getLogger("flux.store")


@dataclass(frozen=True)
class Change:
    kind: str  # plural
    name: str
    action: str  # create | update | delete | unchanged

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "action": self.action}


@dataclass(frozen=True)
class ApplyResult:
    version: int
    changes: list[Change]
    committed: bool
    config: ConfigSet = field(repr=False)

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    created_at: datetime
    author: str
    summary: str
    digest: str
    resources: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "author": self.author,
            "summary": self.summary,
            "digest": self.digest,
            "resources": self.resources,
        }


class NotFound(LookupError):
    pass


def _spec_error(plural: str, name: str, exc: Exception) -> ConfigError:
    """A ConfigError naming the field from a pydantic error or a "field: message" ValueError."""
    where = f"{plural}/{name}"
    if isinstance(exc, ValidationError):
        errs = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = str(e["msg"]).removeprefix("Value error, ")
            field_name, sep, rest = msg.partition(": ")
            if not loc and sep and " " not in field_name:
                loc, msg = field_name, rest
            errs.append(FieldError(where, loc, msg))
        return ConfigError(errs)
    msg = str(exc)
    field_name, sep, rest = msg.partition(": ")
    if sep and " " not in field_name:
        return ConfigError([FieldError(where, field_name, rest)])
    return ConfigError([FieldError(where, "", msg)])


def encode_document(cfg: ConfigSet, box: SecretBox | None = None) -> bytes:
    """A history document: the config's canonical JSON, zlib-compressed, sealed whole with `box`."""
    blob = zlib.compress(cfg.canonical_json(), 6)
    return box.seal_blob(blob) if box is not None else blob


def decode_document(blob: bytes, box: SecretBox | None = None) -> ConfigSet:
    """The config of a history document, sealed (needs `box`) or plaintext (earlier versions)."""
    if is_sealed_blob(blob):
        if box is None:
            raise RuntimeError("the history document is encrypted, but this store has no secret key")
        blob = box.open_blob(blob)
    return ConfigSet.from_document(json.loads(zlib.decompress(blob)))


class ConfigStore:
    """The single writer of config. Thread-safe; blocking (call from a worker thread)."""

    def __init__(self, engine: Engine, *, history_limit: int = 1000, secrets: SecretBox | None = None) -> None:
        """`history_limit`: versions kept (the current one always; 0 or less: all);
        `secrets`: the box that seals the history documents; None stores them in the clear
        (tests, tools; the control plane always passes its box)."""
        self.engine = engine
        self.history_limit = history_limit
        self.secrets = secrets
        self._lock = threading.Lock()
        self._cache: tuple[int, ConfigSet] | None = None
        self._listeners: list[Callable[[int], None]] = []
        # Called in every write's transaction right after the version lock, with the write's
        # `rollout`: a guard raises ConfigError to refuse it (controlplane.rollouts.store).
        self.write_guards: list[Callable[[Session, str], None]] = []

    # -- reading -----------------------------------------------------------------

    def on_commit(self, callback: Callable[[int], None]) -> None:
        """Call `callback(version)` after every committed write of this process."""
        self._listeners.append(callback)

    def db_version(self) -> int:
        with Session(self.engine) as s:
            return int(s.execute(select(ConfigStateRow.version).where(ConfigStateRow.id == 1)).one()[0])

    def current(self) -> tuple[int, ConfigSet]:
        """(version, config) as committed now; cached while the version is unchanged."""
        version = self.db_version()
        cached = self._cache
        if cached and cached[0] == version:
            return cached
        with Session(self.engine) as s:
            cfg = self._load_at(s, version)
        self._cache = (version, cfg)
        return version, cfg

    def config_at(self, version: int) -> ConfigSet:
        """The config of an earlier version, from the history table."""
        cached = self._cache
        if cached and cached[0] == version:
            return cached[1]
        with Session(self.engine) as s:
            row = s.get(ConfigHistoryRow, version)
            if row is None:
                raise NotFound(f"version {version} is not in the history")
            return decode_document(row.document, self.secrets)

    def history(self, *, limit: int = 50, offset: int = 0) -> tuple[int, list[HistoryEntry]]:
        with Session(self.engine) as s:
            total = s.execute(select(func.count()).select_from(ConfigHistoryRow)).one()[0]
            q = (
                select(
                    ConfigHistoryRow.version,
                    ConfigHistoryRow.created_at,
                    ConfigHistoryRow.author,
                    ConfigHistoryRow.summary,
                    ConfigHistoryRow.digest,
                    ConfigHistoryRow.resources,
                )
                .order_by(ConfigHistoryRow.version.desc())  # type: ignore[union-attr]
                .limit(limit)
                .offset(offset)
            )
            return int(total), [HistoryEntry(*r) for r in s.execute(q).all()]

    def _load_at(self, s: Session, version: int) -> ConfigSet:
        """The config of the current `version`: its history document (never pruned)."""
        if version == 0:
            return ConfigSet()  # nothing written yet
        row = s.get(ConfigHistoryRow, version)
        if row is None:
            raise RuntimeError(f"config version {version} has no history document: the database is damaged")
        return decode_document(row.document, self.secrets)

    # -- writing -----------------------------------------------------------------

    def apply(
        self,
        puts: Iterable[tuple[str, ResourceSpec]] = (),
        deletes: Iterable[tuple[str, str]] = (),
        *,
        author: str = "",
        summary: str = "",
        create_only: bool = False,
        replace_all: bool = False,
        dry_run: bool = False,
        allow_missing_deletes: bool = False,
        rollout: str = "",
        before_commit: Callable[[Session, int, ConfigSet, ConfigSet], None] | None = None,
    ) -> ApplyResult:
        """Commit puts and deletes as one new version, or raise ConfigError / NotFound.

        `create_only` refuses puts of names that exist (409); `replace_all` deletes
        every resource the puts do not name (rollback, `apply --prune` of all kinds).
        `rollout` names the rollout this write belongs to (its guard lets it through);
        `before_commit(session, version, before, after)` runs in the transaction of a write
        that changes something, just before it commits (a rollout starts there).
        """
        puts = list(puts)
        deletes = list(deletes)
        with self._lock, Session(self.engine) as s:
            s.execute(update(ConfigStateRow).where(ConfigStateRow.id == 1).values(version=ConfigStateRow.version + 1))
            new_version = int(s.execute(select(ConfigStateRow.version).where(ConfigStateRow.id == 1)).one()[0])
            base_version = new_version - 1
            if not dry_run:
                try:
                    for guard in self.write_guards:
                        guard(s, rollout)
                except Exception:
                    s.rollback()
                    raise
            cached = self._cache
            base = cached[1] if cached and cached[0] == base_version else self._load_at(s, base_version)
            try:
                changes, target = self._plan(base, puts, deletes, create_only, replace_all, allow_missing_deletes)
            except Exception:
                s.rollback()
                raise
            effective = [c for c in changes if c.action != "unchanged"]
            if dry_run or not effective:
                s.rollback()
                self._cache = (base_version, base)
                return ApplyResult(base_version, changes, False, base)
            if not summary:
                summary = ", ".join(f"{c.action} {c.kind}/{c.name}" for c in effective[:20])
                if len(effective) > 20:
                    summary += f", ... ({len(effective)} changes)"
            s.add(
                ConfigHistoryRow(
                    version=new_version,
                    author=author,
                    summary=summary[:4000],
                    digest=target.digest(),
                    resources=target.count(),
                    document=encode_document(target, self.secrets),
                )
            )
            s.execute(update(ConfigStateRow).where(ConfigStateRow.id == 1).values(updated_at=utcnow()))
            if self.history_limit > 0:
                # Keep the newest `history_limit` versions, and the current one whatever the limit.
                oldest_kept = new_version - max(self.history_limit, 1) + 1
                s.execute(delete(ConfigHistoryRow).where(ConfigHistoryRow.version < oldest_kept))
            if before_commit is not None:
                before_commit(s, new_version, base, target)
            s.commit()
            self._cache = (new_version, target)
        log.info("config version %d committed by %s: %s", new_version, author or "?", summary)
        for callback in self._listeners:
            try:
                callback(new_version)
            except Exception:  # a listener must never undo a commit
                log.exception("on_commit listener failed")
        return ApplyResult(new_version, changes, True, target)

    def _plan(
        self,
        base: ConfigSet,
        puts: list[tuple[str, ResourceSpec]],
        deletes: list[tuple[str, str]],
        create_only: bool,
        replace_all: bool,
        allow_missing: bool,
    ) -> tuple[list[Change], ConfigSet]:
        changes: list[Change] = []
        stored_puts: list[tuple[str, ResourceSpec]] = []
        seen: set[tuple[str, str]] = set()
        for plural, spec in puts:
            key = (plural, spec.name)
            if key in seen:
                raise ConfigError([FieldError(f"{plural}/{spec.name}", "name", "named twice in one write")])
            seen.add(key)
            old = base.get(plural, spec.name)
            if create_only and old is not None:
                raise ConfigError(
                    [
                        FieldError(
                            f"{plural}/{spec.name}",
                            "name",
                            f"a {KINDS[plural].singular} with this name exists",
                        )
                    ],
                    status=409,
                )
            try:
                stored = spec.keep_secrets_from(old)
            except ValueError as exc:
                raise _spec_error(plural, spec.name, exc) from None
            stored_puts.append((plural, stored))
            if old is None:
                changes.append(Change(plural, spec.name, "create"))
            elif old == stored:
                changes.append(Change(plural, spec.name, "unchanged"))
            else:
                changes.append(Change(plural, spec.name, "update"))
        real_deletes: list[tuple[str, str]] = []
        if replace_all:
            deletes = deletes + [(plural, r.name) for plural, r in base.iter_all() if (plural, r.name) not in seen]
        for plural, name in deletes:
            if (plural, name) in seen:
                raise ConfigError([FieldError(f"{plural}/{name}", "name", "both written and deleted in one write")])
            if base.get(plural, name) is None:
                if allow_missing:
                    continue
                raise NotFound(f"{KINDS[plural].singular} {name!r} not found")
            real_deletes.append((plural, name))
            changes.append(Change(plural, name, "delete"))
        target = base.with_changes(stored_puts, real_deletes)
        for plural, name in real_deletes:
            users = referrers(target, plural, name)
            if users:
                raise ConfigError(
                    [
                        FieldError(
                            f"{plural}/{name}",
                            "",
                            f"{KINDS[plural].singular} {name!r} is in use by {', '.join(users)}; "
                            "change or delete those first",
                        )
                    ],
                    status=409,
                )
        errors = check_config(target)
        if errors:
            raise ConfigError(errors)
        return changes, target

    def rollback(self, version: int, *, author: str = "", rollout: str = "", summary: str = "") -> ApplyResult:
        """Make the config of `version` current again, as a new version."""
        old = self.config_at(version)
        return self.apply(
            [(plural, spec) for plural, spec in old.iter_all()],
            replace_all=True,
            author=author,
            summary=summary or f"rollback to version {version}",
            rollout=rollout,
        )
