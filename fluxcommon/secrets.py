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


def url_password(url: object) -> str:
    """The password in a URL's userinfo (`redis://:PASSWORD@host/0`), as written; "" when none."""
    if not isinstance(url, str) or "://" not in url:
        return ""
    userinfo, at, _ = url.partition("://")[2].partition("/")[0].rpartition("@")
    return userinfo.partition(":")[2] if at else ""


def with_url_password(url: str, password: str) -> str:
    """`url` with the password of its userinfo replaced (the URL has one: see `url_password`)."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, _, hostport = authority.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:{password}@{hostport}{slash}{path}"
