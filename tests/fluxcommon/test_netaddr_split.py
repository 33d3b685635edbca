"""host:port splitting in one place (fluxcommon.netaddr): `split_host_port` for config and CLI
addresses, `host_of` and `parse_peer` for the splits the node, the control plane and the agent
used to write inline. Each former inline split is kept here as the reference it must match."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.tunnel_agent_config import _host_of as grpc_peer_host
from fluxcommon.netaddr import host_of, parse_peer, split_host_port
from tunnelclient.plugins.bridge import _host_of as host_header_name

FAST = settings(max_examples=300, deadline=None)

v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
names = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}\Z")
ports = st.integers(0, 65535)
anything = st.text(alphabet=st.sampled_from(list("[]:0123456789abc.-+_ ")), max_size=16) | st.text(max_size=16)


def bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- the former inline splits, verbatim ----------------------------------------------------------


def old_access_address(text: str) -> str:  # dataplane/policies/access.py _address
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return text


def old_meta_addr(text: str) -> tuple[str, int] | None:  # tunnelclient/agent.py _meta_addr
    if ":" not in text:
        return None
    host, _, port = text.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def old_grpc_peer_host(peer: str) -> str:  # controlplane/tunnel_agent_config.py _host_of
    text = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    if text.startswith("["):
        return text[1:].partition("]")[0]
    host, sep, port = text.rpartition(":")
    return host if sep and port.isdigit() else text


def old_host_header_name(value: bytes) -> str:  # tunnelclient/plugins/bridge.py _host_of
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rpartition(":")[0] if text.count(":") == 1 else text


# -- the helpers -------------------------------------------------------------------------------


def test_by_example() -> None:
    assert host_of("[::1]:80") == host_of("[::1]") == host_of("::1") == "::1"
    assert host_of("10.0.0.1:80") == host_of("10.0.0.1") == "10.0.0.1"
    assert host_of("example.com:8080") == "example.com"
    assert parse_peer("10.0.0.7:5000") == ("10.0.0.7", 5000)
    assert parse_peer("[2001:db8::1]:5000") == ("2001:db8::1", 5000)
    assert parse_peer("10.0.0.7") is None
    assert parse_peer("10.0.0.7:x") is None
    assert parse_peer("") is None


@given(host=v4 | v6 | names, port=ports)
@FAST
def test_well_formed_addresses_split_the_same_every_way(host: str, port: int) -> None:
    text = f"{bracketed(host)}:{port}"
    assert split_host_port(text) == (host, port)
    assert parse_peer(text) == (host, port)
    assert host_of(text) == host_of(bracketed(host)) == host
    assert grpc_peer_host(("ipv6:" if ":" in host else "ipv4:") + text) == host
    assert host_header_name(text.upper().encode()) == host.lower()


@given(text=anything)
@FAST
def test_never_raises_and_matches_the_inline_splits_it_replaced(text: str) -> None:
    assert host_of(text.strip()) == old_access_address(text)
    assert parse_peer(text) == old_meta_addr(text)


@given(host=v4 | v6 | names, port=ports, kind=st.sampled_from(["ipv4:", "ipv6:", ""]))
@FAST
def test_grpc_peers_and_host_headers_as_before(host: str, port: int, kind: str) -> None:
    for text in (f"{bracketed(host)}:{port}", bracketed(host)):
        assert grpc_peer_host(kind + text) == old_grpc_peer_host(kind + text)
        assert host_header_name(text.encode()) == old_host_header_name(text.encode())


@given(host=v6, port=ports)
@FAST
def test_ipv6_needs_its_brackets_for_a_port(host: str, port: int) -> None:
    assert host_of(host) == host  # a bare IPv6 address has no port to drop
    assert ipaddress.ip_address(host_of(f"[{host}]:{port}")) == ipaddress.ip_address(host)
