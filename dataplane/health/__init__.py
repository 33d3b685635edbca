"""Endpoint health of the data-plane node: the sans-IO health state machine.

Nothing in this package does I/O or reads the clock; the checker tasks live elsewhere.
"""

from dataplane.health.state import (
    ActiveCheckPolicy,
    OutlierPolicy,
    ejection_duration,
    may_eject,
    next_release,
    record_check,
    record_request,
    release_ejections,
    reset_checks,
)

__all__ = [
    "ActiveCheckPolicy",
    "OutlierPolicy",
    "ejection_duration",
    "may_eject",
    "next_release",
    "record_check",
    "record_request",
    "release_ejections",
    "reset_checks",
]
