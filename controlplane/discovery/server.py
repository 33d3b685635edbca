"""gRPC servicer of `flux.v1.DiscoveryService` (grpc.aio).

One stream per node. The writer side sends the group's snapshot whenever the
cache holds a version newer than the last one sent, but keeps at most one
response unanswered: while a node has not ACKed or NACKed, newer versions wait
and only the newest is sent after the answer. Together with the watcher's
coalescing this bounds the pushes per node by its round trips, whatever the
write rate. A NACKed version is not sent again; the next version is.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator

import grpc

from controlplane.discovery.cache import SnapshotCache
from controlplane.discovery.nodes import NodeRegistry, NodeState
from controlplane.snapshot import SNAPSHOT_TYPE_URL
from controlplane.tunnel_sessions import TunnelSessions
from flux.v1 import discovery_pb2, discovery_pb2_grpc

log = logging.getLogger("flux.discovery")

ACK_TIMEOUT = 10.0  # a node silent this long after a push is sent newer versions anyway


class _Stream:
    """Per-stream state shared by the reader task and the writer loop."""

    def __init__(self, state: NodeState, held_version: str) -> None:
        self.state = state
        self.wake = asyncio.Event()
        self.held_version = held_version  # what the node says it runs
        self.sent_seq = -1  # the cache's sequence number for the group when we last sent (or skipped)
        self.sent_version = ""
        self.outstanding: str | None = None  # nonce awaiting ACK/NACK
        self.outstanding_since = 0.0
        self.closed = False


class DiscoveryServicer(discovery_pb2_grpc.DiscoveryServiceServicer):
    def __init__(
        self, cache: SnapshotCache, nodes: NodeRegistry, control_plane_id: str, tunnels: TunnelSessions | None = None
    ) -> None:
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
        group = node.group or "default"
        state = self.nodes.connect(
            node.id,
            group,
            address=context.peer() or "",
            hostname=node.hostname,
            build_version=node.build_version,
        )
        if first.version_info:
            self.nodes.ack(state, first.version_info)  # it resumes on what it already runs
        stream = _Stream(state, first.version_info)
        self.cache.subscribe(stream.wake)
        self.active_streams += 1
        reader = asyncio.create_task(self._read(stream, request_iterator))
        try:
            await self._write(stream, context, group)
        finally:
            stream.closed = True
            reader.cancel()
            self.cache.unsubscribe(stream.wake)
            self.active_streams -= 1
            self.nodes.disconnect(state)

    async def _read(self, stream: _Stream, requests: AsyncIterator[discovery_pb2.StreamConfigRequest]) -> None:
        try:
            async for req in requests:
                if stream.outstanding is None or req.response_nonce != stream.outstanding:
                    continue  # stale or unsolicited: Envoy's rule, ignore
                if req.HasField("error_detail") and req.error_detail.message:
                    self.nodes.nack(stream.state, stream.sent_version, req.error_detail.message)
                else:
                    self.nodes.ack(stream.state, req.version_info)
                    stream.held_version = req.version_info
                stream.outstanding = None
                stream.wake.set()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            stream.closed = True
            stream.wake.set()

    async def _write(self, stream: _Stream, context: grpc.aio.ServicerContext, group: str) -> None:
        cache = self.cache
        while not stream.closed:
            stream.wake.clear()
            waiting_ack = stream.outstanding is not None and (time.monotonic() - stream.outstanding_since < ACK_TIMEOUT)
            seq = cache.group_seq(group) if cache.ready else -1
            if seq > stream.sent_seq and not waiting_ack:
                if cache.group_version(group) == stream.held_version:
                    stream.sent_seq = seq  # the node runs this version already (a resumed stream)
                    continue
                seq, version, packed = await cache.snapshot(group)
                nonce = secrets.token_hex(8)
                stream.outstanding, stream.outstanding_since = nonce, time.monotonic()
                stream.sent_seq = seq
                stream.sent_version = version
                await context.write(
                    discovery_pb2.StreamConfigResponse(
                        version_info=version,
                        resources=[packed],
                        type_url=SNAPSHOT_TYPE_URL,
                        nonce=nonce,
                        control_plane_id=self.control_plane_id,
                    )
                )
                self.pushes += 1
                self.nodes.sent(stream.state, version)
                continue
            try:
                await asyncio.wait_for(stream.wake.wait(), timeout=ACK_TIMEOUT if waiting_ack else None)
            except TimeoutError:
                pass
