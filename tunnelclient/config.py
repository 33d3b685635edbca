"""The agent's configuration: `flux-tunnel.toml` (frpc.toml field names), YAML or JSON -> `AgentConfig`.

This module reads and checks configuration; it opens no connection and starts nothing. The
runtime (tunnelclient/agent.py) gets one frozen `AgentConfig` and the node gets, per proxy,
the `NewProxyRequest` of `ProxyConfig.request()`, checked here with the node's own rules
(fluxcommon/tunnel/proxies.py) so `flux-tunnel verify` catches what the node would refuse.

Formats and spellings
=====================

* The format comes from the extension (``.toml``, ``.yaml``/``.yml``, ``.json``); without one
  the content decides (``{`` -> JSON, else TOML, else YAML). frp's legacy INI (``frpc.ini``)
  is refused with a hint.
* Field names are frpc.toml's (frp v0.52+): ``serverAddr``, ``auth.token``,
  ``transport.tls.enable``, ``[[proxies]]`` with ``localPort``... Each may also be written in
  snake_case (``server_addr``, ``local_port``, ``transport.tls.trusted_ca_file``), and in
  YAML/JSON a dotted key (``"transport.tls.enable": true``) stands for the nested one.
* ``{{ .Envs.NAME }}`` in the file is replaced by the environment variable NAME, as in frp
  (before parsing, so ``serverPort = {{ .Envs.PORT }}`` works unquoted). An unset variable is
  an error naming it. Only this template form is supported; a literal ``{{`` cannot be written.
* ``includes = ["conf.d/*.toml"]``: glob patterns, relative to the main file's directory, of
  files holding more ``proxies``/``visitors`` (nothing else). Errors in them are named
  ``conf.d/web.toml:proxies[0].localPort``.
* ``start = ["ssh", "web"]`` keeps only the named proxies and visitors; ``enabled = false`` on
  a proxy or visitor drops it (both still checked).

``loginFailExit`` is true by default, as in frp: a first login that fails (wrong token, node
unreachable) ends the agent; set it to false to retry for ever. Defaults that differ from
frp: ``serverAddr`` is 127.0.0.1, ``transport.heartbeatInterval`` is 30 s. Relative file
paths (TLS files, ``log.to``, ``auth.tokenSource.file.path``) are taken from the config
file's directory, not the working directory.

Errors: `ConfigError.problems` lists every problem found as ``(path, message)``, the path in
frp spelling (``proxies[2].transport.bandwidthLimit``); an unknown key gets
``unknown field (did you mean remotePort?)``. frp fields we do not need are accepted and
listed in `AgentConfig.notes` (``transport.poolCount``: the mux makes pooling pointless); frp
features we lack (OIDC, kcp/quic/websocket transports, a virtual network) are errors naming the
field. Client plugins (``[proxies.plugin]``) are checked in tunnelclient/plugin_config.py.

The connection to the node: ``transport.connectServerLocalIP`` is the local address it is made
from; ``transport.proxyURL`` (``http://[user:pass@]host:port`` or ``socks5://...``; as in frp,
the ``http_proxy`` environment variable when unset) is an HTTP CONNECT or SOCKS5 proxy it goes
through. ``type = "tcpmux"`` proxies (``multiplexer = "httpconnect"``) are reached by
``CONNECT name:port`` on the node's tcpmux port; ``routeByHTTPUser`` (http, tcpmux) picks among
proxies of one domain by the client's basic-auth user.

Names on the node: as in frp, with ``user = "alice"`` the proxy ``ssh`` is registered as
``alice.ssh`` (`ProxyConfig.wire_name`), and a visitor's ``serverName`` is looked up as
``{serverUser or user}.{serverName}`` (`VisitorConfig.target`).

Bandwidth: ``transport.bandwidthLimit`` ("10KB", "1.5MB": KB = 1024 bytes per second) is kept
in `ProxyConfig.bandwidth_limit`; with ``bandwidthLimitMode = "server"`` it is also sent to
the node (`ProxyOptions.bandwidth_limit`), with ``"client"`` (frp's default) the agent
enforces it and the node is not asked to.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from fluxcommon import yamlsafe
from fluxcommon.netaddr import check_address
from fluxcommon.tunnel.proxies import (
    DOMAIN_TYPES,
    HTTP_USER_TYPES,
    PUBLIC_PORT_TYPES,
    SECRET_TYPES,
    STREAM_TYPES,
    NewProxyRequest,
    ProxyOptions,
    ProxyType,
)
from tunnelclient.plugin_config import PLUGIN_SCHEMA, PluginConfig, check_plugin

__all__ = [
    "LOG_LEVELS",
    "PROXY_TYPES",
    "VISITOR_TYPES",
    "AdminConfig",
    "AgentConfig",
    "ConfigError",
    "HealthCheckConfig",
    "PluginConfig",
    "ProxyConfig",
    "TlsConfig",
    "VisitorConfig",
    "format_bandwidth",
    "load_config",
    "parse_bandwidth",
    "parse_config",
    "parse_text",
]

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


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class _Ignored:
    """An frp field accepted for compatibility and not used; `notes` says why (unless quiet)."""

    why: str
    quiet_if: object = object()


@dataclass(frozen=True)
class _Refused:
    """An frp feature flux-tunnel lacks: an error naming the field."""

    why: str


@dataclass(frozen=True)
class _Tables:
    """A list of sections ([[proxies]])."""

    item: dict[str, Any]


_STR, _INT, _BOOL, _STRS, _MAP = "string", "int", "bool", "strings", "map"

_TLS_SCHEMA: dict[str, Any] = {
    "enable": _BOOL,
    "certFile": _STR,
    "keyFile": _STR,
    "trustedCaFile": _STR,
    "serverName": _STR,
    "insecureSkipVerify": _BOOL,
    "disableCustomTLSFirstByte": _Ignored("flux-tunnel always speaks plain TLS", quiet_if=True),
}
_HEADER_SCHEMA: dict[str, Any] = {"name": _STR, "value": _STR}
_PROXY_SCHEMA: dict[str, Any] = {
    "name": _STR,
    "type": _STR,
    "enabled": _BOOL,
    "localIP": _STR,
    "localPort": _INT,
    "remotePort": _INT,
    "customDomains": _STRS,
    "subdomain": _STR,
    "locations": _STRS,
    "httpUser": _STR,
    "httpPassword": _STR,
    "hostHeaderRewrite": _STR,
    "requestHeaders": {"set": _MAP},
    "responseHeaders": {"set": _MAP},
    "secretKey": _STR,
    "allowUsers": _STRS,
    "transport": {
        "useEncryption": _BOOL,
        "useCompression": _BOOL,
        "bandwidthLimit": _STR,
        "bandwidthLimitMode": _STR,
        "proxyProtocolVersion": _STR,
    },
    "loadBalancer": {"group": _STR, "groupKey": _STR},
    "healthCheck": {
        "type": _STR,
        "timeoutSeconds": _INT,
        "maxFailed": _INT,
        "intervalSeconds": _INT,
        "path": _STR,
        "httpHeaders": _Tables(_HEADER_SCHEMA),
    },
    "metadatas": _MAP,
    "annotations": _MAP,
    "plugin": PLUGIN_SCHEMA,
    "routeByHTTPUser": _STR,
    "multiplexer": _STR,
    "natTraversal": _Ignored("the node coordinates xtcp hole punching"),
}
_VISITOR_SCHEMA: dict[str, Any] = {
    "name": _STR,
    "type": _STR,
    "enabled": _BOOL,
    "serverName": _STR,
    "serverUser": _STR,
    "secretKey": _STR,
    "bindAddr": _STR,
    "bindPort": _INT,
    "fallbackTo": _STR,
    "fallbackTimeoutMs": _INT,
    "keepTunnelOpen": _BOOL,
    "maxRetriesAnHour": _INT,
    "minRetryInterval": _INT,
    "transport": {"useEncryption": _BOOL, "useCompression": _BOOL},
    "protocol": _Ignored("xtcp peers talk over the punched UDP path with the tunnel's own framing"),
    "natTraversal": _Ignored("the node coordinates xtcp hole punching"),
    "plugin": {"type": _STR, "destinationIP": _STR},
}
_ITEMS_SCHEMA: dict[str, Any] = {"proxies": _Tables(_PROXY_SCHEMA), "visitors": _Tables(_VISITOR_SCHEMA)}
_CLIENT_SCHEMA: dict[str, Any] = {
    "serverAddr": _STR,
    "serverPort": _INT,
    "user": _STR,
    "clientID": _STR,
    "loginFailExit": _BOOL,
    "start": _STRS,
    "includes": _STRS,
    "metadatas": _MAP,
    "auth": {
        "method": _STR,
        "token": _STR,
        "tokenSource": {"type": _STR, "file": {"path": _STR}},
        "additionalScopes": _Ignored("heartbeats and work streams ride the authenticated session"),
        "oidc": _Refused("flux-tunnel authenticates with auth.token only"),
    },
    "log": {
        "level": _STR,
        "to": _STR,
        "maxDays": _Ignored("log files are not rotated by flux-tunnel; use logrotate"),
        "disablePrintColor": _Ignored("logs are never coloured"),
    },
    "webServer": {
        "addr": _STR,
        "port": _INT,
        "user": _STR,
        "password": _STR,
        "assetsDir": _Ignored("the admin endpoint serves an API, no web pages"),
        "pprofEnable": _Ignored("there is no profiler endpoint", quiet_if=False),
        "tls": _Refused("the admin endpoint serves plain HTTP; keep webServer.addr on 127.0.0.1"),
    },
    "transport": {
        "protocol": _STR,
        "dialServerTimeout": _INT,
        "dialServerKeepalive": _Ignored("heartbeats detect dead connections"),
        "connectServerLocalIP": _STR,
        "proxyURL": _STR,
        "wireProtocol": _Ignored("flux-tunnel speaks its own versioned protocol with the node", quiet_if="v1"),
        "poolCount": _Ignored("work streams are multiplexed on the control connection, so nothing is pooled"),
        "tcpMux": _Ignored("work streams are always multiplexed on the control connection", quiet_if=True),
        "tcpMuxKeepaliveInterval": _Ignored("heartbeats (transport.heartbeatInterval) keep the connection alive"),
        "quic": _Ignored("the transport is always TCP"),
        "heartbeatInterval": _INT,
        "heartbeatTimeout": _INT,
        "tls": _TLS_SCHEMA,
    },
    "natHoleStunServer": _Ignored("the node coordinates xtcp hole punching; no STUN server is used"),
    "dnsServer": _Ignored("names are resolved by the system's resolver"),
    "udpPacketSize": _Ignored("UDP datagrams are framed whole, there is no packet size to agree on"),
    "featureGates": _Ignored("flux-tunnel has no feature gates"),
    "virtualNet": {"address": _STR},
    "proxies": _Tables(_PROXY_SCHEMA),
    "visitors": _Tables(_VISITOR_SCHEMA),
}

# Proxy fields that only some types take (frp paths).
_ONLY_FOR: dict[str, frozenset[str]] = {
    "remotePort": PUBLIC_PORT_TYPES,
    "customDomains": DOMAIN_TYPES,
    "subdomain": DOMAIN_TYPES,
    "locations": frozenset({"http"}),
    "httpUser": HTTP_USER_TYPES,
    "httpPassword": HTTP_USER_TYPES,
    "routeByHTTPUser": HTTP_USER_TYPES,
    "multiplexer": frozenset({"tcpmux"}),
    "plugin": STREAM_TYPES,
    "hostHeaderRewrite": frozenset({"http"}),
    "requestHeaders": frozenset({"http"}),
    "responseHeaders": frozenset({"http"}),
    "secretKey": SECRET_TYPES,
    "allowUsers": SECRET_TYPES,
}
# frp path of each ProxyOptions field (bandwidth_limit is handled apart: see the module docstring).
_OPTION_PATHS: dict[str, str] = {
    "remote_port": "remotePort",
    "custom_domains": "customDomains",
    "subdomain": "subdomain",
    "locations": "locations",
    "http_user": "httpUser",
    "http_password": "httpPassword",
    "route_by_http_user": "routeByHTTPUser",
    "host_header_rewrite": "hostHeaderRewrite",
    "request_headers": "requestHeaders.set",
    "response_headers": "responseHeaders.set",
    "secret_key": "secretKey",
    "allow_users": "allowUsers",
    "group": "loadBalancer.group",
    "group_key": "loadBalancer.groupKey",
    "use_encryption": "transport.useEncryption",
    "use_compression": "transport.useCompression",
    "proxy_protocol": "transport.proxyProtocolVersion",
    "metadata": "metadatas",
}
_WIRE_PATHS: dict[str, str] = {
    **_OPTION_PATHS,
    "bandwidth_limit": "transport.bandwidthLimit",
    "name": "name",
    "proxy_type": "type",
}
# frp's log levels (and Python's names) -> Python's.
LOG_LEVELS: dict[str, str] = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
}


def _snake(name: str) -> str:
    """frp's camelCase -> snake_case: localIP -> local_ip, disableCustomTLSFirstByte -> ..._tls_first_byte."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and not path.endswith(":") else f"{path}{key}"


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "null" if value is None else type(value).__name__


