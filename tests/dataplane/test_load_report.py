"""The node's load reports: its metrics' request counters summed for the config stream."""

from __future__ import annotations

from dataplane.discovery.load import LoadReporter
from dataplane.metrics import BUCKETS, Metrics


def test_report_sums_requests_5xx_and_latency_over_listeners_and_routes() -> None:
    metrics = Metrics()
    reporter = LoadReporter(metrics)
    metrics.request("web", "a", "app", 200, 0.002, 10, 20)
    metrics.request("web", "b", "app", 502, 0.2, 10, 20)
    metrics.request("api", "c", "svc", 503, 40.0, 10, 20)
    metrics.request("api", "c", "svc", 404, 0.0001, 10, 20)
    report = reporter.report()
    assert report is not None
    assert (report.requests, report.server_errors) == (4, 2)
    assert list(report.latency_bounds) == list(BUCKETS)
    assert len(report.latency_counts) == len(BUCKETS) + 1 and sum(report.latency_counts) == 4
    assert report.latency_counts[-1] == 1  # 40 s: past the last bound
    assert abs(report.latency_sum_seconds - 40.2021) < 1e-9


def test_an_idle_node_sends_nothing_until_asked_again() -> None:
    metrics = Metrics()
    reporter = LoadReporter(metrics)
    assert reporter.report() is not None  # the first one always goes
    assert reporter.report() is None
    metrics.request("web", "a", "app", 200, 0.01, 1, 1)
    assert reporter.report() is not None
    assert reporter.report() is None
    reporter.forget()  # a new stream
    assert reporter.report() is not None
