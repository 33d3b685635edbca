"""Moving bytes between two trio streams: the splice both tunnel ends use for every user connection.

- `Bandwidth`: a token bucket in bytes per second (sans-IO: it answers how long to wait);
  one may be shared by many pipes (a tunnel user's limit over all its connections), and
  `combined` applies several at once (the longest wait wins).
- `TransformStream`: a stream seen through a per-stream `Outbound`/`Inbound` pair
  (useEncryption / useCompression).
- `pipe(a, b)`: copy both ways until both directions ended, passing half-closes on, and
  count bytes; a reset or error on either side closes both. The copying loop itself is the
  one every byte pipe shares, `fluxcommon.bytepipe.copy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio

from fluxcommon.bytepipe import copy
from fluxcommon.tunnel.protocol.crypto import Inbound, Outbound
from fluxcommon.tunnel.protocol.frames import ProtocolError
from fluxcommon.tunnel.transport.sockstream import receive_size, send_parts

CHUNK = 256 * 1024


class Bandwidth:
    """Token bucket: `rate` bytes per second, bursts up to `burst` bytes (default: 1/10 s of rate)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: int, burst: int | None = None, *, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1024, rate // 10))
        self.tokens = self.burst
        self.stamp = now

    def chunk(self) -> int:
        """How many bytes to move per step so waits stay short and smooth."""
        return max(1, min(CHUNK, int(self.burst)))

    def take(self, n: int, now: float) -> float:
        """Spend `n` bytes; returns how long to wait before they may go (0 = now).

        Debt is allowed: a caller that waits the returned time has kept the average rate.
        """
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate


class AllOf:
    """Several `Bandwidth` limits on one direction at once (see `combined`)."""

    __slots__ = ("limits",)

    def __init__(self, limits: list[Bandwidth]) -> None:
        self.limits = limits

    def chunk(self) -> int:
        return min(limit.chunk() for limit in self.limits)

    def take(self, n: int, now: float) -> float:
        return max([limit.take(n, now) for limit in self.limits])  # every bucket is charged


Limit = Bandwidth | AllOf


def combined(*limits: Limit | None) -> Limit | None:
    """The limits given (None ones left out) as one: None, the single one, or `AllOf` them."""
    flat: list[Bandwidth] = []
    for limit in limits:
        if isinstance(limit, AllOf):
            flat += limit.limits
        elif limit is not None:
            flat.append(limit)
    return None if not flat else flat[0] if len(flat) == 1 else AllOf(flat)


