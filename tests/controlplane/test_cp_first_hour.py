"""What a new user met in the first hour (issue 14), against a real control plane:

- services are created with `POST /api/v1/services` like every other kind;
- `POST /api/v1/apply` takes YAML as well as JSON;
- `GET /api/v1` is an index of the kinds;
- a write reports every problem at once, unknown fields with a did-you-mean (REST and fluxctl);
- `fluxctl apply --diff` works with a read token;
- `GET /api/v1/service/info` and `POST /api/v1/auth/token/verify`.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from support.discovery import DiscoveryClient
from support.processes import ControlPlaneProcess, executable, wait_until

SECRET = "first-hour-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def cp(module_controlplane: ControlPlaneProcess) -> ControlPlaneProcess:
    with module_controlplane.client() as c:
        doc = {
            "listeners": [
                {"name": "web", "protocol": "http", "port": 18480, "node_group": "hour"},
                {"name": "db", "protocol": "tcp", "port": 18481, "node_group": "hour", "cluster": "pg"},
            ],
            "clusters": [
                {"name": "app", "endpoints": [{"address": "127.0.0.1", "port": 9001, "weight": 2}]},
                {"name": "pg", "endpoints": [{"address": "127.0.0.1", "port": 5432}]},
                {"name": "rpc", "protocol": "http2", "endpoints": [{"address": "127.0.0.1", "port": 50051}]},
                {"name": "orders", "service": "orders"},
            ],
            "routes": [
                {"name": "app", "listener": "web", "path": "/", "cluster": "app"},
                {"name": "rpc", "listener": "web", "path": "/greeter.Greeter/", "cluster": "rpc"},
                {"name": "orders", "listener": "web", "path": "/orders", "cluster": "orders"},
            ],
            "consumers": [{"name": "alice", "groups": ["partners"],
                           "credentials": [{"type": "jwt", "issuer": "hour-idp", "secret": SECRET}]}],
            "policies": [{"name": "auth", "type": "jwt", "config": {"issuer": "hour-idp", "audience": "shop"}}],
        }  # fmt: skip
        r = c.post("/api/v1/apply", json=doc)
        assert r.status_code == 200, r.text
    return module_controlplane


@pytest.fixture
def client(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client() as c:
        yield c


def fluxctl(cp: ControlPlaneProcess, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLUX_TOKEN", "FLUX_ADMIN_TOKEN")}
    env.update({"FLUX_SERVER": cp.url, "FLUX_TOKEN": token})
    return subprocess.run([executable("fluxctl"), *args], env=env, capture_output=True, text=True, timeout=60)


def problems(r: httpx.Response) -> list[tuple[str, str, str]]:
    assert r.status_code == 422, r.text
    return [(e["resource"], e["field"], e["message"]) for e in r.json()["errors"]]


# -- services like every other kind ------------------------------------------------------------


def test_post_creates_a_service_and_refuses_a_second_one(client: httpx.Client) -> None:
    r = client.post("/api/v1/services", json={"name": "made-by-post", "group": "shop", "tags": ["v1"]})
    assert r.status_code == 201, r.text
    assert r.json()["group"] == "shop" and r.headers["X-Flux-Index"]
    assert client.get("/api/v1/services/made-by-post").json()["tags"] == ["v1"]
    r = client.post("/api/v1/services", json={"name": "made-by-post"})
    assert r.status_code == 409 and r.json()["error"] == "conflict", r.text
    r = client.post("/api/v1/services", json={"name": "typo", "grup": "shop"})
    assert problems(r) == [("services/typo", "grup", "unknown field (did you mean group?)")]
    assert client.get("/api/v1/services/typo").status_code == 404


def test_fluxctl_lists_and_deletes_services_like_other_kinds(cp: ControlPlaneProcess, tmp_path: pathlib.Path) -> None:
    with cp.client() as c:
        assert c.post("/api/v1/services", json={"name": "ctl-svc", "group": "shop"}).status_code == 201
    listed = fluxctl(cp, "get", "services", token=cp.token)
    assert listed.returncode == 0 and any(line.startswith("ctl-svc ") for line in listed.stdout.splitlines())
    gone = fluxctl(cp, "delete", "service", "ctl-svc", token=cp.token)
    assert gone.returncode == 0 and "deleted services/ctl-svc" in gone.stdout, gone.stderr
    services = tmp_path / "services.yaml"
    services.write_text("services:\n  - name: from-file\n")
    refused = fluxctl(cp, "apply", "-f", str(services), token=cp.token)
    assert refused.returncode == 1 and "services:import" in refused.stderr, refused.stderr


def test_only_the_admin_creates_services(cp: ControlPlaneProcess) -> None:
    token = cp.api_token("registry", services=("reg-only",), name="t-reg-only")
    with cp.client(token=token) as c:
        assert c.post("/api/v1/services", json={"name": "reg-only"}).status_code == 403


# -- apply takes YAML -------------------------------------------------------------------------

YAML_DOC = b"clusters:\n  - name: from-yaml\n    endpoints: [{address: 127.0.0.1, port: 9009}]\n"


@pytest.mark.parametrize("content_type", ["application/yaml", "text/yaml", None, "application/x-www-form-urlencoded"])
def test_apply_takes_a_yaml_body(client: httpx.Client, content_type: str | None) -> None:
    client.delete("/api/v1/clusters/from-yaml")
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/api/v1/apply", content=YAML_DOC, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["changes"] == [{"kind": "clusters", "name": "from-yaml", "action": "create"}]
    assert client.get("/api/v1/clusters/from-yaml").json()["endpoints"][0]["port"] == 9009


def test_apply_refuses_yaml_aliases_and_broken_bodies(client: httpx.Client) -> None:
    bomb = b"a: &a [1, 2]\nclusters: *a\n"
    r = client.post("/api/v1/apply", content=bomb, headers={"content-type": "application/yaml"})
    assert r.status_code == 400 and "alias" in r.text, r.text
    r = client.post("/api/v1/apply", content=b"clusters: [ {name: x\n", headers={"content-type": "application/yaml"})
    assert r.status_code == 400, r.text
    r = client.post("/api/v1/apply", content=b"- just\n- a list\n", headers={"content-type": "application/yaml"})
    assert r.status_code == 422 and "mapping of kinds" in r.text, r.text


# -- the index ----------------------------------------------------------------------------------


def test_the_api_root_is_an_index_of_the_kinds(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    r = client.get("/api/v1")
    assert r.status_code == 200, r.text
    index = r.json()
    assert list(index["kinds"]) == [
        "listeners", "clusters", "routes", "policies", "consumers", "certificates", "tunnels", "registries", "alerts",
    ]  # fmt: skip
    assert index["kinds"]["routes"]["path"] == "/api/v1/routes" and index["kinds"]["routes"]["count"] >= 3
    assert "services" in index["other"] and index["version"] >= 1
    assert httpx.get(cp.url + "/api/v1").status_code == 401  # still needs a token


# -- every problem at once ------------------------------------------------------------------------


def test_apply_reports_every_problem_with_did_you_mean(client: httpx.Client) -> None:
    doc = {
        "routes": [
            {"name": "r1", "path": "/x", "cluster": "app", "pathtype": "exact"},
            {"name": "r2", "path": "/y", "cluster": "nowhere"},
        ],
        "clusters": [{"name": "c1", "endpoints": [{"address": "127.0.0.1", "port": 80, "wieght": 2}]}],
        "policies": [{"name": "p1", "type": "rate_limit", "config": {"rat": 5, "per": "1m", "algoritm": "x"}}],
        "route": [],
    }
    version = client.get("/api/v1/config").json()["version"]
    found = problems(client.post("/api/v1/apply", json=doc))
    assert ("routes/r1", "pathtype", "unknown field (did you mean path_type?)") in found
    assert ("clusters/c1", "endpoints[0].wieght", "unknown field (did you mean weight?)") in found
    assert ("policies/p1", "config.rat", "unknown field (did you mean rate?)") in found
    assert ("policies/p1", "config.algoritm", "unknown field (did you mean algorithm?)") in found
    assert ("routes/r2", "cluster", "unknown cluster 'nowhere'") in found  # a good resource's reference, too
    assert any(f == "route" and "did you mean routes?" in m for _, f, m in found)
    assert client.get("/api/v1/config").json()["version"] == version


def test_a_bad_resource_is_not_reported_missing(client: httpx.Client) -> None:
    doc = {
        "clusters": [{"name": "half", "endpoints": [], "lbb": "round_robin"}],
        "routes": [{"name": "uses-half", "path": "/half", "cluster": "half"}],
    }
    found = problems(client.post("/api/v1/apply", json=doc))
    assert found == [("clusters/half", "lbb", "unknown field (did you mean lb?)")]


def test_single_resource_writes_name_every_problem(client: httpx.Client) -> None:
    r = client.post("/api/v1/routes", json={"name": "one", "pathtype": "exact", "path": "/x", "cluster": "app",
                                           "priority": "high"})  # fmt: skip
    found = {(f, m) for _, f, m in problems(r)}
    assert ("pathtype", "unknown field (did you mean path_type?)") in found
    assert any(f == "priority" for f, _ in found)
    r = client.put("/api/v1/policies/cors2", json={"name": "cors2", "type": "cors",
                                                   "config": {"allow_origin": ["*"], "max_ag": "1m"}})  # fmt: skip
    assert {(f, m) for _, f, m in problems(r)} == {
        ("config.allow_origin", "unknown field (did you mean allow_origins?)"),
        ("config.max_ag", "unknown field (did you mean max_age?)"),
    }


def test_services_import_names_fields_with_did_you_mean(client: httpx.Client) -> None:
    body = "services:\n  - name: imp\n    grop: x\n    instances:\n      - {address: 10.0.0.1, prt: 80}\n"
    r = client.post("/api/v1/services:import", content=body, headers={"content-type": "application/yaml"})
    found = problems(r)
    assert ("services/imp", "services[0].grop", "unknown field (did you mean group?)") in found


def test_fluxctl_lists_every_problem(cp: ControlPlaneProcess, tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "routes:\n  - {name: fr1, path: /x, cluster: app, pathtype: exact}\n"
        "  - {name: fr2, path: /y, cluster: nowhere}\n"
    )
    result = fluxctl(cp, "apply", "-f", str(bad), token=cp.token)
    assert result.returncode == 1
    assert "2 problems" in result.stderr, result.stderr
    assert "routes/fr1: pathtype: unknown field (did you mean path_type?)" in result.stderr
    assert "routes/fr2: cluster: unknown cluster 'nowhere'" in result.stderr

    bad.write_text("route:\n  - {name: x}\nclustres:\n  - {name: y}\n")
    result = fluxctl(cp, "apply", "-f", str(bad), token=cp.token)
    assert result.returncode == 1
    assert "unknown kind 'route' (did you mean routes?)" in result.stderr, result.stderr
    assert "unknown kind 'clustres' (did you mean clusters?)" in result.stderr
    result = fluxctl(cp, "get", "rout", token=cp.token)
    assert result.returncode == 1 and "did you mean route?" in result.stderr


# -- --diff with a read token ---------------------------------------------------------------------


def test_diff_and_dry_run_work_with_a_read_token(cp: ControlPlaneProcess, tmp_path: pathlib.Path) -> None:
    reader = cp.api_token("read", name="t-hour-read")
    path = tmp_path / "change.yaml"
    path.write_text(
        "clusters:\n  - name: app\n    endpoints: [{address: 127.0.0.1, port: 9002}]\n"
        "consumers:\n  - name: alice\n    groups: [partners]\n"
        f"    credentials: [{{type: jwt, issuer: hour-idp, secret: {SECRET}}}]\n"
    )
    with cp.client() as c:
        before = c.get("/api/v1/config").json()["version"]
    diff = fluxctl(cp, "apply", "-f", str(path), "--diff", token=reader)
    assert diff.returncode == 0, diff.stderr
    assert "~ clusters/app update (dry run)" in diff.stdout and "nothing committed" in diff.stdout
    assert "+    - address: 127.0.0.1" in diff.stdout or "port: 9002" in diff.stdout
    dry = fluxctl(cp, "apply", "-f", str(path), "--dry-run", token=reader)
    assert dry.returncode == 0, dry.stderr
    refused = fluxctl(cp, "apply", "-f", str(path), token=reader)
    assert refused.returncode == 1 and "403" in refused.stderr
    with cp.client() as c:
        assert c.get("/api/v1/config").json()["version"] == before


# -- service/info ---------------------------------------------------------------------------------


def test_service_info_shows_what_is_served_and_its_state(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    info = client.get("/api/v1/service/info").json()
    assert info["node_groups"]["hour"]["state"] == "no_nodes"
    with DiscoveryClient(cp.grpc_addr, "hour-node", group="hour"):

        def serving() -> dict[str, Any] | None:
            got = client.get("/api/v1/service/info").json()
            return got if got["node_groups"]["hour"]["state"] == "serving" else None

        info = wait_until(serving, 10, message="group hour serving")
    web = info["listeners"]["http"][0]
    assert web["name"] == "web" and web["state"] == "serving" and set(web["routes"]) >= {"app", "rpc", "orders"}
    assert info["tcp"] == [{"listener": "db", "address": "0.0.0.0:18481", "cluster": "pg", "state": "serving",
                            "endpoints": ["127.0.0.1:5432"]}]  # fmt: skip
    assert info["udp"] == []
    assert [g["route"] for g in info["grpc"]] == ["rpc"] and info["grpc"][0]["clusters"] == ["rpc"]
    routes = {r["name"]: r for r in info["routes"]}
    assert routes["app"]["clusters"] == [{"name": "app", "weight": 100}] and routes["app"]["state"] == "serving"
    clusters = {c["name"]: c for c in info["clusters"]}
    assert clusters["app"]["endpoints"] == ["127.0.0.1:9001*2"]
    assert clusters["orders"]["service"] == "orders" and clusters["orders"]["healthy"] == 0
    nodes = info["node_groups"]["hour"]["nodes"]
    assert [n["id"] for n in nodes] == ["hour-node"] and nodes[0]["in_sync"]
    with cp.client(token=cp.api_token("read", name="t-info-read")) as reader:
        assert reader.get("/api/v1/service/info").status_code == 200


# -- token verification ---------------------------------------------------------------------------


def _token(**claims: Any) -> str:
    body = {"iss": "hour-idp", "sub": "alice", "aud": "shop", "exp": int(time.time()) + 600, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, algorithm="HS256")


def test_verify_names_the_consumer_and_claims_of_a_good_token(client: httpx.Client) -> None:
    issued = client.post("/api/v1/auth/token", json={"consumer": "alice", "ttl": "10m", "audience": "shop"})
    assert issued.status_code == 200, issued.text
    r = client.post("/api/v1/auth/token/verify", json={"token": issued.json()["token"], "policy": "auth"})
    assert r.status_code == 200, r.text
    verdict = r.json()
    assert verdict["valid"] and verdict["consumer"] == "alice" and verdict["groups"] == ["partners"]
    assert verdict["claims"]["aud"] == "shop" and verdict["issuer"] == "hour-idp" and verdict["algorithm"] == "HS256"
    r = client.post("/api/v1/auth/token/verify", json={"token": "Bearer " + _token()})
    assert r.json()["valid"], r.text


def _signed(key: str | None, algorithm: str) -> str:
    return jwt.encode({"iss": "hour-idp", "exp": int(time.time()) + 60}, key, algorithm=algorithm)


@pytest.mark.parametrize(
    ("token", "policy", "reason"),
    [
        (lambda: _token(exp=int(time.time()) - 60), None, "expired"),
        (lambda: _token(exp=None), None, "missing claim 'exp'"),
        (lambda: _token(aud="elsewhere"), "auth", "audience"),
        (lambda: _token(iss="stranger"), None, "no consumer has a jwt credential of issuer 'stranger'"),
        (lambda: _signed("another-secret-0123456789abcdefghij", "HS256"), None, "signature does not verify"),
        (lambda: _signed(None, "none"), None, "alg none"),
        (lambda: "not.a.jwt", None, "not a JWT"),
    ],
)
def test_verify_says_why_a_token_is_refused(client: httpx.Client, token: Any, policy: str | None, reason: str) -> None:
    body = {"token": token(), **({"policy": policy} if policy else {})}
    r = client.post("/api/v1/auth/token/verify", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["valid"] is False and reason in r.json()["reason"], r.json()


def test_verify_needs_a_read_token_and_a_jwt_policy(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    r = client.post("/api/v1/auth/token/verify", json={"token": _token(), "policy": "nope"})
    assert r.status_code == 422 and r.json()["field"] == "policy", r.text
    with cp.client(token=cp.api_token("read", name="t-verify-read")) as reader:
        assert reader.post("/api/v1/auth/token/verify", json={"token": _token()}).json()["valid"]
    with cp.client(token="") as anon:
        assert anon.post("/api/v1/auth/token/verify", json={"token": _token()}).status_code == 401
