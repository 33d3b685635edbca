"""One resource of every config kind, with child lists and secrets (the store's tests)."""

from __future__ import annotations

from typing import Any

from controlplane.spec import (
    CertificateSpec,
    ClusterSpec,
    ConsumerSpec,
    ListenerSpec,
    PolicySpec,
    RouteSpec,
    TunnelSpec,
)
from support.tls import self_signed


def full_config() -> list[tuple[str, Any]]:
    """One resource of every kind, with child rows and secrets."""
    cert, key = self_signed("api.example.com")
    return [
        ("certificates", CertificateSpec(name="api", snis=["api.example.com"], cert=cert, key=key)),
        ("policies", PolicySpec(name="rl", type="rate_limit", config={"rate": 10, "per": "1s", "burst": 20})),
        (
            "policies",
            PolicySpec(
                name="introspect",
                type="oauth2",
                config={"introspection_url": "https://idp/i", "client_id": "gw", "client_secret": "cs-1"},
            ),
        ),
        (
            "consumers",
            ConsumerSpec(
                name="alice",
                groups=["partners"],
                metadata={"tier": "gold"},
                credentials=[
                    {"type": "api_key", "key": "plain-api-key-of-alice"},
                    {"type": "jwt", "issuer": "idp", "secret": "jwt-secret-0123456789"},
                    {"type": "basic_auth", "username": "alice", "password": "alice-password"},
                ],
            ),
        ),
        (
            "clusters",
            ClusterSpec(
                name="orders",
                lb="consistent_hash",
                hash_on="header:x-user",
                session_affinity={"cookie": "srv_id"},
                endpoints=[
                    {"address": "10.0.0.1", "port": 9001, "weight": 2, "metadata": {"az": "a"}},
                    {"address": "10.0.0.2", "port": 9001, "draining": True},
                ],
                health_check={"type": "http", "path": "/healthz", "interval": "5s", "unhealthy_threshold": 3},
                timeouts={"connect": "2s", "read": "30s"},
            ),
        ),
        ("clusters", ClusterSpec(name="orders-v2", service="orders")),
        ("listeners", ListenerSpec(name="public", port=8080, policies=["rl"])),
        ("listeners", ListenerSpec(name="tls", protocol="https", port=8443, certificates=["api"])),
        (
            "routes",
            RouteSpec(
                name="orders-api",
                listener="public",
                hosts=["api.example.com", "*.example.com"],
                path="/orders",
                methods=["GET", "POST"],
                headers={"x-canary": "true"},
                clusters=[{"name": "orders", "weight": 90}, {"name": "orders-v2", "weight": 10}],
                priority=5,
                policies=["rl", "introspect"],
                retry={"attempts": 2},
                timeout="15s",
            ),
        ),
        (
            "tunnels",
            TunnelSpec(
                name="edge",
                token="change-me",
                allow_ports="6000-6999",
                vhost_http_port=8080,
                subdomain_host="tunnel.example.com",
                mappings=[{"name": "ssh", "agent": "office", "remote_port": 6022, "local_port": 22}],
            ),
        ),
    ]
