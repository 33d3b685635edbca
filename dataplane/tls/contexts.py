"""TLS contexts of a config version: one per certificate of an https listener, picked by SNI,
and one per cluster that speaks TLS to its endpoints.

What this module owns
---------------------
`ServerTls`: everything an https listener needs to start a handshake. Each certificate gets
its own `ssl.SSLContext` (the chain as given, the listener's versions, ciphers, ALPN and
client-certificate settings, identical on every context of the listener, since OpenSSL keeps
the verification settings of the context a handshake started with). The SNI callback picks
the context by the name the client sent: an exact name before the longest matching wildcard
(`*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`); no SNI, or
no match: the listener's first certificate. A certificate's names are its `snis`, or else the
DNS names of its subjectAltName (or its CN when it has none).

Session resumption: OpenSSL issues session tickets with a key made when a context is created;
the node builds new contexts (new ticket keys) for every config version and at least every
`TICKET_KEY_LIFETIME` (the worker calls `ServerTls.rotated()`), so a ticket never outlives its
key by long. Tickets are per worker process.

`UpstreamTls`: the client context of a cluster (CA, verification, client certificate, SNI).

A certificate that cannot be loaded, a bad version or cipher string or a client CA that is not
PEM raise `TlsConfigError` naming the certificate or field: the compiler NACKs the version.

What it must not do
-------------------
No sockets; nothing on the request path but the SNI callback, which is a dict lookup.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from flux.v1 import config_pb2 as pb
from fluxcommon.tlsutil import load_chain

log = logging.getLogger("flux.tls")

TICKET_KEY_LIFETIME = 6 * 3600.0  # seconds a context (and its session-ticket key) serves at most
ALPN_HTTP1 = ("http/1.1",)
_VERSIONS = {"": ssl.TLSVersion.TLSv1_2, "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsConfigError(ValueError):
    """TLS settings or a certificate the node cannot use; the message names what."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the node knows of a loaded certificate (for SNI, metrics and the admin port)."""

    name: str
    names: tuple[str, ...]
    not_after: float  # Unix time

    @property
    def expires_in(self) -> float:
        return self.not_after - time.time()


