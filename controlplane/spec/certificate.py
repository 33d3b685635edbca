"""Certificate: a TLS certificate and key for https listeners, chosen by SNI."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator

from controlplane.spec._types import MASK, Resource
from fluxcommon.netaddr import check_host_pattern


class CertificateSpec(Resource):
    multiline_fields = Resource.multiline_fields | {"cert", "key"}  # PEM blocks

    snis: list[str] = []
    cert: str
    key: str
    description: str = ""

    @model_validator(mode="after")
    def _pem(self) -> CertificateSpec:
        for sni in self.snis:
            check_host_pattern(sni)
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
        return out

    def keep_secrets_from(self, old: Resource | None) -> CertificateSpec:
        if self.key != MASK:
            return self
        if not isinstance(old, CertificateSpec):
            raise ValueError("key: masked value but no stored key to keep")
        return self.model_copy(update={"key": old.key})
