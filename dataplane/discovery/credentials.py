"""The node's side of trust: enrolment with a join token, stored credentials, renewal.

Enrolment (`enroll`, blocking; run once, before the workers start):

1. `fetch_ca`: a TLS connection to the control plane's gRPC port that verifies nothing yet,
   only to read the certificates it presents; the one whose SubjectPublicKeyInfo hashes to the
   token's pin is the CA. No CA with that pin: refused, nothing sent (CA pin mismatch).
2. A gRPC channel that trusts only that CA (server name `flux-controlplane`), presenting the
   public enrolment identity, calls `Enroll` with the token's id and secret, the node id and
   group, and a CSR for a fresh P-256 key made here.
3. The answer is checked (issued by the pinned CA, for this key, node id and group) and kept.

`CredentialStore` keeps `node.key`, `node.crt` and `ca.crt` in the cache directory (0600, the
directory 0700); a restart uses them without a token. `Renewer` (trio, in every worker)
renews the certificate over mutual TLS at two thirds of its lifetime (same key, new
certificate) and has the config stream reopened with it; workers pick up a certificate
another worker renewed from the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import os
import pathlib
import random
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flux.v1 import discovery_pb2, enrolment_pb2, enrolment_pb2_grpc
from fluxcommon.netaddr import split_host_port
from fluxcommon.trust import (
    NODE_CERT_BACKDATE,
    SERVER_NAME,
    JoinToken,
    enrolment_client_pem,
    node_identity,
    pin_hex,
    spki_pin,
)

log = logging.getLogger("flux.node.trust")

KEY_FILE, CERT_FILE, CA_FILE = "node.key", "node.crt", "ca.crt"
CALL_TIMEOUT = 10.0
_FATAL_CODES = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
}


class EnrolmentError(Exception):
    """Enrolment or renewal failed; `fatal`: retrying the same thing cannot help."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


def channel_options() -> list[tuple[str, str]]:
    """gRPC channel options of every call to the control plane: it is checked as `flux-controlplane`."""
    return [("grpc.ssl_target_name_override", SERVER_NAME)]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _public_der(key: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# -- credentials -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCredentials:
    key_pem: bytes
    chain_pem: bytes  # the node's certificate first
    ca_pem: bytes
    node_id: str
    group: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def from_pem(cls, key_pem: bytes, chain_pem: bytes, ca_pem: bytes) -> NodeCredentials:
        """Raises ValueError when the three do not belong together."""
        key = serialization.load_pem_private_key(key_pem, password=None)
        chain = x509.load_pem_x509_certificates(chain_pem)
        ca = x509.load_pem_x509_certificates(ca_pem)[0]
        leaf = chain[0]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or _public_der(key) != _public_der(leaf):
            raise ValueError("the node key is not the key of the node certificate")
        identity = node_identity(leaf)
        if identity is None:
            raise ValueError("the node certificate names no node")
        _check_issued(chain, ca)
        group, node_id = identity
        return cls(
            key_pem, chain_pem, ca_pem, node_id, group, format(leaf.serial_number, "x"),
            leaf.not_valid_before_utc, leaf.not_valid_after_utc,
        )  # fmt: skip

    @property
    def ca_pin(self) -> str:
        return spki_pin(x509.load_pem_x509_certificate(self.ca_pem))

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.chain_pem)

    @property
    def issued_at(self) -> dt.datetime:
        return min(self.not_before + NODE_CERT_BACKDATE, self.not_after)

    def renew_at(self) -> dt.datetime:
        """Two thirds into its lifetime."""
        return self.issued_at + (self.not_after - self.issued_at) * 2 / 3

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or _now()) >= self.not_after

    def describe(self) -> str:
        return (
            f"node {self.node_id} of group {self.group}, certificate {self.serial} valid until "
            f"{self.not_after.isoformat(timespec='seconds')}"
        )


def _check_issued(chain: list[x509.Certificate], ca: x509.Certificate) -> None:
    path = [*chain, ca] if chain[-1] != ca else chain
    for child, parent in itertools.pairwise(path):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise ValueError(
                f"{child.subject.rfc4514_string()} is not issued by {parent.subject.rfc4514_string()}"
            ) from None


