"""Consumer: an API user with credentials and groups.

Secrets are never stored in the clear when the node does not need them: API
keys become their SHA-256 and basic-auth passwords a salted PBKDF2 hash. JWT
secrets must stay readable (the node verifies HMAC signatures with them) and
are only masked on reads.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from controlplane.fingerprints import credential_fingerprint, fingerprint_matches
from controlplane.spec._pem import canonical_subject
from controlplane.spec._types import MASK, Resource, Strict
from fluxcommon.secrets import hash_password, verify_password


class ApiKeyCredential(Strict):
    type: Literal["api_key"]
    key: str | None = Field(default=None, min_length=8)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # Shown on reads next to the masked key (a keyed HMAC, controlplane.fingerprints); accepted
    # on writes so a read can be written back, and used only to pick which stored key a masked
    # one keeps. Never stored. ("sha256:" is the unkeyed form of earlier versions: refused.)
    fingerprint: str | None = Field(default=None, exclude=True, pattern=r"^(hmac-sha256|sha256):[0-9a-f]{1,64}$")

    @model_validator(mode="after")
    def _hash(self) -> ApiKeyCredential:
        if self.key != MASK:
            object.__setattr__(self, "fingerprint", None)
        if self.key and self.key != MASK:
            digest = hashlib.sha256(self.key.encode()).hexdigest()
            object.__setattr__(self, "key", None)
            object.__setattr__(self, "key_sha256", digest)
        elif not self.key_sha256 and self.key != MASK:
            raise ValueError("key: an api_key credential needs a key (at least 8 characters)")
        return self


class JwtCredential(Strict):
    multiline_fields = Strict.multiline_fields | {"public_key", "private_key"}  # PEM blocks

    type: Literal["jwt"]
    issuer: str = Field(min_length=1)
    algorithm: Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"] = "HS256"
    secret: str | None = None
    public_key: str | None = None
    private_key: str | None = Field(
        default=None, description="PEM private key: lets POST /api/v1/auth/token sign RS/ES/EdDSA tokens"
    )

    @model_validator(mode="after")
    def _key(self) -> JwtCredential:
        if self.algorithm.startswith("HS"):
            if not self.secret:
                raise ValueError(f"secret: {self.algorithm} needs a secret")
            if self.secret != MASK and len(self.secret) < 16:
                raise ValueError("secret: use at least 16 characters")
            if self.public_key:
                raise ValueError("public_key: HMAC algorithms use secret, not public_key")
        else:
            if not self.public_key:
                raise ValueError(f"public_key: {self.algorithm} needs a PEM public key")
            if self.secret:
                raise ValueError(f"secret: {self.algorithm} uses public_key, not secret")
            _check_public_key(self.public_key)
            if self.private_key and self.private_key != MASK:
                _check_key_pair(self.private_key, self.public_key)
        if self.private_key and self.algorithm.startswith("HS"):
            raise ValueError("private_key: HMAC algorithms sign with secret")
        return self


class BasicAuthCredential(Strict):
    type: Literal["basic_auth"]
    username: str = Field(min_length=1, pattern=r"^[^:]+$")
    password: str | None = Field(default=None, min_length=1)
    password_hash: str | None = None

    @model_validator(mode="after")
    def _has_password(self) -> BasicAuthCredential:
        if not self.password and not self.password_hash:
            raise ValueError("password: a basic_auth credential needs a password")
        return self

    def stored(self, prev: BasicAuthCredential | None) -> BasicAuthCredential:
        """The form kept in the store: a salted hash, reused when the password is unchanged."""
        if self.password is None:
            return self
        if self.password == MASK:
            if prev is None or not prev.password_hash:
                raise ValueError(f"credentials: no stored password for user {self.username!r}")
            return prev
        if prev is not None and prev.password_hash and verify_password(self.password, prev.password_hash):
            return prev
        return self.model_copy(update={"password": None, "password_hash": hash_password(self.password)})


class MtlsCredential(Strict):
    """A client certificate (verified by an https listener's client_ca) whose subject names the consumer."""

    type: Literal["mtls"]
    subject: str = Field(min_length=3, max_length=1024)

    @model_validator(mode="after")
    def _canonical(self) -> MtlsCredential:
        object.__setattr__(self, "subject", canonical_subject(self.subject))
        return self


Credential = Annotated[
    ApiKeyCredential | JwtCredential | BasicAuthCredential | MtlsCredential, Field(discriminator="type")
]


def _check_public_key(pem: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"public_key: not a PEM public key ({exc})") from None


def _check_key_pair(private_pem: str, public_pem: str) -> None:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
        load_pem_public_key,
    )

    try:
        private = load_pem_private_key(private_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"private_key: not an unencrypted PEM private key ({exc})") from None
    mine = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    theirs = load_pem_public_key(public_pem.encode()).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if mine != theirs:
        raise ValueError("private_key: does not belong to public_key")


