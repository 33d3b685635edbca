"""Private files of the control plane: its data folder 0700, its database files 0600.

The data folder holds the admin token, the secret key and (by default) the SQLite
database with its -wal and -shm files; none of them is for other users' eyes. New ones
are created private; existing ones left open by earlier versions are tightened at start,
with a log line saying so. A folder that is not ours, or a shared one with the sticky
bit (like /tmp), is left alone with a warning: chmod there is not ours to do.
"""

from __future__ import annotations

import logging
import os
import pathlib
import stat

log = logging.getLogger("flux.controlplane")

SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def private_dir(path: pathlib.Path) -> None:
    """Create `path` with mode 0700, or tighten it to 0700 if others may enter it."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        return
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    if st.st_uid != os.getuid() or mode & stat.S_ISVTX:
        log.warning("data folder %s is open to other users (mode %04o), and not ours to tighten", path, mode)
        return
    os.chmod(path, 0o700)
    log.warning("data folder %s was open to other users (mode %04o): now 0700", path, mode)


def private_file(path: pathlib.Path) -> None:
    """Tighten an existing file to 0600 if others may read it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by other users (mode %04o): now 0600", path, mode)


def private_sqlite(db: pathlib.Path) -> None:
    """Create the SQLite file 0600 if missing (SQLite gives -wal/-shm the mode of the database
    file), and tighten the database and its side files where they exist."""
    try:
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for suffix in SQLITE_SUFFIXES:
        private_file(db.with_name(db.name + suffix))
