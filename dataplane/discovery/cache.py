"""The last good snapshot on disk, so a node starts serving without a control plane."""

from __future__ import annotations

import logging
import os
import pathlib
import re

from google.protobuf.message import DecodeError

from flux.v1 import config_pb2

log = logging.getLogger("flux.node.cache")


class SnapshotFile:
    def __init__(self, cache_dir: str | os.PathLike[str] | None, node_group: str) -> None:
        self.path: pathlib.Path | None = None
        if cache_dir:
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", node_group)
            self.path = pathlib.Path(cache_dir) / f"snapshot-{safe}.pb"

    def save(self, snapshot: config_pb2.Snapshot) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(snapshot.SerializeToString(deterministic=True))
            os.chmod(tmp, 0o600)  # snapshots carry secrets (JWT keys, tunnel tokens)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save the snapshot cache %s: %s", self.path, exc)

    def load(self) -> config_pb2.Snapshot | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            snap = config_pb2.Snapshot()
            snap.ParseFromString(self.path.read_bytes())
        except (OSError, DecodeError) as exc:
            log.warning("ignoring unreadable snapshot cache %s: %s", self.path, exc)
            return None
        return snap
