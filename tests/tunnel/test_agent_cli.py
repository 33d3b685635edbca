"""`flux-tunnel`'s command line (`tunnelclient.cli`): parsing is pure and tested directly; `main` for verify.

The run path needs the agent runtime, so here it is checked up to the `Command` that `main`
dispatches (and up to a bad config, which never reaches the runtime). A few tests start the
real `python -m tunnelclient.cli` child process for exit codes and output.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

import pytest

from fluxcommon.tunnel.protocol.messages import PROTOCOL_VERSION
from fluxcommon.tunnel.protocol.proxies import ProxyOptions
from tunnelclient.cli import DEFAULT_CONFIG, TOKEN_ENV, Command, UsageError, main, parse_args
from tunnelclient.config import AgentConfig, ProxyConfig, TlsConfig, VisitorConfig, parse_config

REPO = pathlib.Path(__file__).resolve().parents[2]
NODE = ["--server", "node.example.com:7001", "--token", "T"]

CONFIG = """\
serverAddr = "node.example.com"
auth.token = "t"
transport.poolCount = 4

[[proxies]]
name = "ssh"
type = "tcp"
localPort = 22
remotePort = 6022

[[proxies]]
name = "dns"
type = "udp"
localPort = 53

[[proxies]]
name = "web"
type = "http"
localPort = 80
subdomain = "web"

[[visitors]]
name = "db"
type = "stcp"
serverName = "db"
secretKey = "k"
bindPort = 9000
"""

BROKEN = """\
serverAddr = "node.example.com"

[[proxies]]
name = "ssh"
type = "tcp"
localPort = 22

