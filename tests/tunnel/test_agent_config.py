"""The agent's config (`tunnelclient.config`): frpc.toml names, YAML/JSON, errors by field, templates, includes.

Files are real files in `tmp_path`; the environment is passed in (`env=`), so templating is
tested without touching os.environ. The round-trip properties build random valid proxies,
write them out as TOML, JSON (camelCase, snake_case, dotted keys) and YAML, and parse them back.
"""

from __future__ import annotations

import json
import pathlib
import re
import textwrap
import tomllib
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxcommon.tunnel.protocol.proxies import ProxyOptions, parse_new_proxy, wire_options
from tunnelclient.config import (
    AdminConfig,
    AgentConfig,
    ConfigError,
    HealthCheckConfig,
    PluginConfig,
    ProxyConfig,
    TlsConfig,
    VisitorConfig,
    format_bandwidth,
    load_config,
    parse_bandwidth,
    parse_config,
    parse_text,
)
from tunnelclient.config_dump import dump_config, dump_proxy, to_toml

ENV = {"FLUX_TOKEN": "s3cret", "DB_KEY": "db-key", "NODE_PORT": "7443"}

# An frpc.toml as an frp user would write it (frp v0.52+ names), with our additions.
FRPC_TOML = """\
# office agent
user = "office"
serverAddr = "tunnel.example.com"
serverPort = {{ .Envs.NODE_PORT }}
loginFailExit = true

auth.method = "token"
auth.token = "{{ .Envs.FLUX_TOKEN }}"

transport.tls.enable = true
transport.tls.trustedCaFile = "ca.pem"
transport.tls.serverName = "tunnel.example.com"
transport.heartbeatInterval = 20
transport.heartbeatTimeout = 60
transport.dialServerTimeout = 5
transport.poolCount = 5

webServer.addr = "127.0.0.1"
webServer.port = 7400
webServer.user = "admin"
webServer.password = "pw"

log.level = "warn"
metadatas.site = "office-1"

[[proxies]]
name = "ssh"
type = "tcp"
localIP = "127.0.0.1"
localPort = 22
remotePort = 6022
transport.useEncryption = true
transport.useCompression = true
transport.bandwidthLimit = "512KB"
transport.bandwidthLimitMode = "server"
transport.proxyProtocolVersion = "v2"
loadBalancer.group = "ssh-pool"
loadBalancer.groupKey = "k1"
healthCheck.type = "tcp"
healthCheck.timeoutSeconds = 2
healthCheck.maxFailed = 3
healthCheck.intervalSeconds = 5
metadatas.owner = "ops"
[proxies.annotations]
"team/name" = "infra"

[[proxies]]
name = "dns"
type = "udp"
localIP = "10.0.0.53"
localPort = 53
remotePort = 0

[[proxies]]
name = "web"
type = "http"
localPort = 8080
customDomains = ["Intranet.Example.com", "*.apps.example.com"]
subdomain = "office"
locations = ["/", "/static"]
httpUser = "u"
httpPassword = "p"
hostHeaderRewrite = "localhost"
requestHeaders.set.x-from-where = "flux"
responseHeaders.set.x-served-by = "office"
transport.bandwidthLimit = "1MB"
healthCheck.type = "http"
healthCheck.path = "/healthz"
healthCheck.httpHeaders = [{ name = "x-check", value = "1" }]

[[proxies]]
name = "secure"
type = "https"
localPort = 8443
customDomains = ["secure.example.com"]

[[proxies]]
name = "db"
type = "stcp"
localPort = 5432
secretKey = "{{ .Envs.DB_KEY }}"
allowUsers = ["laptop", "ci"]

[[proxies]]
name = "game"
type = "sudp"
localPort = 27015
secretKey = "g"

[[proxies]]
name = "p2p-ssh"
type = "xtcp"
localPort = 22
secretKey = "x"
allowUsers = ["*"]

[[visitors]]
name = "db-relay"
type = "stcp"
serverName = "db"
serverUser = "hq"
secretKey = "hq-key"
bindPort = -1

[[visitors]]
name = "db-p2p"
type = "xtcp"
serverName = "db"
serverUser = "hq"
secretKey = "hq-key"
bindAddr = "127.0.0.1"
bindPort = 9001
keepTunnelOpen = true
fallbackTo = "db-relay"
fallbackTimeoutMs = 500
transport.useEncryption = true
"""


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def frpc(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "ca.pem").write_text("not checked here, only found\n")
    return write(tmp_path / "flux-tunnel.toml", FRPC_TOML)


def problems(data: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **kwargs)
    return dict(info.value.problems)


def tcp(**fields: Any) -> dict[str, Any]:
    return {"name": "p", "type": "tcp", "localPort": 22, **fields}


# --------------------------------------------------------------------------- a realistic file


