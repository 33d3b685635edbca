"""Keyed fingerprints shown to readers: API key fingerprints and the config digest.

A reader must not get an offline guessing oracle: an unsalted SHA-256 of an API key (or of
a config document whose only unknown part is a tunnel token) lets anyone test guesses at
full speed. So what readers see is an HMAC-SHA256 under a per-install secret that only the
control planes of this installation hold.

The per-install secret is kept, sealed with the secret key, in the database
(`config_state.install_secret`, see `controlplane.store.encryption`), so every control
plane on one database shows the same fingerprints and a key rotation changes none of
them. The control plane calls `set_install_secret` at start; until then (tests, tools)
a random secret of this process is used, so nothing ever falls back to a bare hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os

PREFIX = "hmac-sha256:"
_FINGERPRINT_HEX = 16  # 64 bits: enough to tell a consumer's keys apart
_secret = os.urandom(32)


def set_install_secret(secret: bytes) -> None:
    global _secret
    _secret = secret


def _mac(label: bytes, data: bytes, secret: bytes | None = None) -> str:
    return hmac.new(_secret if secret is None else secret, label + b"\0" + data, hashlib.sha256).hexdigest()


def credential_fingerprint(key_sha256: str) -> str:
    """What readers see of an API key: ``hmac-sha256:`` + 16 hex digits."""
    return PREFIX + _mac(b"api key fingerprint", key_sha256.encode())[:_FINGERPRINT_HEX]


def fingerprint_matches(fingerprint: str, key_sha256: str) -> bool:
    """Whether a fingerprint written back (possibly shortened) names the key with this hash."""
    shown = fingerprint.removeprefix(PREFIX)
    if not fingerprint.startswith(PREFIX):
        return False
    full = credential_fingerprint(key_sha256).removeprefix(PREFIX)
    return hmac.compare_digest(full[: len(shown)], shown)


def config_digest(document: bytes, install_secret: bytes | None = None) -> str:
    """The digest of a config document shown on reads (64 hex digits); keyed with
    `install_secret` when given (a migration, before the start sets it), else the one set."""
    return _mac(b"config digest", document, install_secret)
