"""The one loop that copies bytes from one side of a connection to the other.

Three places move bytes between two ends: layer-4 forwarding (`dataplane.l4`, raw sockets
with trio waits), an upgraded or CONNECT-ed HTTP connection (`dataplane.http.proxy.splice`,
sockets on the node's reactor, which cannot await trio) and the tunnel (`fluxcommon.tunnel.
transport.pipe`, trio streams). Their I/O differs, their loop does not, so it is written once
here as plain `async def` code that awaits only the `recv` and `send` functions it is given:
it runs on trio and on the reactor alike (this module imports no I/O library).

- `copy`: chunks from `recv` to `send` until `recv` gives an empty chunk (EOF); every chunk
  is counted with `count(n)` as it arrives, before it is sent on (the idle timers of its
  callers read that as "a byte moved"). Errors propagate.
- `forward`: `copy`, then pass the half-close on with `shutdown` (the other direction keeps
  flowing); an OSError on either side ends the copy quietly and still half-closes.

Idle timeouts stay with the callers, fed by `count`: each event loop has its own timers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

Chunk = TypeVar("Chunk")


def _ignore(n: int) -> None:
    pass


async def copy(
    recv: Callable[[], Awaitable[Chunk]],
    send: Callable[[Chunk], Awaitable[None]],
    count: Callable[[int], None] = _ignore,
    size: Callable[[Chunk], int] = len,  # type: ignore[assignment]
) -> int:
    """Copy until EOF; the number of bytes moved. `size` measures a chunk (several parts: their sum)."""
    total = 0
    while True:
        chunk = await recv()
        if not chunk:
            return total
        n = size(chunk)
        total += n
        count(n)
        await send(chunk)


async def forward(
    recv: Callable[[], Awaitable[bytes]],
    send: Callable[[bytes], Awaitable[None]],
    shutdown: Callable[[], object],
    count: Callable[[int], None] = _ignore,
) -> OSError | None:
    """`copy`, then `shutdown()` (the half-close: the destination's peer reads EOF).

    An OSError (reset, broken pipe, closed) ends the copy and is returned, not raised; the
    half-close is still passed on, and an OSError from it is ignored (the peer is gone).
    `shutdown` may be a plain function or return an awaitable (a trio stream's `send_eof`).
    """
    error: OSError | None = None
    try:
        await copy(recv, send, count)
    except OSError as exc:
        error = exc
    try:
        done = shutdown()
        if isinstance(done, Awaitable):
            await done
    except OSError:
        pass
    return error