def test_realistic_frpc_toml(frpc: pathlib.Path) -> None:
    config = load_config(frpc, env=ENV)
    assert (config.server_addr, config.server_port, config.user, config.token) == (
        "tunnel.example.com",
        7443,
        "office",
        "s3cret",
    )
    assert config.login_fail_exit is True
    assert config.tls == TlsConfig(trusted_ca_file=str(frpc.parent / "ca.pem"), server_name="tunnel.example.com")
    assert (config.heartbeat_interval, config.heartbeat_timeout, config.dial_timeout) == (20, 60, 5)
    assert config.admin == AdminConfig(addr="127.0.0.1", port=7400, user="admin", password="pw")
    assert config.log_level == "warning"
    assert config.metadatas == {"site": "office-1"}
    assert [p.name for p in config.proxies] == ["ssh", "dns", "web", "secure", "db", "game", "p2p-ssh"]
    assert any("transport.poolCount" in note for note in config.notes)

    ssh = config.proxies[0]
    assert ssh == ProxyConfig(
        name="ssh",
        type="tcp",
        local_ip="127.0.0.1",
        local_port=22,
        options=ProxyOptions(
            remote_port=6022,
            use_encryption=True,
            use_compression=True,
            bandwidth_limit=512 * 1024,
            proxy_protocol="v2",
            group="ssh-pool",
            group_key="k1",
            metadata={"owner": "ops"},
        ),
        bandwidth_limit=512 * 1024,
        bandwidth_limit_mode="server",
        health_check=HealthCheckConfig(type="tcp", timeout_seconds=2, max_failed=3, interval_seconds=5),
        annotations={"team/name": "infra"},
    )
    web = config.proxies[2]
    assert web.options.custom_domains == ("intranet.example.com", "*.apps.example.com")
    assert web.options.request_headers == {"x-from-where": "flux"}
    assert web.options.response_headers == {"x-served-by": "office"}
    assert (web.bandwidth_limit, web.bandwidth_limit_mode, web.options.bandwidth_limit) == (1024 * 1024, "client", 0)
    assert web.health_check == HealthCheckConfig(type="http", path="/healthz", http_headers=(("x-check", "1"),))
    assert config.proxies[4].options.secret_key == "db-key"

    relay, p2p = config.visitors
    assert relay == VisitorConfig(
        name="db-relay", type="stcp", server_name="db", server_user="hq", secret_key="hq-key", bind_port=-1
    )
    assert (p2p.fallback_to, p2p.fallback_timeout_ms, p2p.keep_tunnel_open, p2p.use_encryption) == (
        "db-relay",
        500,
        True,
        True,
    )
    assert p2p.target(config.user) == "hq.db"


def test_names_on_the_node_carry_the_user_prefix(frpc: pathlib.Path) -> None:
    config = load_config(frpc, env=ENV)
    assert [r.name for r in config.requests()] == [f"office.{p.name}" for p in config.proxies]
    assert config.proxies[0].wire_name() == "ssh"
    visitor = VisitorConfig(name="v", type="stcp", server_name="db", secret_key="k", bind_port=1)
    assert (visitor.target(), visitor.target("me")) == ("db", "me.db")


def test_the_node_accepts_exactly_what_the_agent_sends(frpc: pathlib.Path) -> None:
    """Each request, as JSON on the wire, passes the node's own check and comes back equal."""
    for request in load_config(frpc, env=ENV).requests():
        wire = json.loads(json.dumps(wire_options(request.options)))
        assert parse_new_proxy(request.name, request.proxy_type, wire) == request


def test_defaults_exit_on_a_failed_first_login_as_frp_and_use_tls(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path / "a.toml", '[[proxies]]\nname = "p"\ntype = "tcp"\nlocalPort = 22\n')
    config = load_config(path, env={})
    assert config == AgentConfig(proxies=(ProxyConfig(name="p", type="tcp", local_port=22),))
    assert config.login_fail_exit is True and config.tls.enable is True  # frp's loginFailExit default
    assert (config.server_addr, config.server_port, config.heartbeat_interval, config.heartbeat_timeout) == (
        "127.0.0.1",
        7000,
        30,
        90,
    )
    assert config.admin is None and config.proxies[0].local_ip == "127.0.0.1"
    assert "auth.token: not set; the node must accept agents without a token" in config.notes


# --------------------------------------------------------------------------- YAML, JSON, spellings


YAML_CAMEL = """\
user: office
serverAddr: tunnel.example.com
serverPort: 7443
loginFailExit: true
auth: {method: token, token: s3cret}
transport:
  tls: {enable: true, trustedCaFile: ca.pem, serverName: tunnel.example.com}
  heartbeatInterval: 20
  heartbeatTimeout: 60
  dialServerTimeout: 5
  poolCount: 5
webServer: {addr: 127.0.0.1, port: 7400, user: admin, password: pw}
log: {level: warn}
metadatas: {site: office-1}
proxies:
  - name: ssh
    type: tcp
    localIP: 127.0.0.1
    localPort: 22
    remotePort: 6022
    transport: {useEncryption: true, useCompression: true, bandwidthLimit: 512KB, bandwidthLimitMode: server,
                proxyProtocolVersion: v2}
    loadBalancer: {group: ssh-pool, groupKey: k1}
    healthCheck: {type: tcp, timeoutSeconds: 2, maxFailed: 3, intervalSeconds: 5}
    metadatas: {owner: ops}
    annotations: {team/name: infra}
  - {name: dns, type: udp, localIP: 10.0.0.53, localPort: 53, remotePort: 0}
  - name: web
    type: http
    localPort: 8080
    customDomains: [Intranet.Example.com, "*.apps.example.com"]
    subdomain: office
    locations: [/, /static]
    httpUser: u
    httpPassword: p
    hostHeaderRewrite: localhost
    requestHeaders: {set: {x-from-where: flux}}
    responseHeaders: {set: {x-served-by: office}}
    transport: {bandwidthLimit: 1MB}
    healthCheck: {type: http, path: /healthz, httpHeaders: [{name: x-check, value: "1"}]}
  - {name: secure, type: https, localPort: 8443, customDomains: [secure.example.com]}
  - {name: db, type: stcp, localPort: 5432, secretKey: db-key, allowUsers: [laptop, ci]}
  - {name: game, type: sudp, localPort: 27015, secretKey: g}
  - {name: p2p-ssh, type: xtcp, localPort: 22, secretKey: x, allowUsers: ["*"]}
visitors:
  - {name: db-relay, type: stcp, serverName: db, serverUser: hq, secretKey: hq-key, bindPort: -1}
  - name: db-p2p
    type: xtcp
    serverName: db
    serverUser: hq
    secretKey: hq-key
    bindAddr: 127.0.0.1
    bindPort: 9001
    keepTunnelOpen: true
    fallbackTo: db-relay
    fallbackTimeoutMs: 500
    transport: {useEncryption: true}
"""

