"""TLSStream (fluxcommon/tunnel/transport/tlsstream.py): TLS on memory BIOs over a trio stream.

Real OpenSSL handshakes over in-memory trio streams: bulk data both ways at once, random read
sizes, a clean close (close_notify -> b""), a connection cut without close_notify, a certificate
that fails verification, and concurrent senders (reader flushing while the writer sends).
"""

from __future__ import annotations

import random
import ssl

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from support import tls

from fluxcommon.tunnel.transport.tlsstream import TLSStream


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return tls.contexts(tmp_path_factory.mktemp("tls"), "node.test")


def _pair(contexts: tuple[ssl.SSLContext, ssl.SSLContext], name: str = "node.test") -> tuple[TLSStream, TLSStream]:
    a, b = trio.testing.memory_stream_pair()
    server_ctx, client_ctx = contexts
    return TLSStream(a, server_ctx, server_side=True), TLSStream(b, client_ctx, server_hostname=name)


async def _handshake(server: TLSStream, client: TLSStream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)


async def _read_exactly(stream: TLSStream, n: int, rng: random.Random) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some(rng.choice([1, 100, 16384, 70000, None]))
        assert chunk, "stream ended early"
        got += chunk
    return bytes(got)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 300_000), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_bulk_both_ways_with_random_read_sizes(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], sizes: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    blobs = [rng.randbytes(n) for n in sizes]
    total = sum(sizes)

    async def main() -> None:
        server, client = _pair(contexts)
        with trio.fail_after(20):
            await _handshake(server, client)
            results: dict[str, bytes] = {}

            async def send(stream: TLSStream) -> None:
                for blob in blobs:
                    await stream.send_all(blob)

            async def recv(stream: TLSStream, key: str) -> None:
                results[key] = await _read_exactly(stream, total, random.Random(seed + len(key)))

            async with trio.open_nursery() as nursery:  # both directions at once
                nursery.start_soon(send, client)
                nursery.start_soon(send, server)
                nursery.start_soon(recv, server, "at server")
                nursery.start_soon(recv, client, "at client!")
            assert results["at server"] == results["at client!"] == b"".join(blobs)
            await client.aclose()
            assert await server.receive_some() == b""  # close_notify: a clean end
            await server.aclose()

    trio.run(main)


def test_cut_without_close_notify_is_broken(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async def main() -> None:
        server, client = _pair(contexts)
        await _handshake(server, client)
        await client.send_all(b"hello")
        assert await server.receive_some() == b"hello"
        await client.transport_stream.aclose()  # no close_notify
        with pytest.raises(trio.BrokenResourceError, match=r"EOF|close_notify"):
            await server.receive_some()

    trio.run(main)


def test_wrong_server_name_fails_the_handshake(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    errors: dict[str, BaseException] = {}

    async def side(name: str, stream: TLSStream) -> None:
        try:
            await stream.do_handshake()
        except (ssl.SSLError, trio.BrokenResourceError) as exc:
            errors[name] = exc
            await stream.transport_stream.aclose()

    async def main() -> None:
        server, client = _pair(contexts, name="other.test")
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(side, "client", client)
                nursery.start_soon(side, "server", server)

    trio.run(main)
    assert isinstance(errors["client"], ssl.SSLCertVerificationError)
    assert "other.test" in str(errors["client"])
    assert "server" in errors  # the server sees the alert (or the closed connection), not a session


def test_garbage_after_handshake_is_a_broken_stream(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async def main() -> None:
        server, client = _pair(contexts)
        await _handshake(server, client)
        await client.transport_stream.send_all(b"\x17\x03\x03\x00\x10" + b"x" * 16)  # a forged record
        with pytest.raises(trio.BrokenResourceError, match="TLS error"):
            await server.receive_some()

    trio.run(main)


def test_send_after_close_is_refused(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async def main() -> None:
        server, client = _pair(contexts)
        await _handshake(server, client)
        await client.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"late")
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_some()
        await client.aclose()  # idempotent

    trio.run(main)


class _Recorder(trio.abc.Stream):
    """A transport that passes everything on to `inner` and keeps a copy of what was sent."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _record_lengths(wire: bytes) -> list[int]:
    """Payload lengths of the TLS records in `wire` (5-byte headers: type, version, length)."""
    lengths, pos = [], 0
    while pos < len(wire):
        assert len(wire) - pos >= 5
        n = int.from_bytes(wire[pos + 3 : pos + 5], "big")
        lengths.append(n)
        pos += 5 + n
    assert pos == len(wire)
    return lengths


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=12), seed=st.integers(0, 2**16))
def test_send_parts_arrive_joined_in_full_records(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], sizes: list[int], seed: int
) -> None:
    """Parts of any sizes (12-byte headers, 64 KiB payloads, empty ones) arrive as their join, and
    every record of one send_parts call but the last is a full one: no record per small part."""
    rng = random.Random(seed)
    parts: list[bytes | memoryview] = [rng.randbytes(n) for n in sizes]
    parts = [memoryview(p) if i % 2 else p for i, p in enumerate(parts)]  # views and bytes alike
    joined = b"".join(parts)

    async def main() -> None:
        a, b = trio.testing.memory_stream_pair()
        server_ctx, client_ctx = contexts
        recorder = _Recorder(b)
        server = TLSStream(a, server_ctx, server_side=True)
        client = TLSStream(recorder, client_ctx, server_hostname="node.test")
        with trio.fail_after(20):
            await _handshake(server, client)
            recorder.sent.clear()
            got = bytearray()

            async def receive() -> None:
                while len(got) < len(joined):
                    chunk = await server.receive_some()
                    assert chunk
                    got.extend(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await client.send_parts(parts)
            assert bytes(got) == joined
        lengths = _record_lengths(bytes(recorder.sent))
        full = 16 * 1024 + 17  # plaintext, content type byte and AEAD tag (TLS 1.3)
        assert len(lengths) == max(1, -(-len(joined) // (16 * 1024))) if joined else lengths == []
        assert all(n == full for n in lengths[:-1])

    trio.run(main)


def test_receive_into_fills_the_buffer_from_every_record_buffered(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def main() -> None:
        server, client = _pair(contexts)
        await _handshake(server, client)
        data = random.Random(7).randbytes(100_000)  # seven records
        await client.send_all(data)
        buf = bytearray(200_000)
        got = 0
        with trio.fail_after(5):
            while got < len(data):
                got += await server.receive_into(memoryview(buf)[got:])
        assert bytes(buf[:got]) == data
        await client.aclose()
        assert await server.receive_into(buf) == 0  # close_notify

    trio.run(main)
