"""SnapshotCache: the current config version and its per-group snapshots.

Knows nothing of gRPC (as go-control-plane's cache): `publish` sets a new
version and wakes subscribers; `response_bytes` renders a group's snapshot once
per version (in a worker thread) and shares it between all streams of that group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from google.protobuf import any_pb2

from controlplane.snapshot import SNAPSHOT_TYPE_URL, render_snapshot
from controlplane.spec import ConfigSet
from flux.v1 import config_pb2

log = logging.getLogger("flux.discovery")

Renderer = Callable[[ConfigSet, int, str], config_pb2.Snapshot]


class SnapshotCache:
    def __init__(self, renderer: Renderer = render_snapshot) -> None:
        self._renderer = renderer
        self.version = -1
        self._config: ConfigSet | None = None
        self._rendered: dict[str, asyncio.Future[any_pb2.Any]] = {}
        self._subscribers: set[asyncio.Event] = set()
        self.renders = 0
        self.last_render_ms = 0.0

    @property
    def ready(self) -> bool:
        return self._config is not None

    def publish(self, version: int, config: ConfigSet) -> None:
        if version == self.version:
            return
        self.version = version
        self._config = config
        self._rendered = {}
        for event in self._subscribers:
            event.set()

    def refresh(self) -> None:
        """Re-render every group at the current version (registry endpoints changed)."""
        self._rendered = {}
        for event in self._subscribers:
            event.set()

    def subscribe(self, event: asyncio.Event) -> None:
        self._subscribers.add(event)

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._subscribers.discard(event)

    async def snapshot(self, group: str) -> tuple[int, any_pb2.Any]:
        """(version, packed snapshot) of `group` at the current version."""
        version, config = self.version, self._config
        assert config is not None, "snapshot() before the first publish()"
        fut = self._rendered.get(group)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._rendered[group] = fut
            try:
                packed = await asyncio.to_thread(self._render, config, version, group)
            except BaseException as exc:
                fut.set_exception(exc)
                self._rendered.pop(group, None)
                raise
            fut.set_result(packed)
        return version, await asyncio.shield(fut)

    def _render(self, config: ConfigSet, version: int, group: str) -> any_pb2.Any:
        start = time.perf_counter()
        snap = self._renderer(config, version, group)
        packed = any_pb2.Any(type_url=SNAPSHOT_TYPE_URL, value=snap.SerializeToString(deterministic=True))
        self.renders += 1
        self.last_render_ms = (time.perf_counter() - start) * 1000
        log.debug("rendered group %s at version %d in %.1f ms", group, version, self.last_render_ms)
        return packed
