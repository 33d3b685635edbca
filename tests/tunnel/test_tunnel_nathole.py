"""The node's xtcp hole-punch coordinator forgets unanswered attempts after PENDING_TTL, on its clock."""

from __future__ import annotations

from typing import Any, cast

from dataplane.tunnel.nathole import PENDING_TTL, NatHoleCoordinator, _Attempt


def test_pending_attempts_expire_on_the_coordinator_clock() -> None:
    now = [1000.0]
    coordinator = NatHoleCoordinator(cast(Any, None), clock=lambda: now[0])
    visitor = cast(Any, None)
    coordinator.pending["old"] = _Attempt("old", "p2p", visitor, [], coordinator.clock())
    now[0] += PENDING_TTL
    coordinator.pending["new"] = _Attempt("new", "p2p", visitor, [], coordinator.clock())
    coordinator._expire()
    assert set(coordinator.pending) == {"old", "new"}  # exactly PENDING_TTL old: still kept
    now[0] += 0.5
    coordinator._expire()
    assert set(coordinator.pending) == {"new"}
    now[0] += PENDING_TTL
    coordinator._expire()
    assert coordinator.pending == {}
