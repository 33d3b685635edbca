"""The registry REST API against a real control plane process (SQLite; two on MariaDB at the end)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.processes import ControlPlaneProcess, executable, mariadb_database, mariadb_unreachable, wait_until

_names = itertools.count()


def fresh(prefix: str = "svc") -> str:
    return f"{prefix}-{next(_names)}"


@pytest.fixture
def api(module_controlplane: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with module_controlplane.client() as c:
        yield c


def register(c: httpx.Client, service: str, **body: Any) -> httpx.Response:
    body.setdefault("address", "10.0.0.1")
    body.setdefault("port", 8080)
    return c.post(f"/api/v1/services/{service}/instances", json=body)


def ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [i["id"] for i in resp.json()["instances"]]


def test_services_crud_and_filters(api: httpx.Client) -> None:
    name = fresh("orders")
    r = api.put(f"/api/v1/services/{name}", json={"group": "shop", "tags": ["v1", "web"], "owner": "team-a"})
    assert r.status_code == 201, r.text
    assert r.json()["group"] == "shop" and r.json()["modify_index"] == int(r.headers["x-flux-index"])
    r = api.put(f"/api/v1/services/{name}", json={"name": name, "group": "shop", "tags": ["v1", "web"],
                                                  "strategy": "prefer_zone"})  # fmt: skip
    assert r.status_code == 200 and r.json()["strategy"] == "prefer_zone"
    api.put(f"/api/v1/services/{fresh('other')}", json={"group": "shop", "namespace": "dev"})

    got = api.get(f"/api/v1/services/{name}")
    assert got.status_code == 200 and got.json()["instances"] == 0
    listed = api.get("/api/v1/services", params={"group": "shop", "tag": ["v1", "web"]}).json()
    assert [s["name"] for s in listed["items"]] == [name]
    dev = api.get("/api/v1/services", params={"namespace": "dev", "group": "shop"}).json()
    assert dev["total"] == 1 and dev["items"][0]["namespace"] == "dev"
    page = api.get("/api/v1/services", params={"limit": 1, "offset": 1}).json()
    assert len(page["items"]) == 1 and page["total"] >= 2

    bad = api.put(f"/api/v1/services/{name}", json={"name": "else"})
    assert bad.status_code == 422 and bad.json()["field"] == "name"
    bad = api.put(f"/api/v1/services/{name}", json={"strategy": "random"})
    assert bad.status_code == 422 and bad.json()["field"] == "strategy"
    bad = api.put(f"/api/v1/services/{name}", json={"health_check": {"interval": "soon"}})
    assert bad.status_code == 422 and bad.json()["field"] == "health_check.interval"
    bad = api.put(f"/api/v1/services/{name}", json={"colour": "red"})
    assert bad.status_code == 422 and bad.json()["field"] == "colour"

    assert register(api, name).status_code == 201
    refused = api.delete(f"/api/v1/services/{name}")
    assert refused.status_code == 409 and refused.json()["field"] == "instances"
    gone = api.delete(f"/api/v1/services/{name}", params={"force": "true"})
    assert gone.status_code == 200 and gone.json()["deleted"] == f"services/{name}"
    assert api.get(f"/api/v1/services/{name}").status_code == 404
    assert api.delete(f"/api/v1/services/{name}").status_code == 404


def test_register_discover_and_errors(api: httpx.Client, module_controlplane: ControlPlaneProcess) -> None:
    name = fresh("orders")
    r = register(api, name, weight=3, version="1.0", zone="z1", tags=["v1", "canary"], metadata={"k": "v"}, ttl="10s")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] == "10.0.0.1:8080" and body["health"] == "healthy" and body["ttl"] == "10s"
    first_index = int(r.headers["x-flux-index"])
    assert register(api, name, weight=3, version="1.0", zone="z1", tags=["v1", "canary"], metadata={"k": "v"},
                    ttl="10s").status_code == 200  # fmt: skip
    register(api, name, address="10.0.0.2", version="2.0", zone="z2", tags=["v2"], id="second")
    register(api, name, address="::1", port=9000, ephemeral=False)
    register(api, name, address="10.0.0.4", status="out_of_service")

    all_ = api.get(f"/api/v1/services/{name}/instances")
    assert sorted(ids(all_)) == sorted(["10.0.0.1:8080", "second", "[::1]:9000", "10.0.0.4:8080"])
    assert int(all_.headers["x-flux-index"]) == all_.json()["index"] > first_index
    healthy = ids(api.get(f"/api/v1/services/{name}/instances", params={"healthy": "true"}))
    assert "10.0.0.4:8080" not in healthy and len(healthy) == 3
    assert ids(api.get(f"/api/v1/services/{name}/instances", params={"tag": ["v1", "canary"]})) == ["10.0.0.1:8080"]
    assert ids(api.get(f"/api/v1/services/{name}/instances", params={"version": "2.0"})) == ["second"]
    assert ids(api.get(f"/api/v1/services/{name}/instances", params={"zone": "z1"})) == ["10.0.0.1:8080"]
    by_status = api.get(f"/api/v1/services/{name}/instances", params={"status": "out_of_service"})
    assert ids(by_status) == ["10.0.0.4:8080"]
    bad_status = api.get(f"/api/v1/services/{name}/instances", params={"status": "sleeping"})
    assert bad_status.status_code == 422 and bad_status.json()["field"] == "status"
    one = api.get(f"/api/v1/services/{name}/instances/[::1]:9000")
    assert one.status_code == 200 and one.json()["ephemeral"] is False and one.json()["health"] == "unknown"

    assert api.get("/api/v1/services/nope/instances").status_code == 404
    missing = api.get(f"/api/v1/services/{name}/instances/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert api.put(f"/api/v1/services/{name}/instances/nope/heartbeat").status_code == 404
    assert api.delete(f"/api/v1/services/{name}/instances/nope").status_code == 404
    for body, field in (
        ({"address": "10.0.0.1", "port": 0}, "port"),
        ({"address": "10.0.0.1", "port": 70000}, "port"),
        ({"address": "not an address", "port": 80}, "address"),
        ({"address": "10.0.0.1", "port": 80, "ttl": "500ms"}, "ttl"),
        ({"address": "10.0.0.1", "port": 80, "weight": -1}, "weight"),
        ({"port": 80}, "address"),
    ):
        bad = api.post(f"/api/v1/services/{name}/instances", json=body)
        assert bad.status_code == 422 and bad.json()["field"] == field, (body, bad.text)
    bad = api.post("/api/v1/services/bad%20name/instances", json={"address": "10.0.0.1", "port": 80})
    assert bad.status_code == 422 and bad.json()["field"] == "name"

    with module_controlplane.client(token="") as anon:
        assert anon.get(f"/api/v1/services/{name}/instances").status_code == 401  # reads need a token too
        for method, path, kw in (
            ("POST", f"/api/v1/services/{name}/instances", {"json": {"address": "10.0.0.9", "port": 1}}),
            ("PUT", f"/api/v1/services/{name}", {"json": {}}),
            ("DELETE", f"/api/v1/services/{name}", {}),
            ("PUT", f"/api/v1/services/{name}/instances/second/heartbeat", {}),
            ("PATCH", f"/api/v1/services/{name}/instances/second", {"json": {"weight": 2}}),
            ("DELETE", f"/api/v1/services/{name}/instances/second", {}),
            ("POST", "/api/v1/services:import", {"json": {"services": []}}),
        ):
            r = anon.request(method, path, **kw)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", (method, path, r.text)
    with module_controlplane.client(token="wrong") as wrong:
        r = wrong.put(f"/api/v1/services/{name}/instances/second/heartbeat")
        assert r.status_code == 401 and r.json()["message"] == "wrong admin token"

    hb = api.put(f"/api/v1/services/{name}/instances/second/heartbeat")
    assert hb.status_code == 200 and hb.json()["id"] == "second"
    gone = api.delete(f"/api/v1/services/{name}/instances/second")
    assert gone.status_code == 200 and int(gone.headers["x-flux-index"]) == gone.json()["index"]
    assert "second" not in ids(api.get(f"/api/v1/services/{name}/instances"))


def test_enable_disable_drain_weight_and_metadata(api: httpx.Client) -> None:
    name = fresh("pay")
    register(api, name, metadata={"a": "1", "b": "2"})
    path = f"/api/v1/services/{name}/instances/10.0.0.1:8080"

    def healthy() -> list[str]:
        return ids(api.get(f"/api/v1/services/{name}/instances", params={"healthy": "true"}))

    r = api.patch(path, json={"status": "out_of_service"})  # disable
    assert r.status_code == 200 and r.json()["status"] == "out_of_service" and healthy() == []
    r = api.patch(path, json={"status": "draining"})  # drain: still listed (open requests finish)
    assert r.json()["status"] == "draining" and r.json()["healthy"] and healthy() == ["10.0.0.1:8080"]
    assert api.patch(path, json={"status": "up"}).json()["status"] == "up"  # enable
    r = api.patch(path, json={"weight": 0})
    assert r.json()["weight"] == 0 and healthy() == []
    r = api.patch(path, json={"weight": 7, "metadata": {"a": None, "c": "3"}, "tags": ["x"]})
    assert (r.json()["weight"], r.json()["metadata"], r.json()["tags"]) == (7, {"b": "2", "c": "3"}, ["x"])
    assert int(r.headers["x-flux-index"]) == r.json()["modify_index"]

    for body, field in (({"status": "gone"}, "status"), ({"weight": 10_001}, "weight"), ({"port": 1}, "port")):
        bad = api.patch(path, json=body)
        assert bad.status_code == 422 and bad.json()["field"] == field, bad.text
    assert api.patch(f"/api/v1/services/{name}/instances/nope", json={"weight": 1}).status_code == 404

    kinds = [e["kind"] for e in api.get("/api/v1/events", params={"service": name}).json()["items"]]
    assert kinds == ["service_registered", "registered", "out_of_service", "draining", "up", "weight", "weight",
                     "metadata"]  # fmt: skip


def test_batch_import_json_and_yaml(api: httpx.Client) -> None:
    a, b, c = fresh("imp"), fresh("imp"), fresh("imp")
    before = api.get("/api/v1/services").json()["index"]
    doc = {
        "services": [
            {"name": a, "group": "g1", "instances": [{"address": "10.1.0.1", "port": 80},
                                                     {"address": "10.1.0.2", "port": 80}]},
            {"name": b, "tags": ["t"], "instances": [{"address": "10.1.0.3", "port": 80, "ephemeral": False}]},
        ]
    }  # fmt: skip
    r = api.post("/api/v1/services:import", json=doc)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "index": before + 1,
        "services": {"created": 2, "updated": 0, "unchanged": 0},
        "instances": {"registered": 3, "updated": 0, "unchanged": 0},
    }
    yaml_doc = f"""