_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
_ENV_REF = re.compile(r"\s*\.Envs\.([A-Za-z_][A-Za-z0-9_]*)\s*")


def _render_text(text: str, env: Mapping[str, str]) -> tuple[str, list[tuple[int, str]]]:
    """Replace ``{{ .Envs.NAME }}`` in raw file text; unknown names stay, listed with their line."""
    missing: list[tuple[int, str]] = []

    def sub(m: re.Match[str]) -> str:
        ref = _ENV_REF.fullmatch(m.group(1))
        if ref and ref.group(1) in env:
            return env[ref.group(1)]
        if ref:
            missing.append((text.count("\n", 0, m.start()) + 1, ref.group(1)))
        return m.group(0)

    return _TEMPLATE.sub(sub, text), missing


# --------------------------------------------------------------------------- reading fields


class _Reader:
    """Walks raw data against the schema, collecting problems and notes; one per config load."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self._seen: set[str] = set()

    def problem(self, path: str, message: str) -> None:
        """Record a problem; the first one found for a field wins (no echoes of one mistake)."""
        if path and path in self._seen:
            return
        self._seen.add(path)
        self.problems.append((path, message))

    def has_problem_under(self, prefix: str) -> bool:
        return any(p == prefix or p.startswith((prefix + ".", prefix + "[")) for p, _ in self.problems)

    # -- templating and scalars

    def _text(self, value: str, path: str) -> str | None:
        bad = False

        def sub(m: re.Match[str]) -> str:
            nonlocal bad
            ref = _ENV_REF.fullmatch(m.group(1))
            if ref and ref.group(1) in self.env:
                return self.env[ref.group(1)]
            bad = True
            if ref:
                self.problem(path, f"environment variable {ref.group(1)} is not set ({m.group(0)})")
            else:
                self.problem(path, f"unsupported template {m.group(0)}: only {{{{ .Envs.NAME }}}} is supported")
            return ""

        out = _TEMPLATE.sub(sub, value)
        return None if bad else out

    def scalar(self, kind: str, value: Any, path: str) -> Any:
        """The value checked and converted for `kind`, or None after recording a problem."""
        if isinstance(value, str):
            text = self._text(value, path)
            if text is None:
                return None
            value = text
        if kind == _STR:
            if isinstance(value, str):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):  # YAML: password: 1234
                return str(value)
            self.problem(path, f"expected a string, got {_describe(value)}")
        elif kind == _INT:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
                return int(value)
            self.problem(path, f"expected a whole number, got {_describe(value)}")
        elif kind == _BOOL:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            self.problem(path, f"expected true or false, got {_describe(value)}")
        elif kind == _STRS:
            if not isinstance(value, list):
                self.problem(path, f'expected a list of strings (e.g. ["a", "b"]), got {_describe(value)}')
                return None
            items = [self.scalar(_STR, item, f"{path}[{i}]") for i, item in enumerate(value)]
            return None if any(i is None for i in items) else items
        elif kind == _MAP:
            if not isinstance(value, dict):
                self.problem(path, f"expected a table of string values, got {_describe(value)}")
                return None
            out: dict[str, str] = {}
            for key, item in value.items():
                if isinstance(item, bool):
                    item = "true" if item else "false"
                text = self.scalar(_STR, item, _join(path, str(key)))
                if text is None:
                    return None
                out[str(key)] = text
            return out
        return None

    # -- sections

    def section(self, data: Any, schema: dict[str, Any], path: str) -> dict[str, Any] | None:
        """`data` with canonical (frp) keys, values checked; unknown keys are problems."""
        if not isinstance(data, dict):
            self.problem(path, f"expected a table of fields, got {_describe(data)}")
            return None
        aliases = {name: name for name in schema} | {_snake(name): name for name in schema}
        data = self._expand_dotted(data, schema, aliases)
        out: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for raw_key, value in data.items():
            key = str(raw_key)
            here = _join(path, key)
            canon = aliases.get(key)
            if canon is None:
                self.problem(here, "unknown field" + _suggest(key, schema))
                continue
            if canon in spelled:
                self.problem(_join(path, canon), f"given twice (as {spelled[canon]} and {key})")
                continue
            spelled[canon] = key
            here = _join(path, canon)
            spec = schema[canon]
            if isinstance(spec, _Ignored):
                if value != spec.quiet_if:
                    self.notes.append(f"{here}: ignored: {spec.why}")
            elif isinstance(spec, _Refused):
                kind = f" (plugin type {value['type']!r})" if isinstance(value, dict) and "type" in value else ""
                self.problem(here, f"not supported{kind}: {spec.why}")
            elif isinstance(spec, dict):
                sub = self.section(value, spec, here)
                if sub is not None:
                    out[canon] = sub
            elif isinstance(spec, _Tables):
                items = self.tables(value, spec.item, here, canon)
                if items is not None:
                    out[canon] = items
            else:
                checked = self.scalar(spec, value, here)
                if checked is not None:
                    out[canon] = checked
        return out

    def tables(self, value: Any, schema: dict[str, Any], path: str, name: str) -> list[dict[str, Any] | None] | None:
        if not isinstance(value, list):
            self.problem(path, f"expected a list of tables ([[{name}]] in TOML), got {_describe(value)}")
            return None
        return [self.section(item, schema, f"{path}[{i}]") for i, item in enumerate(value)]

    def _expand_dotted(self, data: dict[Any, Any], schema: dict[str, Any], aliases: dict[str, str]) -> dict[Any, Any]:
        """{"transport.tls.enable": true} -> {"transport": {"tls.enable": true}} (split further below)."""
        if not any(isinstance(k, str) and "." in k and k not in aliases for k in data):
            return data
        out: dict[Any, Any] = {}
        for key, value in data.items():
            head, dot, rest = key.partition(".") if isinstance(key, str) else (key, "", "")
            if dot and key not in aliases and isinstance(schema.get(aliases.get(head, "")), dict):
                target = out.get(head)
                if target is None:
                    target = out[head] = {}
                elif isinstance(target, dict):
                    target = out[head] = dict(target)
                else:
                    out[key] = value  # both a value and a dotted key: reported as unknown below
                    continue
                target[rest] = value
            elif key in out and isinstance(out[key], dict) and isinstance(value, dict):
                out[key] = {**value, **out[key]}
            else:
                out[key] = value
        return out


def _suggest(key: str, schema: dict[str, Any]) -> str:
    names = list(schema)
    if "_" in key:
        names = [_snake(n) for n in names]
    lowered = {n.lower(): n for n in names}
    match = lowered.get(key.lower()) or next(iter(difflib.get_close_matches(key, names, n=1, cutoff=0.6)), None)
    return f" (did you mean {match}?)" if match else ""


def _get(d: dict[str, Any] | None, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


# --------------------------------------------------------------------------- building the result


def parse_bandwidth(text: str) -> int:
    """frp's bandwidth syntax -> bytes per second: "10KB" -> 10240, "1.5MB", "" -> 0 (unlimited)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KkMm][Bb])\s*", text)
    if not text.strip():
        return 0
    if not m:
        raise ValueError(f"{text!r} is not a rate: write it like '10KB' or '1MB' (KB = 1024 bytes per second)")
    return int(float(m.group(1)) * (1024 if m.group(2).upper() == "KB" else 1024 * 1024))


