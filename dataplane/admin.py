"""The node's admin endpoint: /ready, /healthz, /metrics, /config_dump, /clusters, /stats.

The server is `fluxcommon.adminhttp.AdminServer` (the agent's admin endpoint uses it too),
on its own port, never the traffic listeners. This module adds what is the node's own:
/config_dump shows the applied snapshot with every secret masked (JWT secrets, password
hashes, API key hashes, certificate keys, tunnel tokens, secret-looking policy settings).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from flux.v1 import config_pb2 as pb
from fluxcommon.adminhttp import AdminRequest, AdminServer, Handler, Reply, json_body
from fluxcommon.secrets import url_password, with_url_password

__all__ = ["MASK", "AdminRequest", "AdminServer", "Handler", "Reply", "json_body", "masked_snapshot"]

MASK = "********"
_SECRET_POLICY_KEYS = {"client_secret", "secret", "password"}


def masked_snapshot(snap: pb.Snapshot) -> dict[str, Any]:
    copy = pb.Snapshot()
    copy.CopyFrom(snap)
    for consumer in copy.consumers:
        for cred in consumer.credentials:
            for field in ("secret", "password_hash", "key_sha256"):
                if getattr(cred, field):
                    setattr(cred, field, MASK)
    for cert in copy.certificates:
        if cert.key_pem:
            cert.key_pem = MASK
    for tunnel in copy.tunnels:
        for i in range(len(tunnel.tokens)):
            tunnel.tokens[i] = MASK
        for user in tunnel.users:
            if user.token:
                user.token = MASK
    for policy in copy.policies:
        for key in list(policy.config.keys()):
            if key in _SECRET_POLICY_KEYS:
                policy.config[key] = MASK
            elif key == "redis" and url_password(policy.config[key]):
                policy.config[key] = with_url_password(policy.config[key], MASK)
    return MessageToDict(copy, preserving_proto_field_name=True)
