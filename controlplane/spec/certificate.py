"""Certificate: a TLS certificate and key for https listeners, chosen by SNI."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator

from controlplane.spec._types import MASK, Resource
from fluxcommon.netaddr import check_host_pattern

_SHOWN = frozenset({"not_after", "expires_in_days", "expired", "names"})  # computed on reads


class CertificateSpec(Resource):
    multiline_fields = Resource.multiline_fields | {"cert", "key"}  # PEM blocks

    snis: list[str] = []
    cert: str
    key: str
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _read_only(cls, data: Any) -> Any:
        """What reads add (expiry, names) may be written back as read; it is not stored."""
        if isinstance(data, dict) and any(k in data for k in _SHOWN):
            data = {k: v for k, v in data.items() if k not in _SHOWN}
        return data

    @model_validator(mode="after")
    def _pem(self) -> CertificateSpec:
        for i, sni in enumerate(self.snis):
            try:
                check_host_pattern(sni)
            except ValueError as exc:
                raise ValueError(f"snis[{i}]: {exc}") from None
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            cert = x509.load_pem_x509_certificate(self.cert.encode())
        except ValueError as exc:
            raise ValueError(f"cert: not a PEM certificate ({exc})") from None
        if self.key != MASK:
            try:
                key = load_pem_private_key(self.key.encode(), password=None)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"key: not an unencrypted PEM private key ({exc})") from None
            if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
                raise ValueError("key: does not match the certificate's public key")
        return self

    secret_paths: ClassVar[tuple[str, ...]] = ("key",)

    def masked(self) -> dict[str, Any]:
        out = super().masked()
        out["key"] = MASK
        out.update(self.expiry())
        return out

    def expiry(self) -> dict[str, Any]:
        """When the (leaf) certificate expires, and the names it serves: shown on reads."""
        import datetime

        from cryptography import x509

        try:
            leaf = x509.load_pem_x509_certificate(self.cert.encode())
        except ValueError:
            return {}
        not_after = leaf.not_valid_after_utc
        left = (not_after - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
        names: list[str] = []
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = san.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            pass
        return {
            "not_after": not_after.isoformat(),
            "expires_in_days": round(left, 2),
            "expired": left < 0,
            "names": names,
        }

    def keep_secrets_from(self, old: Resource | None) -> CertificateSpec:
        if self.key != MASK:
            return self
        if not isinstance(old, CertificateSpec):
            raise ValueError("key: masked value but no stored key to keep")
        return self.model_copy(update={"key": old.key})
