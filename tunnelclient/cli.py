"""`flux-tunnel`'s command line: what to do, from argv; the agent itself is tunnelclient/agent.py.

    flux-tunnel [-c flux-tunnel.toml]               run the agent on a config file
    flux-tunnel verify [-c FILE]                    check a config file, say what is wrong by field
    flux-tunnel tcp --server HOST:7000 --token T --local-port 22 --remote-port 6022
    flux-tunnel udp|http|https|stcp|sudp|xtcp ...   one proxy from flags (frp's quick forms)
    flux-tunnel stcp-visitor|sudp-visitor|xtcp-visitor --server-name NAME --secret-key K --bind-port P

`parse_args(argv)` is pure: it reads no file and starts nothing, and answers a `Command`
(quick forms come with their `AgentConfig` built and checked; help and version with the text
to print) or raises `UsageError` (exit status 2). `main(argv)` does the I/O: loads the file,
prints, sets up logging and runs ``tunnelclient.agent.run_agent`` under trio.

Quick forms build an frpc-style document from the flags and check it with
`tunnelclient.config.parse_config`, so they obey exactly the rules of a config file; problems
are reported by flag (``--local-port: required``). ``--print-config`` prints that document as
TOML instead of running: the way from a quick form to a config file.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from fluxcommon.logs import setup_logging
from fluxcommon.netaddr import split_host_port
from fluxcommon.tunnel.protocol.control import PROTOCOL_VERSION
from fluxcommon.version import version_text
from tunnelclient.config import (
    LOG_LEVELS,
    AgentConfig,
    ConfigError,
    load_config,
    parse_config,
)
from tunnelclient.config_dump import dump_config, to_toml

__all__ = ["DEFAULT_CONFIG", "TOKEN_ENV", "Command", "UsageError", "main", "parse_args"]

PROG = "flux-tunnel"
DEFAULT_CONFIG = "flux-tunnel.toml"
TOKEN_ENV = "FLUX_TUNNEL_TOKEN"
QUICK_SOURCE = "<command line>"
PROXY_FORMS = ("tcp", "udp", "http", "https", "stcp", "sudp", "xtcp")
VISITOR_FORMS = ("stcp-visitor", "sudp-visitor", "xtcp-visitor")

log = logging.getLogger("flux.tunnel")


@dataclass(frozen=True)
class Command:
    """What `main` should do.

    kind "run": run the agent on `config` (a quick form) or on the file `config_path`;
    "verify": check the file `config_path`; "message": print `text`, exit with `exit_code`.
    """

    kind: Literal["run", "verify", "message"]
    config: AgentConfig | None = None
    config_path: str | None = None
    log_level: str | None = None  # --log-level, overriding the config's log.level
    text: str = ""
    exit_code: int = 0


class UsageError(Exception):
    """Bad command line; `main` prints `usage` and the message and exits with status 2."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class _Exit(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing and exiting, so parsing stays pure."""

    forms: dict[str, _Parser]

    def print_help(self, file: Any = None) -> NoReturn:
        raise _Exit(0, self.format_help())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _Exit(status, message or "")

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


