"""`[proxies.plugin]` of frpc.toml: which client plugin serves a proxy's connections, checked.

A proxy with a plugin has no local service of its own (``localIP``/``localPort`` are not used):
the agent serves each work stream itself (tunnelclient/plugins/). frp's plugin types and field
names:

=====================  ======================================================================
type                   fields
=====================  ======================================================================
unix_domain_socket     ``unixPath`` (required): bytes to and from that socket
http_proxy             ``httpUser``/``httpPassword``: an HTTP proxy (CONNECT and absolute URLs)
socks5                 ``username``/``password``: a SOCKS5 proxy (CONNECT)
static_file            ``localPath`` (required), ``stripPrefix``, ``httpUser``/``httpPassword``
https2http             ``localAddr`` (required), ``crtPath``/``keyPath``, ``hostHeaderRewrite``,
https2https            ``requestHeaders.set``, ``enableHTTP2``: TLS ends here, HTTP(S) to localAddr
http2https, http2http  ``localAddr`` (required), ``hostHeaderRewrite``, ``requestHeaders.set``
tls2raw                ``localAddr`` (required), ``crtPath``/``keyPath``: TLS ends here, raw bytes on
virtual_net            (none): frp's virtual network, which flux-tunnel lacks; as frp does without
                       ``virtualNet.address``, the proxy registers and its connections are closed
=====================  ======================================================================

Without ``crtPath``/``keyPath`` a TLS plugin makes a self-signed certificate at start, as frp
does. Plugins serve stream proxies (tcp, http, https, tcpmux, stcp, xtcp), not udp or sudp.
HTTP is HTTP/1.1 (``enableHTTP2`` is accepted; ALPN offers http/1.1 only).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxcommon.netaddr import split_host_port
from fluxcommon.wire import checked_headers, host_problem

__all__ = ["PLUGIN_SCHEMA", "PLUGIN_TYPES", "PluginConfig", "check_plugin"]

_STR, _BOOL, _MAP = "string", "bool", "map"

PLUGIN_SCHEMA: dict[str, Any] = {
    "type": _STR,
    "unixPath": _STR,
    "httpUser": _STR,
    "httpPassword": _STR,
    "username": _STR,
    "password": _STR,
    "localPath": _STR,
    "stripPrefix": _STR,
    "localAddr": _STR,
    "crtPath": _STR,
    "keyPath": _STR,
    "hostHeaderRewrite": _STR,
    "requestHeaders": {"set": _MAP},
    "enableHTTP2": _BOOL,
}
_BRIDGE = frozenset({"localAddr", "hostHeaderRewrite", "requestHeaders"})
_TLS = frozenset({"crtPath", "keyPath"})
# plugin type -> the fields it takes (besides `type`)
PLUGIN_TYPES: dict[str, frozenset[str]] = {
    "unix_domain_socket": frozenset({"unixPath"}),
    "http_proxy": frozenset({"httpUser", "httpPassword"}),
    "socks5": frozenset({"username", "password"}),
    "static_file": frozenset({"localPath", "stripPrefix", "httpUser", "httpPassword"}),
    "https2http": _BRIDGE | _TLS | {"enableHTTP2"},
    "https2https": _BRIDGE | _TLS | {"enableHTTP2"},
    "http2https": _BRIDGE,
    "http2http": _BRIDGE,
    "tls2raw": frozenset({"localAddr"}) | _TLS,
    "virtual_net": frozenset(),
}
_REQUIRED = {
    "unix_domain_socket": "unixPath",
    "static_file": "localPath",
    "http_proxy": "",
    "socks5": "",
    "virtual_net": "",
}


@dataclass(frozen=True)
class PluginConfig:
    """A checked plugin; paths absolute, `local_addr` split. `user`/`password` are frp's
    httpUser/httpPassword (http_proxy, static_file) or username/password (socks5)."""

    type: str
    unix_path: str = ""
    user: str = ""
    password: str = ""
    local_path: str = ""
    strip_prefix: str = ""
    local_host: str = ""
    local_port: int = 0
    crt_path: str = ""  # "" with key_path "": a self-signed certificate made at start
    key_path: str = ""
    host_header_rewrite: str = ""
    request_headers: tuple[tuple[str, str], ...] = ()

    @property
    def serves_tls(self) -> bool:
        return self.type in ("https2http", "https2https", "tls2raw")


Problem = Callable[[str, str], None]


def check_plugin(d: dict[str, Any], path: str, problem: Problem, base: Path) -> PluginConfig | None:
    """The plugin of `d` (canonical keys, values typed) or None after `problem(path, message)` calls."""
    ptype = d.get("type", "")
    if ptype not in PLUGIN_TYPES:
        got = f", got {ptype!r}" if ptype else ""
        problem(f"{path}.type", f"required: one of {', '.join(PLUGIN_TYPES)}{got}")
        return None
    before = _Counter(problem)
    for key in d:
        if key != "type" and key not in PLUGIN_TYPES[ptype]:
            takes = ", ".join(sorted(PLUGIN_TYPES[ptype])) or "no other field"
            before(f"{path}.{key}", f"not a field of the {ptype} plugin (it takes {takes})")
    required = _REQUIRED.get(ptype, "localAddr")
    if required and not d.get(required):
        before(f"{path}.{required}", f"required for the {ptype} plugin")
    user, password = _credentials(d, ptype)
    if bool(user) != bool(password):
        names = ("username", "password") if ptype == "socks5" else ("httpUser", "httpPassword")
        before(f"{path}.{names[1] if user else names[0]}", f"{names[0]} and {names[1]} go together")
    host, port = "", 0
    if d.get("localAddr"):
        try:
            host, port = split_host_port(d["localAddr"])
        except ValueError as exc:
            before(f"{path}.localAddr", f"{exc} (write HOST:PORT)")
    local_path = _directory(d.get("localPath", ""), f"{path}.localPath", before, base)
    crt, key = _tls_files(d, path, before, base)
    headers: tuple[tuple[str, str], ...] = ()
    try:
        headers = tuple(checked_headers(d.get("requestHeaders", {}).get("set", {})).items())
    except ValueError as exc:
        before(f"{path}.requestHeaders.set", str(exc))
    rewrite = d.get("hostHeaderRewrite", "")
    if rewrite and host_problem(rewrite):
        before(f"{path}.hostHeaderRewrite", str(host_problem(rewrite)))
    if before.count:
        return None
    unix = d.get("unixPath", "")
    return PluginConfig(
        type=ptype,
        unix_path=str(base / os.path.expanduser(unix)) if unix else "",
        user=user,
        password=password,
        local_path=local_path,
        strip_prefix=d.get("stripPrefix", "").strip("/"),
        local_host=host,
        local_port=port,
        crt_path=crt,
        key_path=key,
        host_header_rewrite=rewrite,
        request_headers=headers,
    )


class _Counter:
    """Forwards problems and counts them."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.count = 0

    def __call__(self, path: str, message: str) -> None:
        self.count += 1
        self.problem(path, message)


