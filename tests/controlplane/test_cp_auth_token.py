"""POST /api/v1/auth/token issues JWTs a node can verify with the same consumer credential."""

from __future__ import annotations

import jwt
import pytest
from support.processes import ControlPlaneProcess
from support.tls import es256_pair

SECRET = "a-long-enough-shared-secret-0123456789"


@pytest.fixture(scope="module")
def cp(module_controlplane: ControlPlaneProcess) -> ControlPlaneProcess:
    private, public = es256_pair()
    consumers = [
        {"name": "alice", "groups": ["partners"], "credentials": [{"type": "jwt", "issuer": "flux", "secret": SECRET}]},
        {
            "name": "bob",
            "credentials": [
                {"type": "jwt", "issuer": "ec-idp", "algorithm": "ES256", "public_key": public, "private_key": private}
            ],
        },
        {"name": "carol", "credentials": [{"type": "api_key", "key": "carol-api-key-1"}]},
    ]
    with module_controlplane.client() as c:
        r = c.post("/api/v1/apply", json={"consumers": consumers})
        assert r.status_code == 200, r.text
    module_controlplane.public_key = public  # type: ignore[attr-defined]
    return module_controlplane


def test_hs256_token_for_a_consumer(cp: ControlPlaneProcess) -> None:
    with cp.client() as c:
        r = c.post("/api/v1/auth/token", json={"consumer": "alice", "ttl": "15m", "audience": "orders",
                                               "claims": {"scope": "read"}})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900 and body["algorithm"] == "HS256"
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"], audience="orders", issuer="flux")
    assert claims["sub"] == "alice" and claims["scope"] == "read" and claims["exp"] - claims["iat"] == 900


def test_es256_token_signed_with_the_stored_private_key(cp: ControlPlaneProcess) -> None:
    with cp.client() as c:
        r = c.post("/api/v1/auth/token", json={"consumer": "bob"})
        assert r.status_code == 200, r.text
        claims = jwt.decode(r.json()["token"], cp.public_key, algorithms=["ES256"])  # type: ignore[attr-defined]
        assert claims["iss"] == "ec-idp" and claims["sub"] == "bob"
        # the private key reads back masked and writing the mask back keeps it
        cred = c.get("/api/v1/consumers/bob").json()["credentials"][0]
        assert cred["private_key"] == "********"


def test_token_errors_name_the_problem(cp: ControlPlaneProcess) -> None:
    with cp.client() as c:
        r = c.post("/api/v1/auth/token", json={"consumer": "nobody"})
        assert r.status_code == 404
        r = c.post("/api/v1/auth/token", json={"consumer": "carol"})
        assert r.status_code == 422 and r.json()["field"] == "issuer"
        r = c.post("/api/v1/auth/token", json={"consumer": "alice", "claims": {"sub": "mallory"}})
        assert r.status_code == 422 and r.json()["field"] == "claims"
        r = c.post("/api/v1/auth/token", json={"consumer": "alice", "ttl": "30d"})
        assert r.status_code == 422 and r.json()["field"] == "ttl"
    with cp.client(token="") as c:
        assert c.post("/api/v1/auth/token", json={"consumer": "alice"}).status_code == 401
