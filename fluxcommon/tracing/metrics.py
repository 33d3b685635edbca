"""The exporter's counters in Prometheus form, for the node's and the control plane's /metrics:

    flux_trace_spans_exported_total            spans a collector took
    flux_trace_spans_dropped_total{reason}     queue_full | export_failed | rejected | encode_error

Both are there (at 0) when tracing is off, so dashboards and alerts need no special case.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily

from fluxcommon.tracing.exporter import DROP_REASONS, BatchExporter


def trace_metric_families(exporter: BatchExporter | None) -> Iterator[CounterMetricFamily]:
    exported = CounterMetricFamily("flux_trace_spans_exported", "Spans sent to the OTLP collector and accepted")
    exported.add_metric([], exporter.exported if exporter is not None else 0)
    yield exported
    dropped = CounterMetricFamily(
        "flux_trace_spans_dropped", "Spans not exported, by reason (traffic is never affected)", labels=["reason"]
    )
    drops = exporter.drops() if exporter is not None else dict.fromkeys(DROP_REASONS, 0)
    for reason in DROP_REASONS:
        dropped.add_metric([reason], drops.get(reason, 0))
    yield dropped
