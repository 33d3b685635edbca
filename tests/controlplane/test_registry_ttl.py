"""TTL expiry and the leader lease: the pure rules (hypothesis) and the store as a state machine.

- An ephemeral instance expires exactly when now > last_heartbeat + ttl, never earlier;
  persistent ones never expire; heartbeat times only move forward.
- The store, driven by random registrations, heartbeats, clock steps and expiry ticks
  (fake clock, real SQLite), holds exactly the instances the model says are alive, and
  its index moves only on changes.
- The lease's SQL conditional update agrees with `lease.may_take`.
"""

from __future__ import annotations

import pathlib
import tempfile
from dataclasses import dataclass

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import Engine, text

from controlplane.registry import lease, ttl
from controlplane.registry.store import RegistryStore
from controlplane.registry.types import InstanceSpec
from controlplane.store.db import make_engine, migrate

T0 = 1_800_000_000.0


@dataclass
class Rec:
    ephemeral: bool
    ttl_ms: int
    last_heartbeat: float


ttls = st.integers(min_value=1000, max_value=120_000)
offsets = st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False)


@given(ephemeral=st.booleans(), ttl_ms=ttls, hb=offsets, dt=st.floats(-1000, 1000, allow_nan=False))
def test_expired_exactly_after_the_deadline(ephemeral: bool, ttl_ms: int, hb: float, dt: float) -> None:
    rec = Rec(ephemeral, ttl_ms, T0 + hb)
    now = T0 + hb + dt
    assert ttl.is_expired(rec, now) == (ephemeral and now > rec.last_heartbeat + ttl_ms / 1000)
    assert ttl.deadline(rec) == (rec.last_heartbeat + ttl_ms / 1000 if ephemeral else None)
    if ephemeral:
        assert not ttl.is_expired(rec, rec.last_heartbeat + ttl_ms / 1000)  # at the deadline: still alive
    else:
        assert not ttl.is_expired(rec, now + 10**9)


@given(ttl_ms=ttls, data=st.data())
def test_random_heartbeat_schedules(ttl_ms: int, data: st.DataObject) -> None:
    """Heartbeats after random gaps (up to twice the TTL), checked at random clocks in between:
    alive while every gap is within the TTL, late-but-in-time heartbeats included; expired at the
    first clock past the last heartbeat + TTL."""
    ttl_s = ttl_ms / 1000
    rec = Rec(True, ttl_ms, T0)
    now = T0
    gaps = data.draw(st.lists(st.floats(0, 2 * ttl_s, allow_nan=False), min_size=1, max_size=30))
    for gap in gaps:
        probe = now + data.draw(st.floats(0, gap, allow_nan=False))  # a clock reading between heartbeats
        assert ttl.is_expired(rec, probe) == (probe > rec.last_heartbeat + ttl_s)
        now += gap
        if now > rec.last_heartbeat + ttl_s:
            assert ttl.is_expired(rec, now)
            return  # gone: this heartbeat comes too late (the client registers again)
        assert not ttl.is_expired(rec, now)
        rec.last_heartbeat = ttl.merge_heartbeat(rec.last_heartbeat, now)


@given(st.lists(offsets, min_size=1, max_size=20))
def test_heartbeat_times_only_move_forward(times: list[float]) -> None:
    known = 0.0
    for t in times:
        merged = ttl.merge_heartbeat(known, t)
        assert merged == max(known, t) and merged >= known
        known = merged


@given(st.lists(st.tuples(st.booleans(), ttls, offsets), max_size=20), offsets)
def test_expired_and_next_deadline_agree(recs: list[tuple[bool, int, float]], probe: float) -> None:
    items = [Rec(e, t, T0 + h) for e, t, h in recs]
    now = T0 + probe
    assert ttl.expired(items, now) == [r for r in items if ttl.is_expired(r, now)]
    due = ttl.next_deadline(items)
    if due is None:
        assert all(not r.ephemeral for r in items)
    else:
        assert not ttl.expired(items, due - 1e-6) or any(ttl.deadline(r) < due for r in items)  # type: ignore[operator]
        assert all(not ttl.is_expired(r, due) for r in items)


