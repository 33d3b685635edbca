"""Heartbeats: instances' "still alive" signals, kept in memory at once and written in batches.

A heartbeat changes `last_heartbeat` only: memory (`RegistryView.touch`) at once, the database
in one batched UPDATE a second (`flush`), never the registry index. An unknown instance
raises NotFound (the client re-registers). Heartbeat times only move forward.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine, bindparam, update

from controlplane.registry.models import RegInstanceRow
from controlplane.registry.types import Instance
from controlplane.registry.view import Key, RegistryView, chunks
from controlplane.store.config_store import NotFound

log = logging.getLogger("flux.registry")

T_INST = RegInstanceRow.__table__  # type: ignore[attr-defined]

_HEARTBEAT_UPDATE = (
    update(T_INST)
    .where(
        T_INST.c.service == bindparam("k_service"),
        T_INST.c.instance_id == bindparam("k_id"),
        T_INST.c.last_heartbeat < bindparam("hb"),
    )
    .values(last_heartbeat=bindparam("hb"))
)


def _mysql_heartbeat_sql(rows: int) -> str:
    values = " UNION ALL ".join(["SELECT %s AS s, %s AS i, %s AS hb"] + ["SELECT %s, %s, %s"] * (rows - 1))
    return (
        f"UPDATE reg_instances AS r JOIN ({values}) AS v ON r.service = v.s AND r.instance_id = v.i "
        "SET r.last_heartbeat = GREATEST(r.last_heartbeat, v.hb)"
    )


class Heartbeats:
    def __init__(
        self, engine: Engine, view: RegistryView, clock: Callable[[], float], counters: dict[str, int]
    ) -> None:
        self.engine = engine
        self.view = view
        self.clock = clock
        self.counters = counters
        self._lock = threading.Lock()  # guards `_pending`; taken after the view's lock, never before
        self._pending: dict[Key, float] = {}  # heartbeats not yet written
        view.on_drop = self.forget

    def forget(self, key: Key) -> None:
        """An instance left memory: its pending heartbeat is not written."""
        with self._lock:
            self._pending.pop(key, None)

    def heartbeat(self, service: str, iid: str, *, now: float | None = None) -> Instance:
        """Record a heartbeat (memory only; written by `flush`). NotFound when unknown."""
        now = self.clock() if now is None else now
        try:
            inst = self.view.touch(service, iid, now)
        except NotFound:
            self.counters["heartbeats_unknown"] += 1
            raise
        with self._lock:
            self._pending[(service, iid)] = inst.last_heartbeat
            self.counters["heartbeats"] += 1
        return inst

    def flush(self) -> int:
        """Write the heartbeats received since the last flush in one batch (blocking).

        SQLite: one executemany UPDATE. MySQL: one UPDATE ... JOIN per 1,000 instances (PyMySQL
        sends an executemany UPDATE row by row).
        """
        with self._lock:
            beats, self._pending = self._pending, {}
        if not beats:
            return 0
        rows = sorted((s, i, hb) for (s, i), hb in beats.items())  # one lock order for every writer
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "mysql":
                    for part in chunks(rows, 1000):
                        conn.exec_driver_sql(_mysql_heartbeat_sql(len(part)), tuple(x for row in part for x in row))
                else:
                    conn.execute(_HEARTBEAT_UPDATE, [{"k_service": s, "k_id": i, "hb": hb} for s, i, hb in rows])
        except Exception:
            log.exception("could not save %d heartbeats; will retry", len(beats))
            known = {key: hb for key, hb in beats.items() if self.view.has_instance(key)}
            with self._lock:
                for key, hb in known.items():
                    self._pending[key] = max(hb, self._pending.get(key, 0.0))
            return 0
        self.counters["heartbeats_flushed"] += len(beats)
        self.counters["heartbeat_flushes"] += 1
        return len(beats)
