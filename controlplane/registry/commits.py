"""Committer: the registry's writes, group-committed, and catching up with the database.

A write is a plan (`controlplane.registry.plans`) staged on a `Tx`. Each runs in a
transaction that bumps `reg_state.registry_index` (the row lock serialises control planes),
first reads any changes other control planes made since (so the plan sees current state),
then writes the rows and the events, and stamps the new index on the service and the
instances it touched. A plan that changes nothing bumps nothing. Concurrent writes are
group-committed: one transaction (one fsync) carries every plan queued meanwhile, each with
its own index and events. Memory (`RegistryView`) is updated after the commit, in index order,
and the changed services are handed to `notify`.

`load` reads everything at start; `poll` catches up with writes of other control planes on the
same database (the events since the last known index name the services to reload). Both hold
the write lock, so memory moves in index order. Everything here blocks: run it in a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import DBAPIError

from controlplane.registry.models import RegEventRow, RegInstanceRow, RegServiceRow, RegStateRow
from controlplane.registry.tx import Batch, Job, Tx, write_rows
from controlplane.registry.view import RegistryView

log = logging.getLogger("flux.registry")

T_STATE = RegStateRow.__table__  # type: ignore[attr-defined]
_TABLES = {
    "services": RegServiceRow.__table__,  # type: ignore[attr-defined]
    "instances": RegInstanceRow.__table__,  # type: ignore[attr-defined]
    "events": RegEventRow.__table__,  # type: ignore[attr-defined]
}
_DEADLOCK_CODES = (1213, 1205)  # MySQL: deadlock found, lock wait timeout

R = TypeVar("R")


class Committer:
    def __init__(
        self,
        engine: Engine,
        view: RegistryView,
        clock: Callable[[], float],
        counters: dict[str, int],
        notify: Callable[[set[str]], None],
    ) -> None:
        self.engine = engine
        self.view = view
        self.clock = clock
        self.counters = counters
        self._notify = notify
        self._write_lock = threading.Lock()  # one batch of writes (DB transaction + memory update) at a time
        self._queue_lock = threading.Lock()
        self._queue: list[Job] = []

    # -- loading and catching up -------------------------------------------------------------

    def load(self) -> None:
        """Read everything from the database (blocking)."""
        with self._write_lock, self.engine.connect() as conn:
            index = int(conn.execute(select(T_STATE.c.registry_index).where(T_STATE.c.id == 1)).scalar_one())
            self.view.reload(conn, None, index)
        log.info("registry loaded: %d services, index %d", len(self.view.services()), index)

    def db_index(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(T_STATE.c.registry_index).where(T_STATE.c.id == 1)).scalar_one())

    def poll(self) -> set[str]:
        """Catch up with changes other control planes made (blocking); returns the services changed."""
        if self.db_index() <= self.view.index:
            return set()
        with self._write_lock, self.engine.connect() as conn:
            index = int(conn.execute(select(T_STATE.c.registry_index).where(T_STATE.c.id == 1)).scalar_one())
            changed = self.view.catch_up(conn, index)
        self._notify(changed)
        return changed

    # -- writing -------------------------------------------------------------------------------

    def write(self, plan: Callable[[Tx], R], now: float | None = None) -> tuple[R, int | None]:
        """Commit `plan` with its own index bump (none if it stages nothing); returns (result, index).

        Group commit: the thread that gets the write lock commits every plan queued so far in
        one transaction (one fsync), each plan with its own index and events; threads whose
        plan it committed find theirs done when they get the lock in turn.
        """
        job = Job(plan, self.clock() if now is None else now)
        changed: set[str] = set()
        with self._queue_lock:
            self._queue.append(job)
        with self._write_lock:
            if not job.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._run_batch(batch, changed)
        self._notify(changed)  # outside the lock: a subscriber without a loop may write again
        if job.error is not None:
            raise job.error
        return job.result, job.index

    def _run_batch(self, batch: list[Job], changed: set[str]) -> None:
        for attempt in range(3):
            try:
                self._commit_batch(batch, changed)
                return
            except DBAPIError as exc:
                if len(batch) > 1:  # find the one that fails: commit them one by one
                    for job in batch:
                        self._run_batch([job], changed)
                    return
                code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
                if code in _DEADLOCK_CODES and attempt < 2:
                    log.info("registry write hit a deadlock; retrying")
                    continue
                self._fail(batch, exc)
                return
            except BaseException as exc:
                self._fail(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                return

    def _fail(self, batch: list[Job], exc: BaseException) -> None:
        for job in batch:
            job.error, job.done = exc, True

    def _commit_batch(self, batch: list[Job], changed: set[str]) -> None:
        """One transaction for `batch`; adds the services it (or a catch-up) changed to `changed`."""
        view = self.view
        caught: set[str] = set()
        staged: list[tuple[Tx, int]] = []
        for job in batch:
            job.result, job.index, job.error = None, None, None
        with self.engine.connect() as conn:
            try:
                conn.execute(
                    update(T_STATE).where(T_STATE.c.id == 1).values(registry_index=T_STATE.c.registry_index + 1)
                )  # the row lock serialises writers of every control plane on this database
                first = int(conn.execute(select(T_STATE.c.registry_index).where(T_STATE.c.id == 1)).scalar_one())
                if first - 1 > view.index:  # another control plane wrote since we last looked
                    caught = view.catch_up(conn, first - 1)
                index = first - 1
                done = Batch()
                services, instances = view.staging()
                for job in batch:
                    tx = Tx(conn, job.now, done, services, instances)
                    try:
                        job.result = job.plan(tx)
                    except DBAPIError:
                        raise
                    except Exception as exc:  # NotFound, ConfigError: this plan only
                        job.error = exc
                        continue
                    if tx.events:
                        index += 1
                        tx.stamp(index)
                        write_rows(conn, tx, index, _TABLES)
                        done.merge(tx)
                        job.index = index
                        staged.append((tx, index))
                if not staged:
                    conn.rollback()
                else:
                    if index != first:
                        conn.execute(update(T_STATE).where(T_STATE.c.id == 1).values(registry_index=index))
                    conn.commit()
            except BaseException:
                conn.rollback()
                changed |= caught
                raise
        changed |= caught
        for tx, idx in staged:
            view.apply(tx, idx)
            changed |= tx.touched
        self.counters["writes"] += len(staged)
        for job in batch:
            job.done = True
