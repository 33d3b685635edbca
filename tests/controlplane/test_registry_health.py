"""Active health checks against real HTTP, TCP and gRPC servers, seen through a real control plane.

The control plane (a child process, SQLite) checks persistent instances; the tests flip the
servers and watch instance health, the events feed, discovery and /metrics follow.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import pytest
from support.processes import ControlPlaneProcess, wait_until

from controlplane.registry.health import grpc_health_request, grpc_health_status

_names = itertools.count()
FAST = {"interval": "100ms", "timeout": "1s", "healthy_threshold": 2, "unhealthy_threshold": 2}
WAIT = 10.0


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


# -- real servers to check ------------------------------------------------------------------


class HttpTarget:
    """An HTTP server on a free port whose /healthz answers `status` and `body`."""

    def __init__(self) -> None:
        self.status, self.body, self.hits = 200, b"ok: ready", 0
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                target.hits += 1
                code, body = (target.status, target.body) if self.path == "/healthz" else (404, b"no")
                self.send_response(code)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpTarget:
    """A TCP listener that can be closed (connections refused) and opened again on its port."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.port = 0
        self.open()

    def open(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self.sock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    @staticmethod
    def _accept(s: socket.socket) -> None:
        while True:  # accept and hang up, so the backlog never fills
            try:
                conn, _ = s.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone would not)
            self.sock.close()
            self.sock = None