def format_bandwidth(rate: int) -> str:
    """Bytes per second -> frp's syntax, exactly: 10240 -> "10KB", 1048576 -> "1MB", 512 -> "0.5KB"."""
    if rate % (1024 * 1024) == 0:
        return f"{rate // (1024 * 1024)}MB"
    if rate % 1024 == 0:
        return f"{rate // 1024}KB"
    return f"{rate / 1024!r}KB"


class _Builder:
    """Semantic checks and the frozen result, on top of `_Reader`'s canonical dicts."""

    def __init__(self, reader: _Reader, base_dir: Path) -> None:
        self.r = reader
        self.base = base_dir

    def _file(self, value: str, path: str) -> str:
        full = Path(os.path.expanduser(value))
        full = full if full.is_absolute() else self.base / full
        if not full.is_file():
            self.r.problem(path, f"no such file: {full}")
        return str(full)

    def _port(self, value: Any, path: str, *, low: int = 1, what: str = "") -> int | None:
        if value is None:
            self.r.problem(path, f"required ({low}-65535{what})")
            return None
        if not low <= value <= 65535:
            self.r.problem(path, f"{value} is not a port ({low}-65535{what})")
            return None
        return value

    def _positive(self, d: dict[str, Any] | None, key: str, default: int, path: str, minimum: int = 1) -> int:
        value = _get(d, key, default)
        if value < minimum:
            self.r.problem(_join(path, key), f"must be at least {minimum}, got {value}")
        return value

    def _address(self, value: str, path: str) -> str:
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        try:
            return check_address(value)
        except ValueError as exc:
            self.r.problem(path, str(exc))
            return value

    # -- top level

    def agent(self, d: dict[str, Any], items: list[tuple[str, str, dict[str, Any] | None]]) -> AgentConfig:
        r = self.r
        server_addr = self._address(d.get("serverAddr", "127.0.0.1"), "serverAddr")
        server_port = self._port(d.get("serverPort", 7000), "serverPort") or 7000
        user = d.get("user", "")
        token = self._token(d.get("auth", {}))
        tls = self._tls(_get(d, "transport.tls", {}))
        protocol = _get(d, "transport.protocol", "tcp")
        if protocol not in ("", "tcp"):
            r.problem("transport.protocol", f"only tcp is supported, not {protocol!r}")
        heartbeat_interval = _get(d, "transport.heartbeatInterval", 30)
        heartbeat_timeout = _get(d, "transport.heartbeatTimeout", 90)
        if heartbeat_interval <= 0:
            r.problem(
                "transport.heartbeatInterval",
                f"must be at least 1 second, got {heartbeat_interval} (heartbeats cannot be turned off: "
                "they detect connections that died without a word)",
            )
        elif heartbeat_timeout <= heartbeat_interval:
            r.problem(
                "transport.heartbeatTimeout",
                f"must be longer than transport.heartbeatInterval ({heartbeat_interval}), got {heartbeat_timeout}",
            )
        dial_timeout = self._positive(d.get("transport"), "dialServerTimeout", 10, "transport")
        local_ip = _get(d, "transport.connectServerLocalIP", "")
        if local_ip:
            local_ip = self._address(local_ip, "transport.connectServerLocalIP")
        proxy_url = self._proxy_url(_get(d, "transport.proxyURL"))
        if _get(d, "virtualNet.address"):
            r.problem("virtualNet.address", "flux-tunnel has no virtual network (frp's VirtualNet feature)")
        level = d.get("log", {}).get("level", "info")
        if level.lower() not in LOG_LEVELS:
            r.problem("log.level", f"unknown level {level!r} (trace, debug, info, warn, error)")
        log_to = d.get("log", {}).get("to", "console")
        if log_to != "console":
            log_to = str(self.base / os.path.expanduser(log_to))
        proxies, visitors = self._items(items, user)
        start = d.get("start", [])
        names = {name for _, name, _ in self._declared(items)}
        for i, name in enumerate(start):
            if name not in names:
                r.problem(f"start[{i}]", f"no proxy or visitor is named {name!r}")
        if start:
            proxies = [p for p in proxies if p.name in start]
            visitors = [v for v in visitors if v.name in start]
        return AgentConfig(
            server_addr=server_addr,
            server_port=server_port,
            user=user,
            token=token,
            login_fail_exit=d.get("loginFailExit", True),
            tls=tls,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            dial_timeout=dial_timeout,
            connect_local_ip=local_ip,
            proxy_url=proxy_url,
            client_id=d.get("clientID", ""),
            admin=self._admin(d.get("webServer")),
            log_level=LOG_LEVELS.get(level.lower(), "info"),
            log_to=log_to,
            metadatas=d.get("metadatas", {}),
            proxies=tuple(proxies),
            visitors=tuple(visitors),
            notes=tuple(r.notes),
        )

    def _proxy_url(self, given: str | None) -> str:
        """transport.proxyURL, or (as frp) $http_proxy when it is not set; checked, "" for none."""
        path = "transport.proxyURL"
        url = given if given is not None else self.r.env.get("http_proxy", "")
        if not url:
            return ""
        where = path if given is not None else f"{path} (from $http_proxy)"
        parts = urlsplit(url)
        if parts.scheme not in PROXY_URL_SCHEMES:
            why = "ntlm proxies are not supported" if parts.scheme == "ntlm" else f"unknown scheme {parts.scheme!r}"
            self.r.problem(where, f"{why}: write http://[user:password@]host:port or socks5://...")
            return ""
        try:
            if not parts.hostname or not parts.port:
                raise ValueError("needs a host and a port")
        except ValueError as exc:
            self.r.problem(where, f"{url!r}: {exc}")
            return ""
        if given is None:
            self.r.notes.append(
                f"{path}: connecting through {parts.scheme}://{parts.hostname}:{parts.port} ($http_proxy)"
            )
        return url

    def _token(self, auth: dict[str, Any]) -> str:
        method = auth.get("method", "token")
        if method not in ("", "token"):
            self.r.problem("auth.method", f"{method!r} is not supported; flux-tunnel authenticates with a token")
        token = auth.get("token", "")
        source = auth.get("tokenSource")
        if source is not None:
            if "token" in auth:
                self.r.problem("auth.tokenSource", "give auth.token or auth.tokenSource, not both")
            elif source.get("type", "") != "file":
                self.r.problem("auth.tokenSource.type", f"only 'file' is supported, got {source.get('type', '')!r}")
            elif not _get(source, "file.path"):
                self.r.problem("auth.tokenSource.file.path", "required (the file holding the token)")
            else:
                path = self._file(source["file"]["path"], "auth.tokenSource.file.path")
                try:
                    token = Path(path).read_text().strip()
                except OSError as exc:
                    self.r.problem("auth.tokenSource.file.path", f"cannot read {path}: {exc.strerror or exc}")
        if not token:
            self.r.notes.append("auth.token: not set; the node must accept agents without a token")
        return token

    def _tls(self, t: dict[str, Any]) -> TlsConfig:
        enable = t.get("enable", True)
        if not enable:
            extra = sorted(k for k in t if k != "enable")
            if extra:
                self.r.notes.append(f"transport.tls: {', '.join(extra)} ignored because transport.tls.enable is false")
            return TlsConfig(enable=False)
        if bool(t.get("certFile")) != bool(t.get("keyFile")):
            missing = "keyFile" if t.get("certFile") else "certFile"
            self.r.problem(f"transport.tls.{missing}", "certFile and keyFile go together (mutual TLS)")
        files = {k: self._file(t[k], f"transport.tls.{k}") if t.get(k) else "" for k in ("certFile", "keyFile")}
        ca = self._file(t["trustedCaFile"], "transport.tls.trustedCaFile") if t.get("trustedCaFile") else ""
        insecure = t.get("insecureSkipVerify", False)
        if insecure:
            self.r.notes.append("transport.tls.insecureSkipVerify: the node's certificate is NOT checked")
        return TlsConfig(
            enable=True,
            cert_file=files["certFile"],
            key_file=files["keyFile"],
            trusted_ca_file=ca,
            server_name=t.get("serverName", ""),
            insecure_skip_verify=insecure,
        )

    def _admin(self, w: dict[str, Any] | None) -> AdminConfig | None:
        if not w:
            return None
        if not w.get("port"):
            if any(k in w for k in ("addr", "user", "password")):
                self.r.notes.append("webServer: no webServer.port, so the admin endpoint is off")
            return None
        port = self._port(w["port"], "webServer.port") or 0
        addr = self._address(w.get("addr", "127.0.0.1"), "webServer.addr")
        user, password = w.get("user", ""), w.get("password", "")
        if bool(user) != bool(password):
            self.r.problem(
                "webServer.password" if user else "webServer.user", "webServer.user and password go together"
            )
        if not password and addr not in ("127.0.0.1", "::1", "localhost"):
            self.r.notes.append(
                f"webServer: admin endpoint on {addr} without a password: anyone reaching it can use it"
            )
        return AdminConfig(addr=addr, port=port, user=user, password=password)

    # -- proxies and visitors

    @staticmethod
    def _declared(items: list[tuple[str, str, dict[str, Any] | None]]) -> list[tuple[str, str, str]]:
        """(path, name, kind) of every item that has a name (for start[] and duplicate checks)."""
        return [(path, d["name"], kind) for kind, path, d in items if d and d.get("name")]

    def _items(
        self, items: list[tuple[str, str, dict[str, Any] | None]], user: str
    ) -> tuple[list[ProxyConfig], list[VisitorConfig]]:
        first: dict[str, str] = {}
        for path, name, _ in self._declared(items):
            if name in first:
                self.r.problem(f"{path}.name", f"duplicate name {name!r} (also {first[name]}.name)")
            else:
                first[name] = path
        proxies: list[ProxyConfig] = []
        visitors: list[tuple[str, VisitorConfig]] = []
        for kind, path, d in items:
            if d is None:
                continue
            if kind == "proxies":
                proxy = self.proxy(d, path, user)
                if proxy is not None and d.get("enabled", True):
                    proxies.append(proxy)
            else:
                visitor = self.visitor(d, path)
                if visitor is not None and d.get("enabled", True):
                    visitors.append((path, visitor))
            if not d.get("enabled", True):
                self.r.notes.append(f"{path}: disabled (enabled = false)")
        declared = {
            d["name"]: str(d.get("type", "")) for kind, _, d in items if kind == "visitors" and d and "name" in d
        }
        self._visitor_links(visitors, declared, user)
        return proxies, [v for _, v in visitors]

    def proxy(self, d: dict[str, Any], path: str, user: str) -> ProxyConfig | None:
        r = self.r

        def bad(key: str, message: str) -> None:
            r.problem(_join(path, key), message)

        name = d.get("name", "")
        if not name:
            bad("name", "required")
        ptype = d.get("type", "")
        if not ptype:
            bad("type", f"required ({', '.join(PROXY_TYPES)})")
        elif ptype not in PROXY_TYPES:
            bad("type", f"unknown proxy type {ptype!r} ({', '.join(PROXY_TYPES)})")
        known = ptype in PROXY_TYPES
        local_ip = self._address(d.get("localIP", "127.0.0.1"), _join(path, "localIP"))
        plugin = None
        if "plugin" in d and (ptype in STREAM_TYPES or not known):
            plugin = check_plugin(d["plugin"], _join(path, "plugin"), r.problem, self.base)
        if "plugin" in d:  # frp: "if plugin is defined, localIP and localPort is useless"
            local_port: int | None = 0
            if "localPort" in d or "localIP" in d:
                r.notes.append(f"{path}: localIP and localPort are not used: the plugin serves the connections")
        else:
            local_port = self._port(d.get("localPort"), _join(path, "localPort"), what=": the local service's port")
        if ptype == "tcpmux" and d.get("multiplexer", "httpconnect") != "httpconnect":
            bad("multiplexer", f"only 'httpconnect' is supported (as in frp), got {d['multiplexer']!r}")
        if d.get("routeByHTTPUser") and d.get("httpUser") and d["httpUser"] != d["routeByHTTPUser"]:
            bad("httpUser", "must be routeByHTTPUser's user (or empty): that user's requests are the ones chosen")
        if known:
            for key, types in _ONLY_FOR.items():
                if key in d and ptype not in types:
                    bad(key, f"not a field of {ptype} proxies (only {', '.join(t for t in PROXY_TYPES if t in types)})")
        if "remotePort" in d and not 0 <= d["remotePort"] <= 65535:
            bad("remotePort", f"{d['remotePort']} is not a port (0-65535; 0 = the node picks a free one)")
        transport = d.get("transport", {})
        rate = 0
        try:
            rate = parse_bandwidth(transport.get("bandwidthLimit", ""))
        except ValueError as exc:
            bad("transport.bandwidthLimit", str(exc))
        mode = transport.get("bandwidthLimitMode", "client")
        if mode not in ("client", "server"):
            bad("transport.bandwidthLimitMode", f"must be 'client' or 'server', got {mode!r}")
        ppv = transport.get("proxyProtocolVersion", "")
        if ppv not in ("", "v1", "v2"):
            bad("transport.proxyProtocolVersion", f"must be 'v1' or 'v2', got {ppv!r}")
        elif ppv and ptype in ("udp", "sudp"):
            bad("transport.proxyProtocolVersion", f"PROXY protocol is passed on tcp-like proxies only, not {ptype}")
        if ptype in DOMAIN_TYPES and not d.get("customDomains") and not d.get("subdomain"):
            bad(
                "customDomains",
                f"{'a' if ptype == 'tcpmux' else 'an'} {ptype} proxy needs customDomains or a subdomain",
            )
        if ptype in SECRET_TYPES and not d.get("secretKey"):
            bad("secretKey", f"required for {ptype} proxies (visitors present the same key)")
        if ptype in HTTP_USER_TYPES and bool(d.get("httpUser")) != bool(d.get("httpPassword")):
            bad("httpPassword" if d.get("httpUser") else "httpUser", "httpUser and httpPassword go together")
        if _get(d, "loadBalancer.groupKey") and not _get(d, "loadBalancer.group"):
            bad("loadBalancer.groupKey", "set loadBalancer.group too")
        health = self._health(d.get("healthCheck"), _join(path, "healthCheck"))
        options: ProxyOptions | None = None
        wire: dict[str, Any] = {"bandwidth_limit": rate if mode == "server" else 0}
        for wire_name, frp_path in _OPTION_PATHS.items():
            value = _get(d, frp_path)
            top = frp_path.split(".")[0]
            if value is not None and not (known and top in _ONLY_FOR and ptype not in _ONLY_FOR[top]):
                wire[wire_name] = tuple(value) if isinstance(value, list) else value
        try:
            options = ProxyOptions.model_validate(wire)
            if name and known:
                NewProxyRequest(name=f"{user}.{name}" if user else name, proxy_type=ptype, options=options)
        except ValidationError as exc:
            for err in exc.errors():
                where, message = _node_problem(err)
                r.problem(_join(path, where) if where else path, message)
        if r.has_problem_under(path) or options is None or local_port is None:
            return None
        if "plugin" in d and plugin is None:
            return None
        if plugin is not None and plugin.type == "virtual_net":
            r.notes.append(f"{path}.plugin: virtual_net: flux-tunnel has no virtual network (as frp without "
                           "virtualNet.address): the proxy registers and its connections are closed")  # fmt: skip
        return ProxyConfig(
            name=name,
            type=cast(ProxyType, ptype),
            local_ip=local_ip,
            local_port=local_port,
            options=options,
            plugin=plugin,
            bandwidth_limit=rate,
            bandwidth_limit_mode=mode,
            health_check=health,
            annotations=d.get("annotations", {}),
        )

    def _health(self, h: dict[str, Any] | None, path: str) -> HealthCheckConfig | None:
        if not h:
            return None
        htype = h.get("type", "")
        if not htype:
            self.r.notes.append(f"{path}: no healthCheck.type, so no health check runs")
            return None
        if htype not in ("tcp", "http"):
            self.r.problem(_join(path, "type"), f"must be 'tcp' or 'http', got {htype!r}")
            return None
        hpath = h.get("path", "")
        if htype == "http" and not hpath.startswith("/"):
            self.r.problem(_join(path, "path"), "an http health check needs a path starting with '/'")
        if htype == "tcp" and (hpath or h.get("httpHeaders")):
            self.r.problem(_join(path, "path" if hpath else "httpHeaders"), "only for http health checks")
        headers = []
        for i, item in enumerate(h.get("httpHeaders", [])):
            if item is not None and not item.get("name"):
                self.r.problem(f"{path}.httpHeaders[{i}].name", "required")
            elif item is not None:
                headers.append((item["name"], item.get("value", "")))
        return HealthCheckConfig(
            type=htype,
            timeout_seconds=self._positive(h, "timeoutSeconds", 3, path),
            max_failed=self._positive(h, "maxFailed", 1, path),
            interval_seconds=self._positive(h, "intervalSeconds", 10, path),
            path=hpath,
            http_headers=tuple(headers),
        )

    def visitor(self, d: dict[str, Any], path: str) -> VisitorConfig | None:
        r = self.r

        def bad(key: str, message: str) -> None:
            r.problem(_join(path, key), message)

        if not d.get("name"):
            bad("name", "required")
        vtype = d.get("type", "")
        if vtype not in VISITOR_TYPES:
            bad("type", f"must be one of {', '.join(VISITOR_TYPES)}" + (f", got {vtype!r}" if vtype else ""))
        if not d.get("serverName"):
            bad("serverName", "required (the name of the stcp/sudp/xtcp proxy to visit)")
        if not d.get("secretKey"):
            bad("secretKey", "required (the secretKey of the proxy visited)")
        bind_addr = self._address(d.get("bindAddr", "127.0.0.1"), _join(path, "bindAddr"))
        port = d.get("bindPort")
        if port is None or port == 0 or port > 65535:
            got = "required" if port is None else f"{port} is not a port"
            bad("bindPort", f"{got} (1-65535, or -1 for a visitor reached only through another's fallbackTo)")
        elif port < 0 and vtype == "sudp":
            bad("bindPort", "sudp visitors need a port to listen on (1-65535)")
        for key in ("fallbackTo", "fallbackTimeoutMs", "keepTunnelOpen", "maxRetriesAnHour", "minRetryInterval"):
            if key in d and vtype in VISITOR_TYPES and vtype != "xtcp":
                bad(key, f"only for xtcp visitors, not {vtype}")
        plugin = d.get("plugin")
        if plugin is not None:
            if plugin.get("type") != "virtual_net":
                bad("plugin.type", f"the only visitor plugin is virtual_net, got {plugin.get('type', '')!r}")
            else:
                r.notes.append(f"{path}.plugin: virtual_net: flux-tunnel has no virtual network; the visitor is idle")
        fallback_ms = self._positive(d, "fallbackTimeoutMs", 1000, path, minimum=0)
        retries = self._positive(d, "maxRetriesAnHour", 8, path, minimum=0)
        retry_interval = self._positive(d, "minRetryInterval", 90, path, minimum=0)
        if r.has_problem_under(path):
            return None
        return VisitorConfig(
            name=d["name"],
            type=cast(VisitorType, vtype),
            server_name=d["serverName"],
            server_user=d.get("serverUser", ""),
            secret_key=d["secretKey"],
            bind_addr=bind_addr,
            bind_port=d["bindPort"],
            fallback_to=d.get("fallbackTo", ""),
            fallback_timeout_ms=fallback_ms,
            keep_tunnel_open=d.get("keepTunnelOpen", False),
            max_retries_an_hour=retries,
            min_retry_interval=retry_interval,
            use_encryption=_get(d, "transport.useEncryption", False),
            use_compression=_get(d, "transport.useCompression", False),
        )

    def _visitor_links(
        self, visitors: list[tuple[str, VisitorConfig]], declared: dict[str, str], user: str = ""
    ) -> None:
        """Bind ports unique; fallbackTo names an stcp visitor (`declared`: name -> type of every visitor);
        visitors of one proxy share its secretKey (the node accepts an agent's visits per proxy)."""
        ports: dict[int, str] = {}
        keys: dict[str, tuple[str, str]] = {}  # target -> (secret key, path of the first visitor)
        for path, v in visitors:
            key, first = keys.setdefault(v.target(user), (v.secret_key, path))
            if key != v.secret_key:
                self.r.problem(f"{path}.secretKey", f"differs from {first}.secretKey, a visitor of the same proxy")
            if v.bind_port > 0:
                if v.bind_port in ports:
                    self.r.problem(f"{path}.bindPort", f"port {v.bind_port} is already bound by {ports[v.bind_port]}")
                ports.setdefault(v.bind_port, path)
            if v.fallback_to:
                target = declared.get(v.fallback_to)
                if target is None:
                    self.r.problem(f"{path}.fallbackTo", f"no visitor is named {v.fallback_to!r}")
                elif target != "stcp":
                    self.r.problem(f"{path}.fallbackTo", f"{v.fallback_to!r} is not an stcp visitor ({target})")


