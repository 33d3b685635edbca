"""The frp field table: every field of frpc.toml that flux-tunnel reads, accepts and ignores,
or refuses, with its type; where each lands in the node's proxy options; which proxy types a
field applies to. Data only: `tunnelclient.config.reader` walks it, `...builder` and
`tunnelclient.config_dump` map names with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fluxcommon.tunnel.protocol.proxies import (
    DOMAIN_TYPES,
    HTTP_USER_TYPES,
    PUBLIC_PORT_TYPES,
    SECRET_TYPES,
    STREAM_TYPES,
)
from tunnelclient.plugin_config import PLUGIN_SCHEMA

# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Ignored:
    """An frp field accepted for compatibility and not used; `notes` says why (unless quiet)."""

    why: str
    quiet_if: object = object()


@dataclass(frozen=True)
class Refused:
    """An frp feature flux-tunnel lacks: an error naming the field."""

    why: str


@dataclass(frozen=True)
class Tables:
    """A list of sections ([[proxies]])."""

    item: dict[str, Any]


STR, INT, BOOL, STRS, MAP = "string", "int", "bool", "strings", "map"

_TLS_SCHEMA: dict[str, Any] = {
    "enable": BOOL,
    "certFile": STR,
    "keyFile": STR,
    "trustedCaFile": STR,
    "serverName": STR,
    "insecureSkipVerify": BOOL,
    "disableCustomTLSFirstByte": Ignored("flux-tunnel always speaks plain TLS", quiet_if=True),
}
_HEADER_SCHEMA: dict[str, Any] = {"name": STR, "value": STR}
_PROXY_SCHEMA: dict[str, Any] = {
    "name": STR,
    "type": STR,
    "enabled": BOOL,
    "localIP": STR,
    "localPort": INT,
    "remotePort": INT,
    "customDomains": STRS,
    "subdomain": STR,
    "locations": STRS,
    "httpUser": STR,
    "httpPassword": STR,
    "hostHeaderRewrite": STR,
    "requestHeaders": {"set": MAP},
    "responseHeaders": {"set": MAP},
    "secretKey": STR,
    "allowUsers": STRS,
    "transport": {
        "useEncryption": BOOL,
        "useCompression": BOOL,
        "bandwidthLimit": STR,
        "bandwidthLimitMode": STR,
        "proxyProtocolVersion": STR,
    },
    "loadBalancer": {"group": STR, "groupKey": STR},
    "healthCheck": {
        "type": STR,
        "timeoutSeconds": INT,
        "maxFailed": INT,
        "intervalSeconds": INT,
        "path": STR,
        "httpHeaders": Tables(_HEADER_SCHEMA),
    },
    "metadatas": MAP,
    "annotations": MAP,
    "plugin": PLUGIN_SCHEMA,
    "routeByHTTPUser": STR,
    "multiplexer": STR,
    "natTraversal": Ignored("the node coordinates xtcp hole punching"),
}
_VISITOR_SCHEMA: dict[str, Any] = {
    "name": STR,
    "type": STR,
    "enabled": BOOL,
    "serverName": STR,
    "serverUser": STR,
    "secretKey": STR,
    "bindAddr": STR,
    "bindPort": INT,
    "fallbackTo": STR,
    "fallbackTimeoutMs": INT,
    "keepTunnelOpen": BOOL,
    "maxRetriesAnHour": INT,
    "minRetryInterval": INT,
    "transport": {"useEncryption": BOOL, "useCompression": BOOL},
    "protocol": Ignored("xtcp peers talk over the punched UDP path with the tunnel's own framing"),
    "natTraversal": Ignored("the node coordinates xtcp hole punching"),
    "plugin": {"type": STR, "destinationIP": STR},
}
ITEMS_SCHEMA: dict[str, Any] = {"proxies": Tables(_PROXY_SCHEMA), "visitors": Tables(_VISITOR_SCHEMA)}
CLIENT_SCHEMA: dict[str, Any] = {
    "serverAddr": STR,
    "serverPort": INT,
    "user": STR,
    "clientID": STR,
    "loginFailExit": BOOL,
    "start": STRS,
    "includes": STRS,
    "metadatas": MAP,
    "auth": {
        "method": STR,
        "token": STR,
        "tokenSource": {"type": STR, "file": {"path": STR}},
        "additionalScopes": Ignored("heartbeats and work streams ride the authenticated session"),
        "oidc": Refused("flux-tunnel authenticates with auth.token only"),
    },
    "log": {
        "level": STR,
        "to": STR,
        "maxDays": Ignored("log files are not rotated by flux-tunnel; use logrotate"),
        "disablePrintColor": Ignored("logs are never coloured"),
    },
    "webServer": {
        "addr": STR,
        "port": INT,
        "user": STR,
        "password": STR,
        "assetsDir": Ignored("the admin endpoint serves an API, no web pages"),
        "pprofEnable": Ignored("there is no profiler endpoint", quiet_if=False),
        "tls": Refused("the admin endpoint serves plain HTTP; keep webServer.addr on 127.0.0.1"),
    },
    "transport": {
        "protocol": STR,
        "dialServerTimeout": INT,
        "dialServerKeepalive": Ignored("heartbeats detect dead connections"),
        "connectServerLocalIP": STR,
        "proxyURL": STR,
        "wireProtocol": Ignored("flux-tunnel speaks its own versioned protocol with the node", quiet_if="v1"),
        "poolCount": Ignored("work streams are multiplexed on the control connection, so nothing is pooled"),
        "tcpMux": Ignored("work streams are always multiplexed on the control connection", quiet_if=True),
        "tcpMuxKeepaliveInterval": Ignored("heartbeats (transport.heartbeatInterval) keep the connection alive"),
        "quic": Ignored("the transport is always TCP"),
        "heartbeatInterval": INT,
        "heartbeatTimeout": INT,
        "tls": _TLS_SCHEMA,
    },
    "natHoleStunServer": Ignored("the node coordinates xtcp hole punching; no STUN server is used"),
    "dnsServer": Ignored("names are resolved by the system's resolver"),
    "udpPacketSize": Ignored("UDP datagrams are framed whole, there is no packet size to agree on"),
    "featureGates": Ignored("flux-tunnel has no feature gates"),
    "virtualNet": {"address": STR},
    "proxies": Tables(_PROXY_SCHEMA),
    "visitors": Tables(_VISITOR_SCHEMA),
}

# Proxy fields that only some types take (frp paths).
ONLY_FOR: dict[str, frozenset[str]] = {
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
OPTION_PATHS: dict[str, str] = {
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
WIRE_PATHS: dict[str, str] = {
    **OPTION_PATHS,
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


def snake_case(name: str) -> str:
    """frp's camelCase -> snake_case: localIP -> local_ip, disableCustomTLSFirstByte -> ..._tls_first_byte."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
