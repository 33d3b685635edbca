"""The identity a verified client certificate gives a connection, and how it goes upstream.

`X-Forwarded-Client-Cert` follows Envoy's format (`Hash=<sha256 of the DER, hex>;
Subject="<RFC 4514>";URI=<each URI SAN>;DNS=<each DNS SAN>`), with `"` and `\\` in the
subject escaped; clients' own copies of the header are always dropped by the proxy.

Sans-IO: DER bytes in, strings out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509


def subject_key(subject: str) -> str:
    """A distinguished name compared without regard to the order of its attributes
    ("CN=alice,O=Example" and "O=Example,CN=alice" are one key); the text itself when it
    does not parse."""
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError:
        return subject
    return ",".join(sorted(attr.rfc4514_string() for attr in name))


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    subject: str  # RFC 4514, most specific first as RFC 4514 writes it: "O=Example,CN=alice"
    dns: tuple[str, ...]
    uris: tuple[str, ...]
    sha256: str

    @classmethod
    def from_der(cls, der: bytes) -> ClientIdentity:
        cert = x509.load_der_x509_certificate(der)
        dns: list[str] = []
        uris: list[str] = []
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = san.get_values_for_type(x509.DNSName)
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            pass
        return cls(cert.subject.rfc4514_string(), tuple(dns), tuple(uris), hashlib.sha256(der).hexdigest())

    @property
    def key(self) -> str:
        return subject_key(self.subject)

    def xfcc(self) -> bytes:
        """The X-Forwarded-Client-Cert value (latin-1 safe: non-ASCII is escaped)."""
        subject = self.subject.replace("\\", "\\\\").replace('"', '\\"')
        parts = [f"Hash={self.sha256}", f'Subject="{subject}"']
        parts += [f"URI={u}" for u in self.uris]
        parts += [f"DNS={d}" for d in self.dns]
        text = ";".join(parts)
        return "".join(c if 0x20 <= ord(c) < 0x7F else f"\\u{ord(c):04x}" for c in text).encode("ascii")