_MAPS = {"metadatas", "annotations", "set"}


def snake_keys(value: Any, parent: str = "") -> Any:
    """frp's camelCase keys -> snake_case, leaving the keys of free-form maps alone."""
    if isinstance(value, dict):
        if parent in _MAPS:
            return value
        out = {}
        for key, item in value.items():
            s = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)).lower()
            out[s] = snake_keys(item, key)
        return out
    if isinstance(value, list):
        return [snake_keys(item) for item in value]
    return value


def dotted_keys(value: Any, parent: str = "") -> Any:
    """Nested sections -> "a.b.c" keys (as JSON users may write them); maps and lists stay."""
    if isinstance(value, list):
        return [dotted_keys(item) for item in value]
    if not isinstance(value, dict) or parent in _MAPS:
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and key not in _MAPS and item:
            for sub, leaf in dotted_keys(item, key).items():
                out[f"{key}.{sub}"] = leaf
        else:
            out[key] = dotted_keys(item, key)
    return out


def test_yaml_and_json_give_the_same_config(frpc: pathlib.Path) -> None:
    expected = load_config(frpc, env=ENV)
    yaml_file = write(frpc.parent / "agent.yaml", YAML_CAMEL)
    assert load_config(yaml_file, env=ENV) == expected
    data = yaml.safe_load(YAML_CAMEL)
    for i, variant in enumerate((data, snake_keys(data), dotted_keys(data), snake_keys(dotted_keys(data)))):
        json_file = write(frpc.parent / f"agent{i}.json", json.dumps(variant))
        assert load_config(json_file, env=ENV) == expected, i
    assert load_config(write(frpc.parent / "snake.yml", yaml.safe_dump(snake_keys(data))), env=ENV) == expected


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ('{"serverAddr": "h", "proxies": []}', "json"),
        ('serverAddr = "h"\nproxies = []\n', "toml"),
        ("serverAddr: h\nproxies: []\n", "yaml"),
    ],
)
def test_files_without_an_extension_are_sniffed(tmp_path: pathlib.Path, text: str, fmt: str) -> None:
    assert load_config(write(tmp_path / "flux-tunnel", text), env={}).server_addr == "h"
    assert load_config(write(tmp_path / f"named.{fmt}", text), env={}).server_addr == "h"


def test_legacy_ini_is_refused_with_a_hint(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="legacy INI"):
        load_config(write(tmp_path / "frpc", "[common]\nserver_addr = x\n"), env={})
    with pytest.raises(ConfigError, match="legacy INI"):
        load_config(write(tmp_path / "frpc.ini", "[common]\n"), env={})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "[[proxies]\n", "not valid TOML"),
        ("bad.json", "{,}", "not valid JSON"),
        ("bad.yaml", "a: [", "not valid YAML"),
        ("list.yaml", "- 1\n", "the top level must be a table"),
    ],
)
def test_syntax_errors_name_the_file(tmp_path: pathlib.Path, name: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / name, text), env={})
    (line,) = info.value.lines()
    assert line.startswith(f"{tmp_path / name}: {message}")


