"""Per-proxy payload transforms (`fluxcommon.tunnel.protocol.crypto`): round trips on random splits, tamper refusal."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxcommon.tunnel.protocol.crypto import (
    MAX_CHUNK,
    Compressor,
    Decompressor,
    Decryptor,
    Encryptor,
    Inbound,
    Outbound,
    TransformError,
)
from fluxcommon.tunnel.protocol.frames import ProtocolError

PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKEN = "change-me"

# pieces of application data: mostly compressible text, sometimes random bytes
pieces = st.lists(
    st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode), st.integers(0, 40_000).map(bytes)),
    max_size=8,
)
cuts = st.lists(st.integers(0, 10**6), max_size=12)


def split(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    out, last = [], 0
    for m in marks:
        out.append(data[last:m])
        last = m
    out.append(data[last:])
    return out


def drain(inbound: Inbound, chunks: list[bytes], max_length: int | None) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += inbound.update(chunk, max_length)
        while not inbound.needs_input:
            out += inbound.update(b"", max_length)
    return bytes(out)


@PROPS
@given(pieces, cuts, st.booleans(), st.booleans(), st.none() | st.integers(1, 5000))
def test_transforms_round_trip_on_random_splits(
    plain: list[bytes], points: list[int], encrypt: bool, compress: bool, max_length: int | None
) -> None:
    token = TOKEN if encrypt else None
    outbound = Outbound(token, compress=compress)
    wire = b"".join(outbound.update(p) for p in plain) + outbound.finish()
    inbound = Inbound(token, compress=compress)
    assert drain(inbound, split(wire, points), max_length) == b"".join(plain)
    inbound.finish()


@PROPS
@given(pieces, cuts)
def test_encryption_round_trip_byte_by_byte_and_hides_the_data(plain: list[bytes], points: list[int]) -> None:
    enc = Encryptor(TOKEN)
    wire = b"".join(enc.update(p) for p in plain) + enc.finish()
    dec = Decryptor(TOKEN)
    assert b"".join(dec.update(wire[i : i + 1]) for i in range(len(wire))) == b"".join(plain)
    dec.finish()
    dec = Decryptor(TOKEN)
    assert b"".join(dec.update(c) for c in split(wire, points)) == b"".join(plain)
    secret = b"".join(plain)
    if len(secret) >= 16 and len(set(secret)) > 4:
        assert secret not in wire


def test_each_stream_gets_its_own_salt_and_key() -> None:
    a, b = Encryptor(TOKEN).update(b"same"), Encryptor(TOKEN).update(b"same")
    assert a[:1] == b[:1] == b"\x01" and a[1:17] != b[1:17] and a[17:] != b[17:]
    fixed = Encryptor(TOKEN, salt=bytes(16)).update(b"same")
    assert fixed == Encryptor(TOKEN, salt=bytes(16)).update(b"same")  # deterministic given the salt


def test_large_writes_are_chunked() -> None:
    enc = Encryptor(TOKEN, salt=bytes(16))
    wire = enc.update(bytes(MAX_CHUNK * 2 + 1))
    assert len(wire) == 17 + 3 * 4 + (MAX_CHUNK * 2 + 1) + 3 * 16


def test_wrong_token_is_refused() -> None:
    enc = Encryptor(TOKEN)
    with pytest.raises(TransformError, match="wrong token or tampered"):
        Decryptor("other").update(enc.update(b"hello"))


@PROPS
@given(st.binary(min_size=1, max_size=500), st.data())
def test_any_tampering_is_detected(plain: bytes, data: st.DataObject) -> None:
    enc = Encryptor(TOKEN)
    wire = bytearray(enc.update(plain) + enc.finish())
    i = data.draw(st.integers(0, len(wire) - 1))
    wire[i] ^= data.draw(st.integers(1, 255))
    dec = Decryptor(TOKEN)
    with pytest.raises(TransformError):
        dec.update(bytes(wire))
        dec.finish()


def test_truncation_and_trailing_data_are_detected() -> None:
    enc = Encryptor(TOKEN)
    body = enc.update(b"hello") + enc.update(b"world")
    dec = Decryptor(TOKEN)
    assert dec.update(body) == b"helloworld"
    with pytest.raises(TransformError, match="cut short"):
        dec.finish()  # the final chunk never came: a cut stream is not a clean end
    final = enc.finish()
    dec.update(final)
    dec.finish()
    with pytest.raises(TransformError, match="after the final chunk"):
        dec.update(Encryptor(TOKEN).update(b"more")[17:])


@PROPS
@given(st.binary(max_size=300), st.integers(0, 300))
def test_fuzzed_bytes_raise_only_transform_errors(junk: bytes, cut: int) -> None:
    for inbound in (Inbound(TOKEN), Inbound(None, compress=True), Inbound(TOKEN, compress=True)):
        try:
            drain(inbound, [junk[:cut], junk[cut:]], 100)
            inbound.finish()
        except TransformError as exc:
            assert isinstance(exc, ProtocolError)


def test_decompression_is_pull_based() -> None:
    comp = Compressor()
    bomb = comp.compress(bytes(10_000_000)) + comp.finish()
    assert len(bomb) < 20_000
    dec = Decompressor()
    first = dec.decompress(bomb, 65536)
    assert len(first) == 65536 and not dec.needs_input
    total = len(first)
    while not dec.needs_input:
        chunk = dec.decompress(b"", 65536)
        assert len(chunk) <= 65536
        total += len(chunk)
    assert total == 10_000_000 and dec.eof


def test_compression_flushes_each_write_for_interactive_traffic() -> None:
    comp, dec = Compressor(), Decompressor()
    for line in (b"ls -l\n", b"cat /etc/hostname\n"):
        assert dec.decompress(comp.compress(line)) == line  # decodable at once, no waiting for more
    assert dec.decompress(comp.finish()) == b"" and dec.eof
    with pytest.raises(TransformError, match="after the end"):
        dec.decompress(b"x")


def test_corrupt_compressed_data_is_a_transform_error() -> None:
    with pytest.raises(TransformError, match="bad compressed data"):
        Decompressor().decompress(b"\xff" * 10)
    with pytest.raises(TransformError, match="cut short"):
        inbound = Inbound(None, compress=True)
        inbound.update(zlib.compressobj(6, zlib.DEFLATED, -15).compress(os.urandom(100)))
        inbound.finish()
