"""gRPC servicer of `flux.v1.DiscoveryService` (grpc.aio).

One stream per node. The writer side sends the group's snapshot whenever the
cache holds a version newer than the last one sent, but keeps at most one
response unanswered: while a node has not ACKed or NACKed, newer versions wait
and only the newest is sent after the answer. Together with the watcher's
coalescing this bounds the pushes per node by its round trips, whatever the
write rate. A NACKed version is not sent again; the next version is. While a rollout
runs, the cache may pin a node to the version before (controlplane.discovery.hold); load
reports on the stream (requests with no nonce) go to the node registry.

Every call is authenticated first (controlplane.discovery.authn): nothing is sent to a
peer without a node certificate of this control plane's CA, or to one claiming another
node's id. A stream serves the group of the node's certificate, whatever the node asks
for, and is cut when its certificate expires or is revoked (`watch_revocations` asks the
database every second, so a `DELETE /api/v1/nodes/{id}` on any control plane of the
database cuts it).

With `tracing` (controlplane.tracing), the first push of each config version on a stream is a
span (ended by the node's ACK or NACK) whose trace context rides on the response: the node's
apply joins the trace of the write.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc

from controlplane.discovery.authn import NodeAuthenticator, PeerNode, Refused
from controlplane.discovery.cache import SnapshotCache
from controlplane.discovery.nodes import NodeRegistry, NodeState
from controlplane.rollouts.load import load_from_proto
from controlplane.snapshot import SNAPSHOT_TYPE_URL
from controlplane.tracing import ConfigTracing
from controlplane.tunnel_sessions import TunnelSessions
from flux.v1 import discovery_pb2, discovery_pb2_grpc
from fluxcommon.tracing.tracer import Span

log = logging.getLogger("flux.discovery")

ACK_TIMEOUT = 10.0  # a node silent this long after a push is sent newer versions anyway
REVOCATION_POLL = 1.0  # seconds between the database checks of the streams' certificates
MAX_RESOURCE_ERRORS = 64  # resources a node may report as set aside in one ACK


class _Stream:
    """Per-stream state shared by the reader task and the writer loop."""

    def __init__(self, state: NodeState, held_version: str, peer: PeerNode) -> None:
        self.state = state
        self.peer = peer
        self.cut: tuple[grpc.StatusCode, str] | None = None  # why the control plane ends it
        self.wake = asyncio.Event()
        self.held_version = held_version  # what the node says it runs
        self.sent_seq = -1  # the cache's sequence number for the group when we last sent (or skipped)
        self.sent_version = ""
        self.outstanding: str | None = None  # nonce awaiting ACK/NACK
        self.outstanding_since = 0.0
        self.closed = False
        self.push_span: Span | None = None  # the traced push awaiting ACK/NACK

    def end_push(self, outcome: str, error: str = "") -> None:
        span, self.push_span = self.push_span, None
        if span is not None:
            span.set("flux.config.outcome", outcome)
            if error:
                span.error(error)
            span.end()


class DiscoveryServicer(discovery_pb2_grpc.DiscoveryServiceServicer):
    def __init__(
        self,
        cache: SnapshotCache,
        nodes: NodeRegistry,
        control_plane_id: str,
        tunnels: TunnelSessions | None = None,
        *,
        auth: NodeAuthenticator,
        tracing: ConfigTracing | None = None,
    ) -> None:
        self.auth = auth
        self.tracing = tracing
        self.live: dict[str, set[_Stream]] = {}  # certificate serial -> its open streams
        self.tunnels = tunnels or TunnelSessions()
        self.cache = cache
        self.nodes = nodes
        self.control_plane_id = control_plane_id
        self.pushes = 0
        self.active_streams = 0

    async def ReportTunnels(
        self, request: discovery_pb2.ReportTunnelsRequest, context: grpc.aio.ServicerContext
    ) -> discovery_pb2.ReportTunnelsResponse:
        if not request.node.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node.id is required")
        try:
            peer = await self.auth.authenticate(context, request.node.id, "tunnel report")
        except Refused as exc:
            await context.abort(exc.code, exc.reason)
        request.node.group = peer.group
        self.tunnels.report(request)
        return discovery_pb2.ReportTunnelsResponse()

    async def StreamConfig(
        self,
        request_iterator: AsyncIterator[discovery_pb2.StreamConfigRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        node = first.node
        if not node.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node.id is required")
        if first.type_url and first.type_url != SNAPSHOT_TYPE_URL:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unsupported type_url {first.type_url!r}; this control plane serves {SNAPSHOT_TYPE_URL}",
            )
        try:
            peer = await self.auth.authenticate(context, node.id, "config stream")
        except Refused as exc:
            await context.abort(exc.code, exc.reason)
        group = peer.group
        if node.group and node.group != group:
            log.warning("node %s asked for group %r; serving its certificate's group %r", node.id, node.group, group)
        state = self.nodes.connect(
            node.id,
            group,
            address=context.peer() or "",
            hostname=node.hostname,
            build_version=node.build_version,
        )
        if first.version_info:
            self.nodes.ack(state, first.version_info)  # it resumes on what it already runs
        stream = _Stream(state, first.version_info, peer)
        self.cache.subscribe(stream.wake)
        self.live.setdefault(peer.serial, set()).add(stream)
        self.active_streams += 1
        reader = asyncio.create_task(self._read(stream, request_iterator))
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, (peer.not_after - datetime.now(UTC)).total_seconds()),
            self._cut, stream, grpc.StatusCode.UNAUTHENTICATED, "the node certificate expired",
        )  # fmt: skip
        try:
            await self._write(stream, context, group)
        finally:
            stream.closed = True
            stream.end_push("stream closed", "the config stream closed before the node answered")
            expiry.cancel()
            reader.cancel()
            self.cache.unsubscribe(stream.wake)
            streams = self.live.get(peer.serial)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self.live[peer.serial]
            self.active_streams -= 1
            self.nodes.disconnect(state)
        if stream.cut is not None:
            log.warning("config stream of node %s cut: %s", node.id, stream.cut[1])
            await context.abort(*stream.cut)

    # -- cutting streams -------------------------------------------------------------------

    def _cut(self, stream: _Stream, code: grpc.StatusCode, reason: str) -> None:
        if stream.cut is None:
            stream.cut = (code, reason)
        stream.closed = True
        stream.wake.set()

    def cut_serials(self, serials: set[str], reason: str) -> set[str]:
        """End the streams of these certificates (PERMISSION_DENIED); the node ids they were of."""
        nodes: set[str] = set()
        for serial in serials:
            for stream in list(self.live.get(serial, ())):
                self._cut(stream, grpc.StatusCode.PERMISSION_DENIED, reason)
                nodes.add(stream.peer.node_id)
        return nodes

    def revoke_node(self, node_id: str) -> int:
        """A revoked node: end its streams (and its workers') served here, forget its status; how many."""
        serials = {s for s, streams in self.live.items() if any(x.peer.node_id == node_id for x in streams)}
        cut = sum(len(self.live.get(s, ())) for s in serials)
        self.cut_serials(serials, "the node certificate was revoked")
        self.nodes.forget(node_id)
        return cut

    async def watch_revocations(self, interval: float = REVOCATION_POLL) -> None:
        """Cut the streams whose certificates got revoked (by any control plane of the database)."""
        while True:
            await asyncio.sleep(interval)
            serials = list(self.live)
            if not serials:
                continue
            try:
                revoked = await asyncio.to_thread(self.auth.trust.revoked_among, serials)
            except Exception:
                log.exception("could not check the streams' certificates for revocation; will retry")
                continue
            if revoked:
                for node_id in self.cut_serials(revoked, "the node certificate was revoked"):
                    # A node enrolled again is revoked in its earlier certificates only: keep its
                    # status while a stream of its new one is open here.
                    if not any(x.peer.node_id == node_id and x.cut is None for xs in self.live.values() for x in xs):
                        self.nodes.forget(node_id)

    async def _read(self, stream: _Stream, requests: AsyncIterator[discovery_pb2.StreamConfigRequest]) -> None:
        try:
            async for req in requests:
                if req.HasField("load_report"):  # the node's request counters (config canaries)
                    self.nodes.report_load(stream.state, load_from_proto(req.load_report))
                    if not req.response_nonce:
                        continue
                if stream.outstanding is None or req.response_nonce != stream.outstanding:
                    continue  # stale or unsolicited: Envoy's rule, ignore
                if req.HasField("error_detail") and req.error_detail.message:
                    self.nodes.nack(stream.state, stream.sent_version, req.error_detail.message)
                    stream.end_push("nack", req.error_detail.message)
                else:
                    failing = [
                        {"kind": e.kind, "name": e.name, "message": e.message[:4000], "kept_previous": e.kept_previous}
                        for e in req.resource_errors[:MAX_RESOURCE_ERRORS]
                    ]
                    self.nodes.ack(stream.state, req.version_info, failing)
                    stream.held_version = req.version_info
                    stream.end_push("ack")
                stream.outstanding = None
                stream.wake.set()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            stream.closed = True
            stream.wake.set()

    def _push_span(self, stream: _Stream, version: str, group: str) -> Span | None:
        """A span for the first push of a config version on this stream (a new registry index
        alone, "42.1037" after "42.1036", is not traced)."""
        if self.tracing is None:
            return None
        if version.partition(".")[0] == stream.sent_version.partition(".")[0]:
            return None
        return self.tracing.push_span(version, stream.state.node_id, group)

    async def _write(self, stream: _Stream, context: grpc.aio.ServicerContext, group: str) -> None:
        cache = self.cache
        while not stream.closed:
            stream.wake.clear()
            waiting_ack = stream.outstanding is not None and (time.monotonic() - stream.outstanding_since < ACK_TIMEOUT)
            seq = cache.group_seq(group) if cache.ready else -1
            if seq > stream.sent_seq and not waiting_ack:
                if cache.node_version(group, stream.state.node_id) == stream.held_version:
                    stream.sent_seq = seq  # the node runs this version already (a resumed stream)
                    continue
                seq, version, packed = await cache.node_snapshot(group, stream.state.node_id)  # a rollout may pin it
                nonce = secrets.token_hex(8)
                stream.end_push("no answer", f"the node did not answer within {ACK_TIMEOUT:g}s")  # if still open
                span = self._push_span(stream, version, group)
                stream.outstanding, stream.outstanding_since = nonce, time.monotonic()
                stream.sent_seq = seq
                stream.sent_version = version
                stream.push_span = span
                await context.write(
                    discovery_pb2.StreamConfigResponse(
                        version_info=version,
                        resources=[packed],
                        type_url=SNAPSHOT_TYPE_URL,
                        nonce=nonce,
                        control_plane_id=self.control_plane_id,
                        traceparent=span.traceparent if span is not None else "",
                        tracestate=span.tracestate if span is not None else "",
                    )
                )
                self.pushes += 1
                self.nodes.sent(stream.state, version)
                continue
            try:
                await asyncio.wait_for(stream.wake.wait(), timeout=ACK_TIMEOUT if waiting_ack else None)
            except TimeoutError:
                pass
