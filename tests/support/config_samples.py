"""Valid sample documents of every config kind, policy type and registry model, carrying every
nested object, for the security tests that plant hostile values into each field
(tests/security/test_config_injection.py, tests/security/test_admin_input.py)."""

from __future__ import annotations

import copy
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from controlplane.api.registry import InstancePatch
from controlplane.api.tokens import TokenRequest
from controlplane.registry.types import InstanceSpec, ServiceSpec
from controlplane.spec import KINDS
from fluxcommon.policy_config import SCHEMAS
from support.schema_walk import Slot, Walk, walk, walk_samples
from support.tls import self_signed

CERT, KEY = self_signed("inj.example.com")
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PRIVATE = _RSA.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
RSA_PUBLIC = (
    _RSA.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
)

# One valid document per kind (several where fields exclude each other), carrying every
# nested object, so that the walk reaches every string.
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "certificates": [{"name": "inj", "snis": ["inj.example.com"], "cert": CERT, "key": KEY, "description": "d"}],
    "policies": [{"name": "inj-rl", "type": "rate_limit", "config": {"rate": 10}, "description": "d"}],
    "consumers": [
        {
            "name": "inj",
            "groups": ["g"],
            "metadata": {"team": "a"},
            "description": "d",
            "credentials": [
                {"type": "api_key", "key": "inj-api-key-0001"},
                {"type": "jwt", "issuer": "inj-hs", "secret": "s" * 20},
                {"type": "jwt", "issuer": "inj-rs", "algorithm": "RS256", "public_key": RSA_PUBLIC,
                 "private_key": RSA_PRIVATE},
                {"type": "basic_auth", "username": "u", "password": "p"},
                {"type": "mtls", "subject": "CN=inj,O=Example"},
            ],
        }
    ],
    "clusters": [
        {
            "name": "inj",
            "lb": "consistent_hash",
            "hash_on": "header:x-user",
            "session_affinity": {"cookie": "srv", "ttl": "1h", "path": "/"},
            "endpoints": [{"address": "10.0.0.1", "port": 9001, "weight": 2, "zone": "z", "version": "v1",
                           "metadata": {"k": "v"}}],
            "health_check": {"type": "http", "path": "/healthz", "host": "inj.internal", "interval": "5s",
                             "expected_statuses": [200]},
            "timeouts": {"connect": "2s"},
            "policies": ["inj-rl"],
            "description": "d",
        },
        {"name": "inj-svc", "service": {"name": "svc", "namespace": "ns", "tags": ["t"], "version": "v1", "zone": "z"}},
        {"name": "inj-tun", "tunnel": "inj-proxy"},
        {"name": "inj-up-tls", "endpoints": [{"address": "10.0.0.2", "port": 443}],
         "tls": {"sni": "inj.internal", "ca": CERT, "certificate": "inj"}},
    ],
    "listeners": [
        {"name": "inj", "protocol": "http", "port": 18081, "node_group": "inj", "policies": ["inj-rl"],
         "description": "d"},
        {"name": "inj-tls", "protocol": "https", "port": 18443, "node_group": "inj", "certificates": ["inj"],
         "tls": {"min_version": "1.2", "ciphers": "ECDHE+AESGCM", "client_ca": CERT, "client_auth": "optional"}},
        {"name": "inj-fwd", "protocol": "http", "port": 13128, "node_group": "inj", "mode": "forward",
         "forward": {"allow_hosts": ["inj.example.com"], "allow_ports": "443"}},
    ],
    "routes": [
        {
            "name": "inj",
            "listener": "inj",
            "hosts": ["inj.example.com"],
            "path": "/inj",
            "methods": ["GET"],
            "headers": {"x-canary": "1"},
            "cluster": "inj",
            "policies": ["inj-rl"],
            "retry": {"attempts": 2},
            "prefix_rewrite": "/v2",
            "host_rewrite": "inj.internal",
            "grayscale": {
                "versions": {"v1": 90, "v2": 10},
                "rules": [{"headers": {"x-beta": "1"}, "cookies": {"beta": "1"}, "consumer_group": "g",
                           "version": "v2"}],
                "sticky": {"cookie": "gv", "ttl": "1h"},
            },
            "description": "d",
        },
        {"name": "inj-split", "path": "/split", "clusters": [{"name": "inj", "weight": 1}]},
    ],
    "tunnels": [
        {
            "name": "inj",
            "node_group": "inj",
            "bind_port": 17000,
            "token": "tok-123",
            "tokens": ["tok-456"],
            "allow_ports": "6000-6999",
            "subdomain_host": "tunnel.example.com",
            "tls": {"certificate": "inj", "client_ca": CERT},
            "mappings": [{"name": "m", "agent": "a", "remote_port": 6001, "local_port": 22}],
            "users": [{"name": "office", "token": "office-token-1", "allow_ports": "6100-6199",
                       "domains": ["*.office.example.com"], "max_proxies": 4, "bandwidth_limit": "1MB",
                       "description": "d"}],
            "description": "d",
        }
    ],
    "registries": [
        {"name": "inj", "type": "etcd", "address": "127.0.0.1:2379", "services": ["svc"], "prefix": "/services/",
         "namespace": "ns", "group": "g", "export_services": ["svc"], "username": "u", "password": "p",
         "token": "t", "description": "d"}
    ],
    "alerts": [
        {"name": "inj", "kind": "min_healthy", "threshold": 1, "webhook": "http://127.0.0.1:9/hook",
         "headers": {"X-Token": "t"}, "description": "d"}
    ],
}  # fmt: skip