def frp_wording(message: str) -> str:
    """A node's refusal in the field names of the agent's config (frpc.toml's): the node speaks
    the wire's snake_case ("remote_port: 6500 is not among ..."), users wrote "remotePort"."""
    snake = [k for k in _WIRE_PATHS if "_" in k]
    return re.sub(r"\b(" + "|".join(snake) + r")\b", lambda w: _WIRE_PATHS[w.group(1)], message)


def _node_problem(err: Any) -> tuple[str, str]:
    """A pydantic error from ProxyOptions / NewProxyRequest -> (frp path, message)."""
    loc = [p for p in err["loc"] if p != "options"]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:
        m = re.match(r"(\w+): (.*)", msg, re.S)
        if m and m.group(1) in _WIRE_PATHS:
            loc, msg = [m.group(1)], m.group(2)
    where = ""
    if loc:
        where = _WIRE_PATHS.get(str(loc[0]), str(loc[0]))
        where += "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    m = re.match(r"\[(\d+)\] (.*)", msg, re.S)
    if m:
        where, msg = f"{where}[{m.group(1)}]", m.group(2)
    snake = [k for k in _WIRE_PATHS if "_" in k]
    msg = re.sub(r"\b(" + "|".join(snake) + r")\b", lambda w: _WIRE_PATHS[w.group(1)], msg)
    return where, msg