class _Version(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _Exit(0, version_text(PROG, f"tunnel protocol {PROTOCOL_VERSION}") + "\n")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=VALUE")
    return name.strip(), value


def _port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None


_LEVELS = sorted(LOG_LEVELS, key=list(LOG_LEVELS).index)


def _build_parser() -> _Parser:
    root = _Parser(
        prog=PROG,
        description="FLUX tunnel agent: expose intranet services through a FLUX node (frpc-compatible config).",
        epilog=f"Quick forms: '{PROG} FORM --help', e.g. '{PROG} tcp --help'. "
        f"The token may come from ${TOKEN_ENV} instead of --token.",
        allow_abbrev=False,
    )
    root.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help=f"config file: TOML, YAML or JSON (default {DEFAULT_CONFIG})",
    )
    root.add_argument("--log-level", choices=_LEVELS, default=None, help="override the config's log.level")
    root.add_argument("-v", "--version", action=_Version, help="print the version and exit")
    sub = root.add_subparsers(dest="form", metavar="COMMAND", parser_class=_Parser)
    root.forms = {}

    def add(name: str, help_text: str, parents: Sequence[argparse.ArgumentParser] = ()) -> _Parser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=list(parents), allow_abbrev=False)
        p.add_argument("--log-level", choices=_LEVELS, default=argparse.SUPPRESS, help="log level (default info)")
        root.forms[name] = p
        return p

    for name, text in (("run", "run the agent on a config file (the default)"), ("verify", "check a config file")):
        p = add(name, text)
        p.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE", help=f"default {DEFAULT_CONFIG}")

    common = _Parser(add_help=False)
    g = common.add_argument_group("node")
    g.add_argument("-s", "--server", required=True, metavar="HOST[:PORT]", help="the node's tunnel port (:7000)")
    g.add_argument("-t", "--token", default=None, help=f"auth token (default ${TOKEN_ENV})")
    g.add_argument("-u", "--user", default="", help="prefix proxy names with USER. on the node (as frp)")
    g.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True, help="TLS to the node (default on)")
    g.add_argument("--tls-ca", metavar="FILE", default="", help="CA bundle to check the node's certificate")
    g.add_argument("--tls-cert", metavar="FILE", default="", help="client certificate (mutual TLS)")
    g.add_argument("--tls-key", metavar="FILE", default="", help="client key (mutual TLS)")
    g.add_argument("--tls-server-name", metavar="NAME", default="", help="name to check in the node's certificate")
    g.add_argument("--insecure-skip-verify", action="store_true", help="do not check the node's certificate at all")
    g.add_argument(
        "--login-fail-exit", action=argparse.BooleanOptionalAction, default=True,
        help="exit when the first login fails (default, as frp; --no-login-fail-exit retries for ever)",
    )  # fmt: skip
    g.add_argument("--print-config", action="store_true", help="print the equivalent flux-tunnel.toml and exit")
    g.add_argument("-n", "--name", default="", help="proxy/visitor name (default from the type and port)")

    proxy = _Parser(add_help=False)
    g = proxy.add_argument_group("proxy")
    g.add_argument("-i", "--local-ip", default="127.0.0.1", help="local service address (default 127.0.0.1)")
    g.add_argument("-l", "--local-port", type=_port, default=None, help="local service port (required)")
    g.add_argument("--use-encryption", action="store_true", help="encrypt work streams end to end")
    g.add_argument("--use-compression", action="store_true", help="compress work streams")
    g.add_argument("--bandwidth-limit", default="", metavar="RATE", help="e.g. 100KB or 1MB (per second)")
    g.add_argument("--bandwidth-limit-mode", choices=("client", "server"), default="client", help="who enforces it")
    g.add_argument("--group", default="", help="load-balancing group (loadBalancer.group)")
    g.add_argument("--group-key", default="", help="load-balancing group key")

    tls_alias = _Parser(add_help=False)
    tls_alias.add_argument("--server-name", dest="tls_server_name", default="", help="same as --tls-server-name")

    for form in ("tcp", "udp"):
        p = add(form, f"expose a local {form.upper()} service on a port of the node", (common, proxy, tls_alias))
        p.add_argument("-r", "--remote-port", type=_port, default=0, help="port on the node (default 0: any free)")
        if form == "tcp":
            p.add_argument("--proxy-protocol", choices=("v1", "v2"), default="", help="send PROXY protocol to it")
    for form in ("http", "https"):
        p = add(form, f"expose a local {form.upper()} service by domain name", (common, proxy, tls_alias))
        p.add_argument("-d", "--custom-domains", type=_csv, default=[], metavar="A,B", help="domains it serves")
        p.add_argument("--subdomain", default="", help="NAME under the node's subdomain host")
        if form == "http":
            p.add_argument("--locations", type=_csv, default=[], metavar="/A,/B", help="path prefixes it serves")
            p.add_argument("--http-user", default="", help="basic auth user asked of visitors")
            p.add_argument("--http-password", default="", help="basic auth password")
            p.add_argument("--host-header-rewrite", default="", metavar="HOST", help="Host header sent to it")
            p.add_argument(
                "--request-header", type=_header, action="append", default=[], metavar="NAME=VALUE", help="set header"
            )
        else:
            p.add_argument("--proxy-protocol", choices=("v1", "v2"), default="", help="send PROXY protocol to it")
    for form in ("stcp", "sudp", "xtcp"):
        kind = "reachable only through a visitor with the key" + (" (peer to peer)" if form == "xtcp" else "")
        p = add(form, f"expose a local service as a secret {form} proxy, {kind}", (common, proxy, tls_alias))
        p.add_argument("--secret-key", "--sk", required=True, help="visitors must present this key")
        p.add_argument("--allow-users", type=_csv, default=[], metavar="A,B", help="visitor users allowed ('*': all)")
        if form != "sudp":
            p.add_argument("--proxy-protocol", choices=("v1", "v2"), default="", help="send PROXY protocol to it")
    for form in VISITOR_FORMS:
        ptype = form.removesuffix("-visitor")
        p = add(form, f"open a local port onto another agent's {ptype} proxy", (common,))
        p.add_argument("--server-name", required=True, metavar="PROXY", help="the proxy to visit")
        p.add_argument("--server-user", default="", help="its agent's user (default: --user)")
        p.add_argument("--secret-key", "--sk", required=True, help="the proxy's secret key")
        p.add_argument("--bind-addr", default="127.0.0.1", help="local address to listen on (default 127.0.0.1)")
        p.add_argument("--bind-port", type=_port, required=True, help="local port to listen on")
        p.add_argument("--use-encryption", action="store_true", help="encrypt the streams end to end")
        p.add_argument("--use-compression", action="store_true", help="compress the streams")
        if ptype == "xtcp":
            p.add_argument("--keep-tunnel-open", action="store_true", help="keep the P2P path open between uses")
    return root


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Command:
    """The `Command` that `argv` (without the program name) asks for; `UsageError` when it is wrong.

    `env` (default os.environ) gives $FLUX_TUNNEL_TOKEN and ``{{ .Envs.NAME }}`` in flag values.
    """
    env = os.environ if env is None else env
    parser = _build_parser()
    try:
        args = parser.parse_args(list(argv))
    except _Exit as exc:
        return Command(kind="message", text=exc.text, exit_code=exc.status)
    form = args.form or "run"
    if form in ("run", "verify"):
        return Command(kind=form, config_path=args.config or DEFAULT_CONFIG, log_level=args.log_level)
    if args.config is not None:
        raise UsageError(f"-c/--config is not used with the quick form '{form}'", parser.format_usage())
    data = _quick_document(form, args, env)
    try:
        config = parse_config(data, QUICK_SOURCE, env=env)
    except ConfigError as exc:
        lines = [f"{_flag_of(path)}: {msg}" for path, msg in exc.problems]
        raise UsageError("\n  ".join(["invalid quick form:", *lines]), parser.forms[form].format_usage()) from None
    if args.print_config:
        doc = dump_config(config)
        if args.token is None and config.token:  # the token came from the environment: leave it there
            doc["auth"]["token"] = f"{{{{ .Envs.{TOKEN_ENV} }}}}"
        return Command(kind="message", text=to_toml(doc))
    return Command(kind="run", config=config, log_level=args.log_level)


