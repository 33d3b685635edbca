"""Reading the server name from a TLS ClientHello (`dataplane.tunnel.sni.sni_from`).

The hellos are real ones: Python's `ssl` writes them into a `MemoryBIO` for random server
names. Every proper prefix must ask for more bytes, the whole must give the lower-cased name,
the same handshake re-framed into several TLS records must still parse, and no input, random
or a damaged hello, may raise.
"""

from __future__ import annotations

import itertools
import ssl
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.tunnel.sni import MAX_HELLO, NeedMore, sni_from

_CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def client_hello(server_name: str | None) -> bytes:
    """The first flight of a TLS client for `server_name` (None: no SNI)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    if server_name is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        tls = ctx.wrap_bio(incoming, outgoing)
    else:
        tls = _CTX.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def handshake_of(records: bytes) -> bytes:
    """The handshake payload of a run of TLS records."""
    out, pos = bytearray(), 0
    while pos < len(records):
        (length,) = struct.unpack_from("!H", records, pos + 3)
        out += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out)


def reframe(handshake: bytes, cuts: list[int]) -> bytes:
    """`handshake` split at `cuts` into several handshake records."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(handshake)}), len(handshake)]
    return b"".join(b"\x16\x03\x01" + struct.pack("!H", b - a) + handshake[a:b] for a, b in itertools.pairwise(bounds))


_label = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?\Z")
_tld = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,8}[A-Za-z0-9]\Z")
dns_names = st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(_label, min_size=0, max_size=4), _tld)


def _is_answer(result: object) -> bool:
    return result is None or isinstance(result, NeedMore | str)


@settings(max_examples=40, deadline=None)
@given(name=dns_names)
def test_every_prefix_needs_more_and_the_whole_hello_gives_the_name(name: str) -> None:
    hello = client_hello(name)
    for n in range(len(hello)):
        assert isinstance(sni_from(hello[:n]), NeedMore), n
    assert sni_from(hello) == name.lower()
    assert sni_from(hello + b"\x17\x03\x03\x00\x05hello") == name.lower()  # bytes after the hello are not read


@settings(max_examples=40, deadline=None)
@given(name=dns_names, cuts=st.lists(st.integers(1, 600), min_size=1, max_size=8))
def test_a_hello_split_over_several_records_still_parses(name: str, cuts: list[int]) -> None:
    hello = reframe(handshake_of(client_hello(name)), cuts)
    for n in range(0, len(hello), 7):
        assert isinstance(sni_from(hello[:n]), NeedMore)
    assert sni_from(hello) == name.lower()


def test_trailing_dot_is_dropped_and_names_are_lower_cased() -> None:
    assert sni_from(client_hello("WWW.Example.ORG.")) == "www.example.org"


def test_a_hello_without_server_name_gives_none() -> None:
    hello = client_hello(None)
    assert sni_from(hello[:-1]) is not None
    assert sni_from(hello) is None


def test_not_tls_gives_none() -> None:
    assert sni_from(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n") is None
    assert sni_from(b"SSH-2.0-OpenSSH_9.6\r\n") is None
    assert sni_from(b"\x16\x02\x00\x00\x10" + bytes(16)) is None  # not TLS major version 3
    assert sni_from(b"\x16\x03\x01\x00\x00") is None  # empty record
    assert sni_from(b"\x17\x03\x03\x00\x05hello") is None  # application data


def test_a_hello_above_the_limit_is_refused_before_it_is_complete() -> None:
    body_len = MAX_HELLO  # with its 4-byte header the message is larger than MAX_HELLO
    start = b"\x01" + body_len.to_bytes(3, "big")
    assert sni_from(b"\x16\x03\x01\x40\x00" + start + bytes(100)) is None


def test_a_server_hello_is_not_a_client_hello() -> None:
    message = b"\x02" + (40).to_bytes(3, "big") + bytes(40)
    assert sni_from(reframe(message, [])) is None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert _is_answer(sni_from(data))
    assert _is_answer(sni_from(b"\x16\x03\x01" + data))
    assert _is_answer(sni_from(b"\x16\x03\x01" + struct.pack("!H", len(data) + 4) + b"\x01\x00\x00" + data))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=5, max_size=300).filter(lambda d: d[0] != 0x16))
def test_data_not_starting_a_handshake_record_gives_none(data: bytes) -> None:
    assert sni_from(data) is None


_HELLO = client_hello("damaged.example.com")


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, len(_HELLO) - 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, len(_HELLO)),
)
def test_a_damaged_hello_never_raises(flips: list[tuple[int, int]], cut: int) -> None:
    damaged = bytearray(_HELLO)
    for pos, value in flips:
        damaged[pos] = value
    assert _is_answer(sni_from(bytes(damaged)))
    assert _is_answer(sni_from(bytes(damaged[:cut])))
