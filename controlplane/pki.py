"""The control plane's node CA: making it, loading it from files, and signing with it.

`CertificateAuthority` holds the signing certificate and key (the CA itself, or an
intermediate issued by the trust root in `--tls-ca`) and the trust root nodes pin. It
signs nodes' client certificates (short-lived, bound to a node id and group by the URI
SAN of fluxcommon.trust) and the control plane's own server certificate (DNS name
`flux-controlplane`). Plain `cryptography`; no I/O but `from_files`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fluxcommon.trust import NODE_CERT_BACKDATE, SERVER_NAME, node_identity, node_uri, spki_pin

CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=397)
BACKDATE = dt.timedelta(minutes=5)  # clocks of nodes a little behind still accept a new certificate

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class CertificateError(Exception):
    """A CA file, a CSR or a presented certificate is unusable; one line."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org[:64]))
    return x509.Name(attrs)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: SigningKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def _hash_for(key: SigningKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@dataclass(frozen=True)
class NodeCertificate:
    """What a signed node certificate says, for the records."""

    serial: str  # hex
    node_id: str
    group: str
    not_after: dt.datetime
    chain_pem: bytes  # the node's certificate, then the intermediates up to the root


@dataclass
class CertificateAuthority:
    cert: x509.Certificate  # signs
    key: SigningKey
    root: x509.Certificate  # what nodes pin and trust (== cert unless cert is an intermediate)
    intermediates: tuple[x509.Certificate, ...] = ()  # between cert and root, cert first
    source: str = "database"

    # -- making and loading ----------------------------------------------------------------

    @classmethod
    def generate(cls, common_name: str = "FLUX Gateway node CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key, root=cert)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem_: bytes, source: str = "database") -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem_, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise CertificateError(f"unsupported CA key type {type(key).__name__}")
        return cls(cert=cert, key=key, root=cert, source=source)

    @classmethod
    def from_files(cls, ca: str | None, cert: str, key: str) -> CertificateAuthority:
        """`--tls-cert`/`--tls-key`: the CA certificate (or an intermediate CA) and key the
        control plane signs with; `--tls-ca`: the trust root nodes pin (default: the first
        certificate of `--tls-cert` itself). `--tls-cert` may hold the chain up to the root."""
        try:
            chain = x509.load_pem_x509_certificates(pathlib.Path(cert).read_bytes())
            signing_key = serialization.load_pem_private_key(pathlib.Path(key).read_bytes(), password=None)
            roots = x509.load_pem_x509_certificates(pathlib.Path(ca).read_bytes()) if ca else [chain[-1]]
        except (OSError, ValueError) as exc:
            raise CertificateError(f"cannot read the node CA files: {exc}") from None
        if not isinstance(signing_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise CertificateError(f"--tls-key: unsupported key type {type(signing_key).__name__}")
        signing = chain[0]
        if not _is_ca(signing):
            raise CertificateError(
                f"--tls-cert {cert}: {signing.subject.rfc4514_string()} is not a CA certificate "
                "(basicConstraints CA:TRUE): the control plane signs node certificates with it"
            )
        if signing.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CertificateError(f"--tls-key {key} is not the key of --tls-cert {cert}")
        root = roots[0]
        intermediates = tuple(c for c in chain[1:] if c != root)
        ca = cls(cert=signing, key=signing_key, root=root, intermediates=intermediates, source="files")
        try:
            ca._check_chain(signing)
        except CertificateError as exc:
            raise CertificateError(f"--tls-cert {cert} does not chain to --tls-ca {ca}: {exc}") from None
        return ca

    # -- what nodes see --------------------------------------------------------------------

    @property
    def pin(self) -> str:
        return spki_pin(self.root)

    @property
    def root_pem(self) -> bytes:
        return pem(self.root)

    def _chain_after(self, leaf_pem: bytes) -> bytes:
        extra = [self.cert] if self.cert != self.root else []
        return leaf_pem + b"".join(pem(c) for c in (*extra, *self.intermediates))

    # -- signing ---------------------------------------------------------------------------

    def sign_node(self, csr_pem: bytes, node_id: str, group: str, lifetime: dt.timedelta) -> NodeCertificate:
        """A client certificate for `node_id` in `group` on the CSR's public key (its subject and
        extensions are ignored). Raises CertificateError for a bad CSR."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CertificateError(f"unreadable certificate signing request: {exc}") from None
        if not csr.is_signature_valid:
            raise CertificateError("the certificate signing request's signature does not verify")
        public = csr.public_key()
        if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
            raise CertificateError("an RSA key of a node needs at least 2048 bits")
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            raise CertificateError(f"unsupported key type {type(public).__name__}")
        uri = node_uri(group, node_id)
        now = _now()
        not_after = min(now + lifetime, self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(node_id, group))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - NODE_CERT_BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()), critical=False)
            .sign(self.key, _hash_for(self.key))  # type: ignore[arg-type]
        )
        return NodeCertificate(
            serial=format(cert.serial_number, "x"),
            node_id=node_id,
            group=group,
            not_after=cert.not_valid_after_utc,
            chain_pem=self._chain_after(pem(cert)),
        )

    def issue_server(self, hosts: list[str]) -> tuple[bytes, bytes]:
        """(key PEM, chain PEM) of a server certificate for `flux-controlplane` and `hosts`."""
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(SERVER_NAME)]
        for host in dict.fromkeys(h for h in hosts if h and h != SERVER_NAME):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(SERVER_NAME))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + SERVER_LIFETIME, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self.key, _hash_for(self.key))  # type: ignore[arg-type]
        )
        return key_pem(key), self._chain_after(pem(cert)) + pem(self.root)

    # -- checking what nodes present -------------------------------------------------------

    def _check_chain(self, cert: x509.Certificate) -> None:
        """That `cert` was signed by this CA's signing certificate (and that one chains to the root)."""
        path = [cert, *([self.cert] if cert != self.cert else []), *self.intermediates]
        if path[-1] != self.root:
            path.append(self.root)
        for child, parent in itertools.pairwise(path):
            if child == parent:
                continue
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise CertificateError(
                    f"{child.subject.rfc4514_string()} is not issued by {parent.subject.rfc4514_string()}"
                    f"{': ' + str(exc) if str(exc) else ''}"
                ) from None

    def verify_node(self, cert: x509.Certificate) -> tuple[str, str]:
        """(group, node id) of a node certificate this CA issued; CertificateError otherwise."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            subject = cert.subject.rfc4514_string()
            raise CertificateError(f"certificate {subject} is not issued by this node CA") from None
        now = _now()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError(f"certificate expired at {cert.not_valid_after_utc.isoformat()}")
        identity = node_identity(cert)
        if identity is None:
            raise CertificateError("the certificate names no node (no spiffe://flux/node/ URI)")
        return identity