def _quick_document(form: str, args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """The frpc-style document a quick form stands for."""
    try:
        host, port = split_host_port(args.server, default_port=7000)
    except ValueError as exc:
        raise UsageError(f"--server: {exc}") from None
    token = args.token if args.token is not None else env.get(TOKEN_ENV, "")
    tls: dict[str, Any] = {"enable": args.tls}
    for key, value in (
        ("trustedCaFile", args.tls_ca),
        ("certFile", args.tls_cert),
        ("keyFile", args.tls_key),
        ("serverName", args.tls_server_name),
        ("insecureSkipVerify", args.insecure_skip_verify),
    ):
        if value:
            tls[key] = value
    doc: dict[str, Any] = {
        "serverAddr": host,
        "serverPort": port,
        "user": args.user,
        "loginFailExit": args.login_fail_exit,
        "auth": {"token": token},
        "transport": {"tls": tls},
    }
    if form in VISITOR_FORMS:
        visitor: dict[str, Any] = {
            "name": args.name or f"{args.server_name}-visitor",
            "type": form.removesuffix("-visitor"),
            "serverName": args.server_name,
            "secretKey": args.secret_key,
            "bindAddr": args.bind_addr,
            "bindPort": args.bind_port,
            "transport": {"useEncryption": args.use_encryption, "useCompression": args.use_compression},
        }
        if args.server_user:
            visitor["serverUser"] = args.server_user
        if getattr(args, "keep_tunnel_open", False):
            visitor["keepTunnelOpen"] = True
        doc["visitors"] = [visitor]
        return doc
    proxy: dict[str, Any] = {
        "name": args.name or f"{form}-{args.local_port}",
        "type": form,
        "localIP": args.local_ip,
        "transport": {
            "useEncryption": args.use_encryption,
            "useCompression": args.use_compression,
            "bandwidthLimitMode": args.bandwidth_limit_mode,
        },
    }
    if args.local_port is not None:
        proxy["localPort"] = args.local_port
    if args.bandwidth_limit:
        proxy["transport"]["bandwidthLimit"] = args.bandwidth_limit
    if getattr(args, "proxy_protocol", ""):
        proxy["transport"]["proxyProtocolVersion"] = args.proxy_protocol
    if args.group or args.group_key:
        proxy["loadBalancer"] = {"group": args.group, "groupKey": args.group_key}
    for attr, key in (
        ("remote_port", "remotePort"),
        ("custom_domains", "customDomains"),
        ("subdomain", "subdomain"),
        ("locations", "locations"),
        ("http_user", "httpUser"),
        ("http_password", "httpPassword"),
        ("host_header_rewrite", "hostHeaderRewrite"),
        ("secret_key", "secretKey"),
        ("allow_users", "allowUsers"),
    ):
        value = getattr(args, attr, None)
        if value or (attr == "remote_port" and value is not None):
            proxy[key] = value
    if getattr(args, "request_header", None):
        proxy["requestHeaders"] = {"set": dict(args.request_header)}
    doc["proxies"] = [proxy]
    return doc


# frp path (after proxies[0]. / visitors[0].) -> the quick form's flag.
_FLAGS = {
    "serverAddr": "--server",
    "serverPort": "--server",
    "user": "--user",
    "auth.token": "--token",
    "transport.tls.trustedCaFile": "--tls-ca",
    "transport.tls.certFile": "--tls-cert",
    "transport.tls.keyFile": "--tls-key",
    "transport.tls.serverName": "--tls-server-name",
    "name": "--name",
    "localIP": "--local-ip",
    "localPort": "--local-port",
    "remotePort": "--remote-port",
    "customDomains": "--custom-domains",
    "subdomain": "--subdomain",
    "locations": "--locations",
    "httpUser": "--http-user",
    "httpPassword": "--http-password",
    "hostHeaderRewrite": "--host-header-rewrite",
    "requestHeaders.set": "--request-header",
    "secretKey": "--secret-key",
    "allowUsers": "--allow-users",
    "transport.bandwidthLimit": "--bandwidth-limit",
    "transport.proxyProtocolVersion": "--proxy-protocol",
    "loadBalancer.group": "--group",
    "loadBalancer.groupKey": "--group-key",
    "serverName": "--server-name",
    "serverUser": "--server-user",
    "bindAddr": "--bind-addr",
    "bindPort": "--bind-port",
}


def _flag_of(path: str) -> str:
    """ "proxies[0].customDomains[1]" -> "--custom-domains"; unknown paths are left as they are."""
    field = re.sub(r"^(proxies|visitors)\[0\]\.", "", path)
    while field:
        if field in _FLAGS:
            return _FLAGS[field]
        stripped = re.sub(r"(\[\d+\]|\.[^.\[]*)$", "", field)
        if stripped == field:
            break
        field = stripped
    return path


# --------------------------------------------------------------------------- doing it


def _plural(n: int, word: str, words: str) -> str:
    return f"{n} {word if n == 1 else words}"


def _verify(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line)
        print(f"{path}: {_plural(len(exc.problems), 'problem', 'problems')}")
        return 1
    counts = (
        f"{_plural(len(config.proxies), 'proxy', 'proxies')}, {_plural(len(config.visitors), 'visitor', 'visitors')}"
    )
    print(f"{path}: OK ({counts})")
    for note in config.notes:
        print(f"  note: {note}")
    return 0


def _setup_logging(level: str, log_to: str) -> None:
    setup_logging(LOG_LEVELS.get(level, level))
    if log_to != "console":
        root = logging.getLogger()
        handler = logging.FileHandler(log_to, encoding="utf-8")
        handler.setFormatter(root.handlers[0].formatter)
        root.handlers[:] = [handler]


def _run(config: AgentConfig, config_path: str | None, log_level: str | None) -> int:
    try:
        _setup_logging(log_level or config.log_level, config.log_to)
    except OSError as exc:
        print(f"{PROG}: log.to: cannot open {config.log_to}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for note in config.notes:
        log.warning("config: %s", note)
    import trio

    from tunnelclient import agent
    from tunnelclient.errors import start_errors

    try:  # a quick form serves one proxy: when the node refuses it there is nothing to run for
        return trio.run(functools.partial(agent.run_agent, config, config_path, exit_on_refusal=config_path is None))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # a StartError (in trio's exception groups) is one line; the rest is raised
        errors = start_errors(exc)
        if errors is None:
            raise
        for error in errors:
            log.debug("cannot start: %s", error)
            print(f"{PROG}: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run `flux-tunnel` with `argv` (default sys.argv[1:]); the exit status."""
    try:
        cmd = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(exc.usage, end="", file=sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if cmd.kind == "message":
        print(cmd.text, end="", file=sys.stdout if cmd.exit_code == 0 else sys.stderr)
        return cmd.exit_code
    assert cmd.config_path is not None or cmd.config is not None
    if cmd.kind == "verify":
        return _verify(cmd.config_path or DEFAULT_CONFIG)
    config = cmd.config
    if config is None:
        path = cmd.config_path or DEFAULT_CONFIG
        try:
            config = load_config(path)
        except ConfigError as exc:
            for line in exc.lines():
                print(f"{PROG}: {line}", file=sys.stderr)
            if path == DEFAULT_CONFIG and "cannot read" in str(exc):
                print(
                    f"{PROG}: give a config file with -c FILE, or use a quick form ({PROG} tcp --help)", file=sys.stderr
                )
            return 1
    return _run(config, cmd.config_path, cmd.log_level)


if __name__ == "__main__":
    sys.exit(main())