POLICY_CONFIGS: dict[str, dict[str, Any]] = {
    "jwt": {"issuer": "inj", "audience": ["a"], "algorithms": ["HS256"], "jwks_url": "https://idp.example/jwks",
            "from": "header:Authorization", "consumer_claim": "sub", "forward_header": "X-Claims",
            "require": ["exp"], "consumer_header": "X-Consumer"},
    "oauth2": {"introspection_url": "https://idp.example/introspect", "client_id": "id", "client_secret": "s",
               "required_scopes": ["a"]},
    "api_key": {"header": "apikey", "query": "api_key"},
    "basic_auth": {"realm": "flux"},
    "ip_acl": {"allow": ["10.0.0.0/8"], "deny": ["10.1.0.0/16"], "trusted_proxies": ["127.0.0.1"]},
    "ua_filter": {"allow": ["^curl"], "deny": ["bot"]},
    "domain_acl": {"allow_hosts": ["a.example"], "allow_referers": ["b.example"]},
    "api_acl": {"allow_consumers": ["a"], "allow_groups": ["g"], "deny_consumers": ["b"], "methods": ["GET"]},
    "cors": {"allow_origins": ["https://a.example"], "allow_methods": ["GET"], "allow_headers": ["X-A"],
             "expose_headers": ["X-B"]},
    "rate_limit": {"rate": 10, "key": "ip", "redis": "redis://127.0.0.1:6379", "prefix": "flux:rl"},
    "circuit_breaker": {"fallback": {"status": 503, "headers": {"Retry-After": "5"}, "body": "down\n",
                                     "cluster": "inj"}},
    "request_rewrite": {"headers": {"add": {"X-A": "1"}, "set": {"X-B": "2"}, "remove": ["X-C"]},
                        "path_prefix": "/v2", "path_regex": ["^/a/(.*)", "/b/\\1"], "host": "inj.internal"},
    "response_rewrite": {"headers": {"add": {"X-A": "1"}, "set": {"X-B": "2"}, "remove": ["X-C"]}, "status": 200},
    "redirect": {"to": "https://inj.example/"},
}  # fmt: skip

SERVICE = {"name": "inj-svc", "namespace": "default", "group": "g", "tags": ["t"], "metadata": {"k": "v"},
           "owner": "o", "health_check": {"type": "http", "path": "/healthz", "expect_status": [200],
                                          "expect_body": "ok", "grpc_service": "", "interval": "10s", "timeout": "2s"},
           "description": "d"}  # fmt: skip
INSTANCE = {"id": "inj-1", "address": "10.0.0.5", "port": 8080, "version": "v1", "zone": "z", "tags": ["t"],
            "metadata": {"k": "v"}, "ttl": "30s"}  # fmt: skip
