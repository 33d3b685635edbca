"""Load reports: the node's request counters as the config stream carries them.

`LoadReporter.report()` sums what dataplane.metrics.Metrics counts per listener, route,
cluster and status into one `flux.v1.LoadReport` (requests, 5xx answers, a latency
histogram, and requests and 5xx answers per route for the console), cumulative since the
node started; the control plane takes differences, so config canaries can compare canary
nodes with the rest. It only reads the metrics' dicts:
nothing on the request path changes, and a report costs one pass over them.
"""

from __future__ import annotations

from dataplane.metrics import BUCKETS, Metrics
from flux.v1 import discovery_pb2

MAX_REPORTED_ROUTES = 500  # per report: the busiest routes (a report stays small on big configs)


class LoadReporter:
    """Reads `metrics`; `report()` when something changed since the last one, else None."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._last: tuple[int, int] = (-1, -1)

    def totals(self) -> discovery_pb2.LoadReport:
        """The counters now, whether or not they changed."""
        requests = errors = 0
        by_route: dict[str, list[int]] = {}
        for (_listener, route, _cluster, status), n in list(self.metrics.requests.items()):
            requests += n
            counts = by_route.get(route)
            if counts is None:
                counts = by_route[route] = [0, 0]
            counts[0] += n
            if 500 <= status <= 599:
                errors += n
                counts[1] += n
        counts = [0] * (len(BUCKETS) + 1)
        total_seconds = 0.0
        for hist in list(self.metrics.latency.values()):
            for i, n in enumerate(hist.counts):
                counts[i] += n
            total_seconds += hist.total
        return discovery_pb2.LoadReport(
            requests=requests,
            server_errors=errors,
            latency_bounds=list(BUCKETS),
            latency_counts=counts,
            latency_sum_seconds=total_seconds,
            routes={
                route: discovery_pb2.RouteLoad(requests=c[0], server_errors=c[1])
                for route, c in sorted(by_route.items(), key=lambda kv: -kv[1][0])[:MAX_REPORTED_ROUTES]
            },
        )

    def report(self) -> discovery_pb2.LoadReport | None:
        """The counters if they moved since the last report (an idle node sends nothing)."""
        now = self.totals()
        key = (now.requests, sum(now.latency_counts))
        if key == self._last:
            return None
        self._last = key
        return now

    def forget(self) -> None:
        """Send the next report even if nothing moved (a new stream: the control plane knows nothing yet)."""
        self._last = (-1, -1)
