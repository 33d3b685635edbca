"""Active health checks and passive-ejection timers (the trio side of health).

One task per (cluster, endpoint) with a health check probes it every
interval (HTTP GET expecting 2xx/3xx or the configured statuses, the shared
`fluxcommon.health.StatusRule`, or a TCP connect) and feeds the result to the sans-IO
state machine in `dataplane.health.state`. Passive results come from the proxy through
`passive()`. A releaser task brings ejected endpoints back when their back-off
ends. Check tasks survive config pushes unless the cluster's check settings or
its endpoint list change.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, ResponseReceived, StreamReset
from h2.exceptions import H2Error

from dataplane import net
from dataplane.balancing import EndpointState
from dataplane.config.runtime import ClusterRuntime, ConfigHolder, RuntimeConfig
from dataplane.health.state import (
    ActiveCheckPolicy,
    next_release,
    record_check,
    record_request,
    release_ejections,
    reset_checks,
)
from dataplane.http.response import ResponseReader, UpstreamProtocolError
from dataplane.tls.contexts import UpstreamTls
from flux.v1 import config_pb2 as pb
from fluxcommon.health import HTTP_2XX_3XX, StatusRule

log = logging.getLogger("flux.health")

SendAll = Callable[[bytes], Awaitable[None]]
Recv = Callable[[], Awaitable[bytes | bytearray]]
# one HTTP exchange of a probe over an open connection: (check, endpoint, send_all, recv, scheme)
ProbeExchange = Callable[[pb.HealthCheck, EndpointState, SendAll, Recv, str], Awaitable[tuple[bool, str]]]


async def probe(
    ep: EndpointState, hc: pb.HealthCheck, tls: UpstreamTls | None = None, *, http2: bool = False
) -> tuple[bool, str]:
    """One check of `ep`: (healthy, what was seen); over TLS when the cluster speaks it, and in
    HTTP/2 (`http2`: a `protocol: http2` cluster, whose endpoints may speak nothing else: h2c,
    or TLS whose ALPN offers only h2) as Envoy checks such clusters.

    Hand-written, not httpx, for two reasons. Over TLS the probe must use the cluster's own
    `ssl.SSLContext` (its CA, client certificate and verification), and that context is shared
    with the proxy's upstream connections on the reactor: httpcore calls `set_alpn_protocols`
    on any context it is given, which would take `h2` away from an http2 cluster's traffic.
    And the probe reads only the status line and headers (`ResponseReader`, the parser the
    proxy uses), connecting to the endpoint's address while naming `hc.host` (or the
    endpoint) in Host. The exchange itself is one function for both, `_http_status` (`_h2_status`
    for an http2 cluster).
    """
    timeout = (hc.timeout_ms or 2000) / 1000
    exchange = _h2_status if http2 else _http_status
    if tls is not None:
        return await _probe_tls(ep, hc, tls, exchange, limit=timeout)
    try:
        with trio.fail_after(timeout):
            sock = await net.connect(ep.address, ep.port, timeout)
            try:
                if hc.type == "tcp":
                    return True, "tcp connect ok"
                return await exchange(hc, ep, partial(net.send_all, sock), partial(net.recv, sock), "http")
            finally:
                net.close(sock)
    except trio.TooSlowError:
        return False, f"timed out after {timeout:g}s"
    except net.ConnectError as exc:
        return False, str(exc.strerror or exc)
    except (OSError, UpstreamProtocolError) as exc:
        return False, f"error: {exc}"


def _judge(hc: pb.HealthCheck, status: int, scheme: str, suffix: str = "") -> tuple[bool, str]:
    """The status against the check's expected ones, else 200-399 (`fluxcommon.health`)."""
    return StatusRule.of(hc.expected_statuses, HTTP_2XX_3XX).accepts(status), f"{scheme} {status}{suffix}"


