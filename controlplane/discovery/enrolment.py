"""gRPC servicer of `flux.v1.EnrolmentService`: join-token enrolment and certificate renewal.

`Enroll` is the one call a peer with the public enrolment identity may make; its proof is
the join token (checked, and one use taken, by controlplane.store.trust). `RenewCertificate`
needs the node's current certificate and issues one for the same node id and group. Every
refusal is logged with the node id, the peer address and the reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import grpc

from controlplane.discovery.authn import GROUP, NODE_ID, NodeAuthenticator, Refused
from controlplane.pki import CertificateError, NodeCertificate
from controlplane.store.trust import EnrolmentRefused, TrustStore
from flux.v1 import enrolment_pb2, enrolment_pb2_grpc

log = logging.getLogger("flux.trust")

MAX_CSR = 16 << 10


class EnrolmentServicer(enrolment_pb2_grpc.EnrolmentServiceServicer):
    def __init__(self, trust: TrustStore, auth: NodeAuthenticator) -> None:
        self.trust = trust
        self.auth = auth
        self.enrolled = 0
        self.renewed = 0
        self.refused = 0

    def _reply(self, issued: NodeCertificate) -> dict[str, object]:
        return {
            "certificate_chain_pem": issued.chain_pem.decode(),
            "ca_pem": self.trust.ca.root_pem.decode(),
            "node_group": issued.group,
            "not_after": int(issued.not_after.timestamp()),
        }

    async def _refuse(
        self, context: grpc.aio.ServicerContext, what: str, node_id: str, code: grpc.StatusCode, reason: str
    ) -> None:
        self.refused += 1
        log.warning("refused %s of node %s from %s: %s", what, node_id or "(no id)", context.peer(), reason)
        await context.abort(code, reason)

    async def Enroll(
        self, request: enrolment_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> enrolment_pb2.EnrollResponse:
        node_id, group = request.node.id, request.node.group or "default"
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if not NODE_ID.fullmatch(node_id):
            await self._refuse(context, "enrolment", node_id[:200], bad,
                               "node.id must be 1-200 letters, digits, '.', '_', ':', '@' or '-'")  # fmt: skip
        if not GROUP.fullmatch(group):
            await self._refuse(context, "enrolment", node_id, bad, f"node group {group[:70]!r} is no valid name")
        if len(request.csr_pem) > MAX_CSR or not request.token_id or not request.token_secret:
            await self._refuse(context, "enrolment", node_id, bad, "a join token and a CSR are required")
        try:
            issued = await asyncio.to_thread(
                self.trust.enroll,
                request.token_id[:64],
                request.token_secret[:256],
                node_id,
                group,
                request.csr_pem.encode(),
            )
        except EnrolmentRefused as exc:
            await self._refuse(context, "enrolment", node_id, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except CertificateError as exc:
            await self._refuse(context, "enrolment", node_id, bad, str(exc))
        self.enrolled += 1
        log.info(
            "node %s enrolled in group %s from %s (join token %s; certificate %s valid until %s)",
            node_id, group, context.peer(), request.token_id, issued.serial,
            issued.not_after.isoformat(timespec="seconds"),
        )  # fmt: skip
        return enrolment_pb2.EnrollResponse(**self._reply(issued))  # type: ignore[arg-type]

    async def RenewCertificate(
        self, request: enrolment_pb2.RenewCertificateRequest, context: grpc.aio.ServicerContext
    ) -> enrolment_pb2.RenewCertificateResponse:
        try:
            peer = await self.auth.authenticate(context, None, "certificate renewal")
        except Refused as exc:
            await context.abort(exc.code, exc.reason)
        if len(request.csr_pem) > MAX_CSR:
            await self._refuse(context, "certificate renewal", peer.node_id, grpc.StatusCode.INVALID_ARGUMENT,
                               "CSR too large")  # fmt: skip
        try:
            issued = await asyncio.to_thread(
                self.trust.renew, peer.serial, peer.node_id, peer.group, request.csr_pem.encode()
            )
        except EnrolmentRefused as exc:
            await self._refuse(context, "certificate renewal", peer.node_id, grpc.StatusCode.PERMISSION_DENIED,
                               str(exc))  # fmt: skip
        except CertificateError as exc:
            await self._refuse(context, "certificate renewal", peer.node_id, grpc.StatusCode.INVALID_ARGUMENT,
                               str(exc))  # fmt: skip
        self.renewed += 1
        left = issued.not_after - dt.datetime.now(dt.UTC)
        log.info("node %s renewed its certificate (%s, valid for %s)", peer.node_id, issued.serial, left)
        return enrolment_pb2.RenewCertificateResponse(**self._reply(issued))  # type: ignore[arg-type]