class CredentialStore:
    """node.key, node.crt and ca.crt in one directory, private to the node's user."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = pathlib.Path(directory)

    def exists(self) -> bool:
        return (self.dir / CERT_FILE).exists()

    def stamp(self) -> int:
        """Changes whenever the certificate file is replaced."""
        try:
            return (self.dir / CERT_FILE).stat().st_mtime_ns
        except OSError:
            return 0

    def load(self) -> NodeCredentials | None:
        """The stored credentials; None when there are none or they are unusable (logged)."""
        if not self.exists():
            return None
        try:
            return NodeCredentials.from_pem(
                (self.dir / KEY_FILE).read_bytes(),
                (self.dir / CERT_FILE).read_bytes(),
                (self.dir / CA_FILE).read_bytes(),
            )
        except (OSError, ValueError) as exc:
            log.error("ignoring the node credentials in %s: %s", self.dir, exc)
            return None

    def save(self, creds: NodeCredentials) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.dir, 0o700)
        key_path = self.dir / KEY_FILE
        if not key_path.exists() or key_path.read_bytes() != creds.key_pem:
            self._write(KEY_FILE, creds.key_pem)
        self._write(CA_FILE, creds.ca_pem)
        self._write(CERT_FILE, creds.chain_pem)  # last: its change is what readers look for

    def _write(self, name: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.dir / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class CredentialSource:
    """The credentials a worker uses now: from memory, reloaded when the file changes."""

    def __init__(self, store: CredentialStore | None, initial: NodeCredentials | None = None) -> None:
        self.store = store
        self._creds = initial
        self._stamp = store.stamp() if store is not None and initial is not None else -1
        self._lock = threading.Lock()

    def current(self) -> NodeCredentials | None:
        with self._lock:
            if self.store is not None:
                stamp = self.store.stamp()
                if stamp != self._stamp:
                    loaded = self.store.load()
                    self._stamp = stamp
                    if loaded is not None and (self._creds is None or loaded.not_after >= self._creds.not_after):
                        self._creds = loaded
            return self._creds

    def update(self, creds: NodeCredentials) -> None:
        with self._lock:
            self._creds = creds
            if self.store is not None:
                self.store.save(creds)
                self._stamp = self.store.stamp()


# -- talking to the control plane ------------------------------------------------------------


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """DER certificates the server presented (Python 3.13 has this public; 3.10-3.12 privately)."""
    getter = getattr(tls, "get_unverified_chain", None) or getattr(tls._sslobj, "get_unverified_chain", None)  # type: ignore[attr-defined]
    if getter is None:
        leaf = tls.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    out = []
    for cert in getter() or []:
        out.append(cert if isinstance(cert, bytes) else cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    return out


def fetch_ca(address: str, pin: str, timeout: float = CALL_TIMEOUT) -> bytes:
    """The PEM of the CA certificate the control plane at `address` presents whose key has `pin`.

    Raises EnrolmentError: fatal when it presents no such CA (CA pin mismatch)."""
    host, port = split_host_port(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only reading what it presents; the pin decides
    ctx.set_alpn_protocols(["h2"])
    key_pem, cert_pem = enrolment_client_pem()
    with tempfile.TemporaryDirectory(prefix="flux-enrol-") as tmp:  # ssl loads a client certificate from files
        key_file, cert_file = pathlib.Path(tmp, "k"), pathlib.Path(tmp, "c")
        key_file.write_bytes(key_pem)
        cert_file.write_bytes(cert_pem)
        ctx.load_cert_chain(cert_file, key_file)
    try:
        with (
            socket.create_connection((host.strip("[]"), port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
        ):
            chain = _unverified_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        raise EnrolmentError(f"cannot reach the control plane at {address}: {exc}", fatal=False) from None
    seen = []
    for der in chain:
        cert = x509.load_der_x509_certificate(der)
        if spki_pin(cert) == pin:
            return cert.public_bytes(serialization.Encoding.PEM)
        seen.append(pin_hex(spki_pin(cert)))
    raise EnrolmentError(
        f"CA pin mismatch: the control plane at {address} presents no CA with the key the join token pins "
        f"({pin_hex(pin)}; it presents {', '.join(seen) or 'nothing'}): not trusting it",
        fatal=True,
    )


def _new_csr(key: ec.EllipticCurvePrivateKey, node_id: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _rpc_error(what: str, address: str, exc: grpc.RpcError) -> EnrolmentError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return EnrolmentError(f"{what} at {address}: {code.name}: {details}", fatal=code in _FATAL_CODES)


def _accept(answer: enrolment_pb2.EnrollResponse | enrolment_pb2.RenewCertificateResponse, key_pem: bytes,
            node_id: str, group: str, pin: str) -> NodeCredentials:  # fmt: skip
    try:
        creds = NodeCredentials.from_pem(key_pem, answer.certificate_chain_pem.encode(), answer.ca_pem.encode())
    except ValueError as exc:
        raise EnrolmentError(f"the control plane's answer is unusable: {exc}", fatal=True) from None
    if creds.ca_pin != pin:
        raise EnrolmentError("the control plane answered with another CA than the pinned one", fatal=True)
    if (creds.node_id, creds.group) != (node_id, group):
        raise EnrolmentError(
            f"the certificate is for node {creds.node_id} of group {creds.group}, not {node_id} of {group}", fatal=True
        )
    return creds


def enroll_once(address: str, token: JoinToken, node_id: str, group: str) -> NodeCredentials:
    """One enrolment attempt at one control plane (blocking)."""
    ca_pem = fetch_ca(address, token.pin)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    enrol_key, enrol_cert = enrolment_client_pem()
    creds = grpc.ssl_channel_credentials(ca_pem, enrol_key, enrol_cert)
    request = enrolment_pb2.EnrollRequest(
        token_id=token.token_id,
        token_secret=token.secret,
        node=discovery_pb2.Node(id=node_id, group=group, hostname=socket.gethostname()),
        csr_pem=_new_csr(key, node_id),
    )
    with grpc.secure_channel(address, creds, options=channel_options()) as channel:
        try:
            answer = enrolment_pb2_grpc.EnrolmentServiceStub(channel).Enroll(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            raise _rpc_error("enrolment refused", address, exc) from None
    return _accept(answer, key_pem, node_id, group, token.pin)


def enroll(addresses: list[str], token: JoinToken, node_id: str, group: str) -> NodeCredentials:
    """Enrol at the first control plane that answers; the last error when none does. A refusal
    (bad token, CA pin mismatch) is final at once."""
    last: EnrolmentError | None = None
    for address in addresses:
        try:
            return enroll_once(address, token, node_id, group)
        except EnrolmentError as exc:
            if exc.fatal:
                raise
            last = exc
    assert last is not None
    raise last


def enroll_until_done(
    addresses: list[str], token: JoinToken, node_id: str, group: str, store: CredentialStore,
    stop: threading.Event | None = None,
) -> NodeCredentials | None:  # fmt: skip
    """Enrol, retrying unreachable control planes with back-off; save and return the credentials.
    Raises EnrolmentError on a refusal; None if `stop` is set first."""
    delay = 0.5
    while True:
        try:
            creds = enroll(addresses, token, node_id, group)
        except EnrolmentError as exc:
            if exc.fatal:
                raise
            log.warning("node %s: enrolment not done yet (%s); retrying in %.0fs", node_id, exc, delay)
            if (stop or threading.Event()).wait(delay):
                return None
            delay = min(10.0, delay * 2)
            continue
        store.save(creds)
        log.info("enrolled: %s; credentials in %s", creds.describe(), store.dir)
        return creds


def renew(address: str, creds: NodeCredentials) -> NodeCredentials:
    """A new certificate for the same key, over mutual TLS with the current one (blocking)."""
    key = serialization.load_pem_private_key(creds.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    request = enrolment_pb2.RenewCertificateRequest(csr_pem=_new_csr(key, creds.node_id))
    with grpc.secure_channel(address, creds.channel_credentials(), options=channel_options()) as channel:
        try:
            answer = enrolment_pb2_grpc.EnrolmentServiceStub(channel).RenewCertificate(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            raise _rpc_error("certificate renewal refused", address, exc) from None
    return _accept(answer, creds.key_pem, creds.node_id, creds.group, creds.ca_pin)


# -- renewal in a worker ---------------------------------------------------------------------


class Renewer:
    """Renews the certificate at two thirds of its lifetime (with jitter) and has the config
    stream reopened on the new one (`reconnect`)."""

    def __init__(
        self, source: CredentialSource, addresses: Callable[[], list[str]], reconnect: Callable[[str], None]
    ) -> None:
        self.source = source
        self.addresses = addresses
        self.reconnect = reconnect  # called with the serial now in use
        self.renewed = 0
        self.failures = 0
        self._limiter = trio.CapacityLimiter(1)

    async def run(self) -> None:
        jitter = random.random()
        attempt = 0
        while True:
            creds = self.source.current()
            if creds is None:
                await trio.sleep(5.0)
                continue
            self.reconnect(creds.serial)  # a certificate another worker renewed is used at once
            lifetime = (creds.not_after - creds.issued_at).total_seconds()
            due = creds.renew_at() + dt.timedelta(seconds=jitter * min(60.0, lifetime * 0.05))
            wait = (due - _now()).total_seconds()
            if wait > 0:
                await trio.sleep(min(wait, 30.0))
                continue
            if creds.expired():
                log.error(
                    "node %s: the certificate expired at %s before it could be renewed: enrol again "
                    "(flux-node --join-token with a new token)",
                    creds.node_id, creds.not_after.isoformat(timespec="seconds"),
                )  # fmt: skip
                await trio.sleep(60.0)
                continue
            addresses = self.addresses()
            address = addresses[attempt % len(addresses)]
            try:
                fresh = await trio.to_thread.run_sync(renew, address, creds, limiter=self._limiter,
                                                      abandon_on_cancel=True)  # fmt: skip
            except EnrolmentError as exc:
                self.failures += 1
                attempt += 1
                log.log(logging.ERROR if exc.fatal else logging.WARNING, "node %s: %s", creds.node_id, exc)
                await trio.sleep(max(1.0, min(30.0, (creds.not_after - _now()).total_seconds() / 10)))
                continue
            self.source.update(fresh)
            self.renewed += 1
            jitter = random.random()
            log.info("renewed the node certificate: %s", fresh.describe())
