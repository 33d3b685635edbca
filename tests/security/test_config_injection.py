"""Nothing from config reaches the wire unchecked (issue 12, part 3): every string field of every
resource spec, policy config schema and registry model refuses CR, LF and NUL (multi-line
fields: NUL) through the real REST API, with a 4xx that names the field.

The fields are found by introspecting the pydantic models (tests/support/schema_walk.py), so a
new field is covered without editing this file; a new nested object that no sample of
tests/support/config_samples.py holds fails `test_the_samples_reach_every_string` until one does.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support.config_samples import (
    INSTANCE,
    PATCH,
    POLICY_CONFIGS,
    RSA_PUBLIC,
    SERVICE,
    TOKEN,
    base_document,
    kind_walk,
    policy_walk,
    send,
    slot_cases,
    write_slot,
)
from support.schema_walk import Slot, walk

from controlplane.registry.types import InstanceSpec, ServiceSpec
from controlplane.spec import KINDS
from fluxcommon.policy_config import SCHEMAS

CASES = slot_cases("strings")


# `cp` and `client`: a control plane holding every sample resource (tests/security/conftest.py)


# -- the samples themselves -----------------------------------------------------------------------


def test_the_samples_reach_every_string() -> None:
    missing = [m for plural in KINDS for m in kind_walk(plural).missing]
    missing += [f"policies[{t}].config.{m}" for t in SCHEMAS for m in policy_walk(t).missing]
    for model, doc in ((ServiceSpec, SERVICE), (InstanceSpec, INSTANCE)):
        missing += [f"{model.__name__}.{m}" for m in walk(model, doc).missing]
    assert not missing, f"add these objects to tests/support/config_samples.py: {missing}"
    assert set(POLICY_CONFIGS) == set(SCHEMAS), "a policy type has no sample config"
    assert len(CASES) > 150


def test_the_samples_are_valid(client: httpx.Client) -> None:
    r = client.post("/api/v1/apply", params={"dry_run": "true"}, json=base_document())
    assert r.status_code == 200, r.text
    for ptype in SCHEMAS:
        r = send(client, f"policy:{ptype}", POLICY_CONFIGS[ptype])
        assert r.status_code == 200, (ptype, r.text)
    assert send(client, "service", SERVICE).status_code == 200
    assert send(client, "instance", INSTANCE).status_code in (200, 201)
    assert send(client, "patch", PATCH).status_code == 200
    assert send(client, "token", TOKEN).status_code == 200


# -- every string refuses CR, LF and NUL ----------------------------------------------------------


@pytest.mark.parametrize(("case_id", "target", "slot"), CASES, ids=[c[0] for c in CASES])
def test_every_string_field_refuses_control_characters(
    client: httpx.Client, case_id: str, target: str, slot: Slot
) -> None:
    for bad in ("\r", "\n", "\x00"):
        if slot.multiline and bad != "\x00":
            continue  # PEM blocks, bodies, descriptions span lines; NUL is refused all the same
        r = write_slot(client, target, slot, f"a{bad}b")
        assert r.status_code in (400, 422), f"{case_id} {bad!r}: {r.status_code} {r.text[:300]}"
        body = r.json()
        named = body.get("field", "") or ""
        assert slot.leaf in named or f"{slot.leaf}:" in body.get("message", ""), (
            f"{case_id} {bad!r}: the error does not name {slot.leaf!r}: {body}"
        )


def test_multiline_fields_still_take_line_breaks(client: httpx.Client) -> None:
    body = base_document()
    body["certificates"][0]["description"] = "line one\nline two"
    body["consumers"][0]["credentials"][2]["public_key"] = RSA_PUBLIC.replace("\n", "\r\n")
    r = client.post("/api/v1/apply", params={"dry_run": "true"}, json=body)
    assert r.status_code == 200, r.text
    r = send(client, "policy:circuit_breaker", {"fallback": {"body": '{\n  "error": "down"\n}\n'}})
    assert r.status_code == 200, r.text


# -- the reproducers of the issue -------------------------------------------------------------------

INJECTED = "/x HTTP/1.1\r\nX-Injected: 1\r\nY: "


def _route(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "cluster": "inj", "path": "/x", **fields}


@pytest.mark.parametrize(
    ("plural", "doc", "field"),
    [
        ("routes", _route(prefix_rewrite=INJECTED), "prefix_rewrite"),
        ("routes", _route(prefix_rewrite="/x HTTP/1.1"), "prefix_rewrite"),
        ("routes", _route(host_rewrite="a.example\r\nX-Injected: 1"), "host_rewrite"),
        ("routes", _route(host_rewrite="evil@a.example"), "host_rewrite"),
        ("routes", _route(headers={"x-a\r\nx-b": "1"}), "headers"),
        ("clusters", {"name": "x", "endpoints": [{"address": "10.0.0.1", "port": 80}],
                      "health_check": {"path": "/h HTTP/1.1\r\nX: 1"}}, "health_check.path"),
        ("tunnels", {"name": "x", "token": "t", "subdomain_host": "t.example\r\nX: 1"}, "subdomain_host"),
        ("policies", {"name": "x", "type": "redirect", "config": {"to": "https://a.example/\r\nSet-Cookie: a=1"}},
         "config.to"),
        ("policies", {"name": "x", "type": "redirect", "config": {"to": "//evil.example/"}}, "config.to"),
        ("policies", {"name": "x", "type": "request_rewrite", "config": {"path_prefix": INJECTED}},
         "config.path_prefix"),
        ("policies", {"name": "x", "type": "request_rewrite", "config": {"path_regex": ["^/(.*)", "/\\1\\r\\n"]}},
         "config.path_regex"),
        ("policies", {"name": "x", "type": "request_rewrite", "config": {"path_regex": ["^/(.*)", "/a b/\\1"]}},
         "config.path_regex"),
        ("policies", {"name": "x", "type": "circuit_breaker",
                      "config": {"fallback": {"headers": {"X-A": "1\r\nX-Injected: 1"}}}}, "config.fallback.headers"),
        ("policies", {"name": "x", "type": "cors", "config": {"allow_headers": ["X-A\r\nX-Injected: 1"]}},
         "config.allow_headers"),
        ("policies", {"name": "x", "type": "cors", "config": {"expose_headers": ["X-A, X-B"]}},
         "config.expose_headers"),
        ("policies", {"name": "x", "type": "cors", "config": {"allow_methods": ["GET\r\n"]}}, "config.allow_methods"),
        ("policies", {"name": "x", "type": "jwt", "config": {"forward_header": "X-Claims\r\nX-Injected: 1"}},
         "config.forward_header"),
        ("policies", {"name": "x", "type": "api_key", "config": {"header": "api key"}}, "config.header"),
        ("policies", {"name": "x", "type": "api_key", "config": {"query": "k&admin=1"}}, "config.query"),
        ("policies", {"name": "x", "type": "jwt", "config": {"consumer_header": "X-C\r\n"}}, "config.consumer_header"),
    ],
)  # fmt: skip
def test_the_issue_reproducers_answer_422_naming_the_field(
    client: httpx.Client, plural: str, doc: dict[str, Any], field: str
) -> None:
    version = client.get("/api/v1/config").json()["version"]
    for how in ("post", "apply"):
        if how == "post":
            r = client.post(f"/api/v1/{plural}", json=doc)
        else:
            r = client.post("/api/v1/apply", json={plural: [doc]})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["field"].startswith(field.split(".")[0]) and field in body["field"] + body["message"], body
        if how == "apply":
            assert body["error"] == "invalid_config"
            assert body["message"].startswith(f"{plural}/x: {field}"), body
    assert client.get("/api/v1/config").json()["version"] == version, "a refused write changed the config"
