"""The agent's configuration: `flux-tunnel.toml` (frpc.toml field names), YAML or JSON -> `AgentConfig`.

Modules by job: `reader` (files, templates, includes; raw data walked against the field
table), `frp_fields` (the frp field table), `builder` (semantic checks and the frozen result),
`model` (`AgentConfig` and its parts, `ConfigError`). This package's entry points are
`load_config` and `parse_config`; the names below are re-exported here.

This package reads and checks configuration; it opens no connection and starts nothing. The
runtime (tunnelclient/agent.py) gets one frozen `AgentConfig` and the node gets, per proxy,
the `NewProxyRequest` of `ProxyConfig.request()`, checked here with the node's own rules
(fluxcommon/tunnel/protocol/proxies.py) so `flux-tunnel verify` catches what the node would refuse.

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

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunnelclient.config.builder import Builder, format_bandwidth, frp_wording, parse_bandwidth
from tunnelclient.config.frp_fields import CLIENT_SCHEMA, LOG_LEVELS
from tunnelclient.config.model import (
    PROXY_TYPES,
    VISITOR_TYPES,
    AdminConfig,
    AgentConfig,
    ConfigError,
    HealthCheckConfig,
    Problem,
    ProxyConfig,
    TlsConfig,
    VisitorConfig,
)
from tunnelclient.config.reader import Reader, describe, parse_text, read_file, read_includes
from tunnelclient.plugin_config import PluginConfig

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
    "frp_wording",
    "load_config",
    "parse_bandwidth",
    "parse_config",
    "parse_text",
]


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
        raise ConfigError([("", f"the top level must be a table of fields, not {describe(data)}")], source)
    reader = Reader(env)
    top = reader.section(dict(data), CLIENT_SCHEMA, "") or {}
    items: list[tuple[str, str, dict[str, Any] | None]] = []
    for kind in ("proxies", "visitors"):
        items += [(kind, f"{kind}[{i}]", d) for i, d in enumerate(top.get(kind, []))]
    items += read_includes(top.get("includes", []), base, source, reader)
    config = Builder(reader, base).agent(top, items)
    if reader.problems:
        raise ConfigError(sorted(reader.problems, key=_problem_order), source)
    return config


def _problem_order(problem: Problem) -> tuple[str, int, int]:
    """Top-level problems first, then proxy by proxy and visitor by visitor, file by file (stable)."""
    m = re.match(r"(?:(.*):)?(proxies|visitors)\[(\d+)\]", problem[0])
    if not m:
        return ("", 0, 0)
    return (m.group(1) or "", 1 if m.group(2) == "proxies" else 2, int(m.group(3)))


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, template, parse and check a config file (TOML, YAML or JSON); ConfigError lists the problems."""
    env = os.environ if env is None else env
    file = Path(path)
    data = read_file(file, env, str(path))
    return parse_config(data, str(path), base_dir=file.resolve().parent, env=env)
