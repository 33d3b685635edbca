"""ChangeHub: tells the asyncio side which services changed, and serves watches.

Writes commit in worker threads; `notify(names)` may be called from any thread. The
names are collected and handed to the event loop with one `call_soon_threadsafe`, so
a burst of commits becomes one delivery: subscribers are called with the union of the
changed services, and every `wait` on one of them wakes.

A watch waits for a service's watch index (its modify index, or the index of its
deletion) to pass a given value, like a Consul blocking query. It owns no state of
its own beyond the waiting futures: the index comes from the registry's memory, which
is updated before `notify` is called, so a watch that checks the index and then waits
cannot miss a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from controlplane.registry.types import ChangeCallback

log = logging.getLogger("flux.registry")


class ChangeHub:
    def __init__(self, watch_index: Callable[[str], int]) -> None:
        self._watch_index = watch_index
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callbacks: list[ChangeCallback] = []
        self._pending: set[str] = set()
        self._scheduled = False
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.closing = False

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop subscribers are called on and watches live on."""
        self._loop = loop

    def subscribe(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def notify(self, names: set[str]) -> None:
        """From any thread: these services changed (memory already shows it)."""
        if not names:
            return
        loop = self._loop
        if loop is None or loop.is_closed():  # no loop (tests, tools): deliver in this thread
            self._deliver(set(names))
            return
        with self._lock:
            self._pending |= names
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._dispatch)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _dispatch(self) -> None:
        with self._lock:
            names, self._pending = self._pending, set()
            self._scheduled = False
        self._deliver(names)

    def _deliver(self, names: set[str]) -> None:
        for name in names:
            for fut in self._waiters.pop(name, []):
                if not fut.done():
                    fut.set_result(None)
        for callback in self._callbacks:
            try:
                callback(set(names))
            except Exception:
                log.exception("registry subscriber failed")

    async def wait(self, service: str, index: int, max_wait: float) -> int:
        """Wait until the watch index of `service` passes `index`, at most `max_wait` seconds; return it."""
        current = self._watch_index(service)
        if current > index or max_wait <= 0 or self.closing:
            return current
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(service, []).append(fut)
        try:
            await asyncio.wait_for(fut, max_wait)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(service)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
                if not waiters:
                    del self._waiters[service]
        return self._watch_index(service)

    def close(self) -> None:
        """Wake every watch so long-polls and streams answer now (shutdown; call on the loop)."""
        self.closing = True
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()

    def waiting(self) -> int:
        return sum(len(v) for v in self._waiters.values())