def _identity(cred: Any) -> tuple[str, str]:
    if isinstance(cred, JwtCredential):
        return ("jwt", cred.issuer)
    if isinstance(cred, BasicAuthCredential):
        return ("basic_auth", cred.username)
    if isinstance(cred, MtlsCredential):
        return ("mtls", cred.subject)
    return (cred.type, "")


class ConsumerSpec(Resource):
    groups: list[str] = []
    credentials: list[Credential] = []
    metadata: dict[str, str] = {}
    description: str = ""

    @model_validator(mode="after")
    def _unique(self) -> ConsumerSpec:
        seen: set[tuple[str, str]] = set()
        for i, cred in enumerate(self.credentials):
            ident = _identity(cred)
            if ident[1] and ident in seen:
                raise ValueError(f"credentials[{i}]: a second {ident[0]} credential for {ident[1]!r}")
            seen.add(ident)
        return self

    # key_sha256 and password_hash are never shown either: sealed like the secrets.
    secret_paths: ClassVar[tuple[str, ...]] = tuple(
        f"credentials[].{f}" for f in ("key", "key_sha256", "secret", "private_key", "password", "password_hash")
    )

    def masked(self) -> dict[str, Any]:
        out = super().masked()
        creds = []
        for cred in self.credentials:
            if isinstance(cred, ApiKeyCredential):
                fingerprint = credential_fingerprint(cred.key_sha256 or "")
                creds.append({"type": "api_key", "key": MASK, "fingerprint": fingerprint})
            elif isinstance(cred, JwtCredential):
                d = cred.model_dump(mode="json", exclude_none=True)
                if cred.secret:
                    d["secret"] = MASK
                if cred.private_key:
                    d["private_key"] = MASK
                creds.append(d)
            elif isinstance(cred, MtlsCredential):
                creds.append({"type": "mtls", "subject": cred.subject})
            else:
                creds.append({"type": "basic_auth", "username": cred.username, "password": MASK})
        out["credentials"] = creds
        return out

    def keep_secrets_from(self, old: Resource | None) -> ConsumerSpec:
        """Stored form: masked values written back keep what is stored, passwords are hashed."""
        prev_creds = old.credentials if isinstance(old, ConsumerSpec) else []
        by_ident = {_identity(c): c for c in prev_creds}
        old_keys = [c for c in prev_creds if isinstance(c, ApiKeyCredential)]
        merged: list[Any] = []
        for cred in self.credentials:
            prev = by_ident.get(_identity(cred))
            if isinstance(cred, ApiKeyCredential) and cred.key == MASK:
                if not old_keys:
                    raise ValueError("credentials: a masked api_key has no stored key to keep")
                shown = cred.fingerprint
                match = next(
                    (k for k in old_keys if shown is None or fingerprint_matches(shown, k.key_sha256 or "")), None
                )
                if match is None:
                    raise ValueError(
                        "credentials: a masked api_key's fingerprint matches no stored key "
                        "(fingerprints are hmac-sha256:..., as the consumer reads now)"
                    )
                old_keys.remove(match)
                merged.append(match)
            elif isinstance(cred, JwtCredential) and MASK in (cred.secret, cred.private_key):
                update = {}
                for field in ("secret", "private_key"):
                    if getattr(cred, field) == MASK:
                        stored = getattr(prev, field, None) if isinstance(prev, JwtCredential) else None
                        if not stored:
                            raise ValueError(f"credentials: no stored {field} for jwt issuer {cred.issuer!r}")
                        update[field] = stored
                merged.append(cred.model_copy(update=update))
            elif isinstance(cred, BasicAuthCredential):
                merged.append(cred.stored(prev if isinstance(prev, BasicAuthCredential) else None))
            else:
                merged.append(cred)
        return self.model_copy(update={"credentials": merged})