services:
  - name: {c}
    group: g2
    instances:
      - {{address: 10.2.0.1, port: 81, tags: [blue]}}
      - {{address: 10.2.0.2, port: 81}}
  - name: {a}
    group: g1
"""
    r = api.post("/api/v1/registry/import", content=yaml_doc, headers={"content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    assert r.json()["index"] == before + 2 and r.json()["services"] == {"created": 1, "updated": 0, "unchanged": 1}
    assert ids(api.get(f"/api/v1/services/{c}/instances", params={"tag": "blue"})) == ["10.2.0.1:81"]
    r = api.post("/api/v1/services:import", content=yaml_doc)  # YAML without its content type: sniffed
    assert r.status_code == 200 and r.json()["index"] == before + 2  # nothing changed: no bump

    bad = {"services": [{"name": fresh()}, {"name": fresh(), "instances": [{"address": "10.0.0.1", "port": 0}]}]}
    r = api.post("/api/v1/services:import", json=bad)
    assert r.status_code == 422 and r.json()["field"] == "services[1].instances[0].port", r.text
    r = api.post("/api/v1/services:import", json={"services": [{"name": a}, {"name": a}]})
    assert r.status_code == 422 and r.json()["field"] == "services[1].name"
    r = api.post("/api/v1/services:import", content=b"services: [unclosed", headers={"content-type": "text/yaml"})
    assert r.status_code == 400
    r = api.post("/api/v1/services:import", json={"services": {"not": "a list"}})
    assert r.status_code == 422 and r.json()["field"] == "services"
    assert api.get("/api/v1/services").json()["index"] == before + 2  # the bad ones changed nothing


def test_long_poll_returns_within_100ms_of_a_change(
    api: httpx.Client, module_controlplane: ControlPlaneProcess
) -> None:
    name = fresh("watch")
    index = int(register(api, name).headers["x-flux-index"])
    quick = api.get(f"/api/v1/services/{name}/instances", params={"index": index - 1, "wait": "10s"})
    assert quick.status_code == 200 and int(quick.headers["x-flux-index"]) == index  # already past: at once

    t0 = time.perf_counter()
    timed_out = api.get(f"/api/v1/services/{name}/instances", params={"index": index, "wait": "300ms"})
    assert 0.25 < time.perf_counter() - t0 < 2 and int(timed_out.headers["x-flux-index"]) == index

    latencies = []
    for _ in range(3):
        result: dict[str, Any] = {}

        def poll(at: int = index, out: dict[str, Any] = result) -> None:
            with module_controlplane.client() as c:
                r = c.get(f"/api/v1/services/{name}/instances", params={"index": at, "wait": "10s"})
                out["t"], out["r"] = time.perf_counter(), r

        watches = module_controlplane.metric("flux_registry_watches")
        t = threading.Thread(target=poll)
        t.start()
        waiting = lambda w=watches: module_controlplane.metric("flux_registry_watches") > w  # noqa: E731
        wait_until(waiting, 5, message="the poll is waiting")
        written = time.perf_counter()
        w = api.patch(f"/api/v1/services/{name}/instances/10.0.0.1:8080", json={"weight": len(latencies) + 2})
        t.join(10)
        latency = result["t"] - written
        latencies.append(latency)
        assert result["r"].status_code == 200
        index = int(result["r"].headers["x-flux-index"])
        assert index == int(w.headers["x-flux-index"])
        assert result["r"].json()["instances"][0]["weight"] == len(latencies) + 1
    print(f"\nlong-poll wake-up after a change: {', '.join(f'{x * 1000:.1f} ms' for x in latencies)}")
    assert max(latencies) < 0.5

    bad = api.get(f"/api/v1/services/{name}/instances", params={"index": 1, "wait": "soon"})
    assert bad.status_code == 422 and bad.json()["field"] == "wait"
    # a blocking query may wait for a service that does not exist yet
    later = fresh("later")
    threading.Timer(0.2, lambda: register(module_controlplane.client(), later)).start()
    r = api.get(f"/api/v1/services/{later}/instances", params={"index": 0, "wait": "5s"})
    assert r.status_code == 200 and ids(r) == ["10.0.0.1:8080"]


def test_sse_stream_delivers_changes(api: httpx.Client, module_controlplane: ControlPlaneProcess) -> None:
    name = fresh("sse")
    register(api, name)
    events: list[tuple[str, str, list[dict[str, Any]]]] = []
    got_two = threading.Event()

    def listen() -> None:
        with (
            module_controlplane.client() as c,
            c.stream("GET", f"/api/v1/services/{name}/watch", params={"healthy": "true"}, timeout=10) as r,
        ):
            assert r.headers["content-type"].startswith("text/event-stream")
            block: dict[str, str] = {}
            for line in r.iter_lines():
                if line:
                    key, _, value = line.partition(": ")
                    block[key] = value
                    continue
                if "event" in block:
                    events.append((block["id"], block["event"], json.loads(block["data"])))
                block = {}
                if len(events) == 2:
                    got_two.set()
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    wait_until(lambda: events, timeout=5, message="the first event")
    register(api, name, address="10.0.0.2")
    assert got_two.wait(5)
    (id1, kind1, first), (id2, kind2, second) = events
    assert kind1 == kind2 == "instances" and int(id2) > int(id1)
    assert [i["id"] for i in first] == ["10.0.0.1:8080"]
    assert [i["id"] for i in second] == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_events_feed_and_metrics(api: httpx.Client, module_controlplane: ControlPlaneProcess) -> None:
    name = fresh("ev")
    register(api, name)
    api.put(f"/api/v1/services/{name}/instances/10.0.0.1:8080/heartbeat")
    api.delete(f"/api/v1/services/{name}/instances/10.0.0.1:8080")
    feed = api.get("/api/v1/events", params={"service": name}).json()
    assert [e["kind"] for e in feed["items"]] == ["service_registered", "registered", "deregistered"]
    first = feed["items"][0]
    assert first["service"] == name and first["index"] > 0 and first["time"] > 1e9
    since = api.get("/api/v1/events", params={"service": name, "since": first["id"]}).json()
    assert [e["kind"] for e in since["items"]] == ["registered", "deregistered"]
    assert since["last_id"] == since["items"][-1]["id"]
    assert len(api.get("/api/v1/events", params={"limit": 2}).json()["items"]) == 2
    assert api.get("/api/v1/events", params={"limit": 0}).status_code == 422

    register(api, name, address="10.0.0.7")
    register(api, name, address="10.0.0.8", status="draining")
    text = httpx.get(f"{module_controlplane.url}/metrics").text
    assert f'flux_registry_instances{{health="healthy",service="{name}",status="up"}} 1.0' in text
    assert f'flux_registry_instances{{health="healthy",service="{name}",status="draining"}} 1.0' in text
    for metric in ("flux_registry_index", "flux_registry_heartbeats_total", "flux_registry_expirations_total",
                   "flux_registry_leader 1.0"):  # fmt: skip
        assert metric in text, metric


def test_fluxctl_get_services(module_controlplane: ControlPlaneProcess, api: httpx.Client) -> None:
    name = fresh("ctl")
    api.put(f"/api/v1/services/{name}", json={"group": "shop", "tags": ["a", "b"]})
    register(api, name)
    env = {**os.environ, "FLUX_SERVER": module_controlplane.url, "FLUX_ADMIN_TOKEN": module_controlplane.token}
    out = subprocess.run(
        [executable("fluxctl"), "get", "services"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    line = next(row for row in out.stdout.splitlines() if row.startswith(name))
    assert line.split()[:5] == [name, "default", "shop", "a,b", "1/1"]
    one = subprocess.run([executable("fluxctl"), "get", "service", name, "-o", "json"], env=env, capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert json.loads(one.stdout)["group"] == "shop"


def test_heartbeats_keep_an_instance_and_stopping_them_expires_it(controlplane: ControlPlaneProcess) -> None:
    with controlplane.client() as api:
        register(api, "ttl", ttl="2s")
        register(api, "ttl", address="10.0.0.2", ephemeral=False)  # persistent: stays
        path = "/api/v1/services/ttl/instances/10.0.0.1:8080"
        until = time.monotonic() + 3.5
        while time.monotonic() < until:  # well past the TTL, kept alive by heartbeats
            assert api.put(f"{path}/heartbeat").status_code == 200
            time.sleep(0.5)  # stays: heartbeats at this pace keep the instance past its TTL (the point)
        assert ids(api.get("/api/v1/services/ttl/instances")) == ["10.0.0.1:8080", "10.0.0.2:8080"]
        stopped = time.monotonic()
        wait_until(lambda: api.get(path).status_code == 404, timeout=5, message="expiry")
        took = time.monotonic() - stopped
        assert 1.5 < took < 3.5, took  # ttl 2 s, checked every 0.5 s
        assert api.put(f"{path}/heartbeat").status_code == 404  # the client registers again
        assert ids(api.get("/api/v1/services/ttl/instances")) == ["10.0.0.2:8080"]
        kinds = [e["kind"] for e in api.get("/api/v1/events", params={"service": "ttl"}).json()["items"]]
        assert kinds[-1] == "expired"

        # a long-poll open when the control plane stops answers at once
        done: dict[str, Any] = {}

        def poll() -> None:
            try:
                r = api.get("/api/v1/services/ttl/instances", params={"index": 10**6, "wait": "60s"})
                done["status"] = r.status_code
            except httpx.HTTPError as exc:
                done["status"] = repr(exc)

        watches = controlplane.metric("flux_registry_watches")
        t = threading.Thread(target=poll)
        t.start()
        wait_until(lambda: controlplane.metric("flux_registry_watches") > watches, 5, message="the poll waits")
        t0 = time.monotonic()
        assert controlplane.stop() == 0
        t.join(10)
        assert done["status"] == 200 and time.monotonic() - t0 < 3, done


@pytest.mark.mysql
@pytest.mark.slow
def test_two_control_planes_on_mariadb_see_each_other(tmp_path: Any) -> None:
    reason = mariadb_unreachable()
    if reason:
        pytest.skip(reason)
    with mariadb_database() as url:
        token = "reg-shared-token"
        with (
            ControlPlaneProcess(tmp_path / "a", url, token=token, cp_id="cp-a") as a,
            ControlPlaneProcess(tmp_path / "b", url, token=token, cp_id="cp-b") as b,
            a.client() as ca,
            b.client() as cb,
        ):
            t0 = time.perf_counter()
            w = register(ca, "shared", ttl="3s")

            def on_b() -> list[str] | None:
                r = cb.get("/api/v1/services/shared/instances")
                return ids(r) if r.status_code == 200 else None

            seen = wait_until(on_b, timeout=1.0, interval=0.01, message="b sees a's registration")
            print(f"\nregistration on cp-a visible on cp-b after {(time.perf_counter() - t0) * 1000:.0f} ms")
            assert seen == ["10.0.0.1:8080"]
            index = int(w.headers["x-flux-index"])

            # a long-poll on b wakes for a write on a
            watches = b.metric("flux_registry_watches")
            result: dict[str, Any] = {}
            t = threading.Thread(
                target=lambda: result.update(
                    r=b.client().get("/api/v1/services/shared/instances", params={"index": index, "wait": "10s"}),
                    t=time.perf_counter(),
                )
            )
            t.start()
            wait_until(lambda: b.metric("flux_registry_watches") > watches, 5, message="the poll on b waits")
            written = time.perf_counter()
            ca.patch("/api/v1/services/shared/instances/10.0.0.1:8080", json={"weight": 9})
            t.join(10)
            assert result["r"].json()["instances"][0]["weight"] == 9
            assert result["t"] - written < 1.0

            # heartbeats through b keep it alive while a (or b) is the leader; exactly one leads
            leaders = [
                httpx.get(f"{cp.url}/metrics").text.count("flux_registry_leader 1.0") for cp in (a, b)
            ]  # fmt: skip
            assert sum(leaders) == 1
            until = time.monotonic() + 3.5
            while time.monotonic() < until:
                assert cb.put("/api/v1/services/shared/instances/10.0.0.1:8080/heartbeat").status_code == 200
                time.sleep(0.4)  # stays: heartbeats at this pace keep the instance past its TTL (the point)
            assert ids(ca.get("/api/v1/services/shared/instances")) == ["10.0.0.1:8080"]
            wait_until(lambda: ca.get("/api/v1/services/shared/instances/10.0.0.1:8080").status_code == 404,
                       timeout=6, message="expiry after heartbeats stop")  # fmt: skip
            wait_until(lambda: cb.get("/api/v1/services/shared/instances/10.0.0.1:8080").status_code == 404,
                       timeout=1, message="b sees the expiry")  # fmt: skip