[[proxies]]
name = "web"
type = "http"
localPort = 0
remotPort = 80
"""


def quick(*argv: str, env: dict[str, str] | None = None) -> AgentConfig:
    cmd = parse_args(list(argv), env=env or {})
    assert cmd.kind == "run" and cmd.config is not None and cmd.config_path is None
    return cmd.config


def usage_error(*argv: str) -> str:
    with pytest.raises(UsageError) as info:
        parse_args(list(argv), env={})
    return str(info.value)


# --------------------------------------------------------------------------- parse_args: files


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], Command(kind="run", config_path=DEFAULT_CONFIG)),
        (["-c", "a.yaml"], Command(kind="run", config_path="a.yaml")),
        (["--config", "a.json", "--log-level", "debug"], Command(kind="run", config_path="a.json", log_level="debug")),
        (["run", "-c", "a.toml"], Command(kind="run", config_path="a.toml")),
        (["verify"], Command(kind="verify", config_path=DEFAULT_CONFIG)),
        (["verify", "-c", "a.toml"], Command(kind="verify", config_path="a.toml")),
        (["-c", "a.toml", "verify"], Command(kind="verify", config_path="a.toml")),
        (["--log-level", "warn", "verify", "-c", "b"], Command(kind="verify", config_path="b", log_level="warn")),
    ],
)
def test_file_commands(argv: list[str], expected: Command) -> None:
    assert parse_args(argv, env={}) == expected


def test_version_and_help_are_messages() -> None:
    version = parse_args(["--version"], env={})
    assert version.kind == "message" and version.exit_code == 0
    assert version.text.startswith("flux-tunnel ") and f"tunnel protocol {PROTOCOL_VERSION}" in version.text
    assert "(FLUX Gateway; Python " in version.text  # worded as every other command's --version
    helped = parse_args(["--help"], env={})
    assert helped.kind == "message" and helped.exit_code == 0 and "Quick forms" in helped.text
    tcp_help = parse_args(["tcp", "--help"], env={})
    assert "--remote-port" in tcp_help.text and "--local-port" in tcp_help.text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "invalid choice: 'bogus'"),
        (["--log-level", "loud"], "invalid choice: 'loud'"),
        (["verify", "extra"], "unrecognized arguments: extra"),
        (["tcp", "--local-port", "22"], "the following arguments are required: -s/--server"),
        (["tcp", *NODE, "--local-port", "ssh"], "'ssh' is not a port number"),
        (["-c", "x.toml", "tcp", *NODE, "--local-port", "22"], "-c/--config is not used with the quick form 'tcp'"),
        (["tcp", "--server", "[::1", "--local-port", "1"], "--server: bad address"),
        (["stcp", *NODE, "--local-port", "22"], "required: --secret-key/--sk"),
        (["stcp-visitor", *NODE, "--secret-key", "k", "--bind-port", "1"], "required: --server-name"),
        (["http", *NODE, "--local-port", "80", "--remote-port", "8080"], "unrecognized arguments: --remote-port"),
        (["http", *NODE, "--local-port", "80", "--request-header", "oops"], "write NAME=VALUE"),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    assert message in usage_error(*argv)


# --------------------------------------------------------------------------- parse_args: quick forms


def test_tcp_quick_form() -> None:
    config = quick(
        "tcp",
        "-s",
        "node.example.com",
        "-t",
        "T",
        "-l",
        "22",
        "-r",
        "6022",
        "--local-ip",
        "10.0.0.2",
        "--name",
        "ssh",
        "--tls-ca",
        __file__,
        "--server-name",
        "tunnel.example.com",
        "--use-encryption",
        "--use-compression",
        "--bandwidth-limit",
        "100KB",
        "--proxy-protocol",
        "v1",
        "--user",
        "me",
    )
    assert (config.server_addr, config.server_port, config.token, config.user) == ("node.example.com", 7000, "T", "me")
    assert config.tls == TlsConfig(trusted_ca_file=__file__, server_name="tunnel.example.com")
    assert config.login_fail_exit is True  # frp's default; --no-login-fail-exit retries for ever
    assert config.proxies == (
        ProxyConfig(
            name="ssh",
            type="tcp",
            local_ip="10.0.0.2",
            local_port=22,
            options=ProxyOptions(remote_port=6022, use_encryption=True, use_compression=True, proxy_protocol="v1"),
            bandwidth_limit=100 * 1024,
        ),
    )
    assert config.requests()[0].name == "me.ssh"


def test_udp_quick_form_defaults() -> None:
    config = quick("udp", *NODE, "--local-port", "53", "--no-tls", "--login-fail-exit", "--group", "g")
    assert (config.server_port, config.tls.enable, config.login_fail_exit) == (7001, False, True)
    (proxy,) = config.proxies
    assert (proxy.name, proxy.type, proxy.local_ip, proxy.options.remote_port, proxy.options.group) == (
        "udp-53",
        "udp",
        "127.0.0.1",
        0,
        "g",
    )


def test_http_and_https_quick_forms() -> None:
    (web,) = quick(
        "http",
        *NODE,
        "-l",
        "8080",
        "--custom-domains",
        "a.com, B.com",
        "--locations",
        "/api,/static",
        "--http-user",
        "u",
        "--http-password",
        "p",
        "--host-header-rewrite",
        "localhost",
        "--request-header",
        "x-from=flux",
    ).proxies
    o = web.options
    assert (o.custom_domains, o.locations, o.http_user, o.http_password) == (
        ("a.com", "b.com"),
        ("/api", "/static"),
        "u",
        "p",
    )
    assert (o.host_header_rewrite, o.request_headers) == ("localhost", {"x-from": "flux"})
    (secure,) = quick("https", *NODE, "-l", "8443", "--subdomain", "secure", "--bandwidth-limit-mode", "server").proxies
    assert (secure.type, secure.options.subdomain, secure.bandwidth_limit_mode) == ("https", "secure", "server")


@pytest.mark.parametrize("form", ["stcp", "sudp", "xtcp"])
def test_secret_quick_forms(form: str) -> None:
    (proxy,) = quick(form, *NODE, "-l", "22", "--sk", "key", "--allow-users", "alice,bob").proxies
    assert (proxy.type, proxy.options.secret_key, proxy.options.allow_users) == (form, "key", ("alice", "bob"))


@pytest.mark.parametrize("form", ["stcp-visitor", "sudp-visitor", "xtcp-visitor"])
def test_visitor_quick_forms(form: str) -> None:
    config = quick(
        form, *NODE, "--server-name", "db", "--server-user", "hq", "--secret-key", "k", "--bind-port", "9000"
    )
    assert config.proxies == ()
    assert config.visitors == (
        VisitorConfig(
            name="db-visitor",
            type=form.removesuffix("-visitor"),  # type: ignore[arg-type]
            server_name="db",
            server_user="hq",
            secret_key="k",
            bind_port=9000,
        ),
    )
    assert config.visitors[0].target(config.user) == "hq.db"


def test_token_from_the_environment() -> None:
    assert quick("tcp", "-s", "h", "-l", "22", env={TOKEN_ENV: "from-env"}).token == "from-env"
    assert quick("tcp", "-s", "h", "-l", "22", "-t", "flag", env={TOKEN_ENV: "from-env"}).token == "flag"
    assert quick("tcp", "-s", "h", "-l", "22").token == ""


def test_quick_form_problems_are_named_by_flag() -> None:
    message = usage_error(
        "http", *NODE, "--local-port", "0", "--custom-domains", "ok.com,bad domain", "--http-user", "u"
    )
    assert message.splitlines() == [
        "invalid quick form:",
        "  --local-port: 0 is not a port (1-65535: the local service's port)",
        "  --http-password: httpUser and httpPassword go together",
        "  --custom-domains: 'bad domain' is not a domain name (a leading '*.' is allowed)",
    ]
    assert "--tls-ca: no such file" in usage_error("tcp", *NODE, "-l", "1", "--tls-ca", "/nonexistent/ca.pem")
    assert "--bandwidth-limit: '9 GB' is not a rate" in usage_error(
        "tcp", *NODE, "-l", "1", "--bandwidth-limit", "9 GB"
    )
    assert "--bind-port: 0 is not a port" in usage_error(
        "stcp-visitor", *NODE, "--server-name", "x", "--sk", "k", "--bind-port", "0"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["tcp", *NODE, "-l", "22", "-r", "6022", "--use-encryption", "--bandwidth-limit", "1MB", "-u", "me"],
        ["http", *NODE, "-l", "80", "-d", "a.com", "--locations", "/x", "--request-header", "a=b", "--no-tls"],
        ["xtcp", *NODE, "-l", "22", "--sk", "k", "--allow-users", "*", "--proxy-protocol", "v2"],
        ["xtcp-visitor", *NODE, "--server-name", "p", "--sk", "k", "--bind-port", "9", "--keep-tunnel-open"],
        ["udp", *NODE, "-l", "53", "--no-login-fail-exit"],
    ],
)
def test_print_config_gives_the_same_config_as_a_file(argv: list[str]) -> None:
    expected = quick(*argv)
    printed = parse_args([*argv, "--print-config"], env={})
    assert printed.kind == "message" and printed.exit_code == 0
    assert parse_config(tomllib.loads(printed.text), env={}) == expected


def test_print_config_keeps_an_env_token_in_the_environment() -> None:
    printed = parse_args(["tcp", "-s", "h", "-l", "22", "--print-config"], env={TOKEN_ENV: "secret"})
    assert "secret" not in printed.text
    assert f'auth.token = "{{{{ .Envs.{TOKEN_ENV} }}}}"' in printed.text
    assert parse_config(tomllib.loads(printed.text), env={TOKEN_ENV: "secret"}).token == "secret"


# --------------------------------------------------------------------------- main


def test_verify_ok(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / DEFAULT_CONFIG).write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    assert main(["verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "flux-tunnel.toml: OK (3 proxies, 1 visitor)"
    assert out[1].startswith("  note: transport.poolCount: ignored")


def test_verify_lists_each_problem(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BROKEN)
    assert main(["verify", "-c", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "proxies[1].remotPort: unknown field (did you mean remotePort?)",
        "proxies[1].localPort: 0 is not a port (1-65535: the local service's port)",
        "proxies[1].customDomains: an http proxy needs customDomains or a subdomain",
        f"{path}: 3 problems",
    ]


def test_verify_missing_file(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "-c", str(tmp_path / "none.toml")]) == 1
    assert f"{tmp_path / 'none.toml'}: cannot read: No such file or directory" in capsys.readouterr().out


def test_run_with_a_bad_config_stops_before_the_agent(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([]) == 1
    err = capsys.readouterr().err
    assert "flux-tunnel: flux-tunnel.toml: cannot read: No such file or directory" in err
    assert "-c FILE" in err and "flux-tunnel tcp --help" in err
    (tmp_path / "bad.toml").write_text(BROKEN)
    assert main(["-c", "bad.toml"]) == 1
    assert "flux-tunnel: proxies[1].remotPort: unknown field" in capsys.readouterr().err


def test_main_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tcp", "--server", "h"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: flux-tunnel tcp")
    assert "flux-tunnel: error: invalid quick form:\n  --local-port: required" in err


def test_main_prints_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("flux-tunnel ")
    assert main(["verify", "-h"]) == 0
    assert "usage: flux-tunnel verify" in capsys.readouterr().out


# --------------------------------------------------------------------------- a real child process


def run_cli(*argv: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunnelclient.cli", *argv],
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_child_process_verify_and_exit_codes(tmp_path: pathlib.Path) -> None:
    (tmp_path / "good.yaml").write_text("serverAddr: h\nproxies:\n  - {name: ssh, type: tcp, local_port: 22}\n")
    (tmp_path / "bad.toml").write_text(BROKEN)
    ok = run_cli("verify", "-c", "good.yaml", cwd=tmp_path)
    assert (ok.returncode, ok.stdout.splitlines()[0]) == (0, "good.yaml: OK (1 proxy, 0 visitors)")
    bad = run_cli("verify", "-c", "bad.toml", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stdout.splitlines()[-1] == "bad.toml: 3 problems"
    usage = run_cli("tcp", cwd=tmp_path)
    assert usage.returncode == 2 and "required: -s/--server" in usage.stderr
    version = run_cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("flux-tunnel ")


def test_the_example_config_verifies(tmp_path: pathlib.Path) -> None:
    example = REPO / "examples" / "flux-tunnel" / "flux-tunnel.toml"
    result = subprocess.run(
        [sys.executable, "-m", "tunnelclient.cli", "verify", "-c", str(example)],
        env={"PYTHONPATH": str(REPO), "FLUX_TUNNEL_TOKEN": "t", "FLUX_DB_SECRET": "s"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"{example}: OK (4 proxies, 1 visitor)")
