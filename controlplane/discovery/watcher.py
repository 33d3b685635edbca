"""ConfigWatcher: notices new config versions and publishes them to the cache.

Local writes poke it at once; a poll of the version row every `poll_interval`
catches writes made by other control planes on the same database. After a
change it waits `coalesce` seconds before loading, so a burst of writes becomes
one published version. `before_publish` (the rollout manager's `sync_hold`) runs before
each new version is published, so the nodes a rollout holds back never see it early.
With `tracing` (controlplane.tracing), each publish is a span, a child of the write that made
the version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from controlplane.discovery.cache import SnapshotCache
from controlplane.store.config_store import ConfigStore
from controlplane.tracing import ConfigTracing

log = logging.getLogger("flux.discovery")


class ConfigWatcher:
    def __init__(
        self,
        store: ConfigStore,
        cache: SnapshotCache,
        *,
        poll_interval: float = 0.2,
        coalesce: float = 0.02,
        tracing: ConfigTracing | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.poll_interval = poll_interval
        self.coalesce = coalesce
        self._poke = asyncio.Event()
        self.publishes = 0
        self.before_publish: Callable[[], Awaitable[Any]] | None = None
        self.tracing = tracing

    def poke_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the watcher now (a committed write, from the request's worker thread)."""
        loop.call_soon_threadsafe(self._poke.set)

    async def load_once(self) -> None:
        version, config = await asyncio.to_thread(self.store.current)
        if version != self.cache.version:
            span = self.tracing.publish_span(version, self.cache.version) if self.tracing is not None else None
            try:
                if self.before_publish is not None:
                    await self.before_publish()
                    if version == self.cache.version:
                        return  # the rollout manager published it (a rollout that just ended)
                self.cache.publish(version, config)
                self.publishes += 1
                log.info("publishing config version %d", version)
            finally:
                if span is not None:
                    span.end()

    async def run(self) -> None:
        await self.load_once()
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), timeout=self.poll_interval)
            except TimeoutError:
                pass
            poked = self._poke.is_set()
            self._poke.clear()
            try:
                version = await asyncio.to_thread(self.store.db_version)
                if version == self.cache.version:
                    continue
                if poked and self.coalesce:
                    await asyncio.sleep(self.coalesce)
                    self._poke.clear()
                await self.load_once()
            except Exception:
                log.exception("could not load the config version; retrying")
                await asyncio.sleep(self.poll_interval)
