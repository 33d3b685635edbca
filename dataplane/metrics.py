"""Node metrics kept in plain dicts on the hot path, exposed in Prometheus format.

Recording a request is a couple of dict updates and a bisect; the Prometheus
objects are only built when /metrics is scraped (a custom collector), so the
per-request cost stays tiny.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, int], int] = {}
        self.latency: dict[tuple[str, str], _Histogram] = {}
        self.upstream_latency: dict[str, _Histogram] = {}
        self.bytes_in: dict[str, int] = {}
        self.bytes_out: dict[str, int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.counters: dict[str, int] = {}
        self.policies: dict[tuple[str, str, str, str], int] = {}  # (policy, type, result, reason)
        self.downstream_active = 0
        self.downstream_total = 0
        self.config_version = ""
        self.config_applied = 0
        self.config_rejected = 0
        self.config_failing: list[tuple[str, str]] = []  # (kind, name) set aside in the applied version
        self.gauges: list[Callable[[], Iterator[Any]]] = []

    def request(
        self, listener: str, route: str, cluster: str, status: int, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        key = (listener, route, cluster, status)
        req = self.requests
        req[key] = req.get(key, 0) + 1
        hkey = (listener, route)
        hist = self.latency.get(hkey)
        if hist is None:
            hist = self.latency[hkey] = _Histogram()
        hist.counts[bisect_left(BUCKETS, seconds)] += 1
        hist.total += seconds
        self.bytes_in[listener] = self.bytes_in.get(listener, 0) + bytes_in
        self.bytes_out[listener] = self.bytes_out.get(listener, 0) + bytes_out

    def upstream_time(self, cluster: str, seconds: float) -> None:
        hist = self.upstream_latency.get(cluster)
        if hist is None:
            hist = self.upstream_latency[cluster] = _Histogram()
        hist.counts[bisect_left(BUCKETS, seconds)] += 1
        hist.total += seconds

    def upstream_error(self, cluster: str, kind: str) -> None:
        key = (cluster, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def policy(self, key: tuple[str, str, str, str]) -> None:
        """One policy outcome: (policy name, type, "allowed" | "denied", reason)."""
        policies = self.policies
        policies[key] = policies.get(key, 0) + 1

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- exposition ------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        reqs = CounterMetricFamily(
            "flux_http_requests", "HTTP requests by listener, route, cluster and status",
            labels=["listener", "route", "cluster", "status"],
        )  # fmt: skip
        for (listener, route, cluster, status), n in sorted(self.requests.items()):
            reqs.add_metric([listener, route, cluster, str(status)], n)
        yield reqs
        yield _histogram(
            "flux_http_request_duration_seconds", "Time from request head to the last response byte",
            ["listener", "route"], {k: v for k, v in self.latency.items()},
        )  # fmt: skip
        yield _histogram(
            "flux_upstream_response_seconds", "Time from sending upstream to the response head",
            ["cluster"], {(k,): v for k, v in self.upstream_latency.items()},
        )  # fmt: skip
        errs = CounterMetricFamily("flux_upstream_errors", "Upstream failures by kind", labels=["cluster", "kind"])
        for (cluster, kind), n in sorted(self.upstream_errors.items()):
            errs.add_metric([cluster, kind], n)
        yield errs
        for name, family, values in (
            ("flux_http_received_bytes", "Request bytes received from clients", self.bytes_in),
            ("flux_http_sent_bytes", "Response bytes sent to clients", self.bytes_out),
        ):
            c = CounterMetricFamily(name, family, labels=["listener"])
            for listener, n in sorted(values.items()):
                c.add_metric([listener], n)
            yield c
        yield GaugeMetricFamily("flux_downstream_connections", "Open client connections", value=self.downstream_active)
        total = CounterMetricFamily("flux_downstream_connections_accepted", "Client connections accepted")
        total.add_metric([], self.downstream_total)
        yield total
        ver = GaugeMetricFamily("flux_config_info", "Applied config version", labels=["version"])
        ver.add_metric([self.config_version], 1)
        yield ver
        try:
            numeric = float(self.config_version)
        except ValueError:
            numeric = -1
        yield GaugeMetricFamily("flux_config_version", "Applied config version (numeric)", value=numeric)
        failing = GaugeMetricFamily(
            "flux_config_failing_resources",
            "Resources of the applied version this node could not apply (1 each; see /stats)",
            labels=["kind", "name"],
        )
        for kind, name in self.config_failing:
            failing.add_metric([kind, name], 1)
        yield failing
        for name, value, doc in (
            ("flux_config_applied", self.config_applied, "Snapshots applied"),
            ("flux_config_rejected", self.config_rejected, "Snapshots refused (NACKed)"),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        decisions = CounterMetricFamily(
            "flux_policy_decisions", "Policy outcomes per request", labels=["policy", "type", "result", "reason"]
        )
        for (policy, ptype, result, why), n in sorted(self.policies.items()):
            decisions.add_metric([policy, ptype, result, why], n)
        yield decisions
        events = CounterMetricFamily("flux_node_events", "Other node events", labels=["event"])
        for name, n in sorted(self.counters.items()):
            events.add_metric([name], n)
        yield events
        for gauge in self.gauges:
            yield from gauge()

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)  # type: ignore[arg-type]
        return generate_latest(registry)


def _histogram(name: str, doc: str, labels: list[str], data: dict[Any, _Histogram]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for key, hist in sorted(data.items()):
        cumulative, buckets = 0, []
        for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        fam.add_metric(list(key), buckets, hist.total)
    return fam
