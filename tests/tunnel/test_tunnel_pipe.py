"""Moving bytes between streams (`fluxcommon.tunnel.transport.pipe`): token bucket, payload transforms, the splice.

`Bandwidth` is sans-IO, so it runs on a simulated timeline: a caller that sleeps the delays it
is told never gets ahead of burst + rate x t, and under steady demand the average rate is the
rate. `TransformStream` and `pipe` run on trio's in-memory stream pairs with random chunking;
the rate-limited pipe runs under trio's `MockClock`, so it takes no wall time.
"""

from __future__ import annotations

import functools
import random

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxcommon.tunnel.transport.pipe import Bandwidth, PipeStats, TransformStream, bandwidth, pipe, transformed

# -- Bandwidth -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 10_000_000),
    burst=st.one_of(st.none(), st.integers(1, 1_000_000)),
    steps=st.lists(
        st.tuples(st.floats(0, 2, allow_nan=False), st.floats(0.01, 3, allow_nan=False)), min_size=1, max_size=60
    ),
)
def test_a_caller_that_waits_never_exceeds_burst_plus_rate_times_t(
    rate: int, burst: int | None, steps: list[tuple[float, float]]
) -> None:
    bucket = Bandwidth(rate, burst, now=0.0)
    now, sent = 0.0, 0
    for gap, size_in_chunks in steps:
        now += gap
        n = max(1, int(bucket.chunk() * size_in_chunks))
        delay = bucket.take(n, now)
        assert delay >= 0
        now += delay  # the caller sleeps, then sends
        sent += n
        assert sent <= bucket.burst + bucket.rate * now + 1e-6 * max(1.0, sent)


@settings(max_examples=100, deadline=None)
@given(rate=st.integers(100, 10_000_000), burst=st.one_of(st.none(), st.integers(1, 100_000)))
def test_under_steady_demand_the_average_rate_converges_to_the_rate(rate: int, burst: int | None) -> None:
    bucket = Bandwidth(rate, burst, now=0.0)
    now, sent = 0.0, 0
    n = bucket.chunk()
    for _ in range(5000):  # bounded in steps: 50 s of 1-byte chunks at 10 MB/s would be 5e8 steps
        now += bucket.take(n, now)
        sent += n
    assert sent <= bucket.burst + rate * now + 1e-6 * sent
    assert sent >= rate * now - 1e-6 * sent
    assert abs(sent / now - rate) <= (bucket.burst + n) / now + 1e-6 * rate


def test_bandwidth_defaults_and_checks() -> None:
    assert Bandwidth(100_000).burst == 10_000
    assert Bandwidth(1000).burst == 1024  # never below 1 KiB
    assert Bandwidth(10**9).chunk() == 256 * 1024
    assert Bandwidth(10, 5).chunk() == 5
    with pytest.raises(ValueError, match="rate"):
        Bandwidth(0)
    assert trio.run(_bandwidth_of, 0) is None
    limiter = trio.run(_bandwidth_of, 5000)
    assert isinstance(limiter, Bandwidth) and limiter.rate == 5000


async def _bandwidth_of(rate: int) -> Bandwidth | None:
    return bandwidth(rate)


# -- TransformStream -----------------------------------------------------------------------

TOKEN = "s3cret-token"


async def _send_chunks(stream: trio.abc.HalfCloseableStream, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await stream.send_all(chunk)
    await stream.send_eof()


async def _read_all(stream: trio.abc.ReceiveStream, rng: random.Random) -> bytes:
    out = bytearray()
    while True:
        data = await stream.receive_some(rng.choice([None, 1, 7, 100, 4096, 70_000]))
        if not data:
            return bytes(out)
        out += data


payloads = st.lists(
    st.one_of(st.binary(min_size=1, max_size=3000), st.integers(1, 100_000).map(lambda n: b"z" * n)), max_size=12
)


@settings(max_examples=40, deadline=None)
@given(
    encrypt=st.booleans(),
    compress=st.booleans(),
    up=payloads,
    down=payloads,
    seed=st.integers(0, 2**32),
)
def test_transform_streams_round_trip_both_ways(
    encrypt: bool, compress: bool, up: list[bytes], down: list[bytes], seed: int
) -> None:
    async def main() -> None:
        left, right = trio.testing.lockstep_stream_pair()
        a = transformed(left, TOKEN, encrypt=encrypt, compress=compress)
        b = transformed(right, TOKEN, encrypt=encrypt, compress=compress)
        assert isinstance(a, TransformStream) == (encrypt or compress)
        got: dict[str, bytes] = {}

        async def read(name: str, stream: trio.abc.ReceiveStream) -> None:
            got[name] = await _read_all(stream, random.Random(f"{seed}{name}"))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_chunks, a, up)
                nursery.start_soon(_send_chunks, b, down)
                nursery.start_soon(read, "at b", b)
                nursery.start_soon(read, "at a", a)
        assert got == {"at b": b"".join(up), "at a": b"".join(down)}
        await a.aclose()
        await b.aclose()

    trio.run(main)


