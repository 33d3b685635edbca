"""What the control plane and its nodes agree on to trust each other on the config stream.

- **Join tokens** are `<id>.<secret>.<pin>`: `id` finds the token, `secret` proves it (the
  control plane keeps only its SHA-256), and `pin` is the SHA-256 of the control plane's CA
  SubjectPublicKeyInfo (base64url, no padding), as kubeadm's `--discovery-token-ca-cert-hash`:
  a node trusts no CA but the one its token pins.
- **Node identity**: a node's client certificate carries the URI SAN
  `spiffe://flux/node/<group>/<node id>` (both parts percent-encoded); the control plane serves
  the group and checks the node id it names. A node with `--workers N` streams as `<id>/wK`,
  which its certificate for `<id>` covers.
- **The control plane's name**: nodes check the server certificate for the DNS name
  `flux-controlplane` (and the CA), whatever address they dial.
- **The public enrolment identity**: gRPC's Python server can only ask for a client
  certificate always or never, so the port always asks, and a node without a certificate yet
  presents this one: its key is derived from a published constant, so it proves nothing and
  the control plane allows it `Enroll` only (the join token is the proof there).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "flux-controlplane"
NODE_CERT_BACKDATE = dt.timedelta(seconds=60)
"""A node certificate's notBefore is this much before its issue (clock skew between control
planes); nodes count its lifetime from notBefore + this."""
NODE_URI_PREFIX = "spiffe://flux/node/"
_ENROLMENT_SEED = b"FLUX Gateway public enrolment identity v1 (not a secret)"
_ENROLMENT_ROOT_NAME = "FLUX public enrolment identity (grants Enroll only)"
_WORKER_SUFFIX = re.compile(r"/w\d{1,4}")
_TOKEN_PART = re.compile(r"[A-Za-z0-9_-]+")


# -- pins and tokens -----------------------------------------------------------------------


def spki_pin(cert: x509.Certificate) -> str:
    """The pin of a CA certificate: base64url(SHA-256(SubjectPublicKeyInfo)), unpadded."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).rstrip(b"=").decode()


def pin_hex(pin: str) -> str:
    """The pin as `sha256:<hex>` (how `openssl x509 -pubkey | openssl pkey -pubin -outform der |
    sha256sum` shows it)."""
    raw = base64.urlsafe_b64decode(pin + "=" * (-len(pin) % 4))
    return "sha256:" + binascii.hexlify(raw).decode()


@dataclass(frozen=True)
class JoinToken:
    token_id: str
    secret: str
    pin: str

    def __str__(self) -> str:
        return f"{self.token_id}.{self.secret}.{self.pin}"

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Raises ValueError with a one-line reason (never echoing the secret)."""
        parts = text.strip().split(".")
        if len(parts) != 3 or not all(_TOKEN_PART.fullmatch(p) for p in parts):
            raise ValueError("a join token is <id>.<secret>.<ca pin> (from `fluxctl nodes join-token`)")
        token_id, secret, pin = parts
        if len(pin) != 43:
            raise ValueError("the join token's CA pin is not a SHA-256 (43 base64url characters)")
        return cls(token_id, secret, pin)


def secret_digest(secret: str) -> str:
    """What the control plane stores of a token secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


# -- node identity -------------------------------------------------------------------------


def node_uri(group: str, node_id: str) -> str:
    return f"{NODE_URI_PREFIX}{quote(group, safe='')}/{quote(node_id, safe='')}"


def parse_node_uri(uri: str) -> tuple[str, str] | None:
    """(group, node id) of a node URI, or None when `uri` is none."""
    if not uri.startswith(NODE_URI_PREFIX):
        return None
    group, sep, node_id = uri[len(NODE_URI_PREFIX) :].partition("/")
    if not sep or not group or not node_id or "/" in node_id:
        return None
    return unquote(group), unquote(node_id)


def node_identity(cert: x509.Certificate) -> tuple[str, str] | None:
    """(group, node id) named by a node certificate's URI SAN, or None."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        found = parse_node_uri(uri)
        if found is not None:
            return found
    return None


def covers(cert_node_id: str, claimed: str) -> bool:
    """Whether a certificate for `cert_node_id` may stream as `claimed` (itself, or one of
    its workers `<id>/wK`)."""
    if claimed == cert_node_id:
        return True
    rest = claimed.removeprefix(cert_node_id)
    return rest != claimed and _WORKER_SUFFIX.fullmatch(rest) is not None


# -- the public enrolment identity ---------------------------------------------------------

_EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
_FOREVER = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@cache
def _enrolment_key() -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha256(_ENROLMENT_SEED).digest(), "big")
    return ec.derive_private_key(scalar, ec.SECP256R1())


@cache
def enrolment_root_pem() -> bytes:
    """The public enrolment identity's root (the control plane adds it to the client CAs)."""
    key = _enrolment_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(_ENROLMENT_ROOT_NAME))
        .issuer_name(_name(_ENROLMENT_ROOT_NAME))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_EPOCH)
        .not_valid_after(_FOREVER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@cache
def enrolment_client_pem() -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM) a node presents while it has no certificate."""
    root_key = _enrolment_key()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("flux enrolling node"))
        .issuer_name(_name(_ENROLMENT_ROOT_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_EPOCH)
        .not_valid_after(_FOREVER)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def is_enrolment_identity(cert: x509.Certificate) -> bool:
    return cert.issuer == _name(_ENROLMENT_ROOT_NAME)
