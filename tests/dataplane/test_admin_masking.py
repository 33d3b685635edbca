"""/config_dump masks every secret of the applied snapshot (dataplane/admin.py)."""

from __future__ import annotations

import json

from dataplane.admin import MASK, masked_snapshot
from flux.v1 import config_pb2 as pb


def test_config_dump_masks_tunnel_user_tokens_as_well_as_shared_ones() -> None:
    snap = pb.Snapshot(
        tunnels=[
            pb.Tunnel(
                name="edge",
                tokens=["shared-token-value"],
                users=[pb.TunnelUser(name="office", token="office-token-value")],
            )
        ]
    )
    dumped = masked_snapshot(snap)
    text = json.dumps(dumped)
    assert "shared-token-value" not in text
    assert "office-token-value" not in text
    tunnel = dumped["tunnels"][0]
    assert tunnel["tokens"] == [MASK]
    assert tunnel["users"] == [{"name": "office", "token": MASK}]
    # the node's own snapshot is untouched
    assert snap.tunnels[0].users[0].token == "office-token-value"


def test_config_dump_masks_the_password_of_a_redis_url() -> None:
    policy = pb.Policy(name="rl", type="rate_limit")
    policy.config.update({"rate": 5, "redis": "redis://:pw-value@127.0.0.1:6379/0"})
    dumped = masked_snapshot(pb.Snapshot(policies=[policy]))
    assert dumped["policies"][0]["config"]["redis"] == f"redis://:{MASK}@127.0.0.1:6379/0"