def test_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.lines() == [f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"]


# --------------------------------------------------------------------------- errors name the field


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({"serverAdr": "h"}, "serverAdr", "unknown field (did you mean serverAddr?)"),
        ({"server_adr": "h"}, "server_adr", "unknown field (did you mean server_addr?)"),
        ({"serveraddr": "h"}, "serveraddr", "unknown field (did you mean serverAddr?)"),
        ({"transport": {"tls": {"enabel": True}}}, "transport.tls.enabel", "did you mean enable?"),
        ({"proxies": [tcp(), tcp(name="q", remotPort=1)]}, "proxies[1].remotPort", "did you mean remotePort?"),
        ({"serverAddr": "h", "server_addr": "h"}, "serverAddr", "given twice (as serverAddr and server_addr)"),
        ({"serverAddr": "not a host!"}, "serverAddr", "neither an IP address nor a host name"),
        ({"serverPort": 0}, "serverPort", "0 is not a port (1-65535)"),
        ({"serverPort": "x"}, "serverPort", "expected a whole number, got the string 'x'"),
        ({"loginFailExit": "yes"}, "loginFailExit", "expected true or false"),
        ({"metadatas": ["a"]}, "metadatas", "expected a table of string values"),
        ({"includes": "conf.d/*.toml"}, "includes", "expected a list of strings"),
        ({"auth": {"method": "oidc"}}, "auth.method", "'oidc' is not supported"),
        ({"auth": {"oidc": {"clientID": "x"}}}, "auth.oidc", "not supported"),
        ({"auth": {"token": "t", "tokenSource": {"type": "file"}}}, "auth.tokenSource", "not both"),
        ({"auth": {"tokenSource": {"type": "exec"}}}, "auth.tokenSource.type", "only 'file'"),
        ({"transport": {"protocol": "kcp"}}, "transport.protocol", "only tcp is supported"),
        ({"transport": {"proxyURL": "socks5://x"}}, "transport.proxyURL", "needs a host and a port"),
        ({"transport": {"proxyURL": "ntlm://u:p@h:1"}}, "transport.proxyURL", "ntlm proxies are not supported"),
        ({"transport": {"connectServerLocalIP": "nope nope"}}, "transport.connectServerLocalIP", "nope"),
        ({"transport": {"heartbeatInterval": -1}}, "transport.heartbeatInterval", "cannot be turned off"),
        ({"transport": {"heartbeatTimeout": 30}}, "transport.heartbeatTimeout", "longer than"),
        ({"transport": {"dialServerTimeout": 0}}, "transport.dialServerTimeout", "at least 1"),
        ({"transport": {"tls": {"certFile": "/nonexistent.crt"}}}, "transport.tls.keyFile", "go together"),
        ({"transport": {"tls": {"trustedCaFile": "/nonexistent.pem"}}}, "transport.tls.trustedCaFile", "no such file"),
        ({"webServer": {"port": 70000}}, "webServer.port", "not a port"),
        ({"webServer": {"port": 7400, "user": "a"}}, "webServer.password", "go together"),
        ({"webServer": {"port": 7400, "tls": {"certFile": "x"}}}, "webServer.tls", "plain HTTP"),
        ({"log": {"level": "loud"}}, "log.level", "unknown level 'loud'"),
        ({"virtualNet": {"address": "100.86.1.1/24"}}, "virtualNet.address", "no virtual network"),
        ({"start": ["nope"], "proxies": [tcp()]}, "start[0]", "no proxy or visitor is named 'nope'"),
        ({"proxies": {"name": "p"}}, "proxies", "expected a list of tables ([[proxies]] in TOML)"),
        ({"proxies": ["p"]}, "proxies[0]", "expected a table of fields"),
        ({"proxies": [{"type": "tcp", "localPort": 1}]}, "proxies[0].name", "required"),
        ({"proxies": [tcp(), tcp()]}, "proxies[1].name", "duplicate name 'p' (also proxies[0].name)"),
        ({"proxies": [tcp(type=None)]}, "proxies[0].type", "expected a string, got null"),
        ({"proxies": [{"name": "p", "localPort": 1}]}, "proxies[0].type", "required (tcp, udp, http"),
        ({"proxies": [tcp(type="tcpmux")]}, "proxies[0].customDomains", "a tcpmux proxy needs customDomains"),
        (
            {"proxies": [tcp(type="tcpmux", customDomains=["a.b"], multiplexer="x")]},
            "proxies[0].multiplexer",
            "only 'httpconnect'",
        ),
        ({"proxies": [tcp(type="ftp")]}, "proxies[0].type", "unknown proxy type 'ftp'"),
        ({"proxies": [{"name": "p", "type": "tcp"}]}, "proxies[0].localPort", "required (1-65535"),
        ({"proxies": [tcp(localPort=0)]}, "proxies[0].localPort", "0 is not a port"),
        ({"proxies": [tcp(localIP="bad ip")]}, "proxies[0].localIP", "neither an IP address nor a host name"),
        ({"proxies": [tcp(remotePort=70000)]}, "proxies[0].remotePort", "not a port (0-65535; 0 = the node picks"),
        (
            {"proxies": [tcp(subdomain="x")]},
            "proxies[0].subdomain",
            "not a field of tcp proxies (only http, https, tcpmux)",
        ),
        ({"proxies": [tcp(secretKey="x")]}, "proxies[0].secretKey", "not a field of tcp proxies (only stcp, sudp"),
        ({"proxies": [tcp(type="http", customDomains=["a.com"], remotePort=80)]}, "proxies[0].remotePort", "only tcp"),
        ({"proxies": [tcp(type="https", subdomain="s", locations=["/"])]}, "proxies[0].locations", "only http"),
        ({"proxies": [tcp(type="http")]}, "proxies[0].customDomains", "needs customDomains or a subdomain"),
        (
            {"proxies": [tcp(type="http", customDomains=["a.com", "not a domain"])]},
            "proxies[0].customDomains[1]",
            "'not a domain' is not a domain name",
        ),
        ({"proxies": [tcp(type="http", subdomain="a_b")]}, "proxies[0].subdomain", "not a valid subdomain label"),
        (
            {"proxies": [tcp(type="http", subdomain="s", locations=["api"])]},
            "proxies[0].locations[0]",
            "start with '/'",
        ),
        ({"proxies": [tcp(type="http", subdomain="s", httpUser="u")]}, "proxies[0].httpPassword", "go together"),
        (
            {"proxies": [tcp(type="http", subdomain="s", requestHeaders={"set": {"bad header": "x"}})]},
            "proxies[0].requestHeaders.set",
            "'bad header' is not a header name",
        ),
        ({"proxies": [tcp(type="stcp")]}, "proxies[0].secretKey", "required for stcp proxies"),
        ({"proxies": [tcp(type="xtcp", secretKey="k", allowUsers="a")]}, "proxies[0].allowUsers", "list of strings"),
        ({"proxies": [tcp(transport={"bandwidthLimit": "10Mbps"})]}, "proxies[0].transport.bandwidthLimit", "'10KB'"),
        (
            {"proxies": [tcp(transport={"bandwidthLimitMode": "both"})]},
            "proxies[0].transport.bandwidthLimitMode",
            "'client'",
        ),
        (
            {"proxies": [tcp(transport={"proxyProtocolVersion": "v3"})]},
            "proxies[0].transport.proxyProtocolVersion",
            "v1",
        ),
        (
            {"proxies": [tcp(type="udp", transport={"proxyProtocolVersion": "v1"})]},
            "proxies[0].transport.proxyProtocolVersion",
            "tcp-like proxies only",
        ),
        ({"proxies": [tcp(transport={"useEncryption": 1})]}, "proxies[0].transport.useEncryption", "true or false"),
        (
            {"proxies": [tcp(loadBalancer={"groupKey": "k"})]},
            "proxies[0].loadBalancer.groupKey",
            "set loadBalancer.group",
        ),
        ({"proxies": [tcp(healthCheck={"type": "icmp"})]}, "proxies[0].healthCheck.type", "'tcp' or 'http'"),
        ({"proxies": [tcp(healthCheck={"type": "http"})]}, "proxies[0].healthCheck.path", "starting with '/'"),
        ({"proxies": [tcp(healthCheck={"type": "tcp", "path": "/"})]}, "proxies[0].healthCheck.path", "only for http"),
        (
            {"proxies": [tcp(healthCheck={"type": "tcp", "maxFailed": 0})]},
            "proxies[0].healthCheck.maxFailed",
            "least 1",
        ),
        (
            {"proxies": [tcp(healthCheck={"type": "http", "path": "/", "httpHeaders": [{"value": "1"}]})]},
            "proxies[0].healthCheck.httpHeaders[0].name",
            "required",
        ),
        ({"proxies": [tcp(metadatas={"a": {"b": "c"}})]}, "proxies[0].metadatas.a", "expected a string, got a table"),
        ({"proxies": [tcp(routeByHTTPUser="u")]}, "proxies[0].routeByHTTPUser", "not a field of tcp proxies"),
        ({"proxies": [tcp(name="x" * 129)]}, "proxies[0].name", "at most 128 characters"),
        ({"user": "u" * 100, "proxies": [tcp(name="x" * 28)]}, "proxies[0].name", "at most 128 characters"),
    ],
)
def test_every_problem_names_its_field(data: dict[str, Any], path: str, message: str) -> None:
    found = problems(data, env={})
    assert path in found, found
    assert message in found[path]


