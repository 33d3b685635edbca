"""The agent reports a node's refusal in the field names its config uses (issue 14: the node
names snake_case fields, `remote_port: ...`, for a frpc.toml that says `remotePort`)."""

from __future__ import annotations

import pytest

from tunnelclient.config import frp_wording


@pytest.mark.parametrize(
    ("node", "agent"),
    [
        ("remote_port: 6500 is not among the ports of user 'office' (6000-6099)",
         "remotePort: 6500 is not among the ports of user 'office' (6000-6099)"),
        ("custom_domains: crm.example.com is already served by another tunnel user",
         "customDomains: crm.example.com is already served by another tunnel user"),
        ("custom_domains: this node serves no http tunnels (its vhost_http_port is 0)",
         "customDomains: this node serves no http tunnels (its vhost_http_port is 0)"),
        ("secret_key: wrong", "secretKey: wrong"),
        ("max_proxies: office has 20 proxies on this node", "max_proxies: office has 20 proxies on this node"),
    ],
)  # fmt: skip
def test_node_refusals_use_frp_field_names(node: str, agent: str) -> None:
    assert frp_wording(node) == agent