def test_transformed_bytes_on_the_wire_are_not_the_plaintext() -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        a = transformed(left, TOKEN, encrypt=True, compress=True)
        secret = b"attack at dawn " * 100
        await a.send_all(secret)
        wire = await right.receive_some()
        assert b"attack" not in wire and len(wire) < len(secret)

    trio.run(main)


@pytest.mark.parametrize(("encrypt", "compress"), [(True, False), (False, True), (True, True)])
def test_a_stream_cut_short_is_broken_not_a_clean_eof(encrypt: bool, compress: bool) -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        a = transformed(left, TOKEN, encrypt=encrypt, compress=compress)
        b = transformed(right, TOKEN, encrypt=encrypt, compress=compress)
        await a.send_all(b"hello")
        await left.send_eof()  # the raw stream ends without the transform's final bytes
        assert await b.receive_some() == b"hello"
        with pytest.raises(trio.BrokenResourceError, match="tunnel payload"):
            await b.receive_some()

    trio.run(main)


def test_a_wrong_token_breaks_the_stream() -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        a = transformed(left, TOKEN, encrypt=True, compress=False)
        b = transformed(right, "another-token", encrypt=True, compress=False)
        await a.send_all(b"hello")
        with pytest.raises(trio.BrokenResourceError, match="tunnel payload"):
            await b.receive_some()

    trio.run(main)


# -- pipe ----------------------------------------------------------------------------------


async def _user_side(stream: trio.abc.HalfCloseableStream, chunks: list[bytes], rng: random.Random) -> bytes:
    """Send `chunks` then half-close, while reading everything the other side sends."""
    got = b""

    async def read() -> None:
        nonlocal got
        got = await _read_all(stream, rng)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await _send_chunks(stream, chunks)
    return got


chunk_lists = st.lists(st.binary(min_size=1, max_size=5000), max_size=10)


@settings(max_examples=50, deadline=None)
@given(up=chunk_lists, down=chunk_lists, seed=st.integers(0, 2**32))
def test_pipe_copies_both_ways_and_counts(up: list[bytes], down: list[bytes], seed: int) -> None:
    async def main() -> None:
        client, a = trio.testing.lockstep_stream_pair()
        b, server = trio.testing.lockstep_stream_pair()
        stats = PipeStats()
        seen: list[tuple[int, int]] = []
        result: dict[str, object] = {}

        async def run_pipe() -> None:
            result["error"] = await pipe(a, b, stats=stats, on_bytes=lambda u, d: seen.append((u, d)))

        async def run_side(name: str, stream: trio.abc.HalfCloseableStream, chunks: list[bytes]) -> None:
            result[name] = await _user_side(stream, chunks, random.Random(f"{seed}{name}"))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_pipe)
                nursery.start_soon(run_side, "client", client, up)
                nursery.start_soon(run_side, "server", server, down)
        assert result == {"error": None, "server": b"".join(up), "client": b"".join(down)}
        assert (stats.up, stats.down) == (len(b"".join(up)), len(b"".join(down)))
        assert sum(u for u, _ in seen) == stats.up and sum(d for _, d in seen) == stats.down

    trio.run(main)


def test_pipe_passes_a_half_close_on_and_keeps_the_other_direction() -> None:
    async def main() -> None:
        client, a = trio.testing.memory_stream_pair()
        b, server = trio.testing.memory_stream_pair()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipe, a, b)
                await client.send_all(b"request")
                await client.send_eof()
                assert await _read_all(server, random.Random(0)) == b"request"  # the server saw EOF
                await server.send_all(b"late answer")  # ...and may still answer
                assert await client.receive_some() == b"late answer"
                await server.send_eof()
                assert await client.receive_some() == b""

    trio.run(main)


def test_pipe_reports_an_error_and_closes_both_sides_when_one_breaks() -> None:
    async def main() -> None:
        client, a = trio.testing.memory_stream_pair()
        b, server = trio.testing.memory_stream_pair()
        result: list[str | None] = []

        async def run_pipe() -> None:
            result.append(await pipe(a, b))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_pipe)
                await client.send_all(b"first")
                assert await server.receive_some() == b"first"
                await server.aclose()  # the far side goes away
                await client.send_all(b"second")  # cannot be delivered
                assert await client.receive_some() == b""  # the pipe closed our side too
        assert result and result[0]
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"third")

    trio.run(main)


@pytest.mark.parametrize("rate", [50_000, 1_000_000])
def test_a_limited_pipe_keeps_the_rate(rate: int) -> None:
    total = 3 * rate

    async def main() -> float:
        client, a = trio.testing.memory_stream_pair()
        b, server = trio.testing.memory_stream_pair()
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(pipe, a, b, up_limit=bandwidth(rate)))
            await client.send_all(b"x" * total)
            await client.send_eof()
            got = await _read_all(server, random.Random(0))
            assert len(got) == total
            await server.send_eof()
        return trio.current_time() - start

    elapsed = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    burst = Bandwidth(rate).burst
    assert (total - burst) / rate - 0.01 <= elapsed <= (total - burst) / rate + 0.5
