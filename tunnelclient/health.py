"""Local health checks of a proxy's service (frp's healthCheck): withdraw it while it fails.

`tcp`: connect to localIP:localPort. `http`: GET `path` there (httpx), any 2xx is healthy. After
`maxFailed` failures in a row the agent closes the proxy on the node (a load-balancing group
then sends everything to the other agents); the first success registers it again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from fluxcommon import httpfetch

if TYPE_CHECKING:
    from tunnelclient.agent import Agent, ProxyState

log = logging.getLogger("flux.tunnel.health")


async def probe(
    kind: str, host: str, port: int, path: str, limit: float, headers: tuple[tuple[str, str], ...] = ()
) -> str | None:
    """None when healthy, else what failed. `http`: a GET with httpx (`fluxcommon.httpfetch`)."""
    if kind == "http":
        return await _probe_http(host, port, path, limit, headers)
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
    host: str, port: int, path: str, limit: float, headers: tuple[tuple[str, str], ...]
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
    return None if 200 <= status < 300 else f"HTTP {status}"


class HealthChecker:
    def __init__(self, agent: Agent, state: ProxyState) -> None:
        self.agent = agent
        self.state = state

    async def run(self) -> None:
        state = self.state
        assert state.config is not None and state.config.health_check is not None
        failures = 0
        while state.config is not None and state.config.health_check is not None:
            hc = state.config.health_check
            if self.agent.proxies.get(state.wire_name) is not state:
                return  # removed or replaced by a reload
            error = await probe(
                hc.type, state.local_ip, state.local_port, hc.path, float(hc.timeout_seconds), hc.http_headers
            )
            if error is None:
                failures = 0
                self.agent.set_healthy(state, True, "")
            else:
                failures += 1
                log.debug("proxy %r health check failed (%d): %s", state.wire_name, failures, error)
                if failures >= hc.max_failed:
                    self.agent.set_healthy(state, False, error)
            await trio.sleep(hc.interval_seconds)
