"""`SendGate`: one sender at a time on a stream, without a schedule point when nobody holds it.

`trio.Lock` is a full checkpoint on every acquire: the task goes back through trio's scheduler
(an epoll call and a reschedule) even when the lock is free. A tunnel link takes its send locks
for every chunk it moves, so at hundreds of MB/s those yields were a large share of its CPU.
The gate only parks when it is held; the send that follows is a checkpoint of its own.

Waiters are woken in order, but a task that arrives while the gate is free takes it at once
(no hand-off); a woken waiter that finds it taken again parks again. What the gate protects is
ordering (take bytes off a queue, send them, release), which barging does not break.
"""

from __future__ import annotations

from types import TracebackType

import trio


class SendGate:
    __slots__ = ("_lot", "busy")

    def __init__(self) -> None:
        self.busy = False
        self._lot = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self.busy

    def try_acquire(self) -> bool:
        """Take the gate if it is free (no await); False when someone holds it."""
        if self.busy:
            return False
        self.busy = True
        return True

    async def acquire(self) -> None:
        while self.busy:
            await self._lot.park()
        self.busy = True

    def release(self) -> None:
        self.busy = False
        if self._lot:
            self._lot.unpark()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