class TransformStream(trio.abc.HalfCloseableStream):
    """`inner` with its outgoing bytes passed through `outbound` and incoming through `inbound`.

    The transforms keep state (chunk counters, DEFLATE), so a second task sending or receiving
    at once gets `BusyResourceError` before anything is transformed, and a send after
    `send_eof` or `aclose` gets `ClosedResourceError`; a call answered from bytes already
    decoded still checkpoints (trio's stream contract, tests/fluxcommon/test_stream_conformance.py).
    """

    def __init__(self, inner: trio.abc.HalfCloseableStream, outbound: Outbound, inbound: Inbound) -> None:
        self.inner = inner
        self.outbound = outbound
        self.inbound = inbound
        self._eof = False
        self._closed = False
        self._sent_eof = False
        self._sending = False
        self._receiving = False

    def _check_send(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._sent_eof:
            raise trio.ClosedResourceError("stream already half-closed for sending")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check_send()
        self._sending = True
        try:
            # Also when there is nothing to send (b""): the inner stream's checkpoint.
            await self.inner.send_all(self.outbound.update(bytes(data)))
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._sent_eof or self._closed:
            await self.inner.send_eof()  # idempotent, or ClosedResourceError, as the inner stream says
            return
        self._sent_eof = True
        self._sending = True
        try:
            tail = self.outbound.finish()
            if tail:
                await self.inner.send_all(tail)
            await self.inner.send_eof()
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = receive_size(max_bytes, CHUNK)
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            if self._eof or not self.inbound.needs_input:
                await trio.lowlevel.checkpoint()  # answered without the inner stream: checkpoint anyway
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream closed")
                if not self.inbound.needs_input:
                    out = self.inbound.update(b"", limit)
                    if out:
                        return out
                if self._eof:
                    return b""
                data = await self.inner.receive_some(CHUNK)
                if not data:
                    self._eof = True
                    try:
                        self.inbound.finish()
                    except ProtocolError as exc:
                        raise trio.BrokenResourceError(f"tunnel payload: {exc}") from None
                    return b""
                try:
                    out = self.inbound.update(data, limit)
                except ProtocolError as exc:
                    raise trio.BrokenResourceError(f"tunnel payload: {exc}") from None
                if out:
                    return out
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        self._closed = True
        await self.inner.aclose()


def transformed(
    stream: trio.abc.HalfCloseableStream, token: str, *, encrypt: bool, compress: bool
) -> trio.abc.HalfCloseableStream:
    """`stream` wrapped for useEncryption/useCompression, or itself when neither is on."""
    if not encrypt and not compress:
        return stream
    key = token if encrypt else None
    return TransformStream(stream, Outbound(key, compress=compress), Inbound(key, compress=compress))


@dataclass
class PipeStats:
    """Bytes moved by one pipe: `up` from a to b, `down` from b to a."""

    up: int = 0
    down: int = 0


_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _parts_size(parts: list[bytes | memoryview]) -> int:
    return sum(map(len, parts))


async def _copy(
    src: trio.abc.Stream,
    dst: trio.abc.Stream,
    count: Callable[[int], None],
    limit: Limit | None,
) -> None:
    """One direction through the shared loop (`fluxcommon.bytepipe.copy`), paced by `limit`,
    then the half-close."""
    size = limit.chunk() if limit is not None else CHUNK

    async def pace(n: int) -> None:
        if limit is not None:
            delay = limit.take(n, trio.current_time())
            if delay > 0:
                await trio.sleep(delay)

    receive_parts = getattr(src, "receive_parts", None)
    if receive_parts is not None:
        # A tunnel stream's frames, gathered by one sendmsg when `dst` is a socket stream.
        async def send_gathered(parts: list[bytes | memoryview]) -> None:
            await pace(_parts_size(parts))
            await send_parts(dst, parts)

        await copy(partial(receive_parts, size), send_gathered, count, _parts_size)
    else:

        async def send(data: bytes | bytearray) -> None:
            await pace(len(data))
            await dst.send_all(data)

        await copy(partial(src.receive_some, size), send, count)
    if isinstance(dst, trio.abc.HalfCloseableStream):
        await dst.send_eof()
    else:  # pragma: no cover - every stream we pipe can half-close
        await dst.aclose()


async def pipe(
    a: trio.abc.HalfCloseableStream,
    b: trio.abc.HalfCloseableStream,
    *,
    stats: PipeStats | None = None,
    up_limit: Limit | None = None,
    down_limit: Limit | None = None,
    on_bytes: Callable[[int, int], None] | None = None,
) -> str | None:
    """Copy a->b and b->a until both directions end; close both. Returns an error, or None.

    `on_bytes(up, down)` is called with each chunk's size as it moves.
    """
    st = stats or PipeStats()
    error: str | None = None

    def count_up(n: int) -> None:
        st.up += n
        if on_bytes is not None:
            on_bytes(n, 0)

    def count_down(n: int) -> None:
        st.down += n
        if on_bytes is not None:
            on_bytes(0, n)

    async def one_way(src: trio.abc.Stream, dst: trio.abc.Stream, count: Callable[[int], None], limit: Limit | None,
                      cancel: trio.CancelScope) -> None:  # fmt: skip
        nonlocal error
        try:
            await _copy(src, dst, count, limit)
        except _GONE as exc:
            error = error or (str(exc) or type(exc).__name__)
            cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_way, a, b, count_up, up_limit, nursery.cancel_scope)
            nursery.start_soon(one_way, b, a, count_down, down_limit, nursery.cancel_scope)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            for s in (a, b):
                try:
                    await s.aclose()
                except _GONE:
                    pass
    return error


def bandwidth(rate: int) -> Bandwidth | None:
    """A limiter for `rate` bytes/s, or None for 0 (unlimited)."""
    return Bandwidth(rate, now=trio.current_time()) if rate > 0 and math.isfinite(rate) else None
