"""The node's load reports: its metrics' request counters summed for the config stream."""

from __future__ import annotations

from dataplane.discovery.load import MAX_REPORTED_ROUTES, LoadReporter
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
    routes = {name: (r.requests, r.server_errors) for name, r in report.routes.items()}
    assert routes == {"a": (1, 0), "b": (1, 1), "c": (2, 1)}  # per route, over listeners and clusters


def test_a_report_carries_the_busiest_routes_only() -> None:
    metrics = Metrics()
    for i in range(MAX_REPORTED_ROUTES + 20):
        for _ in range(1 + i % 3):
            metrics.request("web", f"r{i}", "app", 200, 0.001, 1, 1)
    report = LoadReporter(metrics).totals()
    assert len(report.routes) == MAX_REPORTED_ROUTES
    assert report.requests == sum(1 + i % 3 for i in range(MAX_REPORTED_ROUTES + 20))  # totals count them all
    assert min(r.requests for r in report.routes.values()) >= 1
    assert all(report.routes[f"r{i}"].requests == 3 for i in range(2, MAX_REPORTED_ROUTES, 3))  # the busiest kept


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
