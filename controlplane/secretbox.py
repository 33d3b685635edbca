"""The control plane's secret key, and sealing secrets with it (AES-256-GCM).

Where the key comes from
    `FLUX_SECRET_KEY` (environment), else the file `secret.key` in the data directory,
    beside `admin.token`; the file is created (mode 0600) with a random key on first
    start. A key is 32 random bytes written in base64 (`openssl rand -base64 32`, or a
    Fernet key). Several control planes on one MySQL database must share one key: set
    the same FLUX_SECRET_KEY on each, or copy one key file to each data directory.

What a sealed value looks like
    text (single values: the install secret, the node CA's key):
    ``enc:v1:`` + base64url(key id 4 | nonce 12 | ciphertext+tag),
    where the plaintext is the value's JSON (so strings, numbers and lists round-trip).
    blobs (history documents): ``FXENC1`` + the same bytes, unencoded.
    The key id is derived from the key (HKDF), so it names a key without revealing it:
    a value sealed under another key is reported as such instead of decrypting to garbage.

This module knows nothing of the database: `controlplane.store.encryption` seals what
earlier versions left in plaintext and re-encrypts everything on rotation.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("flux.secrets")

KEY_FILE = "secret.key"
PENDING_SUFFIX = ".new"  # the next key while rotate-secret-key runs
OLD_SUFFIX = ".old"  # the key before the last rotation (for restoring older backups)
ENV = "FLUX_SECRET_KEY"

TEXT_PREFIX = "enc:v1:"
BLOB_PREFIX = b"FXENC1"
_ID_LEN, _NONCE_LEN = 4, 12
_HOW_TO_MAKE = "make one with: openssl rand -base64 32"


class SecretKeyError(Exception):
    """The key is unusable, or does not open what the database holds. One line, for operators."""


def _derive(material: bytes, label: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(material)


@dataclass(frozen=True)
class SecretKey:
    """32 bytes of key material; `id` (8 hex digits) names it in errors and in sealed values."""

    material: bytes

    def __post_init__(self) -> None:
        if len(self.material) != 32:
            raise SecretKeyError(f"a secret key is 32 bytes, not {len(self.material)} ({_HOW_TO_MAKE})")

    @property
    def id(self) -> str:
        return self.id_bytes.hex()

    @cached_property
    def id_bytes(self) -> bytes:
        return _derive(self.material, b"flux secretbox v1 key id", _ID_LEN)

    @cached_property
    def aead(self) -> AESGCM:
        return AESGCM(_derive(self.material, b"flux secretbox v1 aes-256-gcm"))

    def encoded(self) -> str:
        return base64.urlsafe_b64encode(self.material).decode()

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str, where: str) -> SecretKey:
        """A key from its base64 form (standard or URL-safe, padding optional)."""
        raw = text.strip()
        padded = raw + "=" * (-len(raw) % 4)
        try:
            material = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            material = b""
        if len(material) != 32:
            raise SecretKeyError(f"{where}: not a base64-encoded 32-byte key ({_HOW_TO_MAKE})")
        return cls(material)

    def __repr__(self) -> str:  # never print the material
        return f"SecretKey(id={self.id})"


class SecretBox:
    """Seals with `key`; opens what `key` or any of `old` sealed (during a key rotation)."""

    def __init__(self, key: SecretKey, old: Iterable[SecretKey] = ()) -> None:
        self.key = key
        self._keys = {k.id_bytes: k for k in (*old, key)}

    @property
    def key_id(self) -> str:
        return self.key.id

    # -- raw bytes -----------------------------------------------------------------------

    def _seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        return self.key.id_bytes + nonce + self.key.aead.encrypt(nonce, plaintext, None)

    def _open(self, sealed: bytes, what: str) -> bytes:
        key_id, nonce, body = sealed[:_ID_LEN], sealed[_ID_LEN : _ID_LEN + _NONCE_LEN], sealed[_ID_LEN + _NONCE_LEN :]
        key = self._keys.get(key_id)
        if key is None:
            raise SecretKeyError(
                f"{what} was encrypted with secret key {key_id.hex()}, but this control plane has key "
                f"{self.key_id}: start it with the key that wrote the database ({ENV} or {KEY_FILE})"
            )
        try:
            return key.aead.decrypt(nonce, body, None)
        except InvalidTag:
            raise SecretKeyError(f"{what} does not decrypt with key {key.id}: the database is corrupt") from None

    # -- single values -----------------------------------------------------------------------

    def seal(self, value: Any) -> str:
        """``enc:v1:...`` holding `value` (anything JSON can carry)."""
        data = json.dumps(value, separators=(",", ":")).encode()
        return TEXT_PREFIX + base64.urlsafe_b64encode(self._seal(data)).decode()

    def open(self, token: str, what: str = "a stored secret") -> Any:
        try:
            raw = base64.urlsafe_b64decode(token[len(TEXT_PREFIX) :].encode())
        except (binascii.Error, ValueError):
            raise SecretKeyError(f"{what} is not a valid sealed value: the database is corrupt") from None
        return json.loads(self._open(raw, what))

    def is_current(self, value: str) -> bool:
        """Whether `value` is sealed under this box's (new) key."""
        return key_id_of(value) == self.key_id

    # -- history documents -----------------------------------------------------------------

    def seal_blob(self, data: bytes) -> bytes:
        return BLOB_PREFIX + self._seal(data)

    def open_blob(self, blob: bytes, what: str = "a history document") -> bytes:
        return self._open(blob[len(BLOB_PREFIX) :], what)

    def is_current_blob(self, blob: bytes) -> bool:
        return is_sealed_blob(blob) and blob[len(BLOB_PREFIX) : len(BLOB_PREFIX) + _ID_LEN] == self.key.id_bytes


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(TEXT_PREFIX)