def cert_info(cert: pb.Certificate) -> CertInfo:
    try:
        leaf = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    except ValueError as exc:
        raise TlsConfigError(f"certificate {cert.name!r}: not a PEM certificate ({exc})") from None
    names = [n.lower() for n in cert.snis]
    if not names:
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            names = []
        if not names:
            names = [str(a.value).lower() for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return CertInfo(cert.name, tuple(names), leaf.not_valid_after_utc.timestamp())


def _base_server_context(lst_tls: pb.ListenerTls, alpn: Iterable[str], where: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    version = _VERSIONS.get(lst_tls.min_version)
    if version is None:
        raise TlsConfigError(f"{where}: tls.min_version {lst_tls.min_version!r}: use 1.2 or 1.3")
    ctx.minimum_version = version
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if lst_tls.ciphers:
        try:
            ctx.set_ciphers(lst_tls.ciphers)
        except ssl.SSLError as exc:
            why = getattr(exc, "reason", None) or exc
            raise TlsConfigError(f"{where}: tls.ciphers {lst_tls.ciphers!r}: {why}") from None
    ctx.set_alpn_protocols(list(alpn))
    if lst_tls.client_ca:
        try:
            ctx.load_verify_locations(cadata=lst_tls.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsConfigError(f"{where}: tls.client_ca: not PEM CA certificates ({exc})") from None
        optional = lst_tls.client_auth == pb.CLIENT_AUTH_OPTIONAL
        ctx.verify_mode = ssl.CERT_OPTIONAL if optional else ssl.CERT_REQUIRED
    return ctx


@dataclass(eq=False)
class ServerTls:
    """The TLS side of one https listener: its contexts by server name, and the default."""

    listener: str
    default: ssl.SSLContext
    exact: dict[str, ssl.SSLContext]
    wildcard: dict[str, ssl.SSLContext]  # ".example.com" -> context
    certs: tuple[CertInfo, ...]
    client_auth: str  # "" | "required" | "optional"
    built: float = field(default_factory=time.monotonic)
    _spec: tuple[pb.ListenerTls, tuple[pb.Certificate, ...], tuple[str, ...]] | None = None

    @classmethod
    def build(
        cls, listener: pb.Listener, certificates: dict[str, pb.Certificate], alpn: Iterable[str] = ALPN_HTTP1
    ) -> ServerTls:
        where = f"listener {listener.name!r}"
        if not listener.certificates:
            raise TlsConfigError(f"{where}: an https listener needs at least one certificate")
        chosen: list[pb.Certificate] = []
        for name in listener.certificates:
            cert = certificates.get(name)
            if cert is None:
                raise TlsConfigError(f"{where}: unknown certificate {name!r}")
            chosen.append(cert)
        alpn = tuple(alpn)
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        default: ssl.SSLContext | None = None
        infos = []
        for cert in chosen:
            info = cert_info(cert)
            if info.expires_in < 0:
                log.warning("%s: certificate %r expired on %s (served all the same)", where, cert.name,
                            expiry_text(info))  # fmt: skip
            ctx = _base_server_context(listener.tls, alpn, where)
            try:
                load_chain(ctx, cert.cert_pem, cert.key_pem)
            except (ssl.SSLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise TlsConfigError(f"certificate {cert.name!r}: cannot be loaded ({reason})") from None
            infos.append(info)
            default = default or ctx
            for name in info.names:
                table, key = (wildcard, name[1:]) if name.startswith("*.") else (exact, name)
                table.setdefault(key, ctx)  # the first certificate naming it wins
        assert default is not None
        tls = cls(
            listener=listener.name,
            default=default,
            exact=exact,
            wildcard=wildcard,
            certs=tuple(infos),
            client_auth=(
                ""
                if not listener.tls.client_ca
                else "optional"
                if listener.tls.client_auth == pb.CLIENT_AUTH_OPTIONAL
                else "required"
            ),
        )
        tls._spec = (listener.tls, tuple(chosen), alpn)
        default.sni_callback = tls._pick  # type: ignore[assignment]
        return tls

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        """The context of the certificate serving `server_name` (exact, then wildcard, then default)."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        dot = name.find(".")
        if dot > 0:
            ctx = self.wildcard.get(name[dot:])
            if ctx is not None:
                return ctx
        return self.default

    def _pick(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        ctx = self.context_for(server_name)
        if ctx is not self.default:
            sslobj.context = ctx
        return None

    def rotated(self) -> ServerTls:
        """The same listener with new contexts (new session-ticket keys)."""
        assert self._spec is not None
        lst_tls, certs, alpn = self._spec
        listener = pb.Listener(name=self.listener, tls=lst_tls, certificates=[c.name for c in certs])
        return ServerTls.build(listener, {c.name: c for c in certs}, alpn)

    def wrap(self, sock: object) -> ssl.SSLSocket:
        """A server-side TLS socket over an accepted socket; the handshake is left to the caller."""
        return self.default.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)  # type: ignore[arg-type]


def days_left(info: CertInfo) -> float:
    return info.expires_in / 86400


def expiry_text(info: CertInfo) -> str:
    return datetime.datetime.fromtimestamp(info.not_after, datetime.UTC).isoformat(timespec="seconds")


@dataclass(eq=False)
class UpstreamTls:
    """How a cluster speaks TLS to its endpoints."""

    context: ssl.SSLContext
    sni: str  # "" : the endpoint's address
    key: tuple[str, ...] = ()  # the settings it was built from: equal keys, same TLS

    @classmethod
    def build(cls, cluster: pb.Cluster, certificates: dict[str, pb.Certificate]) -> UpstreamTls:
        where = f"cluster {cluster.name!r}"
        t = cluster.tls
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["h2"] if cluster.protocol == "http2" else list(ALPN_HTTP1))
        verify = t.verify if t.HasField("verify") else True
        if verify:
            ctx.check_hostname = True  # against tls.sni, or the endpoint's address
            ctx.verify_mode = ssl.CERT_REQUIRED
            if t.ca:
                try:
                    ctx.load_verify_locations(cadata=t.ca)
                except (ssl.SSLError, ValueError) as exc:
                    raise TlsConfigError(f"{where}: tls.ca: not PEM CA certificates ({exc})") from None
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if t.certificate:
            cert = certificates.get(t.certificate)
            if cert is None:
                raise TlsConfigError(f"{where}: tls.certificate: unknown certificate {t.certificate!r}")
            try:
                load_chain(ctx, cert.cert_pem, cert.key_pem)
            except (ssl.SSLError, OSError) as exc:
                raise TlsConfigError(f"certificate {cert.name!r}: cannot be loaded ({exc})") from None
        cert_pem = certificates[t.certificate].cert_pem if t.certificate else ""
        return cls(ctx, t.sni, (t.sni, t.ca, str(verify), t.certificate, cert_pem, cluster.protocol))

    def wrap(self, sock: object, address: str) -> ssl.SSLSocket:
        name = self.sni or address
        return self.context.wrap_socket(  # type: ignore[call-arg]
            sock, server_side=False, server_hostname=name, do_handshake_on_connect=False
        )
