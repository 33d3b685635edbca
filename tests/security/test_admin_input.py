"""Admin API input (issue 12, part 6): integers and durations are bounded and answer 422 naming
the field or parameter (never 500); addresses and names with control characters are refused;
YAML bodies and files refuse anchors and aliases (no expansion bombs); the jwt policy requires
`exp` by default. The exact reproducers of the issue are here, each bounded in time.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
from typing import Any

import httpx
import jwt
import pytest
from support.config_samples import slot_cases, write_slot
from support.processes import ControlPlaneProcess, executable
from support.schema_walk import unbounded_ints

from controlplane.api.config import RollbackRequest
from controlplane.api.registry import InstancePatch
from controlplane.api.tokens import TokenRequest
from controlplane.registry.adapters.base import make_instance, string_map
from controlplane.registry.adapters.zookeeper import parse_node
from controlplane.registry.types import InstanceSpec, ServiceSpec
from controlplane.spec import KINDS
from dataplane.http.request import RequestHead, RequestReader
from dataplane.policies.auth import JwtPolicy
from dataplane.policies.base import ConsumerIndex, LocalResponse, PolicyEnv, RequestContext
from flux.v1 import config_pb2 as pb
from fluxcommon import yamlsafe
from fluxcommon.durations import MAX_DURATION_MS, parse_duration_ms
from fluxcommon.policy_config import SCHEMAS, JwtConfig, PolicyConfigError, parse_policy_config

INT64_PAST = "9223372036854775808"  # 2**63: one past what a signed 64-bit column holds
INT_CASES = slot_cases("ints")


# `cp` and `client`: a control plane holding every sample resource (tests/security/conftest.py)


def refused(r: httpx.Response, field: str, status: int = 422) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body.get("field", "").endswith(field) or field in body.get("message", ""), body
    return body


def services_total(client: httpx.Client) -> tuple[int, int]:
    listing = client.get("/api/v1/services", params={"limit": 1000}).json()
    instances = sum(s.get("instances", {}).get("total", 0) if isinstance(s.get("instances"), dict) else 0
                    for s in listing["items"])  # fmt: skip
    return listing["total"], instances


# -- integers past int64 in query and path parameters -------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/config/history", {"offset": INT64_PAST}, "offset"),
        ("/api/v1/config/history", {"offset": "-1"}, "offset"),
        ("/api/v1/config/history", {"limit": INT64_PAST}, "limit"),
        ("/api/v1/config/history/" + INT64_PAST, {}, "version"),
        ("/api/v1/config/history/-" + INT64_PAST, {}, "version"),
        ("/api/v1/events", {"since": INT64_PAST}, "since"),
        ("/api/v1/events", {"since": "1e400"}, "since"),
        ("/api/v1/events", {"limit": INT64_PAST}, "limit"),
        ("/api/v1/services", {"offset": INT64_PAST}, "offset"),
        ("/api/v1/services/inj-svc/instances", {"index": INT64_PAST}, "index"),
        ("/api/v1/services/inj-svc/instances", {"index": "1", "wait": "inf"}, "wait"),
        ("/api/v1/services/inj-svc/instances", {"index": "1", "wait": "nan"}, "wait"),
        ("/api/v1/services/inj-svc/instances", {"index": "1", "wait": "9999999999d"}, "wait"),
        ("/api/v1/services/inj-svc/watch", {"index": INT64_PAST}, "index"),
        *[(f"/api/v1/{plural}", {"offset": INT64_PAST}, "offset") for plural in KINDS],
    ],
)
def test_query_and_path_integers_are_bounded(client: httpx.Client, path: str, params: dict, field: str) -> None:
    started = time.monotonic()
    refused(client.get(path, params=params), field)
    assert time.monotonic() - started < 5


def test_the_largest_values_still_work(client: httpx.Client) -> None:
    top = str(2**63 - 1)
    r = client.get("/api/v1/config/history", params={"offset": top})
    assert r.status_code == 200 and r.json()["items"] == []
    r = client.get("/api/v1/events", params={"since": top})
    assert r.status_code == 200 and r.json()["items"] == []
    assert client.get("/api/v1/clusters", params={"offset": top}).json()["items"] == []
    assert client.get("/api/v1/config/history/" + top).status_code == 404
    with client.stream("GET", "/api/v1/services/inj-svc/watch", headers={"Last-Event-ID": "9" * 40}) as r:
        assert r.status_code == 200  # an over-long event id is ignored (a stream from now), not a 500
        assert next(r.iter_text()).startswith("id: ")


def test_rollback_version_is_bounded(client: httpx.Client) -> None:
    refused(client.post("/api/v1/config/rollback", json={"version": 2**63}), "version")
    refused(client.post("/api/v1/config/rollback", json={"version": 10**400 // 10**380}), "version")


# -- integers and durations in resources ----------------------------------------------------------


def test_every_int_field_of_every_schema_has_an_upper_bound() -> None:
    schemas: list[Any] = [k.spec for k in KINDS.values()] + list(SCHEMAS.values())
    schemas += [ServiceSpec, InstanceSpec, InstancePatch, TokenRequest, RollbackRequest]
    unbounded = {s.__name__: unbounded_ints(s) for s in schemas}
    assert not {k: v for k, v in unbounded.items() if v}


@pytest.mark.parametrize(("case_id", "target", "slot"), INT_CASES, ids=[c[0] for c in INT_CASES])
def test_every_int_field_refuses_huge_values_naming_the_field(
    client: httpx.Client, case_id: str, target: str, slot: Any
) -> None:
    for huge in (2**64, 2**63, 10**30):
        r = write_slot(client, target, slot, huge)
        assert r.status_code == 422, f"{case_id} {huge}: {r.status_code} {r.text[:300]}"
        body = r.json()
        assert slot.leaf in body.get("field", "") or f"{slot.leaf}:" in body["message"], (case_id, body)


def _cluster(**timeouts: Any) -> dict[str, Any]:
    return {"name": "slow", "endpoints": [{"address": "10.0.0.1", "port": 80}], "timeouts": timeouts}


@pytest.mark.parametrize(
    "connect",
    [9.7e17, "970000000000000000000ms", "9.7e20ms", 10**21, "366d", "50d"],
    ids=["9.7e17 s", "9.7e20 ms text", "exponent", "int", "366d", "50d (past uint32 ms)"],
)
def test_the_970_quintillion_ms_connect_timeout_is_refused(client: httpx.Client, connect: Any) -> None:
    version = client.get("/api/v1/config").json()["version"]
    body = refused(client.post("/api/v1/clusters", json=_cluster(connect=connect)), "connect")
    assert "timeouts" in body["field"]
    refused(client.post("/api/v1/apply", json={"clusters": [_cluster(connect=connect)]}), "connect")
    assert client.get("/api/v1/config").json()["version"] == version


@pytest.mark.parametrize("raw", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_durations_are_refused(client: httpx.Client, raw: str) -> None:
    text = json.dumps(_cluster(connect="X")).replace('"X"', raw)
    r = client.post("/api/v1/clusters", content=text, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert "connect" in r.text or r.json()["error"] == "malformed_json"


def test_durations_are_bounded_everywhere() -> None:
    assert parse_duration_ms("365d") == MAX_DURATION_MS
    for bad in ("366d", 9.7e17, float("inf"), float("nan"), 10**400, "9" * 100):
        with pytest.raises(ValueError):
            parse_duration_ms(bad)
    with pytest.raises(PolicyConfigError, match=r"config\.window"):
        parse_policy_config("circuit_breaker", {"window": "400d"})
    with pytest.raises(PolicyConfigError, match=r"config\.per"):
        parse_policy_config("rate_limit", {"rate": 1, "per": 1e300})


def test_deeply_nested_json_is_a_4xx(client: httpx.Client) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    r = client.post("/api/v1/apply", content=deep, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    r = client.post("/api/v1/services:import", content=deep, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


# -- addresses and names with control characters --------------------------------------------------


@pytest.mark.parametrize("address", ["10.0.0.1\r\nX-Injected: 1", "fe80::1%eth0\rx", "a\rb.example", "10.0.0.1\x00"])
def test_an_instance_address_with_a_cr_is_refused(client: httpx.Client, address: str) -> None:
    before = services_total(client)
    r = client.post("/api/v1/services/inj-svc/instances", json={"address": address, "port": 8081})
    refused(r, "address")
    assert services_total(client) == before
    listed = client.get("/api/v1/services/inj-svc/instances").json()["instances"]
    assert not any(set(i["address"]) & {"\r", "\n", "\x00"} for i in listed)


def test_a_trailing_cr_never_reaches_the_store(client: httpx.Client) -> None:
    r = client.post("/api/v1/services/inj-svc/instances", json={"address": "10.0.0.9\r", "port": 8082})
    assert r.status_code in (200, 201, 422), r.text
    if r.status_code != 422:
        assert r.json()["address"] == "10.0.0.9"  # whitespace at the ends is trimmed
        client.delete(f"/api/v1/services/inj-svc/instances/{r.json()['id']}")


def test_names_with_control_characters_are_refused_in_urls(client: httpx.Client) -> None:
    r = client.post("/api/v1/services/a%0Db/instances", json={"address": "10.0.0.1", "port": 80})
    assert 400 <= r.status_code < 500, r.text
    r = client.put("/api/v1/services/a%0Db", json={})
    assert 400 <= r.status_code < 500, r.text


def test_external_registry_entries_with_control_characters() -> None:
    """What the ZooKeeper (and every) adapter imports goes through the same models: an entry
    whose address holds control characters is unusable (skipped, no loop), metadata entries
    holding them are dropped."""
    data = json.dumps({"address": "10.0.0.1\r\nX", "port": 80}).encode()
    assert parse_node("node-1", data) is None
    good = json.dumps({"address": "10.0.0.1", "port": 80, "payload": {"metadata": {"ok": "1", "bad": "a\rb"}}})
    inst = parse_node("node-1", good.encode())
    assert inst is not None and inst.metadata == {"ok": "1"}
    assert string_map({"k\n": "v", "w": "x\x00"}) == {}
    assert make_instance(address="10.0.0.1", port=80, metadata={"weight": "²"}) is not None  # "²".isdigit()


# -- YAML bodies and files: no anchors, no aliases --------------------------------------------------


def alias_bomb(size: int = 100_000) -> str:
    """A "billion laughs" YAML document of about `size` bytes: nine levels of nine aliases."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    doc = "services:\n  - name: bomb\n    metadata: {}\n    tags: *a9\n" + "\n".join(lines) + "\n"
    padding = "#" + "x" * 98 + "\n"
    return doc + padding * max(0, -(-(size - len(doc)) // len(padding)))


@pytest.mark.parametrize("content_type", ["application/yaml", "text/plain", "application/json"])
def test_a_100kb_yaml_alias_bomb_answers_4xx_fast_and_stores_nothing(client: httpx.Client, content_type: str) -> None:
    bomb = alias_bomb()
    assert len(bomb) >= 100_000
    before = services_total(client)
    index = client.get("/api/v1/services").json()["index"]
    started = time.monotonic()
    r = client.post("/api/v1/services:import", content=bomb, headers={"content-type": content_type})
    assert time.monotonic() - started < 2.0
    assert r.status_code == 400, r.text
    assert "aliases" in r.json()["message"]
    assert services_total(client) == before
    assert client.get("/api/v1/services").json()["index"] == index


def test_plain_yaml_imports_still_work(client: httpx.Client) -> None:
    doc = "services:\n  - name: yaml-ok\n    instances:\n      - {address: 10.0.0.7, port: 80}\n"
    r = client.post("/api/v1/services:import", content=doc, headers={"content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    assert client.get("/api/v1/services/yaml-ok").status_code == 200


def test_fluxctl_apply_refuses_a_yaml_bomb(cp: ControlPlaneProcess, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bomb.yaml"
    base = "x: &x {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\nclusters: [*x, *x]\n"
    path.write_text(base)
    env = {**os.environ, "FLUX_SERVER": cp.url, "FLUX_ADMIN_TOKEN": cp.token}
    started = time.monotonic()
    result = subprocess.run(
        [executable("fluxctl"), "apply", "-f", str(path)], env=env, capture_output=True, text=True, timeout=30
    )
    assert time.monotonic() - started < 20
    assert result.returncode != 0
    assert "aliases" in result.stderr + result.stdout


def test_the_one_yaml_loader() -> None:
    assert yamlsafe.load("a: [1, 2]\nb: {c: d}\n") == {"a": [1, 2], "b": {"c": "d"}}
    assert list(yamlsafe.load_all("a: 1\n---\nb: 2\n")) == [{"a": 1}, {"b": 2}]
    for doc in ("a: &x 1\nb: *x\n", "base: &b {k: v}\nc: {<<: *b}\n", "a: !!python/object:os.system {}\n"):
        with pytest.raises(Exception) as info:
            yamlsafe.load(doc)
        assert "yaml" in type(info.value).__module__ or isinstance(info.value, yamlsafe.YamlAliasError)
    started = time.monotonic()
    with pytest.raises(yamlsafe.YamlAliasError):
        yamlsafe.load(alias_bomb(1_000_000))
    assert time.monotonic() - started < 2.0


def test_the_tunnel_agent_config_refuses_yaml_aliases() -> None:
    from tunnelclient.config import ConfigError, parse_text

    with pytest.raises(ConfigError, match="aliases"):
        parse_text("serverAddr: &s 1.2.3.4\nserverPort: 7000\nx: *s\n", "yaml")


# -- JWTs without exp ----------------------------------------------------------------------------------

SECRET = "jwt-secret-for-admin-input-tests"


def _ctx(token: str) -> RequestContext:
    reader = RequestReader()
    reader.feed(f"GET / HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = reader.events.popleft()
    assert isinstance(head, RequestHead)
    return RequestContext(head, "127.0.0.1", "main", "route", time.monotonic())


def _policy(**config: Any) -> JwtPolicy:
    consumers = [pb.Consumer(name="alice", credentials=[pb.Credential(type="jwt", issuer="idp", algorithm="HS256",
                                                                      secret=SECRET)])]  # fmt: skip
    return JwtPolicy("jwt", JwtConfig.model_validate(config), PolicyEnv(consumers=ConsumerIndex(consumers)))


def test_a_jwt_without_exp_is_refused_with_401() -> None:
    token = jwt.encode({"iss": "idp", "sub": "alice"}, SECRET, algorithm="HS256")
    answer = _policy().on_request(_ctx(token))
    assert isinstance(answer, LocalResponse) and answer.status == 401
    assert JwtConfig().require == ["exp"]
    assert _policy(require=[]).on_request(_ctx(token)) is None  # explicitly allowed
    with_exp = jwt.encode({"iss": "idp", "sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert _policy().on_request(_ctx(with_exp)) is None
    answer = _policy(require=["exp", "nbf"]).on_request(_ctx(with_exp))
    assert isinstance(answer, LocalResponse) and answer.status == 401


def test_the_control_plane_issues_tokens_with_exp(client: httpx.Client) -> None:
    r = client.post("/api/v1/auth/token", json={"consumer": "inj", "issuer": "inj-hs", "ttl": "15m"})
    assert r.status_code == 200, r.text
    claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900
    refused(client.post("/api/v1/auth/token", json={"consumer": "inj", "ttl": "400d"}), "ttl")