def is_sealed_blob(blob: bytes) -> bool:
    return bytes(blob[: len(BLOB_PREFIX)]) == BLOB_PREFIX


def key_id_of(value: str) -> str | None:
    """The id of the key that sealed `value` (None if it is not sealed)."""
    if not is_sealed(value):
        return None
    try:
        return base64.urlsafe_b64decode(value[len(TEXT_PREFIX) :][:8].encode())[:_ID_LEN].hex()
    except (binascii.Error, ValueError):
        return None


# -- where the key is kept ------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedKey:
    key: SecretKey
    source: str  # "env" or the key file's path
    created: bool = False
    pending: SecretKey | None = None  # secret.key.new left by an interrupted rotation

    @property
    def shown_source(self) -> str:
        return f"from {ENV}" if self.source == "env" else self.source


def write_key_file(path: pathlib.Path, key: SecretKey) -> None:
    """Write `key` to `path` (mode 0600, created or replaced whole) and sync it to disk."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (key.encoded() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_key_file(path: pathlib.Path) -> SecretKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by others (mode %o): now 0600", path, mode)
    return SecretKey.parse(path.read_text(), str(path))


def load_secret_key(data_dir: pathlib.Path, *, create: bool = True) -> LoadedKey:
    """The key from FLUX_SECRET_KEY, else from `data_dir/secret.key` (created when missing)."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return LoadedKey(SecretKey.parse(env, ENV), "env")
    path = data_dir / KEY_FILE
    pending_path = path.with_name(path.name + PENDING_SUFFIX)
    pending = read_key_file(pending_path) if pending_path.exists() else None
    if path.exists():
        return LoadedKey(read_key_file(path), str(path), pending=pending)
    if not create:
        raise SecretKeyError(f"no secret key: {ENV} is not set and {path} does not exist")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = SecretKey.generate()
    write_key_file(path, key)
    return LoadedKey(key, str(path), created=True, pending=pending)


def adopt_pending(loaded: LoadedKey) -> LoadedKey:
    """Finish a rotation that committed but did not rename secret.key.new over secret.key."""
    assert loaded.pending is not None and loaded.source != "env"
    path = pathlib.Path(loaded.source)
    os.replace(path, path.with_name(path.name + OLD_SUFFIX))
    os.replace(path.with_name(path.name + PENDING_SUFFIX), path)
    log.warning(
        "an interrupted rotate-secret-key had re-encrypted the database: %s now holds key %s", path, loaded.pending.id
    )
    return LoadedKey(loaded.pending, str(path))


def drop_pending(loaded: LoadedKey) -> None:
    """Remove secret.key.new of a rotation that never committed."""
    assert loaded.pending is not None and loaded.source != "env"
    path = pathlib.Path(loaded.source)
    path.with_name(path.name + PENDING_SUFFIX).unlink(missing_ok=True)
    log.warning("removed %s%s: a rotate-secret-key had stopped before it changed the database", path, PENDING_SUFFIX)
