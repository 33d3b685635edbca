"""Sans-IO load balancing of the data-plane node: endpoint state, balancers, session affinity.

Nothing in this package does I/O or reads the clock.
"""

from dataplane.balancing.affinity import AffinityIndex, affinity_id, set_cookie_header
from dataplane.balancing.balancers import (
    BALANCERS,
    Balancer,
    ConsistentHash,
    IpHash,
    LeastConn,
    RoundRobin,
    WeightedRoundRobin,
    make_balancer,
    stable_hash64,
)
from dataplane.balancing.endpoint import EndpointState, endpoint_key

__all__ = [
    "BALANCERS",
    "AffinityIndex",
    "Balancer",
    "ConsistentHash",
    "EndpointState",
    "IpHash",
    "LeastConn",
    "RoundRobin",
    "WeightedRoundRobin",
    "affinity_id",
    "endpoint_key",
    "make_balancer",
    "set_cookie_header",
    "stable_hash64",
]
