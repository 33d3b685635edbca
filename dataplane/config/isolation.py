"""One resource a node cannot apply does not block the rest of the snapshot (Envoy's LDS rule).

Some failures belong to one resource and to this node: a listener's port is taken here, a
certificate does not load with this node's OpenSSL, a tunnel server cannot bind. The worker
then applies the snapshot without that resource instead of refusing the whole version, and
reports the resource in its ACK (`StreamConfigRequest.resource_errors`):

- a listener or tunnel that applied before keeps its previous version (the old port keeps
  serving); one that is new (or whose previous version fails too) is left out, with the
  routes that name it;
- a cluster whose TLS settings fail is kept with no endpoint: its routes answer 503 on this
  node instead of sending traffic in plaintext or with the wrong client certificate.

Every new version is tried whole first, so a resource that failed is retried each time.
What cannot be pinned on one resource (a snapshot that does not parse, a bug) still refuses
the version whole (NACK). Plain functions on protobuf messages: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from flux.v1 import config_pb2 as pb

KINDS = ("listener", "cluster", "tunnel")
MAX_ISOLATED = 64  # resources set aside in one version before the node gives up and refuses it


@dataclass(frozen=True)
class Fault:
    """The resource an error is about."""

    kind: str  # listener | cluster | tunnel
    name: str


class ResourceFault(Exception):
    """An error that belongs to one resource (see `Fault`); its message names it."""

    def __init__(self, message: str, kind: str, name: str) -> None:
        super().__init__(message)
        self.fault = Fault(kind, name)


@dataclass(frozen=True)
class Failure:
    """A resource this node could not apply, as reported to the control plane."""

    kind: str
    name: str
    message: str
    kept_previous: bool  # the previous version of the resource still serves

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name, "message": self.message, "kept_previous": self.kept_previous}


def _field(kind: str) -> str:
    return {"listener": "listeners", "cluster": "clusters", "tunnel": "tunnels"}[kind]


def _find(snap: pb.Snapshot | None, kind: str, name: str) -> object | None:
    if snap is None:
        return None
    return next((r for r in getattr(snap, _field(kind)) if r.name == name), None)


def set_aside(
    snap: pb.Snapshot, fault: Fault, previous: pb.Snapshot | None, *, use_previous: bool
) -> tuple[pb.Snapshot, bool]:
    """A copy of `snap` without the faulty resource: its version from `previous` when
    `use_previous` and it had one, else left out (a cluster: kept with no endpoint).
    Returns (the copy, whether the previous version was used)."""
    out = pb.Snapshot()
    out.CopyFrom(snap)
    items = getattr(out, _field(fault.kind))
    index = next((i for i, r in enumerate(items) if r.name == fault.name), None)
    if index is None:
        return out, False
    old = _find(previous, fault.kind, fault.name) if use_previous else None
    if old is not None:
        items[index].CopyFrom(old)
        return out, True
    if fault.kind == "cluster":
        cluster = items[index]
        del cluster.endpoints[:]
        for name in ("tls", "service"):
            if cluster.HasField(name):
                cluster.ClearField(name)
        cluster.scheme = "http"
        return out, False
    del items[index]
    if fault.kind == "listener":
        kept = [r for r in out.routes if r.listener != fault.name]
        del out.routes[:]
        out.routes.extend(kept)
    return out, False
