"""flux-tunnel configs written back: an `AgentConfig` as a frpc-style document (non-default
fields only, so it parses back equal) and that document as TOML (`flux-tunnel verify --dump`)."""

from __future__ import annotations

import math
import re
from typing import Any

from fluxcommon.tunnel.protocol.proxies import ProxyOptions
from tunnelclient.config import (
    AgentConfig,
    HealthCheckConfig,
    ProxyConfig,
    VisitorConfig,
    format_bandwidth,
)
from tunnelclient.config.frp_fields import OPTION_PATHS


def _put(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value


def dump_proxy(proxy: ProxyConfig) -> dict[str, Any]:
    """`proxy` as a frpc-style ``[[proxies]]`` table (non-default fields only); parses back equal."""
    d: dict[str, Any] = {"name": proxy.name, "type": proxy.type}
    if proxy.local_ip != "127.0.0.1":
        d["localIP"] = proxy.local_ip
    d["localPort"] = proxy.local_port
    for wire_name, frp_path in OPTION_PATHS.items():
        value = getattr(proxy.options, wire_name)
        if value != ProxyOptions.model_fields[wire_name].default:
            _put(
                d,
                frp_path,
                list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value,
            )
    if proxy.bandwidth_limit:
        _put(d, "transport.bandwidthLimit", format_bandwidth(proxy.bandwidth_limit))
    if proxy.bandwidth_limit_mode != "client":
        _put(d, "transport.bandwidthLimitMode", proxy.bandwidth_limit_mode)
    hc = proxy.health_check
    if hc is not None:
        h: dict[str, Any] = {"type": hc.type}
        defaults = HealthCheckConfig(type=hc.type)
        for key, attr in (("timeoutSeconds", "timeout_seconds"), ("maxFailed", "max_failed")):
            if getattr(hc, attr) != getattr(defaults, attr):
                h[key] = getattr(hc, attr)
        if hc.interval_seconds != defaults.interval_seconds:
            h["intervalSeconds"] = hc.interval_seconds
        if hc.path:
            h["path"] = hc.path
        if hc.http_headers:
            h["httpHeaders"] = [{"name": n, "value": v} for n, v in hc.http_headers]
        d["healthCheck"] = h
    if proxy.annotations:
        d["annotations"] = dict(proxy.annotations)
    return d


def dump_visitor(visitor: VisitorConfig) -> dict[str, Any]:
    """`visitor` as a frpc-style ``[[visitors]]`` table (non-default fields only)."""
    d: dict[str, Any] = {"name": visitor.name, "type": visitor.type, "serverName": visitor.server_name}
    defaults = VisitorConfig(name="", type="stcp", server_name="", secret_key="", bind_port=0)
    for key, attr in (
        ("serverUser", "server_user"),
        ("secretKey", "secret_key"),
        ("bindAddr", "bind_addr"),
        ("bindPort", "bind_port"),
        ("fallbackTo", "fallback_to"),
        ("fallbackTimeoutMs", "fallback_timeout_ms"),
        ("keepTunnelOpen", "keep_tunnel_open"),
        ("maxRetriesAnHour", "max_retries_an_hour"),
        ("minRetryInterval", "min_retry_interval"),
        ("transport.useEncryption", "use_encryption"),
        ("transport.useCompression", "use_compression"),
    ):
        value = getattr(visitor, attr)
        if value != getattr(defaults, attr) or key in ("secretKey", "bindPort"):
            _put(d, key, value)
    return d


def dump_config(config: AgentConfig) -> dict[str, Any]:
    """`config` as a frpc-style document (non-default fields only); `parse_config` gives it back."""
    d: dict[str, Any] = {"serverAddr": config.server_addr, "serverPort": config.server_port}
    if config.user:
        d["user"] = config.user
    if not config.login_fail_exit:
        d["loginFailExit"] = False
    if config.token:
        _put(d, "auth.token", config.token)
    if config.log_level != "info":
        _put(d, "log.level", config.log_level)
    if config.log_to != "console":
        _put(d, "log.to", config.log_to)
    if config.admin is not None:
        d["webServer"] = {"addr": config.admin.addr, "port": config.admin.port}
        if config.admin.user:
            d["webServer"] |= {"user": config.admin.user, "password": config.admin.password}
    for key, value, default in (
        ("transport.heartbeatInterval", config.heartbeat_interval, 30),
        ("transport.heartbeatTimeout", config.heartbeat_timeout, 90),
        ("transport.dialServerTimeout", config.dial_timeout, 10),
    ):
        if value != default:
            _put(d, key, value)
    tls = config.tls
    _put(d, "transport.tls.enable", tls.enable)
    for key, value in (
        ("certFile", tls.cert_file),
        ("keyFile", tls.key_file),
        ("trustedCaFile", tls.trusted_ca_file),
        ("serverName", tls.server_name),
        ("insecureSkipVerify", tls.insecure_skip_verify),
    ):
        if value:
            _put(d, f"transport.tls.{key}", value)
    if config.metadatas:
        d["metadatas"] = dict(config.metadatas)
    if config.proxies:
        d["proxies"] = [dump_proxy(p) for p in config.proxies]
    if config.visitors:
        d["visitors"] = [dump_visitor(v) for v in config.visitors]
    return d


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch: `$` also matches before a trailing newline


def _toml_str(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_lines(d: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for key, value in d.items():
        full = prefix + _toml_key(key)
        if isinstance(value, dict) and value:
            lines += _toml_lines(value, full + ".")
        else:
            lines.append(f"{full} = {_toml_value(value)}")
    return lines


def to_toml(data: dict[str, Any]) -> str:
    """A frpc-style document as TOML: dotted keys, ``[[proxies]]``/``[[visitors]]`` tables."""
    tables = {k: v for k, v in data.items() if k in ("proxies", "visitors") and isinstance(v, list)}
    lines = _toml_lines({k: v for k, v in data.items() if k not in tables})
    for name, items in tables.items():
        for item in items:
            lines += ["", f"[[{name}]]", *_toml_lines(item)]
    return "\n".join(lines) + "\n"