async def _http_status(
    hc: pb.HealthCheck,
    ep: EndpointState,
    send_all: SendAll,
    recv: Recv,
    scheme: str,
) -> tuple[bool, str]:
    """GET `hc.path` and judge the status (the expected ones, else 200-399: `fluxcommon.health`)."""
    request = (
        f"GET {hc.path or '/'} HTTP/1.1\r\nHost: {hc.host or ep.key}\r\nUser-Agent: flux-health-check\r\n"
        "Connection: close\r\nAccept: */*\r\n\r\n"
    ).encode()
    await send_all(request)
    reader = ResponseReader()
    while reader.head is None:
        data = await recv()
        if not data:
            if reader.eof() and reader.head is not None:
                break
            return False, "connection closed before a response"
        reader.feed(bytes(data))
    return _judge(hc, reader.head.status, scheme)


async def _h2_status(
    hc: pb.HealthCheck,
    ep: EndpointState,
    send_all: SendAll,
    recv: Recv,
    scheme: str,
) -> tuple[bool, str]:
    """`_http_status` in HTTP/2 (the `h2` library, sans-IO): one GET on stream 1, judged by its
    `:status`; the connection is closed with GOAWAY once the answer's headers are in."""
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (b":method", b"GET"),
            (b":scheme", scheme.encode()),
            (b":authority", (hc.host or ep.key).encode()),
            (b":path", (hc.path or "/").encode()),
            (b"user-agent", b"flux-health-check"),
            (b"accept", b"*/*"),
        ],
        end_stream=True,
    )
    await send_all(conn.data_to_send())
    while True:
        data = await recv()
        if not data:
            return False, "connection closed before a response"
        try:
            events = conn.receive_data(bytes(data))
        except H2Error as exc:
            return False, f"HTTP/2 protocol error: {exc}"
        for event in events:
            if isinstance(event, ResponseReceived) and event.stream_id == stream_id:
                status_text = dict(event.headers).get(b":status", b"")
                if not status_text.isdigit():
                    return False, "HTTP/2 response without a valid :status"
                status = int(status_text)
                conn.close_connection()
                with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    await send_all(conn.data_to_send())
                return _judge(hc, status, scheme, " (h2)")
            if isinstance(event, StreamReset) and event.stream_id == stream_id:
                return False, f"HTTP/2 stream reset (error code {event.error_code})"
            if isinstance(event, ConnectionTerminated):
                return False, f"HTTP/2 GOAWAY (error code {event.error_code})"
        pending = conn.data_to_send()
        if pending:  # SETTINGS ACKs, PING answers, window updates
            await send_all(pending)


async def _probe_tls(
    ep: EndpointState, hc: pb.HealthCheck, tls: UpstreamTls, exchange: ProbeExchange, *, limit: float
) -> tuple[bool, str]:
    """The same check over TLS, with the cluster's context (CA, verification, client certificate, SNI)."""
    timeout = limit
    try:
        with trio.fail_after(limit):
            stream = trio.SSLStream(
                await trio.open_tcp_stream(ep.address, ep.port), tls.context, server_hostname=tls.sni or ep.address
            )
            async with stream:
                await stream.do_handshake()
                if hc.type == "tcp":
                    return True, "tls handshake ok"
                return await exchange(hc, ep, stream.send_all, partial(stream.receive_some, 65536), "https")
    except trio.TooSlowError:
        return False, f"timed out after {timeout:g}s"
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        return False, f"tls: {getattr(cause, 'reason', None) or cause or exc}"
    except (OSError, UpstreamProtocolError) as exc:
        return False, f"error: {exc}"


