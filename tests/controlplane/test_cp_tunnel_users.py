"""Tunnel users in the control plane: `tunnels[].users` validated, masked on read, kept when a
masked read is written back, and carried in the snapshot; `tls.force` on by default; the
agent config `fluxctl tunnels agent-config` prints."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from pydantic import ValidationError
from support.tls import self_signed

from controlplane.snapshot import render_snapshot
from controlplane.spec import CertificateSpec, ConfigSet, TunnelSpec
from controlplane.spec._types import MASK
from controlplane.spec.tunnel import parse_rate
from controlplane.tunnel_agent_config import default_servers, render

OFFICE = {"name": "office", "token": "t-office", "allow_ports": "6000-6009", "domains": ["*.office.example.com"]}
LAB = {"name": "lab", "token": "t-lab", "max_proxies": 3, "bandwidth_limit": "512KB"}


def tunnel(**fields: Any) -> TunnelSpec:
    return TunnelSpec.model_validate({"name": "edge", "allow_ports": "6000-6099", **fields})


def error_of(**fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        tunnel(**fields)
    err = info.value.errors()[0]
    return ".".join(str(p) for p in err["loc"]) + ": " + str(err["msg"])


def test_users_without_a_shared_token_and_the_defaults() -> None:
    t = tunnel(users=[OFFICE, LAB])
    assert t.token is None and t.all_tokens() == []
    assert t.tls.force is True  # plain-text agents are refused unless a tunnel says otherwise
    assert t.vhost_overrides_routes is False and t.domains == []
    assert tunnel(token="x", tls={"force": False}).tls.force is False
    assert "needs a token or users" in error_of()


@pytest.mark.parametrize(
    ("users", "where", "message"),
    [
        ([OFFICE, {**LAB, "name": "office"}], "", "users[1].name: duplicate user 'office'"),
        ([{**OFFICE, "name": "off.ice"}], "users.0.name", "a user name has no '.'"),
        ([{**OFFICE, "allow_ports": "7000-7001"}], "", "users[0].allow_ports: 7000-7001 is outside"),
        ([{**OFFICE, "allow_ports": "6000-6200"}], "", "users[0].allow_ports: 6000-6200 is outside"),
        ([{**OFFICE, "allow_ports": "60x"}], "users.0.allow_ports", "bad port range"),
        ([{**OFFICE, "domains": ["crm office"]}], "users.0.domains", "is not a host name"),
        ([{**OFFICE, "token": ""}], "users.0.token", "at least 1 character"),
        ([{**LAB, "bandwidth_limit": "fast"}], "users.0.bandwidth_limit", "is not a rate"),
        ([{**LAB, "max_proxies": -1}], "users.0.max_proxies", "greater than or equal to 0"),
    ],
)
def test_bad_users_are_refused_naming_the_field(users: list[dict[str, Any]], where: str, message: str) -> None:
    text = error_of(token="x", users=users)
    assert text.startswith(where) and message in text, text


def test_tunnel_domains_are_host_patterns() -> None:
    assert tunnel(token="x", domains=["*.Example.com", "a.b"]).domains == ["*.example.com", "a.b"]
    assert "is not a host name" in error_of(token="x", domains=["*"])


def test_user_tokens_are_masked_on_read_and_kept_when_written_back() -> None:
    t = tunnel(token="shared", users=[OFFICE, LAB])
    shown = t.masked()
    assert [u["token"] for u in shown["users"]] == [MASK, MASK]
    assert "t-office" not in str(shown) and "t-lab" not in str(shown)
    assert TunnelSpec.model_validate(shown).keep_secrets_from(t) == t
    # a new user with its own token, and the kept ones reordered
    edited = {**shown, "users": [shown["users"][1], {**OFFICE, "name": "hq", "token": "t-hq"}, shown["users"][0]]}
    kept = TunnelSpec.model_validate(edited).keep_secrets_from(t)
    assert [(u.name, u.token) for u in kept.users] == [("lab", "t-lab"), ("hq", "t-hq"), ("office", "t-office")]
    bad = {**shown, "users": [shown["users"][0], {**OFFICE, "name": "hq", "token": MASK}]}
    with pytest.raises(ValueError, match=r"users\[1\].token: masked value but user 'hq' has no stored token"):
        TunnelSpec.model_validate(bad).keep_secrets_from(t)
    assert "users[].token" in TunnelSpec.secret_paths


def test_masked_user_token_without_a_stored_one_is_refused() -> None:
    t = tunnel(token="shared", users=[OFFICE])
    bad = {**t.masked(), "users": [{**OFFICE, "name": "hq", "token": MASK}]}
    with pytest.raises(ValueError, match="user 'hq' has no stored token"):
        TunnelSpec.model_validate(bad).keep_secrets_from(t)


def test_the_snapshot_carries_users_domains_and_the_route_flag() -> None:
    t = tunnel(users=[OFFICE, LAB], domains=["*.example.com"], vhost_overrides_routes=True)
    snap = render_snapshot(ConfigSet({"tunnels": {"edge": t}}), 4, "default")
    (pb_tunnel,) = snap.tunnels
    assert list(pb_tunnel.tokens) == [] and pb_tunnel.tls_force is True
    assert list(pb_tunnel.domains) == ["*.example.com"] and pb_tunnel.vhost_overrides_routes is True
    office, lab = pb_tunnel.users
    assert (office.name, office.token, office.allow_ports, list(office.domains)) == (
        "office",
        "t-office",
        "6000-6009",
        ["*.office.example.com"],
    )
    assert (lab.name, lab.max_proxies, lab.bandwidth_limit, lab.allow_ports) == ("lab", 3, 512 * 1024, "")


@pytest.mark.parametrize(
    ("text", "rate"), [("", 0), ("1MB", 1 << 20), ("1.5mb", 3 << 19), ("10KB", 10240), ("4096", 4096), (7, 7)]
)
def test_rates(text: str | int, rate: int) -> None:
    assert parse_rate(text) == rate


# -- the agent config fluxctl prints ---------------------------------------------------------


def test_agent_config_for_a_user_with_the_node_certificate() -> None:
    cert, key = self_signed("tunnel.example.com", ("tunnel.example.com",))
    t = tunnel(users=[OFFICE, LAB], bind_address="0.0.0.0", bind_port=7443, tls={"certificate": "c"})
    out = render(t, t.users[0], ["203.0.113.7", "203.0.113.8"], CertificateSpec(name="c", cert=cert, key=key))
    doc = tomllib.loads(out.config)
    assert (doc["serverAddr"], doc["serverPort"], doc["user"]) == ("203.0.113.7", 7443, "office")
    assert doc["auth"]["token"] == "t-office"
    assert doc["transport"]["tls"] == {
        "enable": True, "trustedCaFile": "edge-ca.pem", "serverName": "tunnel.example.com"
    }  # fmt: skip
    assert out.ca_file == "edge-ca.pem" and out.ca_pem.strip() == cert.strip()
    assert "203.0.113.8" in out.config and "*.office.example.com" in out.config
    named = tomllib.loads(render(t, t.users[0], ["tunnel.example.com:9000"], None).config)
    assert (named["serverAddr"], named["serverPort"]) == ("tunnel.example.com", 9000)
    assert "trustedCaFile" not in named["transport"]["tls"]
    with pytest.raises(ValueError, match="server: no address"):
        render(t, t.users[0], [], None)
    assert default_servers(t, ["ipv4:10.0.0.7:51234", "10.0.0.8:1", "ipv6:[fd00::1]:2", "10.0.0.7:9"]) == [
        "10.0.0.7", "10.0.0.8", "fd00::1"
    ]  # fmt: skip
    assert default_servers(tunnel(token="x", bind_address="192.0.2.1"), ["10.0.0.7:1"]) == ["192.0.2.1"]