def _credentials(d: dict[str, Any], ptype: str) -> tuple[str, str]:
    if ptype == "socks5":
        return d.get("username", ""), d.get("password", "")
    return d.get("httpUser", ""), d.get("httpPassword", "")


def _directory(value: str, path: str, problem: Problem, base: Path) -> str:
    if not value:
        return ""
    full = Path(os.path.expanduser(value))
    full = full if full.is_absolute() else base / full
    if not full.is_dir():
        problem(path, f"no such directory: {full}")
    return str(full)


def _tls_files(d: dict[str, Any], path: str, problem: Problem, base: Path) -> tuple[str, str]:
    """crtPath and keyPath (absolute), checked to load as a pair; ("", "") for a self-signed one."""
    crt, key = d.get("crtPath", ""), d.get("keyPath", "")
    if not crt and not key:
        return "", ""
    if bool(crt) != bool(key):
        problem(f"{path}.{'keyPath' if crt else 'crtPath'}", "crtPath and keyPath go together")
        return "", ""
    files = []
    for name, value in (("crtPath", crt), ("keyPath", key)):
        full = Path(os.path.expanduser(value))
        full = full if full.is_absolute() else base / full
        if not full.is_file():
            problem(f"{path}.{name}", f"no such file: {full}")
        files.append(str(full))
    if all(Path(f).is_file() for f in files):
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(files[0], files[1])
        except (ssl.SSLError, OSError) as exc:
            problem(f"{path}.crtPath", f"cannot load the certificate and key: {exc}")
    return files[0], files[1]
