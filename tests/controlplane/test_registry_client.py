"""fluxcommon.registry_client against a real control plane: register, heartbeat, re-register, watch."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.processes import ControlPlaneProcess, wait_until

from fluxcommon.registry_client import RegistryClient, RegistryError

_names = itertools.count()


@pytest.fixture
def client(module_controlplane: ControlPlaneProcess) -> Iterator[RegistryClient]:
    with RegistryClient(module_controlplane.url, token=module_controlplane.token) as c:
        yield c


def test_imports_nothing_of_the_control_plane() -> None:
    code = (
        "import sys, fluxcommon.registry_client; print(sorted(m for m in sys.modules if m.startswith('controlplane')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[]"


def test_register_heartbeats_and_deregisters_on_exit(client: RegistryClient) -> None:
    name = f"app-{next(_names)}"
    with client.register(name, "10.0.0.1", 8080, version="v2", zone="z1", tags=["web"], ttl="1s") as reg:
        assert reg.id == "10.0.0.1:8080" and reg.interval == pytest.approx(1 / 3)
        time.sleep(2.0)  # stays: twice the TTL, only heartbeats keep it (the point)
        assert reg.heartbeats >= 3 and reg.failures == 0
        found = client.instances(name, tag="web", version="v2")
        assert [i["id"] for i in found] == ["10.0.0.1:8080"] and found[0]["zone"] == "z1"
        assert client.instances(name, version="v1") == []
    assert not reg.alive
    assert client.instances(name, healthy=None) == []  # the service stays; its instance is gone


def test_reregisters_after_a_404_heartbeat(client: RegistryClient, module_controlplane: ControlPlaneProcess) -> None:
    name = f"app-{next(_names)}"
    reg = client.register(name, "10.0.0.2", 9000, ttl="3s", heartbeat_interval=0.2)
    try:
        with module_controlplane.client() as admin:  # an operator (or expiry) removes it
            assert admin.delete(f"/api/v1/services/{name}/instances/10.0.0.2:9000").status_code == 200
        wait_until(lambda: reg.reregistrations >= 1, timeout=5, message="re-registration")
        assert [i["id"] for i in client.instances(name)] == ["10.0.0.2:9000"]
    finally:
        reg.close()
    assert client.instances(name) == []
    reg.close()  # twice is fine


def test_errors_name_the_field(client: RegistryClient) -> None:
    with pytest.raises(RegistryError) as err:
        client.register("app-bad", "10.0.0.1", 0)
    assert (err.value.status, err.value.field) == (422, "port")
    with pytest.raises(RegistryError) as err:
        client.heartbeat("app-bad", "nope")
    assert err.value.status == 404
    with pytest.raises(ValueError):
        client.register("app-bad", "10.0.0.1", 80, ttl="soon")


def test_watch_yields_the_state_then_each_change(
    client: RegistryClient, module_controlplane: ControlPlaneProcess
) -> None:
    name = f"app-{next(_names)}"
    seen: list[tuple[int, list[str], float]] = []
    stop = threading.Event()
    reader_token = module_controlplane.api_token("registry", services=(name,))  # reads need a token

    def watch() -> None:
        with RegistryClient(module_controlplane.url, token=reader_token) as reader:
            for index, instances in reader.watch(name, wait="5s", stop=stop):
                seen.append((index, sorted(i["id"] for i in instances), time.perf_counter()))
                if len(seen) == 3:
                    return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    wait_until(lambda: seen, timeout=5, message="the first state")
    assert seen[0][:2] == (0, [])  # the service does not exist yet
    first = client.register(name, "10.0.0.1", 80, ttl="30s")
    wait_until(lambda: len(seen) >= 2, timeout=5, message="the registration")
    written = time.perf_counter()
    second = client.register(name, "10.0.0.2", 80, ttl="30s")
    t.join(5)
    stop.set()
    assert [s[1] for s in seen] == [[], ["10.0.0.1:80"], ["10.0.0.1:80", "10.0.0.2:80"]]
    assert seen[0][0] < seen[1][0] < seen[2][0]
    print(f"\nwatch saw the change after {(seen[2][2] - written) * 1000:.1f} ms")
    first.close()
    second.close()


def test_watch_survives_an_unreachable_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flux.registry_client")

    def failures() -> int:
        return sum("watch of x failed" in r.getMessage() for r in list(caplog.records))

    with RegistryClient("http://127.0.0.1:9", timeout=0.5) as dead:
        stop = threading.Event()
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.extend(dead.watch("x", stop=stop)), daemon=True)
        t.start()
        wait_until(lambda: failures() >= 2, 5, message="the watch failing and retrying")
        stop.set()
        t.join(5)
        assert not t.is_alive() and result == []
    with pytest.raises(httpx.HTTPError):
        RegistryClient("http://127.0.0.1:9", timeout=0.5).instances("x")
