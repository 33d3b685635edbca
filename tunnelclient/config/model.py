"""What a read agent config is: `AgentConfig` and its parts, frozen, and `ConfigError`.

Plain values made by `tunnelclient.config.builder`; nothing here reads a file or checks a field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fluxcommon.tunnel.protocol.proxies import (
    NewProxyRequest,
    ProxyOptions,
    ProxyType,
)
from tunnelclient.plugin_config import PluginConfig

PROXY_TYPES: tuple[str, ...] = ("tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp")
PROXY_URL_SCHEMES = ("http", "socks5")
VISITOR_TYPES: tuple[str, ...] = ("stcp", "sudp", "xtcp")
VisitorType = Literal["stcp", "sudp", "xtcp"]
Problem = tuple[str, str]


class ConfigError(ValueError):
    """A configuration that cannot be used; `problems` holds every ``(path, message)`` found."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per problem: ``path: message``; file-level problems (no path) name the source."""
        return [f"{path or self.source}: {msg}" if path or self.source else msg for path, msg in self.problems]


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the node (``transport.tls``); on by default. Paths are absolute."""

    enable: bool = True
    cert_file: str = ""  # client certificate for mutual TLS (with key_file)
    key_file: str = ""
    trusted_ca_file: str = ""  # "" = the system's trust store
    server_name: str = ""  # "" = server_addr
    insecure_skip_verify: bool = False  # ours, not frp's: no certificate check at all


@dataclass(frozen=True)
class AdminConfig:
    """The agent's admin endpoint (``webServer``); present only when a port is set."""

    addr: str = "127.0.0.1"
    port: int = 7400
    user: str = ""
    password: str = ""


@dataclass(frozen=True)
class HealthCheckConfig:
    """A local health check (``healthCheck``): after `max_failed` failures the proxy is withdrawn."""

    type: Literal["tcp", "http"]
    timeout_seconds: int = 3
    max_failed: int = 1
    interval_seconds: int = 10
    path: str = ""  # http: GET this path on localIP:localPort; 2xx = healthy
    http_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ProxyConfig:
    """One ``[[proxies]]`` entry: where the local service is, and what to ask of the node."""

    name: str
    type: ProxyType
    local_port: int  # 0 with a plugin, which serves the connections itself
    local_ip: str = "127.0.0.1"
    options: ProxyOptions = field(default_factory=ProxyOptions)
    plugin: PluginConfig | None = None
    bandwidth_limit: int = 0  # bytes per second each way, 0 = unlimited
    bandwidth_limit_mode: Literal["client", "server"] = "client"
    health_check: HealthCheckConfig | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    def wire_name(self, user: str = "") -> str:
        """The name the node knows this proxy by: ``user.name`` when the agent has a user (as frp)."""
        return f"{user}.{self.name}" if user else self.name

    def request(self, user: str = "") -> NewProxyRequest:
        """The NEW_PROXY request for the node (raises pydantic's ValidationError if it is refused)."""
        return NewProxyRequest(name=self.wire_name(user), proxy_type=self.type, options=self.options)


@dataclass(frozen=True)
class VisitorConfig:
    """One ``[[visitors]]`` entry: a local port that reaches another agent's secret proxy."""

    name: str
    type: VisitorType
    server_name: str
    secret_key: str
    bind_port: int  # < 0: no listener, reached only through another visitor's fallback_to
    server_user: str = ""
    bind_addr: str = "127.0.0.1"
    fallback_to: str = ""  # xtcp: an stcp visitor to use when hole punching fails
    fallback_timeout_ms: int = 1000
    keep_tunnel_open: bool = False
    max_retries_an_hour: int = 8
    min_retry_interval: int = 90
    use_encryption: bool = False
    use_compression: bool = False

    def target(self, user: str = "") -> str:
        """The node-side name of the proxy visited: ``{serverUser or user}.{serverName}``."""
        owner = self.server_user or user
        return f"{owner}.{self.server_name}" if owner else self.server_name


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs, checked. `notes` lists accepted-but-ignored frp settings."""

    server_addr: str = "127.0.0.1"
    server_port: int = 7000
    user: str = ""
    token: str = ""
    login_fail_exit: bool = True  # as frp: a failed first login ends the agent
    tls: TlsConfig = TlsConfig()
    heartbeat_interval: int = 30
    heartbeat_timeout: int = 90
    dial_timeout: int = 10
    connect_local_ip: str = ""  # transport.connectServerLocalIP: the local address to the node
    proxy_url: str = ""  # transport.proxyURL: http://... or socks5://... on the way to the node
    client_id: str = ""
    admin: AdminConfig | None = None
    log_level: str = "info"  # debug | info | warning | error (frp's trace/warn mapped)
    log_to: str = "console"  # or an absolute file path
    metadatas: dict[str, str] = field(default_factory=dict)
    proxies: tuple[ProxyConfig, ...] = ()
    visitors: tuple[VisitorConfig, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    def requests(self) -> tuple[NewProxyRequest, ...]:
        """The NEW_PROXY request of every proxy, names prefixed with `user`."""
        return tuple(p.request(self.user) for p in self.proxies)
