"""Bringing the database's secrets under the current secret key: at start, and on rotation.

`seal_database(engine, box)` runs in ONE transaction, serialised with config writers (and
with other control planes starting on the same MySQL database) on the `config_state` row:

  1. The per-install secret (`config_state.install_secret`, controlplane.fingerprints) is
     created, sealed, on the first start; otherwise it is opened, which proves that the key
     is the one that wrote the database: a wrong key stops here (SecretKeyError, one line)
     and nothing is changed.
  2. The node CA's private key (controlplane.store.trust) is sealed under the box's key if it
     is not yet.
  3. Console sessions sealed under another key are ended (a rotation logs everyone out).
  4. Every history document not sealed under the box's key is sealed whole: plaintext written
     by earlier versions at start, everything during a rotation (the box then opens the old
     key's values too). A plaintext document of an earlier version also gets its digest
     again, keyed now. The history documents are the config's one storage (migration 0015).

On SQLite the file is then vacuumed and its WAL emptied, so the pages that held the old
values are gone. (MySQL keeps old row images in its undo and binary logs for a while;
those are the database administrator's to protect.)

A second run finds nothing to do. `start` wraps it for the control plane's start-up and
finishes (or drops) a key file left by an interrupted `rotate-secret-key`.
"""

from __future__ import annotations

import base64
import logging
import os
import zlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from controlplane import fingerprints
from controlplane.secretbox import (
    LoadedKey,
    SecretBox,
    SecretKeyError,
    adopt_pending,
    drop_pending,
    is_sealed,
    is_sealed_blob,
    key_id_of,
)
from controlplane.store import trust
from controlplane.store.models import ConfigHistoryRow, ConfigStateRow, ConsoleSessionRow

log = logging.getLogger("flux.store")

_HEAD = 16  # bytes of a history document that say whether, and under which key, it is sealed


@dataclass(frozen=True)
class SealReport:
    key_id: str
    fields: int  # secret values outside the history sealed (or re-sealed): the node CA's key
    documents: int  # history documents sealed (or re-sealed)
    created: bool  # the per-install secret was created (first start on this database)

    def summary(self) -> str:
        return f"{self.fields} secret field value(s) and {self.documents} history document(s)"


def stored_key_id(engine: Engine) -> str | None:
    """The id of the key that sealed this database's install secret (None: never sealed)."""
    with Session(engine) as s:
        sealed = s.execute(select(ConfigStateRow.install_secret).where(ConfigStateRow.id == 1)).scalar()
    return key_id_of(sealed) if sealed else None


def _install_secret(state: ConfigStateRow, box: SecretBox) -> tuple[bytes, bool]:
    if not state.install_secret:
        secret = os.urandom(32)
        state.install_secret = box.seal(base64.b64encode(secret).decode())
        return secret, True
    opened = box.open(state.install_secret, "the database's install secret")
    if not box.is_current(state.install_secret):
        state.install_secret = box.seal(opened)
    return base64.b64decode(opened), False


def seal_database(engine: Engine, box: SecretBox) -> SealReport:
    """Check the key, then seal under `box`'s key everything that is not yet (see above)."""

    def reseal(value: Any, where: str) -> Any:
        if value is None or value == "" or (is_sealed(value) and box.is_current(value)):
            return value
        if is_sealed(value):
            value = box.open(value, f"the stored {where}")
        return box.seal(value)

    with Session(engine) as s:
        # Lock the version row first, as every config write does.
        s.execute(update(ConfigStateRow).where(ConfigStateRow.id == 1).values(version=ConfigStateRow.version))
        state = s.get(ConfigStateRow, 1)
        if state is None:
            raise RuntimeError("config_state has no row: the schema was not migrated")
        secret, created = _install_secret(state, box)
        fingerprints.set_install_secret(secret)
        fields = trust.reseal_ca_key(s, reseal)  # the node CA's private key
        ended = _end_console_sessions_of_other_keys(s, box)  # after a rotation: everyone logs in again
        documents = 0
        heads = select(ConfigHistoryRow.version, func.substr(ConfigHistoryRow.document, 1, _HEAD))
        stale = [v for v, head in s.execute(heads.order_by(ConfigHistoryRow.version)) if not box.is_current_blob(head)]
        for version in stale:  # read whole only the documents that need work
            row = s.get(ConfigHistoryRow, version)
            assert row is not None
            if is_sealed_blob(row.document):
                plain = box.open_blob(row.document, f"history document {version}")
            else:
                plain = row.document
                row.digest = fingerprints.config_digest(zlib.decompress(plain))
            row.document = box.seal_blob(plain)
            documents += 1
            s.flush()
            s.expunge(row)  # one document in memory at a time
        s.commit()
    if ended:
        log.info("ended %d web console session(s) sealed under an earlier secret key", ended)
    if (fields or documents or ended) and engine.dialect.name == "sqlite":
        _scrub_sqlite(engine)
    return SealReport(box.key_id, fields, documents, created)


def _end_console_sessions_of_other_keys(s: Session, box: SecretBox) -> int:
    """Delete the console sessions (controlplane.ui.sessions) not sealed under `box`'s key: a
    session is a login, not data, so a rotation ends it rather than re-sealing the API token
    it holds."""
    rows = s.execute(select(ConsoleSessionRow.id, ConsoleSessionRow.secrets_sealed)).all()
    stale = [key for key, sealed in rows if not box.is_current(sealed)]
    for chunk in range(0, len(stale), 500):
        s.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.id.in_(stale[chunk : chunk + 500])))  # type: ignore[attr-defined]
    return len(stale)


def _scrub_sqlite(engine: Engine) -> None:
    """Rewrite the SQLite file and empty its WAL, so that the pages that held the values
    before they were (re-)sealed are gone from both files."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def migration_box(engine: Engine, loaded: LoadedKey) -> SecretBox:
    """The box migrations get (controlplane.store.db.migrate, before `start`): it opens values
    sealed under the loaded key or under the key of an interrupted rotation, and seals with the
    one `settle_pending` will keep (the key that sealed the database)."""
    if loaded.pending is None:
        return SecretBox(loaded.key)
    try:
        stored = stored_key_id(engine)
    except SQLAlchemyError:  # a schema older than the install secret
        stored = None
    if stored == loaded.pending.id:
        return SecretBox(loaded.pending, old=[loaded.key])
    return SecretBox(loaded.key, old=[loaded.pending])


def settle_pending(engine: Engine, loaded: LoadedKey) -> LoadedKey:
    """After a rotate-secret-key that stopped between its commit and renaming secret.key.new
    over secret.key, finish it; after one that stopped before its commit, drop the new key."""
    if loaded.pending is None:
        return loaded
    if stored_key_id(engine) == loaded.pending.id and loaded.key.id != loaded.pending.id:
        return adopt_pending(loaded)
    drop_pending(loaded)
    return LoadedKey(loaded.key, loaded.source, loaded.created)


def start(engine: Engine, loaded: LoadedKey) -> tuple[LoadedKey, SealReport]:
    """The start-up step: settle_pending, then seal_database with the loaded key."""
    loaded = settle_pending(engine, loaded)
    try:
        report = seal_database(engine, SecretBox(loaded.key))
    except SecretKeyError as exc:
        raise SecretKeyError(f"secret key {loaded.shown_source}: {exc}") from None
    if report.fields or report.documents:
        log.warning("encrypted %s left in plaintext by an earlier version", report.summary())
    return loaded, report
