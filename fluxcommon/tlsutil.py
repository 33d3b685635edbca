"""TLS contexts from PEM text, and a self-signed certificate for when none is configured."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(common_name: str = "localhost", sans: tuple[str, ...] = (), days: int = 365) -> tuple[str, str]:
    """(certificate PEM, PKCS#8 key PEM), ECDSA P-256, for `common_name` and `sans` (names or IPs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    alt: list[x509.GeneralName] = []
    for san in (common_name, *sans):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            alt.append(x509.DNSName(san))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert_pem, key_pem


def load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """`ctx.load_cert_chain` from PEM text (through a private temporary file, removed at once)."""
    fd, path = tempfile.mkstemp(prefix="flux-tls-", suffix=".pem")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cert_pem.strip() + "\n" + key_pem.strip() + "\n")
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def server_context(cert_pem: str, key_pem: str, client_ca_pem: str = "") -> ssl.SSLContext:
    """A TLS server context; with `client_ca_pem`, clients must present a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, cert_pem, key_pem)
    if client_ca_pem:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_ca_pem)
    return ctx
