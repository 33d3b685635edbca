"""End to end: a `registries` resource written through REST on a real `flux-controlplane`, with a
real etcd (child processes both): services written to etcd show up in /api/v1/services and as
cluster endpoints in the snapshots a node receives, follow changes, our services are exported
to etcd, and the source's status and metrics are served; deleting the resource withdraws the
exports and drops the imported instances."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import httpx
import pytest
from support.discovery import DiscoveryClient
from support.processes import ControlPlaneProcess, free_port, wait_until
from support.registry_backends import EtcdBackend
from support.registry_servers import EtcdServer

from controlplane.registry.adapters.base import EXPORT_MARK


@pytest.fixture
def etcd(tmp_path: pathlib.Path) -> Iterator[EtcdBackend]:
    with EtcdServer(tmp_path / "etcd") as server:
        backend = EtcdBackend(server, "/services/")  # type: ignore[arg-type]
        yield backend
        backend.close()


def instances(api: httpx.Client, service: str) -> set[tuple[str, int]]:
    r = api.get(f"/api/v1/services/{service}/instances")
    if r.status_code != 200:
        return set()
    return {(i["address"], i["port"]) for i in r.json()["instances"]}


def test_registries_resource_through_rest(controlplane: ControlPlaneProcess, etcd: EtcdBackend) -> None:
    etcd.put("orders", "o1", "10.0.0.1", 8081, metadata={"version": "v1"})
    etcd.put("orders", "o2", "10.0.0.2", 8082)
    with controlplane.client() as api:
        r = api.post("/api/v1/services/billing/instances", json={"address": "10.5.0.1", "port": 7001})
        assert r.status_code == 201, r.text
        body = {
            "name": "main",
            "type": "etcd",
            "address": etcd.address,
            "services": ["orders"],
            "export": True,
            "export_services": ["billing"],
            "interval": "500ms",
        }
        r = api.put("/api/v1/registries/main", json=body)
        assert r.status_code == 201, r.text

        listed = wait_until(
            lambda: {s["name"]: s for s in api.get("/api/v1/services").json()["items"]}.get("orders"),
            timeout=10,
            message="orders imported from etcd",
        )
        assert listed["instances"] == 2 and listed["healthy_instances"] == 2
        got = api.get("/api/v1/services/orders/instances").json()["instances"]
        assert {(i["address"], i["port"], i["source"], i["ephemeral"]) for i in got} == {
            ("10.0.0.1", 8081, "etcd:main", False),
            ("10.0.0.2", 8082, "etcd:main", False),
        }
        # a cluster on the imported service: its endpoints reach the nodes of its group
        cluster = {"name": "orders-c", "service": "orders"}
        assert api.put("/api/v1/clusters/orders-c", json=cluster).status_code == 201
        listener = {"name": "regsrc", "protocol": "tcp", "address": "127.0.0.1", "port": free_port(),
                    "cluster": "orders-c", "node_group": "regsrc"}  # fmt: skip
        assert api.put("/api/v1/listeners/regsrc", json=listener).status_code == 201, "listener"
        with DiscoveryClient(controlplane.grpc_addr, "regsrc-node", group="regsrc") as node:

            def node_endpoints() -> set[tuple[str, int]]:
                push = node.latest
                if push is None:
                    return set()
                found = [c for c in push.snapshot.clusters if c.name == "orders-c"]
                return {(e.address, e.port) for c in found for e in c.endpoints}

            wait_until(lambda: node_endpoints() == {("10.0.0.1", 8081), ("10.0.0.2", 8082)}, timeout=10)
            etcd.remove("orders", "o2")
            etcd.put("orders", "o3", "10.0.0.3", 8083)
            wait_until(lambda: instances(api, "orders") == {("10.0.0.1", 8081), ("10.0.0.3", 8083)}, timeout=10)
            wait_until(lambda: node_endpoints() == {("10.0.0.1", 8081), ("10.0.0.3", 8083)}, timeout=10)

        exported = wait_until(lambda: list(etcd.client.get_prefix("/services/billing/")), timeout=10)
        doc = json.loads(exported[0][0])
        assert (doc["address"], doc["port"], doc["metadata"][EXPORT_MARK]) == ("10.5.0.1", 7001, "etcd:main")

        status = wait_until(
            lambda: (s := api.get("/api/v1/registries/status").json())["items"][0]["state"] == "running" and s,
            timeout=10,
        )
        assert status["leader"] is True and status["total"] == 1
        item = status["items"][0]
        assert item["name"] == "main" and item["services"] == 1 and item["instances"] == 2 and item["exported"] == 1
        assert item["last_sync"] and item["last_error"] is None and item["detail"]["revision"] > 0
        one = api.get("/api/v1/registries/main/status")
        assert one.status_code == 200 and one.json()["name"] == "main"
        assert api.get("/api/v1/registries/nope/status").status_code == 404
        metrics = api.get("/api/v1/registries/metrics").text
        assert 'flux_registry_source_up{name="main",type="etcd"} 1.0' in metrics
        assert 'flux_registry_source_up{name="main",type="etcd"} 1.0' in api.get("/metrics").text
        # the resource itself reads back through the generic resource API, secrets masked
        assert api.get("/api/v1/registries/main").json()["address"] == etcd.address
        assert api.put("/api/v1/registries/status", json={**body, "name": "status"}).status_code == 422

        assert api.delete("/api/v1/registries/main").status_code == 200
        wait_until(lambda: not instances(api, "orders"), timeout=10, message="imports dropped")
        wait_until(lambda: not list(etcd.client.get_prefix("/services/billing/")), timeout=10)
        assert instances(api, "billing") == {("10.5.0.1", 7001)}
        assert api.get("/api/v1/registries/status").json()["total"] == 0
