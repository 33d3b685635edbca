"""TLS resources refused at write time with the field named (issue 15, "bad input"), and what
reads show of certificates (expiry, names)."""

from __future__ import annotations

from typing import Any

import pytest
from support.processes import ControlPlaneProcess
from support.tls import TestCA

CA = TestCA()
CERT, KEY = CA.issue("api.test", ("api.test",))
_, OTHER_KEY = CA.issue("other.test", ("other.test",))
EXPIRED, EXPIRED_KEY = CA.issue("old.test", ("old.test",), days=-1, not_before_days=10)


def apply(cp: ControlPlaneProcess, doc: dict[str, Any]) -> Any:
    with cp.client() as c:
        return c.post("/api/v1/apply", json=doc)


def https_listener(**extra: Any) -> dict[str, Any]:
    return {"name": "web", "protocol": "https", "port": 8443, "certificates": ["api"], **extra}


CERTS = [{"name": "api", "cert": CERT, "key": KEY}]


@pytest.mark.parametrize(
    ("doc", "resource", "field"),
    [
        ({"certificates": [{"name": "api", "cert": CERT, "key": OTHER_KEY}]}, "certificates/api", "key"),
        ({"certificates": [{"name": "api", "cert": CERT, "key": KEY, "snis": ["a b"]}]}, "certificates/api", "snis"),
        ({"certificates": CERTS, "listeners": [https_listener(tls={"client_ca": "-----BEGIN CERTIFICATE-----..."})]},
         "listeners/web", "tls.client_ca"),
        ({"certificates": CERTS, "listeners": [https_listener(tls={"ciphers": "NOT-A-CIPHER"})]},
         "listeners/web", "tls.ciphers"),
        ({"certificates": CERTS, "listeners": [https_listener(tls={"min_version": "1.0"})]},
         "listeners/web", "tls.min_version"),
        ({"listeners": [{"name": "web", "protocol": "http", "port": 8080, "tls": {"min_version": "1.3"}}]},
         "listeners/web", "tls"),
        ({"listeners": [{"name": "t", "protocol": "tls", "port": 8443}]}, "listeners/t", "protocol"),
        ({"listeners": [{"name": "f", "protocol": "http", "port": 3128, "mode": "forward"}]}, "listeners/f", "forward"),
        ({"listeners": [{"name": "f", "protocol": "http", "port": 3128, "mode": "forward",
                         "forward": {"allow_hosts": []}}]}, "listeners/f", "forward.allow_hosts"),
        ({"listeners": [{"name": "f", "protocol": "http", "port": 3128, "mode": "forward",
                         "forward": {"allow_hosts": ["*"], "allow_ports": "99999"}}]},
         "listeners/f", "forward.allow_ports"),
        ({"clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 1}], "tls": {"ca": "nope"}}]},
         "clusters/c", "tls.ca"),
        ({"clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 1}], "tls": {"sni": "a b"}}]},
         "clusters/c", "tls.sni"),
        ({"clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 1}],
                        "tls": {"certificate": "missing"}}]}, "clusters/c", "tls.certificate"),
        ({"consumers": [{"name": "x", "credentials": [{"type": "mtls", "subject": "not a dn"}]}]},
         "consumers/x", "credentials[0].mtls.subject"),
    ],
)  # fmt: skip
def test_bad_tls_input_is_422_naming_the_field(
    module_controlplane: ControlPlaneProcess, doc: dict[str, Any], resource: str, field: str
) -> None:
    r = apply(module_controlplane, doc)
    assert r.status_code == 422, r.text
    body = r.json()
    fields = {(e["resource"], e["field"]) for e in body.get("errors", [])} | {(body.get("resource"), body.get("field"))}
    assert any(res == resource and (f or "").startswith(field) for res, f in fields), body


def test_a_tls_listener_with_only_a_fallback_cluster_is_accepted(module_controlplane: ControlPlaneProcess) -> None:
    """README: SNI routing 'to the cluster of the route naming the listener whose hosts match it,
    or to the listener's `cluster` when none does': a cluster alone is a complete listener."""
    doc = {
        "clusters": [{"name": "tls-back", "endpoints": [{"address": "127.0.0.1", "port": 9443}]}],
        "listeners": [{"name": "passthrough", "protocol": "tls", "port": 9443, "cluster": "tls-back"}],
    }
    r = apply(module_controlplane, doc)
    assert r.status_code == 200, r.text


def test_an_expired_certificate_is_accepted_and_shown_expired(module_controlplane: ControlPlaneProcess) -> None:
    r = apply(module_controlplane, {"certificates": [{"name": "old", "cert": EXPIRED, "key": EXPIRED_KEY}]})
    assert r.status_code == 200, r.text
    with module_controlplane.client() as c:
        got = c.get("/api/v1/certificates/old").json()
    assert got["expired"] is True and got["expires_in_days"] < 0 and got["key"] == "********"
    assert got["names"] == ["old.test"]


def test_mtls_subjects_are_kept_canonical(module_controlplane: ControlPlaneProcess) -> None:
    doc = {"consumers": [{"name": "alice", "credentials": [{"type": "mtls", "subject": "cn=alice, o=Example"}]}]}
    assert apply(module_controlplane, doc).status_code == 200
    with module_controlplane.client() as c:
        got = c.get("/api/v1/consumers/alice").json()
    assert got["credentials"] == [{"type": "mtls", "subject": "CN=alice,O=Example"}]
