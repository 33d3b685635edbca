"""Reports the node's tunnel sessions to the control plane (`ReportTunnels`) every few seconds.

The control plane shows them on `/api/v1/tunnels/sessions`. grpc runs in a worker thread
(as the config stream's does), so a slow or unreachable control plane never stalls trio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import trio

from dataplane.discovery.credentials import NodeCredentials, channel_options
from dataplane.tunnel.manager import TunnelManager
from flux.v1 import discovery_pb2, discovery_pb2_grpc
from fluxcommon.tunnel.protocol.binding import session_tag

log = logging.getLogger("flux.tunnel.report")

INTERVAL = 2.0
CALL_TIMEOUT = 3.0


def build_report(manager: TunnelManager, node: discovery_pb2.Node) -> discovery_pb2.ReportTunnelsRequest:
    req = discovery_pb2.ReportTunnelsRequest(node=node)
    for server in manager.servers.values():
        for conn in server.agents():
            s = req.sessions.add(
                tunnel=server.name,
                agent=conn.name,
                run_id=session_tag(conn.run_id),  # a short hash: the run id never leaves the node
                version=conn.version,
                address=conn.peer,
                tls=conn.tls,
                connected_since=conn.since,
                bytes_in=conn.link.bytes_in,
                bytes_out=conn.link.bytes_out,
                connections=sum(r.connections for r in conn.refs.values()),
                visitors=sorted(conn.visiting),
            )
            for ref in conn.refs.values():
                o = ref.options
                domains = list(o.custom_domains)
                if o.subdomain and server.registry.subdomain_host:
                    domains.append(f"{o.subdomain}.{server.registry.subdomain_host}")
                s.proxies.add(
                    name=ref.name,
                    type=ref.type,
                    remote_port=ref.remote_port,
                    domains=domains,
                    group=o.group,
                    static=ref.static,
                    connections=ref.connections,
                    total_connections=ref.total_connections,
                    bytes_in=ref.bytes_in,
                    bytes_out=ref.bytes_out,
                )
    return req


class TunnelReporter:
    def __init__(
        self,
        manager: TunnelManager,
        node: discovery_pb2.Node,
        target: Callable[[], str],
        *,
        credentials: Callable[[], NodeCredentials | None] = lambda: None,
    ) -> None:
        self.manager = manager
        self.credentials = credentials  # the node's, as the config stream's (mutual TLS)
        self.node = node
        self.target = target
        self.sent = 0
        self.failed = 0
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self._limiter = trio.CapacityLimiter(1)

    def _send(self, address: str, req: discovery_pb2.ReportTunnelsRequest) -> None:
        creds = self.credentials()
        if creds is None:
            return  # not enrolled: the config stream says so
        key = (address, creds.serial)
        channel = self._channels.get(key)
        if channel is None:
            for old in self._channels.values():
                old.close()
            options = channel_options()
            self._channels = {key: grpc.secure_channel(address, creds.channel_credentials(), options=options)}
            channel = self._channels[key]
        discovery_pb2_grpc.DiscoveryServiceStub(channel).ReportTunnels(req, timeout=CALL_TIMEOUT)

    async def run(self) -> None:
        had_sessions = False
        while True:
            await trio.sleep(INTERVAL)
            if not self.manager.servers and not had_sessions:
                continue
            req = build_report(self.manager, self.node)
            had_sessions = bool(req.sessions)
            try:
                await trio.to_thread.run_sync(self._send, self.target(), req, limiter=self._limiter,
                                              abandon_on_cancel=True)  # fmt: skip
                self.sent += 1
            except grpc.RpcError as exc:
                self.failed += 1
                log.debug("tunnel report to the control plane failed: %s", exc)