# --------------------------------------------------------------------------- files


def parse_text(text: str, fmt: str, source: str = "<config>") -> dict[str, Any]:
    """Parse one document of `fmt` ("toml", "yaml", "json" or "" to guess); ConfigError when it is not one."""
    if not fmt:
        if re.search(r"^\s*\[common\]\s*$", text, re.M):
            fmt = "ini"
        elif text.lstrip().startswith("{"):
            fmt = "json"
        else:
            try:
                return parse_text(text, "toml", source)
            except ConfigError as toml_error:
                try:
                    data = yamlsafe.load(text)
                except yaml.YAMLError:
                    raise toml_error from None
                if not isinstance(data, dict):
                    raise toml_error from None
                return data
    if fmt == "ini":
        raise ConfigError(
            [("", "frp's legacy INI format (frpc.ini) is not read: write TOML with frp v0.52+ field names")], source
        )
    try:
        if fmt == "toml":
            data: Any = tomllib.loads(text)
        elif fmt == "yaml":
            data = yamlsafe.load(text)  # no anchors/aliases: no expansion bombs
            data = {} if data is None else data
        else:
            data = json.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError([("", f"not valid {fmt.upper()}: {' '.join(str(exc).split())}")], source) from None
    if not isinstance(data, dict):
        raise ConfigError([("", f"the top level must be a table of fields, not {_describe(data)}")], source)
    return data


