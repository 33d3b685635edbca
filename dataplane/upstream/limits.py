"""`PoolLimits`: the connection-pool settings of a cluster, as compiled from its config.

Plain data, apart from the pools that obey them (`dataplane.upstream.pool`), so the runtime
tables and the compiler can hold them without importing the reactor.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_connections: int = 1024
    max_idle: int = 128
    idle_timeout: float = 60.0
    max_pending: int = 1024
