"""Local health checks of a proxy's service (frp's healthCheck): withdraw it while it fails.

`tcp`: connect to localIP:localPort. `http`: GET `path` there (httpx), any 2xx is healthy (frp's
rule, `fluxcommon.health.HTTP_2XX`; the node and the control plane accept 200-399). After
`maxFailed` failures in a row the agent closes the proxy on the node (a load-balancing group
then sends everything to the other agents); the first success registers it again: the
shared verdict (`fluxcommon.health.Verdict`) with thresholds 1 up and `maxFailed` down.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from fluxcommon import httpfetch
from fluxcommon.health import HTTP_2XX, State, StatusRule, Verdict

if TYPE_CHECKING:
    from tunnelclient.agent import Agent, ProxyState

log = logging.getLogger("flux.tunnel.health")


async def probe(
    kind: str,
    host: str,
    port: int,
    path: str,
    limit: float,
    headers: tuple[tuple[str, str], ...] = (),
    rule: StatusRule = HTTP_2XX,
) -> str | None:
    """None when healthy, else what failed. `http`: a GET with httpx (`fluxcommon.httpfetch`)."""
    if kind == "http":
        return await _probe_http(host, port, path, limit, headers, rule)
    try:
        with trio.fail_after(limit):
            stream = await trio.open_tcp_stream(host, port)
            await stream.aclose()
    except trio.TooSlowError:
        return f"no answer within {limit:g}s"
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


async def _probe_http(
    host: str, port: int, path: str, limit: float, headers: tuple[tuple[str, str], ...], rule: StatusRule
) -> str | None:
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with httpfetch.client(max_connections=1, keepalive=False) as http:
            status = await httpfetch.status_of(
                http,
                httpfetch.url_for("http", host, port, path or "/"),
                headers=[("Host", netloc), *headers],
                time_limit=limit,
            )
    except httpfetch.FetchError as exc:
        return str(exc)
    return None if rule.accepts(status) else f"HTTP {status}"


class HealthChecker:
    def __init__(self, agent: Agent, state: ProxyState) -> None:
        self.agent = agent
        self.state = state

    async def run(self) -> None:
        state = self.state
        assert state.config is not None and state.config.health_check is not None
        start: State = "healthy" if state.healthy else "unhealthy"
        verdict = Verdict(1, max(1, state.config.health_check.max_failed), start)
        while state.config is not None and state.config.health_check is not None:
            hc = state.config.health_check
            if self.agent.proxies.get(state.wire_name) is not state:
                return  # removed or replaced by a reload
            if verdict.unhealthy_threshold != max(1, hc.max_failed):
                verdict.retune(1, max(1, hc.max_failed))
            error = await probe(
                hc.type, state.local_ip, state.local_port, hc.path, float(hc.timeout_seconds), hc.http_headers
            )
            verdict.observe(error is None)
            if error is None:
                self.agent.set_healthy(state, True, "")
            else:
                log.debug("proxy %r health check failed (%d): %s", state.wire_name, verdict.consecutive_fail, error)
                if verdict.state == "unhealthy":
                    self.agent.set_healthy(state, False, error)
            await trio.sleep(hc.interval_seconds)