VISITOR = {"name": "v", "type": "stcp", "serverName": "s", "secretKey": "k", "bindPort": 9000}


@pytest.mark.parametrize(
    ("visitors", "path", "message"),
    [
        ([{**VISITOR, "type": "tcp"}], "visitors[0].type", "must be one of stcp, sudp, xtcp, got 'tcp'"),
        ([{**VISITOR, "serverName": ""}], "visitors[0].serverName", "required"),
        ([{**VISITOR, "secretKey": ""}], "visitors[0].secretKey", "required"),
        ([{k: v for k, v in VISITOR.items() if k != "bindPort"}], "visitors[0].bindPort", "required (1-65535, or -1"),
        ([{**VISITOR, "bindPort": 0}], "visitors[0].bindPort", "0 is not a port"),
        ([{**VISITOR, "type": "sudp", "bindPort": -1}], "visitors[0].bindPort", "sudp visitors need a port"),
        ([{**VISITOR, "bindAddr": "no such"}], "visitors[0].bindAddr", "neither an IP address"),
        ([{**VISITOR, "keepTunnelOpen": True}], "visitors[0].keepTunnelOpen", "only for xtcp visitors"),
        ([{**VISITOR, "plugin": {"type": "socks5"}}], "visitors[0].plugin.type", "the only visitor plugin"),
        ([VISITOR, {**VISITOR, "name": "w"}], "visitors[1].bindPort", "port 9000 is already bound by visitors[0]"),
        ([{**VISITOR, "type": "xtcp", "fallbackTo": "nope"}], "visitors[0].fallbackTo", "no visitor is named 'nope'"),
        (
            [{**VISITOR, "type": "xtcp", "fallbackTo": "w"}, {**VISITOR, "name": "w", "type": "sudp", "bindPort": 1}],
            "visitors[0].fallbackTo",
            "'w' is not an stcp visitor (sudp)",
        ),
        ([{**VISITOR, "type": "xtcp", "fallbackTimeoutMs": -5}], "visitors[0].fallbackTimeoutMs", "at least 0"),
    ],
)
def test_visitor_problems_name_their_field(visitors: list[dict[str, Any]], path: str, message: str) -> None:
    found = problems({"visitors": visitors}, env={})
    assert path in found, found
    assert message in found[path]


def test_all_problems_are_reported_in_file_order() -> None:
    data = {
        "serverPort": 0,
        "proxies": [
            {"name": "a", "type": "tcp", "localPort": 0, "remotPort": 1},
            {"name": "b", "type": "http", "localPort": 80},
        ],
        "visitors": [{"name": "v", "type": "stcp"}],
        "log": {"level": "x"},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, "agent.toml", env={})
    assert [path for path, _ in info.value.problems] == [
        "serverPort",
        "log.level",
        "proxies[0].remotPort",
        "proxies[0].localPort",
        "proxies[1].customDomains",
        "visitors[0].serverName",
        "visitors[0].secretKey",
        "visitors[0].bindPort",
    ]
    assert str(info.value).splitlines()[0] == "serverPort: 0 is not a port (1-65535)"


def test_plugin_problems_name_their_field(tmp_path: pathlib.Path) -> None:
    found = problems({"proxies": [
        tcp(name="a", plugin={"type": "socks5", "username": "a"}),
        tcp(name="b", plugin={"type": "static_file", "localPath": str(tmp_path / "none"), "unixPath": "/x"}),
        tcp(name="c", plugin={"type": "https2http", "crtPath": __file__}),
        tcp(name="d", plugin={"type": "gopher"}),
        tcp(name="e", type="udp", plugin={"type": "socks5"}),
    ]}, env={})  # fmt: skip
    assert found["proxies[0].plugin.password"] == "username and password go together"
    assert found["proxies[1].plugin.localPath"].startswith("no such directory")
    assert found["proxies[1].plugin.unixPath"].startswith("not a field of the static_file plugin")
    assert found["proxies[2].plugin.localAddr"] == "required for the https2http plugin"
    assert found["proxies[2].plugin.keyPath"] == "crtPath and keyPath go together"
    assert found["proxies[3].plugin.type"].startswith("required: one of unix_domain_socket, http_proxy")
    assert found["proxies[4].plugin"].startswith("not a field of udp proxies")


