"""HAProxy PROXY protocol headers (`fluxcommon.proxy_protocol`): encode, then parse back.

Round trips for random IPv4/IPv6 addresses and ports in both versions; every proper prefix of
a header asks for more bytes; random input either parses, asks for more, or raises
`ProxyProtocolError`, nothing else, whole or fed one byte at a time.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxcommon.proxy_protocol import (
    NEED_MORE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    parse,
)

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
same_family_pairs = st.one_of(st.tuples(v4, v4), st.tuples(v6, v6))


def normal(host: str) -> str:
    return str(ipaddress.ip_address(host))


@settings(max_examples=200, deadline=None)
@given(hosts=same_family_pairs, sport=ports, dport=ports, tail=st.binary(max_size=20))
def test_v1_round_trip(hosts: tuple[str, str], sport: int, dport: int, tail: bytes) -> None:
    header = encode_v1((hosts[0], sport), (hosts[1], dport))
    assert header.endswith(b"\r\n") and len(header) <= 107
    result = parse(header + tail)
    assert result == (ProxyHeader((normal(hosts[0]), sport), (normal(hosts[1]), dport)), len(header))


@settings(max_examples=200, deadline=None)
@given(hosts=same_family_pairs, sport=ports, dport=ports, datagram=st.booleans(), tail=st.binary(max_size=20))
def test_v2_round_trip(hosts: tuple[str, str], sport: int, dport: int, datagram: bool, tail: bytes) -> None:
    header = encode_v2((hosts[0], sport), (hosts[1], dport), datagram=datagram)
    assert header.startswith(V2_SIGNATURE)
    result = parse(header + tail)
    assert result == (ProxyHeader((normal(hosts[0]), sport), (normal(hosts[1]), dport), datagram), len(header))


@settings(max_examples=100, deadline=None)
@given(source=v4, dest=v6, sport=ports, dport=ports)
def test_mixed_families_carry_no_address(source: str, dest: str, sport: int, dport: int) -> None:
    v1 = encode_v1((source, sport), (dest, dport))
    assert v1 == b"PROXY UNKNOWN\r\n"
    assert parse(v1) == (ProxyHeader(None, None), len(v1))
    v2 = encode_v2((dest, dport), (source, sport))
    assert parse(v2) == (ProxyHeader(None, None), len(v2))


def test_unknown_hosts_give_local_headers() -> None:
    assert parse(encode_v1(("not-an-ip", 1), ("127.0.0.1", 2))) == (ProxyHeader(None, None), 15)
    v2 = encode_v2(("example.com", 1), ("127.0.0.1", 2))
    assert parse(v2) == (ProxyHeader(None, None), 16)


@settings(max_examples=100, deadline=None)
@given(hosts=same_family_pairs, sport=ports, dport=ports, version=st.sampled_from([1, 2]))
def test_every_proper_prefix_needs_more(hosts: tuple[str, str], sport: int, dport: int, version: int) -> None:
    encode = encode_v1 if version == 1 else encode_v2
    header = encode((hosts[0], sport), (hosts[1], dport))
    for n in range(len(header)):
        assert parse(header[:n]) is NEED_MORE, n


def _feed(data: bytes) -> None:
    """Parse `data` whole and as every prefix: a header, NEED_MORE or ProxyProtocolError only."""
    for n in [*range(min(len(data), 40)), len(data)]:
        try:
            result = parse(data[:n])
        except ProxyProtocolError:
            continue
        if result is NEED_MORE:
            continue
        header, used = result  # type: ignore[misc]
        assert isinstance(header, ProxyHeader) and 0 < used <= n


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(lambda b: V2_SIGNATURE + b),
        st.binary(max_size=120).map(lambda b: b"PROXY " + b),
        st.text(alphabet="PROXYTCP46UNKOW0123456789.:abcdef \r\n", max_size=120).map(str.encode),
    )
)
def test_garbage_raises_only_proxy_protocol_error(data: bytes) -> None:
    _feed(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "malformed"),
        (b"PROXY TCP4 ::1 ::2 1 2\r\n", "bad address or port"),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "bad address or port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n", "bad address or port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 x 2\r\n", "bad address or port"),
        (b"PROXY " + b"9" * 120, "too long"),
        (b"HELLO", "not a PROXY protocol header"),
        (V2_SIGNATURE + b"\x11\x11\x00\x00", "bad version"),
        (V2_SIGNATURE + b"\x22\x11\x00\x00", "bad command"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "too short"),
    ],
)
def test_malformed_headers_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse(data)