class GrpcHealthTarget:
    """A real grpcio server implementing grpc.health.v1.Health/Check by hand (generic handler)."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {"": 1, "orders": 1}  # 1 = SERVING, 2 = NOT_SERVING
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {"Check": grpc.unary_unary_rpc_method_handler(self._check)},  # no (de)serializers: raw bytes
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        service = request[2:].decode() if request else ""  # field 1, short string: tag, length, bytes
        if service not in self.statuses:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        status = self.statuses[service]
        return b"\x08" + bytes([status]) if status else b""

    def stop(self) -> None:
        self.server.stop(0).wait(5)


@pytest.fixture
def http_target() -> Iterator[HttpTarget]:
    t = HttpTarget()
    yield t
    t.close()


@pytest.fixture
def tcp_target() -> Iterator[TcpTarget]:
    t = TcpTarget()
    yield t
    t.close()


@pytest.fixture
def grpc_target() -> Iterator[GrpcHealthTarget]:
    t = GrpcHealthTarget()
    yield t
    t.stop()


@pytest.fixture
def api(module_controlplane: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with module_controlplane.client() as c:
        yield c


# -- helpers ----------------------------------------------------------------------------------


def checked_service(api: httpx.Client, check: dict[str, Any], *, port: int, prefix: str) -> tuple[str, str]:
    """A service with `check` and one persistent instance on 127.0.0.1:`port`; (service, instance id)."""
    name = fresh(prefix)
    r = api.put(f"/api/v1/services/{name}", json={"health_check": {**FAST, **check}})
    assert r.status_code == 201, r.text
    r = api.post(f"/api/v1/services/{name}/instances", json={"address": "127.0.0.1", "port": port, "ephemeral": False})
    assert r.status_code == 201, r.text
    return name, r.json()["id"]


def health(api: httpx.Client, service: str, iid: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/services/{service}/instances/{iid}/health")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_health(api: httpx.Client, service: str, iid: str, want: str) -> dict[str, Any]:
    return wait_until(
        lambda: (h := health(api, service, iid))["health"] == want and h,
        timeout=WAIT,
        message=f"{service}/{iid} to become {want}",
    )


def health_events(api: httpx.Client, service: str) -> list[dict[str, Any]]:
    items = api.get("/api/v1/events", params={"service": service}).json()["items"]
    return [e for e in items if e["kind"] in ("healthy", "unhealthy")]


def serving(api: httpx.Client, service: str) -> list[str]:
    r = api.get(f"/api/v1/services/{service}/instances", params={"healthy": "true"})
    return [i["id"] for i in r.json()["instances"]]


# -- the tests --------------------------------------------------------------------------------


def test_grpc_health_messages_by_hand() -> None:
    assert grpc_health_request("") == b""
    assert grpc_health_request("orders") == b"\x0a\x06orders"
    assert grpc_health_status(b"") == 0
    assert grpc_health_status(b"\x08\x01") == 1
    assert grpc_health_status(b"\x12\x02hi\x08\x02") == 2  # unknown field skipped
    with pytest.raises(ValueError):
        grpc_health_status(b"\x08")


def test_http_check_status_body_and_recovery(api: httpx.Client, http_target: HttpTarget) -> None:
    name, iid = checked_service(api, {"type": "http", "path": "/healthz", "expect_body": "ready"},
                                port=http_target.port, prefix="http")  # fmt: skip
    h = wait_health(api, name, iid, "healthy")
    assert h["checking"] and h["consecutive_ok"] >= 2 and h["consecutive_fail"] == 0
    assert h["check"]["type"] == "http" and h["check"]["healthy_threshold"] == 2
    assert h["history"] and all(r["ok"] for r in h["history"])
    last = h["history"][-1]
    assert last["detail"] == "HTTP 200, body matches" and last["latency_ms"] >= 0 and last["time"] > 1e9
    assert iid in serving(api, name)

    http_target.status = 503
    h = wait_health(api, name, iid, "unhealthy")
    assert h["consecutive_fail"] >= 2 and not h["healthy"]
    assert "HTTP 503 (expected 200-399)" in h["history"][-1]["detail"]
    assert serving(api, name) == []
    down = health_events(api, name)[-1]
    assert down["kind"] == "unhealthy" and down["instance"] == iid and "HTTP 503" in down["detail"]

    http_target.status, http_target.body = 200, b"starting"  # the status passes, the body does not
    wait_until(lambda: "body does not contain 'ready'" in health(api, name, iid)["history"][-1]["detail"],
               timeout=WAIT)  # fmt: skip
    assert health(api, name, iid)["health"] == "unhealthy"

    http_target.body = b"ok: ready"
    wait_health(api, name, iid, "healthy")
    assert [e["kind"] for e in health_events(api, name)] == ["healthy", "unhealthy", "healthy"]
    assert iid in serving(api, name)

    # expect_status narrows what passes; the change of spec is picked up
    r = api.put(f"/api/v1/services/{name}", json={"health_check": {**FAST, "path": "/healthz", "expect_status": [204]}})
    assert r.status_code == 200, r.text
    h = wait_health(api, name, iid, "unhealthy")
    assert h["check"]["expect_status"] == [204] and "expected 204" in h["history"][-1]["detail"]


def test_tcp_check_follows_the_listener(api: httpx.Client, tcp_target: TcpTarget) -> None:
    name, iid = checked_service(api, {"type": "tcp"}, port=tcp_target.port, prefix="tcp")
    wait_health(api, name, iid, "healthy")
    tcp_target.close()
    h = wait_health(api, name, iid, "unhealthy")
    assert "TCP connect failed" in h["history"][-1]["detail"]
    tcp_target.open()
    wait_health(api, name, iid, "healthy")
    tcp_target.close()
    wait_health(api, name, iid, "unhealthy")

    # without a health check the instance is not left ejected
    r = api.put(f"/api/v1/services/{name}", json={})
    assert r.status_code == 200, r.text
    h = wait_health(api, name, iid, "healthy")
    assert h["check"] is None and not h["checking"] and h["history"] == []
    assert health_events(api, name)[-1]["detail"] == "no health check configured"


def test_grpc_health_protocol(api: httpx.Client, grpc_target: GrpcHealthTarget) -> None:
    name, iid = checked_service(api, {"type": "grpc"}, port=grpc_target.port, prefix="grpc")
    h = wait_health(api, name, iid, "healthy")
    assert h["history"][-1]["detail"] == "gRPC SERVING"
    grpc_target.statuses[""] = 2
    h = wait_health(api, name, iid, "unhealthy")
    assert h["history"][-1]["detail"] == "gRPC NOT_SERVING"
    grpc_target.statuses[""] = 1
    wait_health(api, name, iid, "healthy")

    # a named service: unknown to the server -> NOT_FOUND; known -> its own status
    named, nid = checked_service(api, {"type": "grpc", "grpc_service": "payments"}, port=grpc_target.port,
                                 prefix="grpc-named")  # fmt: skip
    h = wait_health(api, named, nid, "unhealthy")
    assert h["history"][-1]["detail"].startswith("gRPC NOT_FOUND")
    grpc_target.statuses["payments"] = 1
    wait_health(api, named, nid, "healthy")

    grpc_target.stop()  # nothing listens: UNAVAILABLE
    h = wait_health(api, name, iid, "unhealthy")
    assert h["history"][-1]["detail"].startswith("gRPC UNAVAILABLE")


def test_ephemeral_instances_are_not_checked_and_404s_name_the_field(api: httpx.Client, tcp_target: TcpTarget) -> None:
    name, iid = checked_service(api, {"type": "tcp"}, port=tcp_target.port, prefix="eph")
    r = api.post(f"/api/v1/services/{name}/instances", json={"address": "127.0.0.1", "port": 9, "ttl": "1m"})
    assert r.status_code == 201, r.text
    eph = r.json()["id"]
    wait_health(api, name, iid, "healthy")
    h = health(api, name, eph)
    assert h["ephemeral"] and not h["checking"] and h["history"] == [] and h["health"] == "healthy"

    r = api.get(f"/api/v1/services/{fresh('nope')}/instances/x/health")
    assert r.status_code == 404 and r.json()["field"] == "service", r.text
    r = api.get(f"/api/v1/services/{name}/instances/10.9.9.9:1/health")
    assert r.status_code == 404 and r.json()["field"] == "instance", r.text
    assert "10.9.9.9:1" in r.json()["message"]


def test_removed_instances_stop_being_checked_and_metrics(
    api: httpx.Client, module_controlplane: ControlPlaneProcess, http_target: HttpTarget
) -> None:
    name, iid = checked_service(api, {"type": "http"}, port=http_target.port, prefix="gone")
    wait_health(api, name, iid, "healthy")
    text = httpx.get(f"{module_controlplane.url}/metrics").text
    for metric in (
        'flux_registry_health_checks_total{result="ok",type="http"}',
        'flux_registry_health_check_seconds_bucket{le="+Inf",type="http"}',
        'flux_registry_health_check_seconds_count{type="http"}',
        "flux_registry_health_targets",
        "flux_registry_health_changes_total",
    ):
        assert metric in text, metric
    assert api.delete(f"/api/v1/services/{name}/instances/{iid}").status_code == 200

    def quiet() -> bool:
        before = http_target.hits
        time.sleep(0.5)  # stays: the check rate is measured over five check intervals
        return http_target.hits == before

    wait_until(quiet, timeout=WAIT, message="checks of a deregistered instance to stop")
