"""Password hashing (PBKDF2-SHA256) and constant-time comparison helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_ITERATIONS = 60_000


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    """ "pbkdf2_sha256$ITER$SALT$HASH" with a random salt unless one is given."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"pbkdf2_sha256${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    again = hash_password(password, salt=base64.b64decode(salt), iterations=int(iterations))
    return hmac.compare_digest(again.rsplit("$", 1)[1], digest)
