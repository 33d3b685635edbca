"""Tunnel settings a node could not apply are refused at write time, naming the field (issue 14
item 1: the README's placeholder `tls.client_ca` was accepted, and the node then refused it)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from support.processes import ControlPlaneProcess
from support.tls import TestCA

from controlplane.spec import ConfigSet, ListenerSpec, TunnelSpec
from controlplane.validation import check_config

PLACEHOLDER = "-----BEGIN CERTIFICATE-----..."


def tunnel(**extra: Any) -> dict[str, Any]:
    return {"name": "edge", "bind_port": 7000, "token": "t", **extra}


@pytest.mark.parametrize("client_ca", [PLACEHOLDER, "not pem at all", "-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_a_tunnel_client_ca_that_is_not_pem_certificates_is_refused(client_ca: str) -> None:
    with pytest.raises(ValidationError, match=r"tls\.client_ca"):
        TunnelSpec.model_validate(tunnel(tls={"client_ca": client_ca}))


def test_a_real_client_ca_is_accepted() -> None:
    pem = TestCA().pem
    assert TunnelSpec.model_validate(tunnel(tls={"client_ca": pem})).tls.client_ca == pem.strip()


def conflicts(**tun: Any) -> list[str]:
    listener = ListenerSpec(name="web", protocol="https", port=8443, certificates=["api"])
    cfg = ConfigSet({"tunnels": {"edge": TunnelSpec.model_validate(tunnel(**tun))}, "listeners": {"web": listener}})
    return [f"{e.resource} {e.field}" for e in check_config(cfg) if "port" in e.message]


def test_tunnel_ports_that_a_node_cannot_open_are_refused() -> None:
    # the node opens vhost_https_port and tcpmux_httpconnect_port itself: no listener may hold them
    assert conflicts(vhost_https_port=8443) == ["tunnels/edge vhost_https_port"]
    assert conflicts(tcpmux_httpconnect_port=8443) == ["tunnels/edge tcpmux_httpconnect_port"]
    assert conflicts(tcpmux_httpconnect_port=7000) == ["tunnels/edge tcpmux_httpconnect_port"]
    assert conflicts(tcpmux_httpconnect_port=7001, vhost_https_port=7002) == []


def test_apply_of_the_readme_placeholder_is_422_and_changes_nothing(module_controlplane: ControlPlaneProcess) -> None:
    with module_controlplane.client() as c:
        good = c.post("/api/v1/apply", json={"tunnels": [tunnel()]})
        assert good.status_code == 200, good.text
        version = c.get("/api/v1/config").json()["version"]
        bad = c.post("/api/v1/apply", json={"tunnels": [tunnel(tls={"client_ca": PLACEHOLDER})]})
        assert bad.status_code == 422, bad.text
        assert "tls.client_ca" in bad.text
        assert c.get("/api/v1/config").json()["version"] == version
        assert "client_ca" not in c.get("/api/v1/tunnels/edge").json().get("tls", {})
