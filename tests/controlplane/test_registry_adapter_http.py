"""Protocol details of the HTTP registry adapters (Consul, Nacos, Eureka): answers parsed from their
documented JSON, Consul's blocking-query index rules, heartbeats/TTL checks and re-registration,
credentials. Consul, Nacos and Eureka cannot run here: the servers are the recorded-protocol
fakes of support.registry_fakes (FakeConsulRecordedProtocol, FakeNacosRecordedProtocol,
FakeEurekaRecordedProtocol)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from support.registry_backends import eventually, imported, run_bounded, running
from support.registry_fakes import FakeConsulRecordedProtocol, FakeEurekaRecordedProtocol, FakeNacosRecordedProtocol

from controlplane.registry.adapters.consul import ConsulAdapter, consul_meta, next_index, parse_health
from controlplane.registry.adapters.eureka import EurekaAdapter, parse_apps
from controlplane.registry.adapters.nacos import NacosAdapter, parse_hosts
from controlplane.registry.store import RegistryStore
from controlplane.registry.types import InstanceSpec
from controlplane.spec.registry_source import RegistrySourceSpec

SCENARIO_TIMEOUT = 20.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    run_bounded(coro, SCENARIO_TIMEOUT)


def spec(type_: str, address: str, **fields: object) -> RegistrySourceSpec:
    return RegistrySourceSpec.model_validate(
        {"name": "t", "type": type_, "address": address, "interval": "500ms", **fields}
    )


# -- Consul ------------------------------------------------------------------------------------


def test_consul_index_rules() -> None:
    assert next_index(0, 0) == 1  # never below 1
    assert next_index(5, 9) == 9
    assert next_index(9, 9) == 9  # wait ended without a change
    assert next_index(9, 3) == 0  # went backwards (a new cluster, a snapshot restore): reset


def test_consul_parse_health() -> None:
    entries = [
        {
            "Node": {"Node": "n1", "Address": "10.0.0.1"},
            "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1"], "Address": "", "Port": 80,
                        "Meta": {"version": "v1"}, "Weights": {"Passing": 5, "Warning": 1}},
            "Checks": [{"Status": "passing"}, {"Status": "warning"}],
        },
        {
            "Node": {"Node": "n2", "Address": "10.0.0.2"},
            "Service": {"ID": "web-1", "Service": "web", "Address": "10.9.0.2", "Port": 80},
            "Checks": [{"Status": "critical"}],
        },
        {"Node": {"Node": "n3"}, "Service": {"ID": "bad", "Port": 80}, "Checks": []},
    ]  # fmt: skip
    specs, unusable = parse_health(entries)
    assert unusable == 1
    first, second = specs
    assert (first.id, first.address, first.weight, first.tags, first.version) == (
        "web-1@n1",
        "10.0.0.1",
        1,
        ["v1"],
        "v1",
    )
    assert (second.id, second.address, second.status) == ("web-1@n2", "10.9.0.2", "down")
    assert consul_meta({"a.b": "x", "consul-reserved": "y", "ok_key-1": "z" * 600}) == {
        "a_b": "x",
        "ok_key-1": "z" * 512,
    }


def test_consul_blocking_queries_and_checks(registry: RegistryStore) -> None:
    """The adapter waits in blocking queries (no polling while nothing changes), follows check
    states, keeps its exports' TTL checks passing and registers again what the agent forgot."""
    with FakeConsulRecordedProtocol(token="s3cret") as fake:
        fake.register("web", "web-1", "10.0.0.1", 80, tags=["v1"])
        registry.register("billing", InstanceSpec(address="10.5.0.1", port=7001))
        adapter = ConsulAdapter(spec("consul", fake.url, token="s3cret", export=True, export_services=["billing"]),
                                registry)  # fmt: skip

        async def scenario() -> None:
            async with running(adapter, registry):
                await eventually(lambda: set(imported(registry, "web")) == {("10.0.0.1", 80)})
                await asyncio.sleep(0.3)  # stays: the first queries settle into blocking ones
                before = fake.count("GET", r"/v1/(catalog|health)/.*")
                await asyncio.sleep(1.0)  # stays: the query rate is measured over this second
                assert fake.count("GET", r"/v1/(catalog|health)/.*") - before <= 2, "polling instead of blocking"

                fake.set_check("web-1", "critical")
                await eventually(lambda: imported(registry, "web")[("10.0.0.1", 80)].status == "down")
                fake.set_check("web-1", "passing")
                await eventually(lambda: imported(registry, "web")[("10.0.0.1", 80)].serves)

                sid = "flux-billing-10.5.0.1:7001"
                await eventually(lambda: fake.check_status(sid) == "passing")
                await eventually(lambda: fake.count("PUT", f"/v1/agent/check/pass/service:{sid}") >= 1, within=5)
                fake.deregister(sid, node=fake.AGENT_NODE)  # the agent lost it (restart, reaped)
                await eventually(lambda: fake.instances("billing"), within=5)
                assert fake.count("PUT", "/v1/agent/service/register") >= 2
                # Consul's own service is not imported
                assert not registry.has_service("consul")

        run(scenario())


