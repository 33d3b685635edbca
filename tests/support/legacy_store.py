"""Databases "of an earlier version": the schema at migration 0014, the config stored as resource
rows AND as history documents, as ConfigStore wrote it before migration 0015 (one storage).

`LegacyStore.apply(cfg)` writes `cfg` as the next version the way the old store did: rows
replaced, the version row bumped, the history document added. Secret fields of the rows and the
history documents are sealed with `box`, or plaintext without one (before 0006, or a database
never started since). Used by the migration tests and tests/security/test_secrets_at_rest.py.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from controlplane import fingerprints
from controlplane.secretbox import SecretBox
from controlplane.spec import KINDS, ConfigSet
from controlplane.store.config_store import encode_document
from controlplane.store.db import migrate
from controlplane.store.legacy_rows import TABLES
from controlplane.store.models import utcnow
from controlplane.store.sealing import seal_fields

LAST_TWO_STORAGES = "0014"  # the last revision with the resource tables
_COLUMN_OF = {"global_": "is_global", "import_": "import_enabled"}
_HISTORY = sa.table(
    "config_history",
    *(sa.column(c) for c in ("version", "created_at", "author", "summary", "digest", "resources")),
    sa.column("document", sa.LargeBinary),
)


class LegacyStore:
    def __init__(self, engine: Engine, box: SecretBox | None = None) -> None:
        migrate(engine, LAST_TWO_STORAGES)
        self.engine = engine
        self.box = box
        self._install_secret: bytes | None = None
        if box is not None:  # a database started since 0006: the per-install secret is set
            self._install_secret = os.urandom(32)
            with engine.begin() as conn:
                conn.execute(
                    sa.text("UPDATE config_state SET install_secret = :s WHERE id = 1"),
                    {"s": box.seal(base64.b64encode(self._install_secret).decode())},
                )
        # Untyped columns: values go in as given (JSON columns as JSON text), on SQLite and MariaDB.
        insp = sa.inspect(engine)
        self._tables = {
            name: sa.table(name, *(sa.column(c["name"]) for c in insp.get_columns(name)))
            for t in TABLES.values()
            for name in (t.table, *((t.children.table,) if t.children else ()))
        }

    def _row(self, table: str, json_columns: frozenset[str], py: dict[str, Any], js: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for column in self._tables[table].columns:
            key = {v: k for k, v in _COLUMN_OF.items()}.get(column.name, column.name)
            if key in py:
                values[column.name] = json.dumps(js[key]) if column.name in json_columns else py[key]
        return values

    def _write_rows(self, conn: sa.Connection, cfg: ConfigSet) -> None:
        for t in TABLES.values():
            if t.children:
                conn.execute(self._tables[t.children.table].delete())
            conn.execute(self._tables[t.table].delete())
        now = utcnow().replace(tzinfo=None)
        for plural, spec in cfg.iter_all():
            t = TABLES[plural]
            py, js = spec.model_dump(mode="python"), spec.model_dump(mode="json")
            if self.box is not None:
                paths = KINDS[plural].spec.secret_paths
                py, js = seal_fields(self.box, paths, py), seal_fields(self.box, paths, js)
            values = self._row(t.table, t.json_columns, py, js)
            row_id = conn.execute(
                self._tables[t.table].insert().values(**values, created_at=now, updated_at=now)
            ).lastrowid
            ch = t.children
            if ch is None:
                continue
            for pos, (child_py, child_js) in enumerate(zip(py[ch.field], js[ch.field], strict=True)):
                child = self._row(ch.table, ch.json_columns, child_py, child_js)
                conn.execute(
                    self._tables[ch.table].insert().values(**child, position=pos, **{ch.parent_column: row_id})
                )

    def apply(self, cfg: ConfigSet, *, history: bool = True) -> int:
        """Write `cfg` as the next version; `history=False`: without its history document
        (as if pruned, or written before there was history)."""
        with self.engine.begin() as conn:
            conn.execute(sa.text("UPDATE config_state SET version = version + 1 WHERE id = 1"))
            version = int(conn.execute(sa.text("SELECT version FROM config_state WHERE id = 1")).scalar_one())
            self._write_rows(conn, cfg)
            if history:
                conn.execute(
                    _HISTORY.insert().values(
                        version=version,
                        created_at=utcnow().replace(tzinfo=None),
                        author="legacy",
                        summary=f"legacy version {version}",
                        digest=fingerprints.config_digest(cfg.canonical_json(), self._install_secret),
                        resources=cfg.count(),
                        document=encode_document(cfg, self.box),
                    )
                )
        return version

    def drop_history(self, version: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM config_history WHERE version = :v"), {"v": version})
