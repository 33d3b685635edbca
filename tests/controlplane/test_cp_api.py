"""The REST API against a real `flux-controlplane` child process on SQLite."""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.processes import ControlPlaneProcess, wait_until
from support.tls import self_signed

MASK = "********"
KINDS = [
    "listeners", "clusters", "routes", "policies", "consumers", "certificates", "tunnels", "registries", "alerts",
]  # fmt: skip


@pytest.fixture(scope="module")
def cp(module_controlplane: ControlPlaneProcess) -> ControlPlaneProcess:
    with module_controlplane.client() as c:
        r = c.put(
            "/api/v1/clusters/base",
            json={"name": "base", "endpoints": [{"address": "127.0.0.1", "port": 9000}]},
        )
        assert r.status_code == 201, r.text  # PUT that creates answers 201
        r = c.put("/api/v1/routes/base-route", json={"name": "base-route", "cluster": "base", "path": "/base"})
        assert r.status_code == 201, r.text
    return module_controlplane


@pytest.fixture
def client(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client() as c:
        yield c


@pytest.fixture
def anon(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client(token="") as c:
        yield c


def state(c: httpx.Client) -> dict[str, Any]:
    """Everything a rejected write must leave alone: version, digest, every resource, history."""
    cfg = c.get("/api/v1/config").json()
    cfg.pop("published_version")
    lists = {k: c.get(f"/api/v1/{k}", params={"limit": 1000}).json() for k in KINDS}
    history = c.get("/api/v1/config/history", params={"limit": 5}).json()
    return {"config": cfg, "lists": lists, "history": history}


@contextlib.contextmanager
def unchanged(c: httpx.Client) -> Iterator[None]:
    before = state(c)
    yield
    assert state(c) == before, "a rejected write changed the store"


def version(c: httpx.Client) -> int:
    return int(c.get("/api/v1/config").json()["version"])


def assert_error(r: httpx.Response, status: int, field: str | None = None, *, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["message"], body
    if code:
        assert body["error"] == code, body
    if field is not None:
        assert body.get("field") == field, body
        assert field in body["message"], body
    return body


# -- CRUD for every kind -------------------------------------------------------------------

CERT, KEY = self_signed("crud.example.com")
CERT2, KEY2 = self_signed("crud2.example.com")

SAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    # kind: (body, changes for the update, a field the update shows in)
    "listeners": (
        {"name": "crud", "protocol": "http", "port": 18081, "node_group": "crud"},
        {"port": 18082},
        "port",
    ),
    "clusters": (
        {"name": "crud", "lb": "least_conn", "endpoints": [{"address": "10.1.0.1", "port": 80, "weight": 2}]},
        {"endpoints": [{"address": "10.1.0.1", "port": 80, "weight": 5}]},
        "endpoints",
    ),
    "routes": (
        {
            "name": "crud",
            "cluster": "base",
            "path": "/crud",
            "methods": ["GET"],
            "hosts": ["crud.example.com"],
        },
        {"path": "/crud2"},
        "path",
    ),
    "policies": (
        {"name": "crud", "type": "rate_limit", "config": {"rate": 10, "per": "1s"}},
        {"config": {"rate": 20}},
        "config",
    ),
    "consumers": (
        {"name": "crud", "groups": ["a"], "credentials": [{"type": "api_key", "key": "crud-api-key-0001"}]},
        {"groups": ["a", "b"], "credentials": [{"type": "api_key", "key": "crud-api-key-0002"}]},
        "groups",
    ),
    "certificates": (
        {"name": "crud", "snis": ["crud.example.com"], "cert": CERT, "key": KEY},
        {"cert": CERT2, "key": KEY2, "snis": ["crud2.example.com"]},
        "snis",
    ),
    "tunnels": (
        {
            "name": "crud",
            "node_group": "crud-tunnels",
            "bind_port": 17000,
            "token": "tunnel-secret-1",
            "allow_ports": "6000-6100",
        },
        {"allow_ports": "6000-6200"},
        "allow_ports",
    ),
    "registries": (
        {"name": "crud", "type": "etcd", "address": "127.0.0.1:2379", "services": ["orders"], "password": "pw"},
        {"services": ["orders", "users"]},
        "services",
    ),
    "alerts": (
        {"name": "crud", "kind": "min_healthy", "service": "orders", "threshold": 2, "webhook": "http://hook.test/x"},
        {"threshold": 3},
        "threshold",
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_crud(client: httpx.Client, kind: str) -> None:
    body, changes, shown = SAMPLES[kind]
    name = body["name"]
    url = f"/api/v1/{kind}"
    v0 = version(client)
    total0 = client.get(url).json()["total"]

    created = client.post(url, json=body)
    assert created.status_code == 201, created.text
    assert created.headers["x-flux-config-version"] == str(v0 + 1)
    assert created.json()["name"] == name
    got = client.get(f"{url}/{name}")
    assert got.status_code == 200 and got.json() == created.json()
    assert got.headers["x-flux-config-version"] == str(v0 + 1)
    listing = client.get(url).json()
    assert listing["total"] == total0 + 1 and name in [i["name"] for i in listing["items"]]
    assert listing["version"] == v0 + 1

    with unchanged(client):  # POST on an existing name
        assert_error(client.post(url, json=body), 409, "name", code="conflict")

    updated_body = {**body, **changes}
    updated = client.put(f"{url}/{name}", json=updated_body)
    assert updated.status_code == 200, updated.text
    assert updated.headers["x-flux-config-version"] == str(v0 + 2)
    assert client.get(f"{url}/{name}").json()[shown] != created.json()[shown]
    assert client.get(f"{url}/{name}").json() == updated.json()

    again = client.put(f"{url}/{name}", json=updated_body)  # the same again (secrets in the clear too)
    assert again.status_code == 200 and again.headers["x-flux-config-version"] == str(v0 + 2)
    assert version(client) == v0 + 2  # no-op write: no new version

    with unchanged(client):  # body and URL disagree on the name
        assert_error(client.put(f"{url}/other-name", json=updated_body), 422, "name")

    deleted = client.delete(f"{url}/{name}")
    assert deleted.status_code == 200, deleted.text
    current = version(client)
    assert deleted.json() == {"deleted": f"{kind}/{name}", "version": current}
    assert_error(client.get(f"{url}/{name}"), 404, code="not_found")
    with unchanged(client):
        assert_error(client.delete(f"{url}/{name}"), 404, code="not_found")

    # PUT creates when the name is new.
    put_new = client.put(f"{url}/{name}", json=body)
    assert put_new.status_code == 201, put_new.text
    assert client.get(f"{url}/{name}").status_code == 200
    assert client.delete(f"{url}/{name}").status_code == 200
    assert client.get(url).json()["total"] == total0


def test_paging(client: httpx.Client) -> None:
    body = {"policies": [{"name": f"page-{i}", "type": "cors"} for i in range(7)]}
    assert client.post("/api/v1/apply", json=body).status_code == 200
    everything = client.get("/api/v1/policies", params={"limit": 1000}).json()
    names = [i["name"] for i in everything["items"]]
    assert names == sorted(names) and {f"page-{i}" for i in range(7)} <= set(names)
    total = everything["total"]
    assert total == len(names)
    pages = []
    for offset in range(0, total + 3, 3):
        page = client.get("/api/v1/policies", params={"limit": 3, "offset": offset}).json()
        assert page["total"] == total and page["limit"] == 3 and page["offset"] == offset
        assert len(page["items"]) == max(0, min(3, total - offset))
        pages += [i["name"] for i in page["items"]]
    assert pages == names
    for kind in KINDS:  # every kind pages the same way
        full = client.get(f"/api/v1/{kind}", params={"limit": 1000}).json()
        one = client.get(f"/api/v1/{kind}", params={"limit": 1, "offset": max(0, full["total"] - 1)}).json()
        assert one["total"] == full["total"] == len(full["items"])
        assert one["items"] == full["items"][-1:]
    assert_error(client.get("/api/v1/policies", params={"limit": 0}), 422, "limit")
    assert_error(client.get("/api/v1/policies", params={"limit": 1001}), 422, "limit")
    assert_error(client.get("/api/v1/policies", params={"offset": -1}), 422, "offset")
    assert_error(client.get("/api/v1/policies", params={"limit": "many"}), 422, "limit")


# -- auth ----------------------------------------------------------------------------------

WRITES = [
    ("POST", "/api/v1/clusters", {"name": "auth-test", "endpoints": [{"address": "10.0.0.1", "port": 1}]}),
    ("PUT", "/api/v1/clusters/base", {"name": "base", "endpoints": [{"address": "10.0.0.9", "port": 1}]}),
    ("DELETE", "/api/v1/routes/base-route", None),
    ("POST", "/api/v1/apply", {"clusters": [{"name": "auth-test", "endpoints": []}]}),
    ("POST", "/api/v1/config/rollback", {"version": 1}),
]


@pytest.mark.parametrize("method, path, body", WRITES)
@pytest.mark.parametrize(
    "headers, challenge",
    [
        ({}, r"^Bearer"),
        ({"Authorization": "Bearer wrong-token"}, r'^Bearer error="invalid_token"'),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, r"^Bearer"),
        ({"Authorization": "Bearer"}, r"^Bearer"),
    ],
)
def test_writes_need_the_admin_token(
    cp: ControlPlaneProcess,
    client: httpx.Client,
    anon: httpx.Client,
    method: str,
    path: str,
    body: Any,
    headers: dict,
    challenge: str,
) -> None:
    with unchanged(client):
        r = anon.request(method, path, json=body, headers=headers)
        assert_error(r, 401, code="unauthorized")
        assert re.match(challenge, r.headers["www-authenticate"]), r.headers.get("www-authenticate")


def test_reads_need_a_token(cp: ControlPlaneProcess, anon: httpx.Client) -> None:
    """Every /api/v1 read needs a token (a read token will do); /healthz needs none.
    (Each role against each endpoint: tests/security/test_api_tokens.py.)"""
    with cp.client(token=cp.api_token("read")) as reader:
        for path in [
            "/api/v1/clusters",
            "/api/v1/clusters/base",
            "/api/v1/config",
            "/api/v1/config/history",
            "/api/v1/nodes",
        ]:
            assert_error(anon.get(path), 401, code="unauthorized")
            assert reader.get(path).status_code == 200, path
    assert anon.get("/healthz").status_code == 200


def test_json_body_without_its_content_type_is_read_as_json(client: httpx.Client) -> None:
    """`curl -d '{...}'` sends a form content type (or none): the body is still JSON to the API."""
    body = b'{"name": "curl-style", "endpoints": [{"address": "127.0.0.1", "port": 9}]}'
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {}):
        r = client.put("/api/v1/clusters/curl-style", content=body, headers=headers)
        assert r.status_code in (200, 201), r.text
        assert client.get("/api/v1/clusters/curl-style").json()["endpoints"][0]["port"] == 9
    assert client.delete("/api/v1/clusters/curl-style").status_code == 200
    r = client.put(
        "/api/v1/clusters/base", content=b"not json", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_error(r, 400, code="malformed_json")


# -- rejected writes -----------------------------------------------------------------------


def test_malformed_json_is_400(client: httpx.Client) -> None:
    with unchanged(client):
        for path in ["/api/v1/clusters", "/api/v1/apply"]:
            r = client.post(path, content=b'{"name": "x",', headers={"content-type": "application/json"})
            assert_error(r, 400, code="malformed_json")
        r = client.put("/api/v1/clusters/base", content=b"not json", headers={"content-type": "application/json"})
        assert_error(r, 400, code="malformed_json")


@pytest.mark.parametrize(
    "path, body, field",
    [
        (
            "/api/v1/clusters",
            {"name": "t", "endpoints": [{"address": "10.0.0.1", "port": "eighty"}]},
            "endpoints[0].port",
        ),
        (
            "/api/v1/clusters",
            {"name": "t", "endpoints": [{"address": "10.0.0.1", "port": 80, "weight": 0}]},
            "endpoints[0].weight",
        ),
        (
            "/api/v1/clusters",
            {"name": "t", "endpoints": [{"address": "300.1.1.1", "port": 80}]},
            "endpoints[0].address",
        ),
        ("/api/v1/clusters", {"name": "t", "endpoints": [], "surprise": 1}, "surprise"),
        ("/api/v1/clusters", {"name": "t", "lb": "random"}, "lb"),
        ("/api/v1/clusters", {"name": "t", "timeouts": {"connect": "soon"}}, "timeouts.connect"),
        ("/api/v1/listeners", {"name": "t", "port": 70000}, "port"),
        ("/api/v1/listeners", {"name": "t", "port": 1234, "protocol": "sctp"}, "protocol"),
        ("/api/v1/routes", {"name": "t", "cluster": "base", "path": "(", "path_type": "regex"}, "path"),
        ("/api/v1/routes", {"name": "t", "cluster": "base", "hosts": ["bad host"]}, "hosts"),
        ("/api/v1/routes", {"name": "t", "cluster": "base", "methods": "GET"}, "methods"),
        ("/api/v1/routes", {"name": 42, "cluster": "base"}, "name"),
        ("/api/v1/routes", {"cluster": "base"}, "name"),
        ("/api/v1/policies", {"name": "t", "type": "rate_limit", "config": {"rate": -5}}, "config.rate"),
        ("/api/v1/tunnels", {"name": "t", "token": "x", "allow_ports": "70000-80000"}, "allow_ports"),
        (
            "/api/v1/consumers",
            {"name": "t", "credentials": [{"type": "api_key", "key": "short"}]},
            "credentials[0].api_key.key",
        ),
    ],
)
def test_wrong_types_and_unknown_fields_are_422_naming_the_field(
    client: httpx.Client, path: str, body: dict, field: str
) -> None:
    with unchanged(client):
        body_json = assert_error(client.post(path, json=body), 422)
        assert body_json["field"] == field, body_json
        assert any(e["field"] == field for e in body_json["errors"])


def test_cross_resource_errors_are_422_naming_the_field(client: httpx.Client) -> None:
    with unchanged(client):
        r = client.post("/api/v1/routes", json={"name": "dangling", "cluster": "no-such-cluster"})
        body = assert_error(r, 422, "cluster", code="invalid_config")
        assert "no-such-cluster" in body["message"] and body["errors"][0]["resource"] == "routes/dangling"
    client.put("/api/v1/listeners/port-a", json={"name": "port-a", "port": 18500, "node_group": "ports"})
    with unchanged(client):
        r = client.post("/api/v1/listeners", json={"name": "port-b", "port": 18500, "node_group": "ports"})
        body = assert_error(r, 422, "port")
        assert "listeners/port-a" in body["message"]
    # The same port in another group is fine.
    assert (
        client.post("/api/v1/listeners", json={"name": "port-c", "port": 18500, "node_group": "ports-2"}).status_code
        == 201
    )
    for name in ("port-a", "port-c"):
        assert client.delete(f"/api/v1/listeners/{name}").status_code == 200


def test_deleting_a_cluster_in_use_is_409_naming_the_route(client: httpx.Client) -> None:
    with unchanged(client):
        body = assert_error(client.delete("/api/v1/clusters/base"), 409, code="conflict")
        assert "routes/base-route" in body["message"]


def test_body_over_one_mib_is_413(client: httpx.Client) -> None:
    big = {"name": "big", "description": "x" * (1 << 20)}

    def chunked(size: int) -> Iterator[bytes]:
        sent = 0
        while sent < size:
            yield b" " * 65536
            sent += 65536

    with unchanged(client):
        assert_error(client.post("/api/v1/clusters", json=big), 413, code="too_large")
        assert_error(client.put("/api/v1/clusters/big", json=big), 413, code="too_large")
        r = client.post("/api/v1/apply", content=chunked(2 << 20), headers={"content-type": "application/json"})
        assert_error(r, 413, code="too_large")
    # A chunked body under the limit still works.
    small = b'{"name": "chunky", "endpoints": [{"address": "10.0.0.1", "port": 1}]}'
    r = client.post(
        "/api/v1/clusters",
        content=iter([small[:10], small[10:]]),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 201, r.text
    assert client.delete("/api/v1/clusters/chunky").status_code == 200
    # Just under the limit is accepted as far as size goes (it then fails on content, not size).
    near = {"name": "near", "description": "x" * ((1 << 20) - 200)}
    assert client.post("/api/v1/clusters", json=near).status_code == 201
    assert client.delete("/api/v1/clusters/near").status_code == 200


INJECTIONS = ["x'; DROP TABLE clusters;--", "a' OR '1'='1", "1; DELETE FROM routes", 'r" OR ""="', "x`--"]


@pytest.mark.parametrize("name", INJECTIONS)
def test_injection_looking_names_are_422(client: httpx.Client, name: str) -> None:
    with unchanged(client):
        for kind, extra in [
            ("clusters", {}),
            ("routes", {"cluster": "base"}),
            ("policies", {"type": "cors"}),
        ]:
            assert_error(client.post(f"/api/v1/{kind}", json={"name": name, **extra}), 422, "name")
            r = client.put(f"/api/v1/{kind}/{httpx.URL(name)}", json={"name": name, **extra})
            assert_error(r, 422, "name")
        assert client.get(f"/api/v1/clusters/{name}").status_code == 404
        r = client.post("/api/v1/apply", json={"clusters": [{"name": name}]})
        assert_error(r, 422)
        assert "name" in r.json()["field"]
    assert client.get("/api/v1/clusters/base").status_code == 200  # the table is still there


# -- whole-config endpoints ----------------------------------------------------------------


def test_config_history_and_rollback(client: httpx.Client) -> None:
    client.put("/api/v1/clusters/hist", json={"name": "hist", "endpoints": [{"address": "10.2.0.1", "port": 80}]})
    v1 = version(client)
    client.put("/api/v1/clusters/hist", json={"name": "hist", "endpoints": [{"address": "10.2.0.2", "port": 81}]})
    v2 = version(client)
    assert v2 == v1 + 1

    cfg = client.get("/api/v1/config").json()
    assert cfg["version"] == v2 and re.fullmatch(r"[0-9a-f]{64}", cfg["digest"])
    assert cfg["resources"]["clusters"] >= 2 and set(cfg["resources"]) == set(KINDS)

    history = client.get("/api/v1/config/history", params={"limit": 2}).json()
    assert history["total"] == v2  # one entry per version
    assert [e["version"] for e in history["items"]] == [v2, v1]
    assert "update clusters/hist" in history["items"][0]["summary"]
    assert history["items"][0]["author"].startswith("admin@")
    page2 = client.get("/api/v1/config/history", params={"limit": 1, "offset": 1}).json()
    assert [e["version"] for e in page2["items"]] == [v1]

    old = client.get(f"/api/v1/config/history/{v1}").json()
    assert old["version"] == v1
    assert {c["name"] for c in old["clusters"]} >= {"base", "hist"}  # the whole config, not a delta
    hist_old = next(c for c in old["clusters"] if c["name"] == "hist")
    assert hist_old["endpoints"][0]["address"] == "10.2.0.1"
    assert_error(client.get("/api/v1/config/history/999999"), 404, code="not_found")

    rb = client.post("/api/v1/config/rollback", json={"version": v1})
    assert rb.status_code == 200, rb.text
    assert rb.json()["version"] == v2 + 1 and rb.json()["rolled_back_to"] == v1 and rb.json()["committed"]
    assert rb.json()["changes"] == [{"kind": "clusters", "name": "hist", "action": "update"}]
    assert client.get("/api/v1/clusters/hist").json()["endpoints"][0]["address"] == "10.2.0.1"
    now = client.get(f"/api/v1/config/history/{v2 + 1}").json()
    assert {k: v for k, v in now.items() if k != "version"} == {k: v for k, v in old.items() if k != "version"}
    assert (
        client.get("/api/v1/config").json()["digest"]
        == client.get("/api/v1/config/history").json()["items"][0]["digest"]
    )

    with unchanged(client):
        assert_error(client.post("/api/v1/config/rollback", json={"version": 999999}), 404)
        assert_error(client.post("/api/v1/config/rollback", json={"version": 0}), 422, "version")
        assert_error(client.post("/api/v1/config/rollback", json={"version": 1, "force": True}), 422, "force")
    assert client.delete("/api/v1/clusters/hist").status_code == 200


def test_apply_dry_run_diff_prune(client: httpx.Client) -> None:
    doc = {
        "clusters": [{"name": "ap-c", "endpoints": [{"address": "10.3.0.1", "port": 80}]}],
        "routes": [
            {"name": "ap-r1", "cluster": "ap-c", "path": "/ap1"},
            {"name": "ap-r2", "cluster": "ap-c", "path": "/ap2"},
        ],
    }
    with unchanged(client):
        dry = client.post("/api/v1/apply", params={"dry_run": True}, json=doc)
        assert dry.status_code == 200, dry.text
        assert dry.json()["committed"] is False and dry.json()["dry_run"] is True
        assert {(c["kind"], c["name"], c["action"]) for c in dry.json()["changes"]} == {
            ("clusters", "ap-c", "create"), ("routes", "ap-r1", "create"), ("routes", "ap-r2", "create"),
        }  # fmt: skip
        assert dry.json()["diff"]["routes/ap-r1"]["before"] is None
        assert dry.json()["diff"]["routes/ap-r1"]["after"]["path"] == "/ap1"

    v0 = version(client)
    applied = client.post("/api/v1/apply", json=doc).json()
    assert applied["committed"] and applied["version"] == v0 + 1  # three resources, one version
    again = client.post("/api/v1/apply", json=doc).json()
    assert not again["committed"] and again["version"] == v0 + 1
    assert {c["action"] for c in again["changes"]} == {"unchanged"}

    changed = copy.deepcopy(doc)
    changed["routes"][0]["path"] = "/ap1-new"
    with unchanged(client):
        diff = client.post("/api/v1/apply", params={"dry_run": True}, json=changed).json()
        assert [c for c in diff["changes"] if c["action"] != "unchanged"] == [
            {"kind": "routes", "name": "ap-r1", "action": "update"}
        ]
        d = diff["diff"]["routes/ap-r1"]
        assert d["before"]["path"] == "/ap1" and d["after"]["path"] == "/ap1-new"

    pruned_doc = {"routes": [{"name": "ap-r1", "cluster": "ap-c", "path": "/ap1"}, *[]]}
    pruned_doc["routes"].append({"name": "base-route", "cluster": "base", "path": "/base"})
    pruned = client.post("/api/v1/apply", params={"prune": True}, json=pruned_doc).json()
    assert pruned["committed"]
    deleted = {c["name"] for c in pruned["changes"] if c["action"] == "delete"}
    assert "ap-r2" in deleted and "ap-r1" not in deleted
    assert all(c["kind"] == "routes" for c in pruned["changes"] if c["action"] == "delete")  # only named kinds
    assert client.get("/api/v1/routes/ap-r2").status_code == 404
    assert client.get("/api/v1/clusters/ap-c").status_code == 200  # clusters were not named: kept

    with unchanged(client):
        bad = client.post(
            "/api/v1/apply",
            json={"clusters": [{"name": "ok", "endpoints": []}, {"name": "bad", "lb": "nope"}]},
        )
        body = assert_error(bad, 422)
        assert body["errors"][0]["resource"] == "clusters/bad" and body["field"] == "lb"
        assert_error(client.post("/api/v1/apply", json={"gadgets": []}), 422, "gadgets")
        assert_error(client.post("/api/v1/apply", json={"routes": [{"name": "x", "cluster": "ghost"}]}), 422, "cluster")
        assert_error(client.post("/api/v1/apply", json={"clusters": {"name": "x"}}), 422, "clusters")
    client.post(
        "/api/v1/apply",
        params={"prune": True},
        json={"routes": [{"name": "base-route", "cluster": "base", "path": "/base"}]},
    )
    assert client.delete("/api/v1/clusters/ap-c").status_code == 200


# -- secrets -------------------------------------------------------------------------------


def test_secrets_read_back_masked_and_round_trip(client: httpx.Client) -> None:
    cert, key = self_signed("secret.example.com")
    secrets_doc = {
        "consumers": [
            {
                "name": "sec-alice",
                "credentials": [
                    {"type": "api_key", "key": "alice-plain-api-key"},
                    {"type": "jwt", "issuer": "sec-idp", "secret": "alice-jwt-secret-0123"},
                    {"type": "basic_auth", "username": "sec-alice", "password": "alice-password"},
                ],
            }
        ],
        "tunnels": [{"name": "sec-tun", "node_group": "sec", "token": "tunnel-token-xyz", "bind_port": 17100}],
        "certificates": [{"name": "sec-cert", "cert": cert, "key": key}],
        "policies": [
            {
                "name": "sec-oauth",
                "type": "oauth2",
                "config": {
                    "introspection_url": "https://idp/i",
                    "client_id": "gw",
                    "client_secret": "oauth-secret-123",
                },
            }
        ],
    }
    assert client.post("/api/v1/apply", json=secrets_doc).json()["committed"]
    v = version(client)
    plain = [
        "alice-plain-api-key",
        "alice-jwt-secret-0123",
        "alice-password",
        "tunnel-token-xyz",
        "oauth-secret-123",
        "PRIVATE KEY",
    ]
    reads = {
        "consumer": client.get("/api/v1/consumers/sec-alice"),
        "tunnel": client.get("/api/v1/tunnels/sec-tun"),
        "cert": client.get("/api/v1/certificates/sec-cert"),
        "policy": client.get("/api/v1/policies/sec-oauth"),
        "lists": client.get("/api/v1/consumers"),
        "history": client.get(f"/api/v1/config/history/{v}"),
        "export": client.get("/api/v1/config/export"),
    }
    for what, r in reads.items():
        assert r.status_code == 200, (what, r.text)
        for secret in plain:
            assert secret not in r.text, (what, secret)
    consumer = reads["consumer"].json()
    assert [c.get("key") or c.get("secret") or c.get("password") for c in consumer["credentials"]] == [MASK] * 3
    assert consumer["credentials"][0]["fingerprint"].startswith("hmac-sha256:")
    assert reads["tunnel"].json()["token"] == MASK
    assert reads["cert"].json()["key"] == MASK
    assert reads["policy"].json()["config"]["client_secret"] == MASK

    # What was read (masked) can be written back unchanged: the stored secrets are kept.
    for kind, r in [
        ("consumers", reads["consumer"]),
        ("tunnels", reads["tunnel"]),
        ("certificates", reads["cert"]),
        ("policies", reads["policy"]),
    ]:
        back = client.put(f"/api/v1/{kind}/{r.json()['name']}", json=r.json())
        assert back.status_code == 200, (kind, back.text)
    assert version(client) == v
    export = reads["export"].json()
    export.pop("version")
    reapplied = client.post("/api/v1/apply", json=export)
    assert reapplied.status_code == 200, reapplied.text
    assert reapplied.json()["committed"] is False, reapplied.json()
    # A masked secret where nothing is stored is refused (and names the field).
    with unchanged(client):
        r = client.post(
            "/api/v1/tunnels",
            json={"name": "sec-tun2", "node_group": "sec2", "token": MASK, "bind_port": 17101},
        )
        assert_error(r, 422, "token")
    for kind, name in [
        ("consumers", "sec-alice"),
        ("tunnels", "sec-tun"),
        ("certificates", "sec-cert"),
        ("policies", "sec-oauth"),
    ]:
        assert client.delete(f"/api/v1/{kind}/{name}").status_code == 200


# -- status endpoints ----------------------------------------------------------------------


def test_healthz_metrics_docs(cp: ControlPlaneProcess, anon: httpx.Client) -> None:
    h = anon.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    with cp.client() as c:
        assert h.json()["version"] == version(c)
        current = version(c)

    def metrics_show_version() -> str | None:
        text = anon.get("/metrics").text
        return text if re.search(rf"^flux_config_version {current}(\.0)?$", text, re.M) else None

    text = wait_until(metrics_show_version, 5, message="flux_config_version in /metrics")
    assert "# TYPE flux_config_version gauge" in text
    assert re.search(r"^flux_config_writes_total \d+", text, re.M)
    assert anon.get("/metrics").headers["content-type"].startswith("text/plain")
    for path in ("/healthz", "/metrics"):  # load balancers and uptime checkers probe with HEAD
        head = anon.head(path)
        assert head.status_code == 200 and head.content == b"", path
    assert "head" not in anon.get("/openapi.json").json()["paths"]["/healthz"]  # GET alone in the schema
    docs = anon.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = anon.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path in [
        "/api/v1/routes",
        "/api/v1/routes/{name}",
        "/api/v1/config",
        "/api/v1/apply",
        "/api/v1/nodes",
    ]:
        assert path in paths, path
    with cp.client() as c:
        assert c.get("/api/v1/nodes").json()["version"] == current
        assert_error(c.get("/api/v1/nope"), 404)
        assert_error(c.request("PATCH", "/api/v1/clusters/base"), 405)
    assert_error(anon.get("/api/v1/nope"), 401)  # no token: 401 before routing