def test_consul_wrong_token_is_an_error(registry: RegistryStore) -> None:
    with FakeConsulRecordedProtocol(token="right") as fake:
        adapter = ConsulAdapter(spec("consul", fake.url, token="wrong"), registry)

        async def scenario() -> None:
            async with running(adapter, registry):
                status = await eventually(lambda: adapter.status()["state"] == "error" and adapter.status())
                assert "403" in status["last_error"]

        run(scenario())


# -- Nacos -------------------------------------------------------------------------------------


def test_nacos_parse_hosts() -> None:
    data = {
        "name": "DEFAULT_GROUP@@orders",
        "hosts": [
            {"ip": "10.0.0.1", "port": 80, "weight": 0.4, "healthy": True, "enabled": True, "clusterName": "DEFAULT",
             "metadata": {"version": "v2", "n": 1}},
            {"ip": "10.0.0.2", "port": 80, "weight": 2.6, "healthy": False, "enabled": True, "clusterName": "c2"},
            {"ip": "10.0.0.3", "port": 80, "weight": 0, "healthy": True, "enabled": False},
            {"ip": "", "port": 80},
        ],
    }  # fmt: skip
    specs, unusable = parse_hosts(data)
    assert unusable == 1
    a, b, c = specs
    assert (a.id, a.weight, a.version, a.metadata["n"], a.status) == ("10.0.0.1:80", 1, "v2", "1", "up")
    assert (b.id, b.weight, b.status) == ("10.0.0.2:80@c2", 3, "down")
    assert (c.weight, c.status) == (0, "out_of_service")


def test_nacos_login_beats_and_reregistration(registry: RegistryStore) -> None:
    with FakeNacosRecordedProtocol(username="nacos", password="pw") as fake:
        fake.add("orders", "10.0.0.1", 8080, group="shop", namespace="dev")
        fake.add("orders", "10.0.0.9", 8080, group="DEFAULT_GROUP", namespace="public")  # another group: not ours
        registry.register("billing", InstanceSpec(address="10.5.0.1", port=7001))
        adapter = NacosAdapter(
            spec("nacos", fake.url, username="nacos", password="pw", namespace="dev", group="shop", export=True,
                 export_services=["billing"]),
            registry,
        )  # fmt: skip

        async def scenario() -> None:
            async with running(adapter, registry):
                await eventually(lambda: set(imported(registry, "orders")) == {("10.0.0.1", 8080)})
                await eventually(lambda: fake.instances("billing", group="shop", namespace="dev"))
                await eventually(lambda: fake.beats, within=5)
                assert fake.count("POST", "/nacos/v1/auth/login") == 1
                fake.remove("billing", "10.5.0.1", 7001, group="shop", namespace="dev")  # Nacos dropped it
                await eventually(lambda: fake.instances("billing", group="shop", namespace="dev"), within=5)
                assert fake.count("POST", "/nacos/v2/ns/instance") >= 2

        run(scenario())


