"""The admin token: from FLUX_ADMIN_TOKEN, or created once under the data directory.

The token is compared in constant time and never logged; only the path of the
file that holds it is printed.
"""

from __future__ import annotations

import hmac
import os
import pathlib
import secrets
from dataclasses import dataclass

TOKEN_FILE = "admin.token"


@dataclass(frozen=True)
class AdminToken:
    value: str
    source: str  # "env" or the file path
    created: bool = False

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.value.encode())


def load_admin_token(data_dir: pathlib.Path) -> AdminToken:
    env = os.environ.get("FLUX_ADMIN_TOKEN", "").strip()
    if env:
        return AdminToken(env, "env")
    path = data_dir / TOKEN_FILE
    if path.exists():
        value = path.read_text().strip()
        if value:
            return AdminToken(value, str(path))
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.chmod(path, 0o600)
    return AdminToken(value, str(path), created=True)
