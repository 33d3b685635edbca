"""`flux-controlplane rotate-secret-key`: re-encrypt every stored secret with a new key.

The old key is the one the control plane would use now (FLUX_SECRET_KEY, else secret.key
in the data directory); the new one comes from `--new-key`, or is generated. Every secret
field and every history document is re-encrypted in one transaction
(controlplane.store.encryption.seal_database), so the database is never half old, half new.

With a key file, the new key is written to `secret.key.new` before the transaction and
renamed over `secret.key` after it (the previous key is kept as `secret.key.old`, for
restoring backups taken before the rotation); a control plane that starts after a crash
in between finishes or drops the rotation from what the database says. With
FLUX_SECRET_KEY, `--new-key` is required and the operator sets the variable afterwards.

Stop every control plane of the database first: one still running keeps the old key and
could not read what the others write. The command refuses while one holds the registry
lease (every running control plane renews it, or waits for it), unless `--force`.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
import time

from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from controlplane.registry.models import RegStateRow
from controlplane.secretbox import (
    ENV,
    OLD_SUFFIX,
    PENDING_SUFFIX,
    SecretBox,
    SecretKey,
    SecretKeyError,
    load_secret_key,
    write_key_file,
)
from controlplane.store import encryption
from controlplane.store.db import make_engine, migrate, normalize_url
from fluxcommon.logs import setup_logging

log = logging.getLogger("flux.controlplane")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="flux-controlplane rotate-secret-key",
        description="Re-encrypt every stored secret and history document with a new secret key, in one "
        "transaction. Stop every control plane of the database first.",
    )
    p.add_argument("--db", default=os.environ.get("FLUX_DB", "sqlite:///data/flux.db"), help="as for the server")
    p.add_argument("--data-dir", default=None, help="as for the server: where secret.key is kept")
    p.add_argument(
        "--new-key",
        default=None,
        help="the new key (base64 of 32 bytes, e.g. from `openssl rand -base64 32`); default: a new random key "
        "written to the key file. Required when the key comes from FLUX_SECRET_KEY.",
    )
    p.add_argument("--force", action="store_true", help="rotate even if a control plane seems to be running")
    p.add_argument("--log-level", default=os.environ.get("FLUX_LOG_LEVEL", "warning"))
    return p.parse_args(argv)


def _running_control_plane(engine: Engine) -> str | None:
    """The control plane holding the registry lease now, if any."""
    with Session(engine) as s:
        row = s.execute(select(RegStateRow.leader, RegStateRow.lease_until).where(RegStateRow.id == 1)).first()
    if row is None or not row[0] or row[1] <= time.time():
        return None
    return str(row[0])


def _rotate(args: argparse.Namespace) -> int:
    from controlplane.main import _data_dir

    data_dir = _data_dir(args)
    engine = make_engine(args.db)
    try:
        loaded = load_secret_key(data_dir, create=False)
        migrate(engine, secrets=encryption.migration_box(engine, loaded))
        loaded = encryption.settle_pending(engine, loaded)
        running = _running_control_plane(engine)
        if running and not args.force:
            print(
                f"rotate-secret-key: control plane {running} is running on this database: stop every control plane "
                "first (a lease left by one that crashed runs out within seconds), or give --force",
                file=sys.stderr,
            )
            return 2
        if loaded.source == "env" and not args.new_key:
            print(f"rotate-secret-key: the key comes from {ENV}: give the new one with --new-key", file=sys.stderr)
            return 2
        new = SecretKey.parse(args.new_key, "--new-key") if args.new_key else SecretKey.generate()
        if new.id == loaded.key.id:
            print("rotate-secret-key: the new key is the current key", file=sys.stderr)
            return 2
        key_file = None if loaded.source == "env" else pathlib.Path(loaded.source)
        pending = key_file.with_name(key_file.name + PENDING_SUFFIX) if key_file else None
        if pending is not None:
            write_key_file(pending, new)  # safe on disk before the database depends on it
        try:
            report = encryption.seal_database(engine, SecretBox(new, old=[loaded.key]))
        except BaseException:
            if pending is not None:
                pending.unlink(missing_ok=True)
            raise
        if key_file is not None and pending is not None:
            os.replace(key_file, key_file.with_name(key_file.name + OLD_SUFFIX))
            os.replace(pending, key_file)
    finally:
        engine.dispose()
    shown_db = make_url(normalize_url(args.db)).render_as_string(hide_password=True)
    print(f"rotated the secret key of {shown_db}: {loaded.key.id} -> {new.id}")
    print(f"  re-encrypted {report.summary()} in one transaction")
    if key_file is not None:
        print(f"  new key in {key_file}; the previous one stays in {key_file}{OLD_SUFFIX} for restoring older backups")
        print("  other control planes of this database need the new key file before they start")
    else:
        print(f"  set {ENV} to the new key on every control plane of this database before starting them")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, "text")
    try:
        return _rotate(args)
    except SecretKeyError as exc:
        print(f"rotate-secret-key: {exc}", file=sys.stderr)
    except (SQLAlchemyError, OSError, ValueError) as exc:
        print(f"rotate-secret-key: {exc}", file=sys.stderr)
    return 2