def test_a_plugin_takes_the_place_of_the_local_service(tmp_path: pathlib.Path) -> None:
    (tmp_path / "www").mkdir()
    config = parse_config({"proxies": [
        {"name": "files", "type": "tcp", "remotePort": 6006,
         "plugin": {"type": "static_file", "localPath": "www", "stripPrefix": "/static/", "httpUser": "u",
                    "httpPassword": "p"}},
        {"name": "web", "type": "http", "customDomains": ["a.example.com"], "localPort": 80,
         "plugin": {"type": "http2http", "localAddr": "127.0.0.1:8080", "hostHeaderRewrite": "in.example",
                    "requestHeaders": {"set": {"x-from-where": "frp"}}}},
    ]}, base_dir=tmp_path, env={})  # fmt: skip
    files, web = config.proxies
    assert files.local_port == 0 and files.plugin == PluginConfig(
        type="static_file", local_path=str(tmp_path / "www"), strip_prefix="static", user="u", password="p"
    )
    assert web.plugin is not None and (web.plugin.local_host, web.plugin.local_port) == ("127.0.0.1", 8080)
    assert web.plugin.request_headers == (("x-from-where", "frp"),)
    assert any("localIP and localPort are not used" in n for n in config.notes)


def test_the_connection_to_the_node_can_go_through_a_proxy_from_a_local_address() -> None:
    config = parse_config({"transport": {"connectServerLocalIP": "127.0.0.1", "proxyURL": "socks5://u:p@h:1080"}},
                          env={})  # fmt: skip
    assert (config.connect_local_ip, config.proxy_url) == ("127.0.0.1", "socks5://u:p@h:1080")
    from_env = parse_config({}, env={"http_proxy": "http://proxy.example:3128"})  # as frp
    assert from_env.proxy_url == "http://proxy.example:3128"


def test_tcpmux_and_route_by_http_user_reach_the_node_request() -> None:
    config = parse_config({"user": "me", "proxies": [
        {"name": "mux", "type": "tcpmux", "multiplexer": "httpconnect", "localPort": 22,
         "customDomains": ["tunnel1"], "routeByHTTPUser": "alice", "httpUser": "alice", "httpPassword": "pw"},
    ]}, env={})  # fmt: skip
    (request,) = config.requests()
    assert (request.name, request.proxy_type) == ("me.mux", "tcpmux")
    o = request.options
    assert (o.custom_domains, o.route_by_http_user, o.http_user, o.http_password) == (("tunnel1",), "alice", "alice",
                                                                                       "pw")  # fmt: skip
    with pytest.raises(ConfigError, match="httpUser: must be routeByHTTPUser's user"):
        wrong = {"name": "w", "type": "http", "localPort": 80, "customDomains": ["a.b"], "routeByHTTPUser": "alice",
                 "httpUser": "bob", "httpPassword": "x"}  # fmt: skip
        parse_config({"proxies": [wrong]}, env={})


def test_frp_fields_we_do_not_need_are_noted_not_refused() -> None:
    config = parse_config(
        {
            "transport": {"poolCount": 5, "tcpMux": True, "dialServerKeepalive": 7200, "tls": {"enable": False}},
            "natHoleStunServer": "stun.example.com:3478",
            "log": {"to": "console", "maxDays": 3},
            "auth": {"token": "t"},
        },
        env={},
    )
    noted = {note.split(":")[0] for note in config.notes}
    assert noted == {"transport.poolCount", "transport.dialServerKeepalive", "natHoleStunServer", "log.maxDays"}
    assert config.tls == TlsConfig(enable=False)


# --------------------------------------------------------------------------- templating


def test_env_templates_quoted_and_unquoted(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path / "a.toml",
        """\
        serverAddr = "{{ .Envs.HOST }}"
        serverPort = {{.Envs.PORT}}
        auth.token = "pre-{{ .Envs.TOKEN }}-post"
        """,
    )
    config = load_config(path, env={"HOST": "node.local", "PORT": "7001", "TOKEN": "t"})
    assert (config.server_addr, config.server_port, config.token) == ("node.local", 7001, "pre-t-post")


