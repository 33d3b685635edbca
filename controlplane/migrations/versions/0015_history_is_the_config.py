"""one config storage: the current version's history document; the resource tables go

Until now the config was stored twice: one row per resource and one document per version in
`config_history` (the rows were read only when the history lacked the current version). From
here the history document is the one storage. For an existing database whose history lacks the
current version's document (pruned, or written before history existed), it is written here
from the rows (controlplane.store.legacy_rows); then the resource tables are dropped.

The document is sealed like every other when the rows hold sealed values (the database was
started since 0006): that needs the secret key, which `controlplane.store.db.migrate(engine,
secrets=box)` hands over (the control plane's start and `rotate-secret-key` do). Rows of a
database never started since 0006 are plaintext: the document is then written plaintext too,
and sealed by the start right after (controlplane.store.encryption.seal_database), as every
plaintext document of an earlier version is.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

import base64

import sqlalchemy as sa
from alembic import context, op

from controlplane import fingerprints
from controlplane.secretbox import SecretBox
from controlplane.store import legacy_rows
from controlplane.store.config_store import encode_document
from controlplane.store.models import utcnow

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

AUTHOR = "migration 0015"


def _box() -> SecretBox | None:
    box = context.config.attributes.get("secrets")
    assert box is None or isinstance(box, SecretBox)
    return box


def _write_current_document(conn: sa.Connection) -> None:
    state = sa.text("SELECT version, install_secret FROM config_state WHERE id = 1")
    version, install_secret = conn.execute(state).one()
    version = int(version)
    if version == 0:
        return  # nothing written yet: the empty config
    if conn.execute(sa.text("SELECT 1 FROM config_history WHERE version = :v"), {"v": version}).first() is not None:
        return
    box = _box()
    sealed = install_secret is not None or legacy_rows.has_sealed_values(conn)
    if sealed and box is None:
        raise RuntimeError(
            f"migration 0015 must write config version {version} from the encrypted resource tables, which needs "
            "the secret key: start flux-controlplane (or run rotate-secret-key) on this database instead"
        )
    cfg = legacy_rows.load_config(conn, box)
    plain = cfg.canonical_json()
    if sealed and box is not None:
        secret = base64.b64decode(box.open(install_secret, "the database's install secret"))
        digest = fingerprints.config_digest(plain, secret)
        document = encode_document(cfg, box)
    else:  # sealed, and given its keyed digest, at the start right after
        digest = fingerprints.config_digest(plain)
        document = encode_document(cfg)
    history = sa.table(
        "config_history",
        sa.column("version", sa.BigInteger),
        sa.column("created_at", sa.DateTime),
        sa.column("author", sa.String),
        sa.column("summary", sa.Text),
        sa.column("digest", sa.String),
        sa.column("resources", sa.Integer),
        sa.column("document", sa.LargeBinary),
    )
    conn.execute(
        history.insert().values(
            version=version,
            created_at=utcnow(),
            author=AUTHOR,
            summary=f"version {version} as stored in the resource tables",
            digest=digest,
            resources=cfg.count(),
            document=document,
        )
    )


def upgrade() -> None:
    conn = op.get_bind()
    _write_current_document(conn)
    for table in legacy_rows.TABLE_NAMES:
        op.drop_table(table)


def downgrade() -> None:
    raise NotImplementedError("0015 cannot be undone: restore a backup taken before the upgrade")
