"""The batch exporter (fluxcommon.tracing.exporter) and tracer against the fake OTLP collector
(tests/support/otlp_collector.py): batches, headers, gzip, retries, drops by reason, shutdown."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.otlp_collector import FakeCollector
from support.processes import free_port, wait_until

from fluxcommon.tracing.context import SpanContext, parse_traceparent
from fluxcommon.tracing.exporter import BatchExporter
from fluxcommon.tracing.metrics import trace_metric_families
from fluxcommon.tracing.otlp import INTERNAL, SERVER, STATUS_ERROR, SpanData
from fluxcommon.tracing.sampling import make_sampler
from fluxcommon.tracing.settings import TracingSettings
from fluxcommon.tracing.tracer import Tracer, tracing_from_env

RESOURCE = {"service.name": "test"}
SCOPE = ("flux-gateway", "0")


@pytest.fixture
def collector() -> Iterator[FakeCollector]:
    with FakeCollector() as c:
        yield c


def settings_for(url: str, **kw: Any) -> TracingSettings:
    base = TracingSettings(
        endpoint=url + "/v1/traces", sampler=make_sampler("always_on"), service_name="test",
        schedule_delay=0.02, export_timeout=2.0, timeout=1.0,
    )  # fmt: skip
    return dataclasses.replace(base, **kw)


def span(i: int, **kw: Any) -> SpanData:
    return SpanData(f"span-{i}", SERVER, 0xABC, 1000 + i, 7, 1_000_000, 2_000_000, [("n", i), ("ok", True)], **kw)


class Broken:
    def to_span(self) -> SpanData:
        raise RuntimeError("a bug in one span")


def test_batches_headers_and_resource(collector: FakeCollector) -> None:
    exporter = BatchExporter(settings_for(collector.url, max_export_batch_size=2, headers={"x-tenant": "a b"}),
                             RESOURCE, SCOPE)  # fmt: skip
    exporter.start()
    try:
        for i in range(5):
            exporter.submit(span(i, status_code=STATUS_ERROR, status_message="boom"))
        spans = collector.wait_for(lambda s: len(s) == 5)
    finally:
        exporter.shutdown()
    assert sorted(s["name"] for s in spans) == [f"span-{i}" for i in range(5)]
    assert all(r["spans"] <= 2 for r in collector.requests) and len(collector.requests) >= 3
    assert all(r["headers"]["x-tenant"] == "a b" for r in collector.requests)
    first = next(s for s in spans if s["name"] == "span-0")
    assert first["trace_id"] == f"{0xABC:032x}" and first["span_id"] == f"{1000:016x}"
    assert first["parent_span_id"] == f"{7:016x}" and first["kind"] == SERVER
    assert first["attributes"] == {"n": 0, "ok": True} and first["resource"] == RESOURCE
    assert first["status"] == {"code": STATUS_ERROR, "message": "boom"}
    assert exporter.exported == 5 and exporter.drops() == dict.fromkeys(exporter.drops(), 0)
    assert collector.bad_requests == []


def test_gzip(collector: FakeCollector) -> None:
    exporter = BatchExporter(settings_for(collector.url, compression="gzip"), RESOURCE, SCOPE)
    exporter.start()
    try:
        exporter.submit(span(1))
        collector.wait_for(lambda s: len(s) == 1)
    finally:
        exporter.shutdown()
    assert collector.requests[0]["headers"]["content-encoding"] == "gzip"


def test_a_failing_collector_is_retried_then_the_batch_dropped_and_counted(collector: FakeCollector) -> None:
    collector.fail_with = 503
    exporter = BatchExporter(settings_for(collector.url, export_timeout=1.2), RESOURCE, SCOPE)
    exporter.start()
    try:
        t0 = time.monotonic()
        exporter.submit(span(1))
        exporter.submit(span(2))
        wait_until(lambda: exporter.dropped["export_failed"] == 2, 5, message="the batch dropped")
        assert time.monotonic() - t0 < 3  # within the export timeout
        assert len(collector.requests) >= 2  # 503 is retried
        assert "503" in exporter.last_error
        collector.fail_with = 0  # the collector is back: later spans go
        exporter.submit(span(3))
        collector.wait_for(lambda s: len(s) == 1)
    finally:
        exporter.shutdown()
    assert exporter.exported == 1


def test_a_refusal_that_is_not_retryable_is_not_retried(collector: FakeCollector) -> None:
    collector.fail_with = 400
    exporter = BatchExporter(settings_for(collector.url), RESOURCE, SCOPE)
    assert not exporter.export([span(1)])
    assert len(collector.requests) == 1 and exporter.dropped["export_failed"] == 1


def test_partial_success_counts_rejected_spans(collector: FakeCollector) -> None:
    collector.reject = 1
    exporter = BatchExporter(settings_for(collector.url), RESOURCE, SCOPE)
    assert exporter.export([span(1), span(2), span(3)])
    assert exporter.exported == 2 and exporter.dropped["rejected"] == 1


def test_an_unreachable_collector_costs_nothing_but_the_batch() -> None:
    exporter = BatchExporter(settings_for(f"http://127.0.0.1:{free_port()}", export_timeout=0.3), RESOURCE, SCOPE)
    assert not exporter.export([span(1)])
    assert exporter.dropped["export_failed"] == 1 and "ConnectError" in exporter.last_error


def test_a_full_queue_drops_and_counts() -> None:
    exporter = BatchExporter(settings_for("http://127.0.0.1:9", max_queue_size=3, max_export_batch_size=3),
                             RESOURCE, SCOPE)  # fmt: skip
    for i in range(5):
        exporter.submit(span(i))
    assert len(exporter.queue) == 3 and exporter.drops()["queue_full"] == 2


def test_a_broken_span_loses_only_itself(collector: FakeCollector) -> None:
    exporter = BatchExporter(settings_for(collector.url), RESOURCE, SCOPE)
    assert exporter.export([span(1), Broken(), span(2)])
    assert exporter.exported == 2 and exporter.dropped["encode_error"] == 1


def test_shutdown_exports_what_is_queued(collector: FakeCollector) -> None:
    exporter = BatchExporter(settings_for(collector.url, schedule_delay=60.0), RESOURCE, SCOPE)
    exporter.start()
    for i in range(3):
        exporter.submit(span(i))
    exporter.shutdown(timeout=5.0)
    assert len(collector.snapshot()) == 3


def test_metric_families() -> None:
    exporter = BatchExporter(settings_for("http://127.0.0.1:9", max_queue_size=1, max_export_batch_size=1),
                             RESOURCE, SCOPE)  # fmt: skip
    exporter.submit(span(1))
    exporter.submit(span(2))

    class Collect:
        def __init__(self, e: BatchExporter | None) -> None:
            self.e = e

        def collect(self) -> Any:
            return trace_metric_families(self.e)

    for source, dropped in ((exporter, "1.0"), (None, "0.0")):
        registry = CollectorRegistry()
        registry.register(Collect(source))  # type: ignore[arg-type]
        text = generate_latest(registry).decode()
        assert "flux_trace_spans_exported_total 0.0" in text
        assert f'flux_trace_spans_dropped_total{{reason="queue_full"}} {dropped}' in text


def test_tracer_samples_and_propagates() -> None:
    got: list[SpanData] = []
    tracer = Tracer(make_sampler("parentbased_always_on"), got.append)
    root = tracer.start_span("root", INTERNAL, None, {"a": 1})
    child = tracer.start_span("child", INTERNAL, root.context)
    child.set("b", "x")
    child.error("went wrong")
    child.end()
    child.end()  # once only
    root.end()
    assert [s.name for s in got] == ["child", "root"]
    assert got[0].trace_id == got[1].trace_id and got[0].parent_span_id == got[1].span_id
    assert got[0].attributes == [("b", "x")] and got[0].status_code == STATUS_ERROR
    assert parse_traceparent(child.traceparent) == SpanContext(got[0].trace_id, got[0].span_id, 1)
    unsampled_parent = SpanContext(5, 6, 0, "k=v")
    quiet = tracer.start_span("quiet", INTERNAL, unsampled_parent, remote=True)
    assert not quiet.recording and quiet.traceparent.endswith("-00") and quiet.tracestate == "k=v"
    quiet.end()
    assert len(got) == 2


def test_tracing_from_env() -> None:
    assert tracing_from_env("flux-node", instance="n1", env={}) is None
    tracing = tracing_from_env(
        "flux-node", instance="n1", attributes={"flux.node.group": "edge"},
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=t"},
    )  # fmt: skip
    assert tracing is not None
    resource = tracing.exporter.resource
    assert resource["service.name"] == "flux-node" and resource["service.instance.id"] == "n1"
    assert resource["flux.node.group"] == "edge" and resource["deployment.environment"] == "t"