PATCH = {"weight": 1, "metadata": {"k": "v"}, "tags": ["t"], "status": "up"}
TOKEN = {"consumer": "inj", "issuer": "inj-hs", "ttl": "15m", "audience": "a", "claims": {"role": "x"}}


# -- planting values through the REST API --------------------------------------------------


def base_document() -> dict[str, list[dict[str, Any]]]:
    """Every sample resource, as a `POST /api/v1/apply` body."""
    return {plural: copy.deepcopy(SAMPLES[plural]) for plural in KINDS}


def kind_walk(plural: str) -> Walk:
    return walk_samples(KINDS[plural].spec, SAMPLES[plural])


def policy_walk(ptype: str) -> Walk:
    return walk(SCHEMAS[ptype], POLICY_CONFIGS[ptype])


# (id, where the write goes, the slot, the document it changes)
Case = tuple[str, str, Slot]


def slot_cases(kind: str = "strings") -> list[Case]:
    """Every (id, target, slot) of every schema: `kind` "strings" or "ints"."""
    cases: list[Case] = []
    for plural in KINDS:
        for slot in getattr(kind_walk(plural), kind):
            cases.append((f"{plural}:{slot.label}", plural, slot))
    for ptype in SCHEMAS:
        for slot in getattr(policy_walk(ptype), kind):
            cases.append((f"policies[{ptype}]:config.{slot.label}", f"policy:{ptype}", slot))
    for target, model, doc in (
        ("service", ServiceSpec, SERVICE),
        ("instance", InstanceSpec, INSTANCE),
        ("patch", InstancePatch, PATCH),
        ("token", TokenRequest, TOKEN),
    ):
        for slot in getattr(walk(model, doc), kind):
            cases.append((f"{target}:{slot.label}", target, slot))
    return cases


def send(client: httpx.Client, target: str, doc: dict[str, Any]) -> httpx.Response:
    """Write `doc` where `target` says (a policy config: as a dry-run apply beside every sample)."""
    if target.startswith("policy:"):
        body = base_document()
        body["policies"] = [*body["policies"], {"name": "inj-p", "type": target.split(":")[1], "config": doc}]
        return client.post("/api/v1/apply", params={"dry_run": "true"}, json=body)
    if target == "service":
        return client.put("/api/v1/services/inj-svc", json=doc)
    if target == "instance":
        return client.post("/api/v1/services/inj-svc/instances", json=doc)
    if target == "patch":
        return client.patch("/api/v1/services/inj-svc/instances/inj-1", json=doc)
    assert target == "token"
    return client.post("/api/v1/auth/token", json=doc)


def sample_for(target: str, slot: Slot) -> dict[str, Any]:
    """The sample document of `target` that holds the object `slot` sits in."""
    if target in KINDS:
        for doc in SAMPLES[target]:
            try:
                slot.put(doc, "probe")
                return doc
            except (KeyError, IndexError, TypeError):
                continue
        raise AssertionError(f"no sample of {target} reaches {slot.label}")
    if target.startswith("policy:"):
        return POLICY_CONFIGS[target.split(":")[1]]
    return {"service": SERVICE, "instance": INSTANCE, "patch": PATCH, "token": TOKEN}[target]


def write_slot(client: httpx.Client, target: str, slot: Slot, value: Any) -> httpx.Response:
    """Write the sample of `target` with `value` planted at `slot` (config kinds: a dry-run
    apply of every sample with that one changed)."""
    doc = slot.put(sample_for(target, slot), value)
    if target in KINDS:
        body = base_document()
        original = sample_for(target, slot)
        body[target] = [doc if d == original else d for d in body[target]]
        return client.post("/api/v1/apply", params={"dry_run": "true"}, json=body)
    return send(client, target, doc)


def commit_samples(client: httpx.Client) -> None:
    """Commit the samples (but the registry source: no etcd here) and register the sample
    service and instance, so that every baseline write is valid."""
    base = base_document()
    base.pop("registries")
    r = client.post("/api/v1/apply", json=base)
    assert r.status_code == 200, r.text
    assert client.put("/api/v1/services/inj-svc", json=SERVICE).status_code in (200, 201)
    r = client.post("/api/v1/services/inj-svc/instances", json=INSTANCE)
    assert r.status_code in (200, 201), r.text
