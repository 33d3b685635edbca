"""Building a config: semantic checks on the reader's canonical dicts (ports, files, proxy
types, visitors, the node's own rules for NEW_PROXY) and the frozen `AgentConfig`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from pydantic import ValidationError

from fluxcommon.netaddr import check_address
from fluxcommon.tunnel.protocol.proxies import (
    DOMAIN_TYPES,
    HTTP_USER_TYPES,
    SECRET_TYPES,
    STREAM_TYPES,
    NewProxyRequest,
    ProxyOptions,
    ProxyType,
)
from tunnelclient.config.frp_fields import LOG_LEVELS, ONLY_FOR, OPTION_PATHS, WIRE_PATHS
from tunnelclient.config.model import (
    PROXY_TYPES,
    PROXY_URL_SCHEMES,
    VISITOR_TYPES,
    AdminConfig,
    AgentConfig,
    HealthCheckConfig,
    ProxyConfig,
    TlsConfig,
    VisitorConfig,
    VisitorType,
)
from tunnelclient.config.reader import Reader, join_path, lookup
from tunnelclient.plugin_config import check_plugin

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


class Builder:
    """Semantic checks and the frozen result, on top of `Reader`'s canonical dicts."""

    def __init__(self, reader: Reader, base_dir: Path) -> None:
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
        value = lookup(d, key, default)
        if value < minimum:
            self.r.problem(join_path(path, key), f"must be at least {minimum}, got {value}")
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
        tls = self._tls(lookup(d, "transport.tls", {}))
        protocol = lookup(d, "transport.protocol", "tcp")
        if protocol not in ("", "tcp"):
            r.problem("transport.protocol", f"only tcp is supported, not {protocol!r}")
        heartbeat_interval = lookup(d, "transport.heartbeatInterval", 30)
        heartbeat_timeout = lookup(d, "transport.heartbeatTimeout", 90)
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
        local_ip = lookup(d, "transport.connectServerLocalIP", "")
        if local_ip:
            local_ip = self._address(local_ip, "transport.connectServerLocalIP")
        proxy_url = self._proxy_url(lookup(d, "transport.proxyURL"))
        if lookup(d, "virtualNet.address"):
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
            elif not lookup(source, "file.path"):
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
            r.problem(join_path(path, key), message)

        name = d.get("name", "")
        if not name:
            bad("name", "required")
        ptype = d.get("type", "")
        if not ptype:
            bad("type", f"required ({', '.join(PROXY_TYPES)})")
        elif ptype not in PROXY_TYPES:
            bad("type", f"unknown proxy type {ptype!r} ({', '.join(PROXY_TYPES)})")
        known = ptype in PROXY_TYPES
        local_ip = self._address(d.get("localIP", "127.0.0.1"), join_path(path, "localIP"))
        plugin = None
        if "plugin" in d and (ptype in STREAM_TYPES or not known):
            plugin = check_plugin(d["plugin"], join_path(path, "plugin"), r.problem, self.base)
        if "plugin" in d:  # frp: "if plugin is defined, localIP and localPort is useless"
            local_port: int | None = 0
            if "localPort" in d or "localIP" in d:
                r.notes.append(f"{path}: localIP and localPort are not used: the plugin serves the connections")
        else:
            local_port = self._port(d.get("localPort"), join_path(path, "localPort"), what=": the local service's port")
        if ptype == "tcpmux" and d.get("multiplexer", "httpconnect") != "httpconnect":
            bad("multiplexer", f"only 'httpconnect' is supported (as in frp), got {d['multiplexer']!r}")
        if d.get("routeByHTTPUser") and d.get("httpUser") and d["httpUser"] != d["routeByHTTPUser"]:
            bad("httpUser", "must be routeByHTTPUser's user (or empty): that user's requests are the ones chosen")
        if known:
            for key, types in ONLY_FOR.items():
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
        if lookup(d, "loadBalancer.groupKey") and not lookup(d, "loadBalancer.group"):
            bad("loadBalancer.groupKey", "set loadBalancer.group too")
        health = self._health(d.get("healthCheck"), join_path(path, "healthCheck"))
        options: ProxyOptions | None = None
        wire: dict[str, Any] = {"bandwidth_limit": rate if mode == "server" else 0}
        for wire_name, frp_path in OPTION_PATHS.items():
            value = lookup(d, frp_path)
            top = frp_path.split(".")[0]
            if value is not None and not (known and top in ONLY_FOR and ptype not in ONLY_FOR[top]):
                wire[wire_name] = tuple(value) if isinstance(value, list) else value
        try:
            options = ProxyOptions.model_validate(wire)
            if name and known:
                NewProxyRequest(name=f"{user}.{name}" if user else name, proxy_type=ptype, options=options)
        except ValidationError as exc:
            for err in exc.errors():
                where, message = _node_problem(err)
                r.problem(join_path(path, where) if where else path, message)
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
            self.r.problem(join_path(path, "type"), f"must be 'tcp' or 'http', got {htype!r}")
            return None
        hpath = h.get("path", "")
        if htype == "http" and not hpath.startswith("/"):
            self.r.problem(join_path(path, "path"), "an http health check needs a path starting with '/'")
        if htype == "tcp" and (hpath or h.get("httpHeaders")):
            self.r.problem(join_path(path, "path" if hpath else "httpHeaders"), "only for http health checks")
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
            r.problem(join_path(path, key), message)

        if not d.get("name"):
            bad("name", "required")
        vtype = d.get("type", "")
        if vtype not in VISITOR_TYPES:
            bad("type", f"must be one of {', '.join(VISITOR_TYPES)}" + (f", got {vtype!r}" if vtype else ""))
        if not d.get("serverName"):
            bad("serverName", "required (the name of the stcp/sudp/xtcp proxy to visit)")
        if not d.get("secretKey"):
            bad("secretKey", "required (the secretKey of the proxy visited)")
        bind_addr = self._address(d.get("bindAddr", "127.0.0.1"), join_path(path, "bindAddr"))
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
            use_encryption=lookup(d, "transport.useEncryption", False),
            use_compression=lookup(d, "transport.useCompression", False),
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
    snake = [k for k in WIRE_PATHS if "_" in k]
    return re.sub(r"\b(" + "|".join(snake) + r")\b", lambda w: WIRE_PATHS[w.group(1)], message)


def _node_problem(err: Any) -> tuple[str, str]:
    """A pydantic error from ProxyOptions / NewProxyRequest -> (frp path, message)."""
    loc = [p for p in err["loc"] if p != "options"]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:
        m = re.match(r"(\w+): (.*)", msg, re.S)
        if m and m.group(1) in WIRE_PATHS:
            loc, msg = [m.group(1)], m.group(2)
    where = ""
    if loc:
        where = WIRE_PATHS.get(str(loc[0]), str(loc[0]))
        where += "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    m = re.match(r"\[(\d+)\] (.*)", msg, re.S)
    if m:
        where, msg = f"{where}[{m.group(1)}]", m.group(2)
    snake = [k for k in WIRE_PATHS if "_" in k]
    msg = re.sub(r"\b(" + "|".join(snake) + r")\b", lambda w: WIRE_PATHS[w.group(1)], msg)
    return where, msg