# -- the lease: SQL and the rule agree ------------------------------------------------------

_engines: dict[str, Engine] = {}


def _engine() -> Engine:
    """One migrated SQLite database for the module (the state machine wipes it per example)."""
    if "e" not in _engines:
        path = pathlib.Path(tempfile.mkdtemp(prefix="flux-ttl-")) / "flux.db"
        _engines["e"] = make_engine(f"sqlite:///{path}")
        migrate(_engines["e"])
    return _engines["e"]


def _wipe(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in ("reg_events", "reg_instances", "reg_services"):
            conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("UPDATE reg_state SET registry_index = 0, leader = '', lease_until = 0"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 5, allow_nan=False)), max_size=25))
def test_lease_sql_matches_the_rule(steps: list[tuple[str, float]]) -> None:
    engine = _engine()
    _wipe(engine)
    stores = {n: RegistryStore(engine, n, lease_duration=3.0) for n in "abc"}
    model = lease.Lease("", 0.0)
    now = T0
    for who, dt in steps:
        now += dt
        allowed = lease.may_take(model, who, now)
        assert stores[who].lease_tick(now) == allowed
        if allowed:
            model = lease.taken(who, now, 3.0)
        assert stores[who].lease() == model
        holders = [n for n in "abc" if model.held_by(n, now)]
        assert len(holders) <= 1


# -- the store as a state machine -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class RegistryExpiry(RuleBasedStateMachine):
    """Random registrations, heartbeats, clock steps and expiry ticks against the real store."""

    @initialize()
    def setup(self) -> None:
        self.engine = _engine()
        _wipe(self.engine)
        self.clock = Clock()
        self.store = RegistryStore(self.engine, "cp-test", clock=self.clock)
        self.store.load()
        self.model: dict[str, Rec] = {}
        self.index = 0
        self.ports = iter(range(1, 65536))

    @rule(ephemeral=st.booleans(), ttl_s=st.integers(1, 20))
    def register(self, ephemeral: bool, ttl_s: int) -> None:
        port = next(self.ports)
        spec = InstanceSpec(address="10.0.0.1", port=port, ephemeral=ephemeral, ttl=f"{ttl_s}s")
        inst, created = self.store.register("svc", spec)
        assert created
        self.model[inst.id] = Rec(ephemeral, ttl_s * 1000, self.clock.now)
        self.index += 1

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        iid = data.draw(st.sampled_from(sorted(self.model)))
        self.store.heartbeat("svc", iid)
        self.model[iid].last_heartbeat = self.clock.now

    @rule(dt=st.integers(0, 8))  # whole seconds: the clock lands on deadlines exactly
    def advance(self, dt: int) -> None:
        self.clock.now += dt

    @rule()
    def tick(self) -> None:
        now = self.clock.now
        due = {iid for iid, rec in self.model.items() if rec.ephemeral and now > rec.last_heartbeat + rec.ttl_ms / 1000}
        expired = {i.id for i in self.store.expire_due()}
        assert expired == due
        for iid in due:
            assert self.model[iid].ephemeral
            del self.model[iid]
        if due:
            self.index += 1  # one expiry pass is one change

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        self.store.flush_heartbeats()

    @invariant()
    def memory_matches_the_model(self) -> None:
        if not hasattr(self, "store"):
            return
        assert {i.id for i in self.store.instances("svc")} == set(self.model)
        assert self.store.index == self.index  # heartbeats and flushes never move it
        for inst in self.store.instances("svc"):
            assert inst.last_heartbeat == self.model[inst.id].last_heartbeat


RegistryExpiry.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_registry_expiry_state_machine = RegistryExpiry.TestCase
