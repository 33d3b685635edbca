"""Tracing end to end (issue 16): real `flux-node` and `flux-controlplane` processes sending
spans to a fake OTLP/HTTP collector (tests/support/otlp_collector.py; no real collector can run
here). W3C trace context through the node over HTTP/1.1, HTTP/2 and gRPC (both upstream codecs:
the echo upstream and a gRPC server report the headers they saw), malformed traceparents,
sampling ratios, export failures that never touch traffic, and a config write traced through
its publish and push to the node's apply."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest
from support.node import NodeProcess, UpstreamProcess
from support.otlp_collector import FakeCollector
from support.processes import ControlPlaneProcess, free_port, wait_until
from support.snapshot_node import SnapshotNode

pytestmark = pytest.mark.slow

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
SERVER_KIND, PRODUCER_KIND, CONSUMER_KIND = 2, 4, 5
FAST = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


def _headers_seen(request: bytes, context: grpc.ServicerContext) -> bytes:
    """A gRPC method answering with the metadata it was called with (JSON)."""
    return json.dumps(dict(context.invocation_metadata())).encode()


@pytest.fixture(scope="module")
def grpc_upstream() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(_headers_seen)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("flux.test.Meta", {"Seen": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


@pytest.fixture(scope="module")
def collector() -> Iterator[FakeCollector]:
    with FakeCollector() as c:
        yield c


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, collector: FakeCollector, grpc_upstream: int
) -> Iterator[dict[str, Any]]:
    echo = UpstreamProcess("echo").start()
    port, dead = free_port(), free_port()
    doc = {
        "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port, "http2": True}],
        "clusters": [
            {"name": "echo", "endpoints": [echo.endpoint()]},
            {"name": "meta", "protocol": "http2", "endpoints": [{"address": "127.0.0.1", "port": grpc_upstream}]},
            {"name": "nobody", "endpoints": [{"address": "127.0.0.1", "port": dead}]},
        ],
        "policies": [{"name": "office", "type": "ip_acl", "config": {"allow": ["10.0.0.0/8"]}}],
        "routes": [
            {"name": "grpc", "path": "/flux.test.Meta/", "cluster": "meta"},
            {"name": "down", "path": "/down", "cluster": "nobody",
             "retry": {"attempts": 1, "retry_on": ["connect_failure"]}},
            {"name": "office", "path": "/office", "cluster": "echo", "policies": ["office"]},
            {"name": "echo", "path": "/", "cluster": "echo"},
        ],
    }  # fmt: skip
    base = tmp_path_factory.mktemp("tracing")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "edge-test", **FAST}
    node = SnapshotNode(base / "node", doc, env=env).start()
    try:
        yield {"node": node, "url": f"http://127.0.0.1:{port}", "port": port, "base": base}
    finally:
        node.stop()
        echo.stop()


def span_with(collector: FakeCollector, **attrs: Any) -> dict[str, Any]:
    """The one span whose attributes hold `attrs` (waits for it)."""

    def find() -> dict[str, Any] | None:
        found = [s for s in collector.snapshot() if all(s["attributes"].get(k) == v for k, v in attrs.items())]
        assert len(found) <= 1, found
        return found[0] if found else None

    return wait_until(find, 10, message=f"a span with {attrs}")  # type: ignore[return-value]


def upstream_parent(echoed: dict[str, Any]) -> tuple[str, str, str]:
    """(trace id, parent id, flags) of the traceparent the echo upstream saw."""
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert version == "00"
    return trace_id, parent_id, flags


def access_line(node: SnapshotNode, request_id: str) -> dict[str, Any]:
    path = node.workdir / "access.log"

    def find() -> dict[str, Any] | None:
        for line in path.read_text().splitlines() if path.exists() else ():
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return entry  # type: ignore[no-any-return]
        return None

    return wait_until(find, 5, message=f"access-log line of {request_id}")  # type: ignore[return-value]


# -- the node -------------------------------------------------------------------------------------


def test_the_clients_trace_goes_through_the_node_over_http1(gw: dict[str, Any], collector: FakeCollector) -> None:
    r = httpx.get(gw["url"] + "/echo", headers={"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"})
    assert r.status_code == 200
    trace_id, parent_id, flags = upstream_parent(r.json())
    assert (trace_id, flags) == (CLIENT_TRACE, "01") and parent_id != CLIENT_PARENT
    assert {k.lower(): v for k, v in r.json()["headers"].items()}["tracestate"] == "congo=t61rcWkgMzE"
    rid = r.headers["x-request-id"]
    span = span_with(collector, **{"flux.request_id": rid})
    # the node's span is the client's child and the upstream's parent
    assert (span["trace_id"], span["parent_span_id"], span["span_id"]) == (CLIENT_TRACE, CLIENT_PARENT, parent_id)
    assert span["kind"] == SERVER_KIND and span["name"] == "GET echo" and span["trace_state"] == "congo=t61rcWkgMzE"
    attrs = span["attributes"]
    assert attrs["http.request.method"] == "GET" and attrs["url.path"] == "/echo"
    assert attrs["http.response.status_code"] == 200 and attrs["network.protocol.version"] == "1.1"
    assert attrs["flux.route"] == "echo" and attrs["flux.cluster"] == "echo"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", attrs["flux.endpoint"]) and attrs["flux.attempts"] == 1
    assert attrs["flux.upstream.time_to_first_byte_ms"] > 0 and attrs["flux.upstream.duration_ms"] > 0
    assert span["resource"]["service.name"] == "edge-test" and span["status"]["code"] == 0
    assert access_line(gw["node"], rid)["trace_id"] == CLIENT_TRACE


def test_without_a_traceparent_the_node_starts_the_trace(gw: dict[str, Any], collector: FakeCollector) -> None:
    r = httpx.get(gw["url"] + "/echo")
    trace_id, parent_id, flags = upstream_parent(r.json())
    span = span_with(collector, **{"flux.request_id": r.headers["x-request-id"]})
    assert (span["trace_id"], span["span_id"], span["parent_span_id"], flags) == (trace_id, parent_id, "", "01")
    assert access_line(gw["node"], r.headers["x-request-id"])["trace_id"] == trace_id


@pytest.mark.parametrize(
    "bad",
    [
        TRACEPARENT.upper(),
        f"00-{'0' * 32}-{CLIENT_PARENT}-01",
        f"ff-{CLIENT_TRACE}-{CLIENT_PARENT}-01",
        TRACEPARENT + "-extra",
        TRACEPARENT[:-3],
        "garbage",
        b"\xe9" * 55,  # obs-text: a valid field value, not a traceparent
        TRACEPARENT + ", " + TRACEPARENT,
    ],
)
def test_a_malformed_traceparent_is_a_new_trace_never_an_error(
    gw: dict[str, Any], collector: FakeCollector, bad: str | bytes
) -> None:
    r = httpx.get(gw["url"] + "/echo", headers={"traceparent": bad, "tracestate": "congo=t61rcWkgMzE"})
    assert r.status_code == 200
    trace_id, parent_id, _ = upstream_parent(r.json())
    assert trace_id != CLIENT_TRACE and "tracestate" not in {k.lower() for k in r.json()["headers"]}
    span = span_with(collector, **{"flux.request_id": r.headers["x-request-id"]})
    assert span["parent_span_id"] == "" and span["span_id"] == parent_id


def test_two_traceparent_lines_are_malformed(gw: dict[str, Any], collector: FakeCollector) -> None:
    raw = (f"GET /echo HTTP/1.1\r\nHost: t\r\ntraceparent: {TRACEPARENT}\r\ntraceparent: {TRACEPARENT}\r\n"
           "Connection: close\r\n\r\n").encode()  # fmt: skip
    import socket

    with socket.create_connection(("127.0.0.1", gw["port"]), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and CLIENT_TRACE.encode() not in data.partition(b"\r\n\r\n")[2]


def test_http2_front_end(gw: dict[str, Any], collector: FakeCollector) -> None:
    with httpx.Client(http1=False, http2=True) as client:  # h2c with prior knowledge
        r = client.get(gw["url"] + "/echo", headers={"traceparent": TRACEPARENT})
    assert r.http_version == "HTTP/2" and r.status_code == 200
    trace_id, parent_id, _ = upstream_parent(r.json())
    span = span_with(collector, **{"flux.request_id": r.headers["x-request-id"]})
    assert (trace_id, span["trace_id"], span["span_id"]) == (CLIENT_TRACE, CLIENT_TRACE, parent_id)
    assert span["attributes"]["network.protocol.version"] == "2"


def test_grpc_through_the_http2_upstream_codec(gw: dict[str, Any], collector: FakeCollector) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{gw['port']}") as channel:
        seen = json.loads(
            channel.unary_unary("/flux.test.Meta/Seen")(b"", timeout=5, metadata=[("traceparent", TRACEPARENT)])
        )
    _, trace_id, parent_id, flags = seen["traceparent"].split("-")
    assert (trace_id, flags) == (CLIENT_TRACE, "01") and parent_id != CLIENT_PARENT
    span = span_with(collector, **{"url.path": "/flux.test.Meta/Seen"})
    assert (span["trace_id"], span["span_id"], span["parent_span_id"]) == (CLIENT_TRACE, parent_id, CLIENT_PARENT)
    assert span["name"] == "POST grpc" and span["attributes"]["flux.cluster"] == "meta"


def test_failures_and_policies_on_the_span(gw: dict[str, Any], collector: FakeCollector) -> None:
    down = httpx.get(gw["url"] + "/down")
    assert down.status_code == 502
    span = span_with(collector, **{"flux.request_id": down.headers["x-request-id"]})
    assert span["status"]["code"] == 2 and "unreachable" in span["status"]["message"]
    assert span["attributes"]["flux.attempts"] == 2 and span["attributes"]["flux.retries"] == 1
    assert span["attributes"]["error.type"] == "502"
    denied = httpx.get(gw["url"] + "/office")
    assert denied.status_code == 403
    span = span_with(collector, **{"flux.request_id": denied.headers["x-request-id"]})
    assert span["attributes"]["flux.policy.denied"] == "office" and span["attributes"]["flux.policy.type"] == "ip_acl"
    assert span["status"]["code"] == 0  # a 4xx is the client's, not the node's error


def test_a_parent_that_did_not_sample_is_followed(gw: dict[str, Any], collector: FakeCollector) -> None:
    r = httpx.get(gw["url"] + "/echo", headers={"traceparent": TRACEPARENT[:-2] + "00"})
    assert upstream_parent(r.json())[::2] == (CLIENT_TRACE, "00")
    assert access_line(gw["node"], r.headers["x-request-id"])["trace_id"] == CLIENT_TRACE
    httpx.get(gw["url"] + "/echo", headers={"x-request-id": "after-unsampled"})
    span_with(collector, **{"flux.request_id": "after-unsampled"})  # exported after it, so it was left out
    assert not [s for s in collector.snapshot() if s["attributes"]["flux.request_id"] == r.headers["x-request-id"]]


def test_metrics_count_exported_spans(gw: dict[str, Any]) -> None:
    wait_until(lambda: gw["node"].metric("flux_trace_spans_exported_total") > 0, 5, message="exported spans counted")
    assert gw["node"].metric("flux_trace_spans_dropped_total", reason="queue_full") == 0


# -- sampling and failures ------------------------------------------------------------------------


def test_ratio_sampling(tmp_path: pathlib.Path, collector: FakeCollector) -> None:
    with UpstreamProcess("ratio") as echo:
        port = free_port()
        doc = {
            "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
            "clusters": [{"name": "echo", "endpoints": [echo.endpoint()]}],
            "routes": [{"name": "ratio", "path": "/", "cluster": "echo"}],
        }
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_TRACES_SAMPLER": "traceidratio",
               "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_SERVICE_NAME": "ratio", **FAST}  # fmt: skip
        node = SnapshotNode(tmp_path / "node", doc, env=env).start()
        try:
            given = [f"{i:016x}{(i * 0x9E3779B97F4A7C15) % (1 << 64):016x}" for i in range(1, 201)]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                for i, trace_id in enumerate(given):  # not parent-based: the trace id alone decides
                    client.get(
                        "/x", headers={"traceparent": f"00-{trace_id}-{CLIENT_PARENT}-01", "x-request-id": f"g{i}"}
                    )
                for i in range(400):  # roots: 100 expected
                    client.get("/x", headers={"x-request-id": f"r{i}"})
                client.get(
                    "/x", headers={"x-request-id": "last", "traceparent": f"00-{'f' * 16}{'0' * 16}-{CLIENT_PARENT}-01"}
                )
            ours = lambda: [s for s in collector.snapshot() if s["resource"]["service.name"] == "ratio"]  # noqa: E731
            wait_until(lambda: any(s["attributes"]["flux.request_id"] == "last" for s in ours()), 10,
                       message="the last span")  # fmt: skip
        finally:
            node.stop()
    exported = {s["attributes"]["flux.request_id"] for s in ours()}
    expected = {f"g{i}" for i, t in enumerate(given) if int(t[16:], 16) < (1 << 62)}
    assert {x for x in exported if x.startswith("g")} == expected  # exactly as the SDKs decide
    roots = len([x for x in exported if x.startswith("r")])
    assert 55 <= roots <= 145, roots  # 100 expected, sd 8.7: about 5 sd either way


def test_export_failures_never_touch_traffic(tmp_path: pathlib.Path) -> None:
    with UpstreamProcess("lost") as echo:
        port = free_port()
        doc = {
            "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
            "clusters": [{"name": "echo", "endpoints": [echo.endpoint()]}],
            "routes": [{"name": "lost", "path": "/", "cluster": "echo"}],
        }
        env = {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces",  # nobody listens
            "OTEL_BSP_SCHEDULE_DELAY": "soon",  # invalid: logged, 5000 used
            "OTEL_TRACES_SAMPLER": "sometimes",  # invalid: logged, parentbased_always_on used
            "OTEL_BSP_MAX_QUEUE_SIZE": "5",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
            "OTEL_BSP_EXPORT_TIMEOUT": "300",
        }
        node = SnapshotNode(tmp_path / "node", doc, env=env).start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                statuses = {client.get("/x").status_code for _ in range(60)}
            assert statuses == {200}
            wait_until(lambda: node.metric("flux_trace_spans_dropped_total", reason="export_failed") > 0, 10,
                       message="failed exports counted")  # fmt: skip
            assert node.metric("flux_trace_spans_dropped_total", reason="queue_full") > 0
            stats = httpx.get(node.admin + "/stats").json()["tracing"]
            assert stats["sampler"] == "parentbased_always_on" and "ConnectError" in stats["last_error"]
        finally:
            node.stop()
        log = node.output()
        assert "OTEL_BSP_SCHEDULE_DELAY='soon'" in log and "OTEL_TRACES_SAMPLER='sometimes'" in log
        assert log.count("spans are dropped, traffic is not affected") == 1  # rate-limited


# -- the control plane: a write through to the node's apply ---------------------------------------


def test_a_config_write_is_traced_to_the_nodes_apply(tmp_path: pathlib.Path, collector: FakeCollector) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, **FAST}
    with ControlPlaneProcess(tmp_path / "cp", env=env) as cp:
        node = NodeProcess(tmp_path / "node", cp.grpc_addr, node_id="traced-node", env=env).start()
        try:
            writer_trace = "a" * 32
            cluster = {"name": "traced", "endpoints": [{"address": "127.0.0.1", "port": 9}]}
            with cp.client() as c:
                assert c.post("/api/v1/clusters", json=cluster).status_code == 201  # untraced by the client
                cluster["endpoints"][0]["port"] = 10
                r = c.put("/api/v1/clusters/traced", json=cluster,
                          headers={"traceparent": f"00-{writer_trace}-{'b' * 16}-01"})  # fmt: skip
                assert r.status_code == 200, r.text
                version = int(r.headers["x-flux-config-version"])
                node.wait_version(version, 10)
                rolled = c.post("/api/v1/config/rollback", json={"version": version - 1})
                assert rolled.status_code == 200, rolled.text
            node.wait_version(rolled.json()["version"], 10)

            def chain() -> list[dict[str, Any]] | None:
                spans = collector.trace(writer_trace)
                return spans if any(s["name"].startswith("apply config") for s in spans) else None

            spans = {s["name"]: s for s in wait_until(chain, 10, message="the write's trace")}
            write = spans["PUT /api/v1/clusters/{name}"]
            publish = spans[f"publish config version {version}"]
            push = spans[f"push config version {version}"]
            apply = spans[f"apply config version {version}"]
            assert write["parent_span_id"] == "b" * 16 and write["kind"] == SERVER_KIND
            assert write["attributes"]["flux.config.version"] == version
            assert write["attributes"]["http.response.status_code"] == 200
            assert publish["parent_span_id"] == write["span_id"]
            assert push["parent_span_id"] == publish["span_id"] and push["kind"] == PRODUCER_KIND
            assert (
                push["attributes"]["flux.node.id"] == "traced-node"
                and push["attributes"]["flux.config.outcome"] == "ack"
            )
            assert apply["parent_span_id"] == push["span_id"] and apply["kind"] == CONSUMER_KIND
            assert (
                apply["resource"]["service.name"] == "flux-node"
                and write["resource"]["service.name"] == "flux-controlplane"
            )
            assert apply["attributes"]["flux.config.outcome"] == "ack"
            # the rollback is a write of its own, traced the same way
            rollback = span_with(
                collector, **{"flux.config.version": rolled.json()["version"], "http.route": "/api/v1/config/rollback"}
            )
            assert rollback["name"] == "POST /api/v1/config/rollback"
            wait_until(lambda: any(s["name"] == f"apply config version {rolled.json()['version']}"
                                   and s["trace_id"] == rollback["trace_id"] for s in collector.snapshot()), 10,
                       message="the rollback applied in its trace")  # fmt: skip
            with cp.client() as c:
                metrics = c.get("/metrics").text
            assert re.search(r"^flux_trace_spans_exported_total [1-9]", metrics, re.M), metrics
        finally:
            node.stop()