def test_unset_env_var_is_an_error_naming_it_and_the_field(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path / "a.toml", 'auth.token = "{{ .Envs.NOPE }}"\n[[proxies]]\nname = "p"\ntype = "tcp"\nlocalPort = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == [("auth.token", "environment variable NOPE is not set ({{ .Envs.NOPE }})")]


def test_unset_env_var_where_toml_needs_a_value_names_the_line(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path / "a.toml", 'serverAddr = "h"\nserverPort = {{ .Envs.NOPE }}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems[0] == ("line 2", "environment variable NOPE is not set")
    assert "not valid TOML" in info.value.problems[1][1]


def test_templates_in_parsed_data_and_unsupported_ones() -> None:
    config = parse_config({"proxies": [tcp(localPort="{{ .Envs.P }}")]}, env={"P": "2222"})
    assert config.proxies[0].local_port == 2222
    found = problems({"user": "{{ .Files.x }}", "auth": {"token": "{{ .Envs.MISSING }}"}}, env={})
    assert found == {
        "user": "unsupported template {{ .Files.x }}: only {{ .Envs.NAME }} is supported",
        "auth.token": "environment variable MISSING is not set ({{ .Envs.MISSING }})",
    }


# --------------------------------------------------------------------------- includes, start, enabled, files


def test_includes_add_proxies_and_name_their_files(tmp_path: pathlib.Path) -> None:
    main = write(
        tmp_path / "flux-tunnel.toml",
        'includes = ["conf.d/*.toml", "extra/*.yaml", "none/*.toml"]\n'
        '[[proxies]]\nname = "a"\ntype = "tcp"\nlocalPort = 1\n',
    )
    write(tmp_path / "conf.d" / "b.toml", '[[proxies]]\nname = "b"\ntype = "udp"\nlocalPort = {{ .Envs.B_PORT }}\n')
    write(
        tmp_path / "conf.d" / "c.toml",
        '[[visitors]]\nname = "c"\ntype = "stcp"\nserverName = "x"\nsecretKey = "k"\nbindPort = 9\n',
    )
    write(tmp_path / "extra" / "d.yaml", "proxies:\n  - {name: d, type: tcp, localPort: 4}\n")
    write(tmp_path / "conf.d" / "ignored.txt", "not matched")
    config = load_config(main, env={"B_PORT": "2"})
    assert [(p.name, p.local_port) for p in config.proxies] == [("a", 1), ("b", 2), ("d", 4)]
    assert [v.name for v in config.visitors] == ["c"]
    assert "includes[2]: 'none/*.toml' matches no file" in config.notes

    write(tmp_path / "conf.d" / "b.toml", '[[proxies]]\nname = "a"\ntype = "udp"\nlocalPort = 0\n')
    write(
        tmp_path / "extra" / "d.yaml", "serverAddr: h\nproxies:\n  - {name: d, type: tcp, localPort: 4, remotPort: 1}\n"
    )
    write(tmp_path / "conf.d" / "c.toml", "[[visitors]\n")
    with pytest.raises(ConfigError) as info:
        load_config(main, env={})
    assert info.value.lines() == [
        "conf.d/c.toml: not valid TOML: Expected ']]' at the end of an array declaration (at line 1, column 11)",
        "extra/d.yaml:serverAddr: unknown field",
        "conf.d/b.toml:proxies[0].name: duplicate name 'a' (also proxies[0].name)",
        "conf.d/b.toml:proxies[0].localPort: 0 is not a port (1-65535: the local service's port)",
        "extra/d.yaml:proxies[0].remotPort: unknown field (did you mean remotePort?)",
    ]


def test_a_config_matching_its_own_include_is_read_once(tmp_path: pathlib.Path) -> None:
    main = write(tmp_path / "all.toml", 'includes = ["*.toml"]\n[[proxies]]\nname = "a"\ntype = "tcp"\nlocalPort = 1\n')
    assert [p.name for p in load_config(main, env={}).proxies] == ["a"]


def test_start_and_enabled_choose_what_runs() -> None:
    data = {
        "start": ["a", "v"],
        "proxies": [tcp(name="a"), tcp(name="b"), tcp(name="c", enabled=False)],
        "visitors": [VISITOR, {**VISITOR, "name": "w", "bindPort": 9001}],
    }
    config = parse_config(data, env={})
    assert ([p.name for p in config.proxies], [v.name for v in config.visitors]) == (["a"], ["v"])
    config = parse_config({"proxies": data["proxies"]}, env={})
    assert [p.name for p in config.proxies] == ["a", "b"]
    assert "proxies[2]: disabled (enabled = false)" in config.notes


def test_relative_files_come_from_the_config_directory(tmp_path: pathlib.Path) -> None:
    for name in ("ca.pem", "client.crt", "client.key", "token.txt"):
        write(tmp_path / "etc" / name, "x-token\n")
    path = write(
        tmp_path / "etc" / "agent.toml",
        """\
        auth.tokenSource.type = "file"
        auth.tokenSource.file.path = "token.txt"
        transport.tls.trustedCaFile = "ca.pem"
        transport.tls.certFile = "client.crt"
        transport.tls.keyFile = "client.key"
        transport.tls.insecureSkipVerify = true
        log.to = "agent.log"
        """,
    )
    config = load_config(path, env={})
    etc = tmp_path / "etc"
    assert config.token == "x-token"
    assert config.tls == TlsConfig(
        trusted_ca_file=str(etc / "ca.pem"),
        cert_file=str(etc / "client.crt"),
        key_file=str(etc / "client.key"),
        insecure_skip_verify=True,
    )
    assert config.log_to == str(etc / "agent.log")
    assert any("NOT checked" in note for note in config.notes)


# --------------------------------------------------------------------------- bandwidth


@pytest.mark.parametrize(
    ("text", "rate"),
    [("", 0), ("10KB", 10240), ("1MB", 1048576), ("1.5MB", 1572864), ("0.5KB", 512), ("2 kb", 2048)],
)
def test_bandwidth_syntax(text: str, rate: int) -> None:
    assert parse_bandwidth(text) == rate


@pytest.mark.parametrize("text", ["10", "10GB", "1e3KB", "-1KB", "KB"])
def test_bad_bandwidth(text: str) -> None:
    with pytest.raises(ValueError, match="10KB"):
        parse_bandwidth(text)


@given(st.integers(min_value=0, max_value=2**45))
def test_bandwidth_formats_back_exactly(rate: int) -> None:
    assert parse_bandwidth(format_bandwidth(rate)) == rate


def test_bandwidth_is_sent_to_the_node_only_in_server_mode() -> None:
    client, server = parse_config(
        {
            "proxies": [
                tcp(name="c", transport={"bandwidthLimit": "10KB"}),
                tcp(name="s", transport={"bandwidthLimit": "10KB", "bandwidthLimitMode": "server"}),
            ]
        },
        env={},
    ).proxies
    assert (client.bandwidth_limit, client.options.bandwidth_limit) == (10240, 0)
    assert (server.bandwidth_limit, server.options.bandwidth_limit) == (10240, 10240)


# --------------------------------------------------------------------------- round trips


def test_the_realistic_config_dumps_and_parses_back(frpc: pathlib.Path) -> None:
    config = load_config(frpc, env=ENV)
    text = to_toml(dump_config(config))
    assert parse_config(tomllib.loads(text), str(frpc), env={}) == config
    assert parse_config(yaml.safe_load(yaml.safe_dump(dump_config(config))), str(frpc), env={}) == config


_free_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(lambda t: "{{" not in t)
_some_text = _free_text.filter(bool)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_domain = st.builds(
    lambda wild, labels: ("*." if wild else "") + ".".join(labels),
    st.booleans(),
    st.lists(_label, min_size=1, max_size=3),
)
_header_name = st.from_regex(r"[A-Za-z0-9-]{1,10}", fullmatch=True)
# Printable latin-1 (and tab): what the node's rewrite policies can send.
_header_value = st.text(
    st.one_of(st.just("\t"), st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_categories=("Cc",))),
    max_size=12,
).filter(lambda t: "{{" not in t)
_host = st.builds(
    lambda labels, port: ".".join(labels) + (f":{port}" if port else ""),
    st.lists(_label, min_size=1, max_size=3),
    st.one_of(st.none(), st.integers(1, 65535)),
)
_map = st.dictionaries(_some_text, _free_text, max_size=3)


@st.composite
def proxy_configs(draw: st.DrawFn) -> ProxyConfig:
    ptype = draw(st.sampled_from(["tcp", "udp", "http", "https", "stcp", "sudp", "xtcp"]))
    o: dict[str, Any] = {
        "use_encryption": draw(st.booleans()),
        "use_compression": draw(st.booleans()),
        "metadata": draw(_map),
    }
    if draw(st.booleans()):
        o["group"] = draw(_some_text)
        o["group_key"] = draw(_free_text)
    if ptype in ("tcp", "udp"):
        o["remote_port"] = draw(st.integers(0, 65535))
    if ptype in ("http", "https"):
        o["custom_domains"] = tuple(draw(st.lists(_domain, max_size=3)))
        o["subdomain"] = draw(st.one_of(st.just(""), _label) if o["custom_domains"] else _label)
    if ptype == "http":
        o["locations"] = tuple(draw(st.lists(st.builds(lambda t: "/" + t, _free_text), max_size=3)))
        if draw(st.booleans()):
            o["http_user"], o["http_password"] = draw(_some_text), draw(_some_text)
        o["host_header_rewrite"] = draw(st.one_of(st.just(""), _host))
        o["request_headers"] = draw(st.dictionaries(_header_name, _header_value, max_size=3))
        o["response_headers"] = draw(st.dictionaries(_header_name, _header_value, max_size=3))
    if ptype in ("stcp", "sudp", "xtcp"):
        o["secret_key"] = draw(_some_text)
        o["allow_users"] = tuple(draw(st.lists(_some_text, max_size=3)))
    if ptype not in ("udp", "sudp"):
        o["proxy_protocol"] = draw(st.sampled_from(["", "v1", "v2"]))
    rate = draw(st.integers(0, 2**40))
    mode = draw(st.sampled_from(["client", "server"]))
    o["bandwidth_limit"] = rate if mode == "server" else 0
    health = draw(
        st.one_of(
            st.none(),
            st.builds(
                HealthCheckConfig,
                type=st.just("tcp"),
                timeout_seconds=st.integers(1, 60),
                max_failed=st.integers(1, 10),
                interval_seconds=st.integers(1, 600),
            ),
            st.builds(
                HealthCheckConfig,
                type=st.just("http"),
                path=st.builds(lambda t: "/" + t, _free_text),
                http_headers=st.lists(st.tuples(_some_text, _free_text), max_size=2).map(tuple),
            ),
        )
    )
    return ProxyConfig(
        name=draw(st.from_regex(r"[A-Za-z0-9_.-]{1,40}", fullmatch=True)),
        type=ptype,
        local_ip=draw(st.sampled_from(["127.0.0.1", "10.1.2.3", "::1", "localhost", "db.internal"])),
        local_port=draw(st.integers(1, 65535)),
        options=ProxyOptions(**o),
        bandwidth_limit=rate,
        bandwidth_limit_mode=mode,
        health_check=health,
        annotations=draw(_map),
    )


_round_trip = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_round_trip
@given(proxy_configs(), st.sampled_from(["", "team"]))
def test_random_proxies_round_trip_through_toml(proxy: ProxyConfig, user: str) -> None:
    text = to_toml({"user": user, "proxies": [dump_proxy(proxy)]})
    config = parse_config(tomllib.loads(text), env={})
    assert config.proxies == (proxy,)
    assert config.requests()[0] == proxy.request(user)


@_round_trip
@given(proxy_configs(), st.sampled_from(["camel", "snake", "dotted", "yaml"]))
def test_random_proxies_round_trip_through_json_and_yaml(proxy: ProxyConfig, style: str) -> None:
    doc: Any = {"proxies": [dump_proxy(proxy)]}
    if style == "snake":
        doc = snake_keys(doc)
    if style == "dotted":
        doc = dotted_keys(doc)
    text = yaml.safe_dump(doc) if style == "yaml" else json.dumps(doc)
    fmt = "yaml" if style == "yaml" else "json"
    assert parse_config(parse_text(text, fmt), env={}).proxies == (proxy,)