def test_nacos_bad_credentials_are_an_error(registry: RegistryStore) -> None:
    with FakeNacosRecordedProtocol(username="nacos", password="pw") as fake:
        adapter = NacosAdapter(spec("nacos", fake.url, username="nacos", password="nope"), registry)

        async def scenario() -> None:
            async with running(adapter, registry):
                status = await eventually(lambda: adapter.status()["state"] == "error" and adapter.status())
                assert "403" in status["last_error"]

        run(scenario())


# -- Eureka ------------------------------------------------------------------------------------


def test_eureka_parse_apps() -> None:
    single = {  # XStream-style: one application and one instance as objects, not lists
        "applications": {
            "application": {
                "name": "ORDERS",
                "instance": {"instanceId": "host:orders:8443", "ipAddr": "10.0.0.1", "status": "OUT_OF_SERVICE",
                             "port": {"$": "8080", "@enabled": "false"}, "securePort": {"$": 8443, "@enabled": "true"},
                             "metadata": {"@class": "java.util.Collections$EmptyMap"}},
            }
        }
    }  # fmt: skip
    found, unusable = parse_apps(single)
    assert unusable == 0 and list(found) == ["orders"]
    inst = found["orders"][0]
    assert (inst.id, inst.port, inst.status, inst.metadata) == ("host:orders:8443", 8443, "out_of_service", {})
    many = {"applications": {"application": [{"name": "A", "instance": [
        {"instanceId": "a1", "hostName": "a.example", "status": "STARTING", "port": {"$": 80, "@enabled": "true"}},
        {"instanceId": "a2", "status": "UP", "port": {"$": 80, "@enabled": "true"}},
    ]}]}}  # fmt: skip
    found, unusable = parse_apps(many)
    assert unusable == 1 and found["a"][0].address == "a.example" and found["a"][0].status == "down"


def test_eureka_basic_auth_renewals_and_reregistration(registry: RegistryStore) -> None:
    with FakeEurekaRecordedProtocol(username="eu", password="pw") as fake:
        fake.add("ORDERS", "o1", "10.0.0.1", 8080, metadata={"zone": "z1"})
        registry.register("billing", InstanceSpec(address="10.5.0.1", port=7001))
        adapter = EurekaAdapter(
            spec("eureka", fake.url, username="eu", password="pw", export=True, services=["ORDERS"],
                 export_services=["billing"]),
            registry,
        )  # fmt: skip

        async def scenario() -> None:
            async with running(adapter, registry):
                found = await eventually(lambda: imported(registry, "orders"))
                assert found[("10.0.0.1", 8080)].zone == "z1"
                await eventually(lambda: fake.instances("BILLING"))
                await eventually(lambda: fake.renewals.get(("BILLING", "10.5.0.1:7001")), within=5)
                fake.remove("BILLING", "10.5.0.1:7001")  # evicted: the next renewal gets 404
                await eventually(lambda: fake.instances("BILLING"), within=5)
                doc = fake.instances("BILLING")["10.5.0.1:7001"]
                assert doc["app"] == "BILLING" and doc["vipAddress"] == "billing"
                assert doc["dataCenterInfo"]["name"] == "MyOwn" and doc["port"] == {"$": 7001, "@enabled": "true"}

        run(scenario())


def test_eureka_without_credentials_is_an_error(registry: RegistryStore) -> None:
    with FakeEurekaRecordedProtocol(username="eu", password="pw") as fake:
        adapter = EurekaAdapter(spec("eureka", fake.url), registry)

        async def scenario() -> None:
            async with running(adapter, registry):
                status = await eventually(lambda: adapter.status()["state"] == "error" and adapter.status())
                assert "401" in status["last_error"]

        run(scenario())
