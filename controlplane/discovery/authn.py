"""Who is on the other end of a gRPC call: the node its client certificate names, or nobody.

The gRPC port only completes a TLS handshake with a client certificate of the node CA or
the public enrolment identity (fluxcommon.trust); `NodeAuthenticator.authenticate` then
checks, before anything is sent, that the certificate is the node CA's, names a node, is
not revoked (`node_certificates`) and covers the node id the call claims. Every refusal is
logged with the node id, the peer address and the reason.

`ServerTLS` builds the port's credentials: the server certificate (issued by the node CA at
every start, for `flux-controlplane` and the --grpc host), and as client CAs the node CA's
trust root and the public enrolment root.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import socket
from dataclasses import dataclass

import grpc
from cryptography import x509

from controlplane.pki import CertificateAuthority, CertificateError
from controlplane.store.trust import TrustStore
from fluxcommon.trust import covers, enrolment_root_pem, is_enrolment_identity

log = logging.getLogger("flux.trust")

NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")
GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class PeerNode:
    """A node authenticated by its certificate."""

    node_id: str  # what the certificate names (a worker streams as `<node_id>/wK`)
    group: str
    serial: str
    not_after: dt.datetime
    address: str


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def peer_certificate(context: grpc.aio.ServicerContext) -> x509.Certificate | None:
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        return x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None


class NodeAuthenticator:
    def __init__(self, ca: CertificateAuthority, trust: TrustStore) -> None:
        self.ca = ca
        self.trust = trust
        self.refused = 0

    def _refuse(self, what: str, claimed: str, peer: str, code: grpc.StatusCode, reason: str) -> Refused:
        self.refused += 1
        log.warning("refused %s of node %s from %s: %s", what, claimed or "(no id)", peer, reason)
        return Refused(code, reason)

    async def authenticate(self, context: grpc.aio.ServicerContext, claimed: str | None, what: str) -> PeerNode:
        """The node of this call's certificate; raises Refused (logged). `claimed`: the node id
        the call names (None: take the certificate's)."""
        peer = context.peer() or "?"
        cert = peer_certificate(context)
        shown = claimed or ""
        if cert is None or is_enrolment_identity(cert):
            raise self._refuse(
                what, shown, peer, grpc.StatusCode.UNAUTHENTICATED,
                "no node certificate: enrol first (flux-node --join-token)",
            )  # fmt: skip
        try:
            group, node_id = self.ca.verify_node(cert)
        except CertificateError as exc:
            raise self._refuse(what, shown, peer, grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        shown = claimed or node_id
        serial = format(cert.serial_number, "x")
        if claimed is not None and not covers(node_id, claimed):
            raise self._refuse(
                what, shown, peer, grpc.StatusCode.PERMISSION_DENIED,
                f"node id {claimed!r} differs from its certificate's ({node_id!r})",
            )  # fmt: skip
        state = await asyncio.to_thread(self.trust.certificate_state, serial)
        if state is None:
            reason = f"certificate {serial} of node {node_id!r} was never issued by this database"
            raise self._refuse(what, shown, peer, grpc.StatusCode.PERMISSION_DENIED, reason)
        if state.revoked:
            reason = f"certificate {serial} of node {node_id!r} is revoked"
            raise self._refuse(what, shown, peer, grpc.StatusCode.PERMISSION_DENIED, reason)
        return PeerNode(node_id, group, serial, cert.not_valid_after_utc, peer)


@dataclass(frozen=True)
class ServerTLS:
    key_pem: bytes
    chain_pem: bytes
    client_cas_pem: bytes

    @classmethod
    def issue(cls, ca: CertificateAuthority, grpc_host: str) -> ServerTLS:
        hosts = (
            [grpc_host, socket.gethostname()]
            if grpc_host not in ("", "0.0.0.0", "::", "[::]")
            else [socket.gethostname()]
        )
        key, chain = ca.issue_server(hosts)
        return cls(key, chain, ca.root_pem + enrolment_root_pem())

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.chain_pem)], root_certificates=self.client_cas_pem, require_client_auth=True
        )
