"""Node credentials for tests that speak the discovery protocol themselves.

`credentials_for(address, node_id, group)` enrols `node_id` (the real enrolment of
dataplane.discovery.credentials, with a join token from the ControlPlaneProcess serving
`address`) and keeps the result per node CA, node id and group, so a test client that
reconnects, or connects to another control plane of the same database, is the same node.
"""

from __future__ import annotations

import threading

from dataplane.discovery.credentials import NodeCredentials, enroll_once
from fluxcommon.trust import JoinToken
from support.processes import serving

_cache: dict[tuple[str, str, str], NodeCredentials] = {}
_lock = threading.Lock()


def credentials_for(address: str, node_id: str, group: str = "default") -> NodeCredentials:
    cp = serving(address)
    if cp is None:
        raise AssertionError(f"no ControlPlaneProcess serves {address}: give the client credentials")
    key = (cp.ca_pin, node_id, group)
    with _lock:
        creds = _cache.get(key)
    if creds is not None and not creds.expired():
        return creds
    creds = enroll_once(cp.grpc_addr, JoinToken.parse(cp.join_token(group)), node_id, group)
    with _lock:
        _cache[key] = creds
    return creds


def forget(node_id: str) -> None:
    """Drop the kept credentials of `node_id` (after revoking it, say)."""
    with _lock:
        for key in [k for k in _cache if k[1] == node_id]:
            del _cache[key]
