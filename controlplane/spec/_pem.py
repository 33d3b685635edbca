"""PEM checks shared by the specs that carry certificates (CA bundles of listeners, clusters,
tunnels): parse them at write time, so a node never gets a PEM it cannot load."""

from __future__ import annotations

import re

from cryptography import x509


def check_ca_bundle(pem: str) -> str:
    """`pem` unchanged when it holds PEM certificates only, else ValueError (for a field validator)."""
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise ValueError("not PEM CA certificates (-----BEGIN CERTIFICATE----- blocks)") from None
    if not certs:
        raise ValueError("not PEM CA certificates (none found)")
    return pem


def canonical_subject(subject: str, field: str = "subject") -> str:
    """A certificate subject in the RFC 4514 spelling the node compares (`CN=alice,O=Example`);
    spaces around commas and lower-case attribute names (`cn=alice, o=Example`) are forgiven."""
    parts = []
    for part in re.split(r"(?<!\\),", subject):
        name, sep, value = part.strip().partition("=")
        parts.append(name.strip().upper() + sep + value.strip() if sep else part)
    try:
        return x509.Name.from_rfc4514_string(",".join(parts)).rfc4514_string()
    except ValueError:
        raise ValueError(
            f"{field}: {subject!r} is not an RFC 4514 distinguished name (like CN=alice,O=Example)"
        ) from None