def _format_of(path: Path) -> str:
    return {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".ini": "ini"}.get(
        path.suffix.lower(), ""
    )


def _read(path: Path, env: Mapping[str, str], source: str) -> dict[str, Any]:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read: {exc.strerror or exc}")], source) from None
    except UnicodeDecodeError:
        raise ConfigError([("", "cannot read: not UTF-8 text")], source) from None
    text, missing = _render_text(raw, env)
    try:
        return parse_text(text, _format_of(path), source)
    except ConfigError as exc:
        unset = [(f"line {n}", f"environment variable {name} is not set") for n, name in missing]
        raise ConfigError(unset + exc.problems, source) from None


def parse_config(
    data: Mapping[str, Any],
    source: str = "<config>",
    *,
    base_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Check frpc-style `data` and build the `AgentConfig`; ConfigError lists every problem.

    `source` names the file in messages; `base_dir` (default: the directory of `source`, or the
    working directory for ``<...>`` sources) anchors includes and relative file paths; `env`
    (default os.environ) feeds ``{{ .Envs.NAME }}``.
    """
    env = os.environ if env is None else env
    if base_dir is None:
        base_dir = Path.cwd() if source.startswith("<") else Path(source).resolve().parent
    base = Path(base_dir)
    if not isinstance(data, Mapping):
        raise ConfigError([("", f"the top level must be a table of fields, not {_describe(data)}")], source)
    reader = _Reader(env)
    top = reader.section(dict(data), _CLIENT_SCHEMA, "") or {}
    items: list[tuple[str, str, dict[str, Any] | None]] = []
    for kind in ("proxies", "visitors"):
        items += [(kind, f"{kind}[{i}]", d) for i, d in enumerate(top.get(kind, []))]
    items += _includes(top.get("includes", []), base, source, reader)
    config = _Builder(reader, base).agent(top, items)
    if reader.problems:
        raise ConfigError(sorted(reader.problems, key=_problem_order), source)
    return config


def _problem_order(problem: Problem) -> tuple[str, int, int]:
    """Top-level problems first, then proxy by proxy and visitor by visitor, file by file (stable)."""
    m = re.match(r"(?:(.*):)?(proxies|visitors)\[(\d+)\]", problem[0])
    if not m:
        return ("", 0, 0)
    return (m.group(1) or "", 1 if m.group(2) == "proxies" else 2, int(m.group(3)))


def _includes(
    patterns: list[str], base: Path, source: str, reader: _Reader
) -> list[tuple[str, str, dict[str, Any] | None]]:
    items: list[tuple[str, str, dict[str, Any] | None]] = []
    main = Path(source).resolve() if not source.startswith("<") else None
    seen: set[Path] = set()
    for i, pattern in enumerate(patterns):
        full = Path(os.path.expanduser(pattern))
        full = full if full.is_absolute() else base / full
        matches = [Path(m).resolve() for m in sorted(glob.glob(str(full)))]
        matches = [m for m in matches if m.is_file() and m != main and m not in seen]
        if not matches:
            reader.notes.append(f"includes[{i}]: {pattern!r} matches no file")
        for match in matches:
            seen.add(match)
            shown = os.path.relpath(match, base) if match.is_relative_to(base) else str(match)
            try:
                data = _read(match, reader.env, shown)
            except ConfigError as exc:
                for path, msg in exc.problems:
                    reader.problem(f"{shown}:{path}" if path else shown, msg)
                continue
            part = reader.section(data, _ITEMS_SCHEMA, f"{shown}:") or {}
            for kind in ("proxies", "visitors"):
                items += [(kind, f"{shown}:{kind}[{j}]", d) for j, d in enumerate(part.get(kind, []))]
    return items


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, template, parse and check a config file (TOML, YAML or JSON); ConfigError lists the problems."""
    env = os.environ if env is None else env
    file = Path(path)
    data = _read(file, env, str(path))
    return parse_config(data, str(path), base_dir=file.resolve().parent, env=env)
