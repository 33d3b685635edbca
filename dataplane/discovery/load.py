"""Load reports: the node's request counters as the config stream carries them.

`LoadReporter.report()` sums what dataplane.metrics.Metrics counts per listener, route,
cluster and status into one `flux.v1.LoadReport` (requests, 5xx answers, a latency
histogram), cumulative since the node started; the control plane takes differences, so
config canaries can compare canary nodes with the rest. It only reads the metrics' dicts:
nothing on the request path changes, and a report costs one pass over them.
"""

from __future__ import annotations

from dataplane.metrics import BUCKETS, Metrics
from flux.v1 import discovery_pb2


class LoadReporter:
    """Reads `metrics`; `report()` when something changed since the last one, else None."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._last: tuple[int, int] = (-1, -1)

    def totals(self) -> discovery_pb2.LoadReport:
        """The counters now, whether or not they changed."""
        requests = errors = 0
        for (_listener, _route, _cluster, status), n in list(self.metrics.requests.items()):
            requests += n
            if 500 <= status <= 599:
                errors += n
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