class HealthService:
    def __init__(self, holder: ConfigHolder, on_change: Callable[[], None] | None = None) -> None:
        self.holder = holder
        self._checks: dict[tuple[str, str], tuple[bytes, trio.CancelScope]] = {}
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.on_change = on_change
        self.checks_run = 0

    # -- passive ---------------------------------------------------------------------

    def passive(self, cluster: ClusterRuntime, ep: EndpointState, ok: bool, status: int = 0) -> None:
        """One proxied request's outcome: `ok` False for a gateway failure (no response, or
        502/503/504), `status` the upstream's status (0: none) for `consecutive_5xx`."""
        policy = cluster.outlier
        gateway_run = not ok and ep.consecutive_failures + 1 >= policy.consecutive_failures
        if record_request(ep, ok, trio.current_time(), policy, cluster.endpoints, status):
            streak = (
                f"{policy.consecutive_failures} gateway failures"
                if gateway_run
                else f"{policy.consecutive_5xx} 5xx responses"
            )
            log.warning(
                "endpoint %s of cluster %s ejected for %.0fs after %s in a row",
                ep.key, cluster.name, ep.ejected_until - trio.current_time(), streak,
            )  # fmt: skip
            self._wake.set()

    async def run_releaser(self) -> None:
        while True:
            cfg = self.holder.current
            soonest: float | None = None
            if cfg is not None:
                now = trio.current_time()
                for cluster in cfg.clusters.values():
                    for ep in release_ejections(cluster.endpoints, now):
                        log.info("endpoint %s of cluster %s back in rotation", ep.key, cluster.name)
                    nxt = next_release(cluster.endpoints)
                    if nxt is not None and (soonest is None or nxt < soonest):
                        soonest = nxt
            self._wake = trio.Event()
            with trio.move_on_at(soonest if soonest is not None else trio.current_time() + 3600):
                await self._wake.wait()

    # -- active ----------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self.run_releaser)

    def reconcile(self, cfg: RuntimeConfig) -> None:
        """Start, keep or stop check tasks so they match `cfg`."""
        wanted: dict[tuple[str, str], tuple[bytes, ClusterRuntime, EndpointState]] = {}
        for cluster in cfg.clusters.values():
            hc = cluster.health_check
            if hc is None:
                continue
            fingerprint = (
                hc.SerializeToString(deterministic=True)
                + (b"|tls:" + repr(cluster.tls.key).encode() if cluster.tls is not None else b"")
                + (b"|h2" if cluster.protocol == "http2" else b"")
            )
            for ep in cluster.endpoints:
                if ep.address.startswith("tunnel:"):
                    continue  # agents check their local services themselves and withdraw failing proxies
                wanted[(cluster.name, ep.key)] = (fingerprint, cluster, ep)
        for key, (fingerprint, scope) in list(self._checks.items()):
            if key not in wanted or wanted[key][0] != fingerprint:
                scope.cancel()
                del self._checks[key]
        for key, (fingerprint, cluster, ep) in wanted.items():
            if key in self._checks:
                continue
            if cluster.health_check is None:
                continue
            scope = trio.CancelScope()
            self._checks[key] = (fingerprint, scope)
            assert self._nursery is not None, "start() first"
            self._nursery.start_soon(
                self._check_loop, cluster.name, ep, cluster.health_check, cluster.check_policy, scope, cluster.tls,
                cluster.protocol == "http2",
            )  # fmt: skip
        # endpoints without checks any more are healthy by definition
        checked = set(wanted)
        for cluster in cfg.clusters.values():
            for ep in cluster.endpoints:
                if (cluster.name, ep.key) not in checked and not ep.healthy:
                    reset_checks(ep)

    async def _check_loop(
        self,
        cluster: str,
        ep: EndpointState,
        hc: pb.HealthCheck,
        policy: ActiveCheckPolicy,
        scope: trio.CancelScope,
        tls: UpstreamTls | None = None,
        http2: bool = False,
    ) -> None:
        interval = (hc.interval_ms or 5000) / 1000
        with scope:
            await trio.sleep(random.uniform(0, min(interval, 1.0) * 0.2))  # spread the first probes
            while True:
                ok, detail = await probe(ep, hc, tls, http2=http2)
                self.checks_run += 1
                if record_check(ep, ok, policy, detail):
                    state = "healthy" if ep.healthy else "UNHEALTHY"
                    level = logging.INFO if ep.healthy else logging.WARNING
                    log.log(level, "endpoint %s of cluster %s is %s (%s)", ep.key, cluster, state, detail)
                    if self.on_change is not None:
                        self.on_change()
                await trio.sleep(interval)

    def stop_all(self) -> None:
        for _, scope in self._checks.values():
            scope.cancel()
        self._checks.clear()
