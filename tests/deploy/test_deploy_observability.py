"""deploy/'s Grafana dashboard and Prometheus alert rules name only metrics that exist.

Every PromQL expression (alert rules, dashboard targets and variables) is parsed with a real
PromQL parser, and each metric it selects must be one a real control plane or a real node
exposes on /metrics (counters with `_total`, histograms with `_bucket`/`_sum`/`_count`), or
one Prometheus makes itself (`up`). The processes are started here and scraped, so a metric
renamed in the code fails this test.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, free_port, wait_until

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "flux-gateway.json"
ALERTS = ROOT / "deploy" / "prometheus" / "flux-alerts.yaml"
PROMETHEUS_OWN = {"up"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exposed(text: str) -> set[str]:
    """Sample names a /metrics text can hold, from its `# TYPE` lines (families without samples too)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.update(name + s for s in SUFFIXES.get(kind, ("",)))
            if kind == "counter" and name.endswith("_total"):
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def selected(expr: str) -> set[str]:
    """Metric names the PromQL expression selects."""
    text = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    found: set[str] = set()

    def walk(node: Any) -> None:
        if node is None:
            return
        if isinstance(node, list | tuple):
            for item in node:
                walk(item)
            return
        name = getattr(node, "name", None)
        if type(node).__name__ == "VectorSelector" and name:
            found.add(name)
        for attr in ("lhs", "rhs", "expr", "param", "vector_selector", "args"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, str | int | float):
                walk(child)

    walk(promql_parser.parse(text))
    return found


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            m = re.match(r"label_values\((.+),\s*\w+\)$", query["query"])
            if m:
                exprs.append(m.group(1))
    return exprs


def alert_exprs() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


@pytest.fixture(scope="module")
def metric_names(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    base = tmp_path_factory.mktemp("metrics")
    up = UpstreamProcess("up").start()
    cp = ControlPlaneProcess(base / "cp").start()
    node = NodeProcess(base / "n", cp.grpc_addr, node_id="metrics-1")
    port = free_port()
    try:
        with cp.client() as c:
            r = c.post(
                "/api/v1/apply",
                json={
                    "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
                    "clusters": [{"name": "app", "endpoints": [up.endpoint()]}],
                    "routes": [{"name": "all", "listener": "web", "path": "/", "cluster": "app"}],
                },
            )
            assert r.status_code == 200, r.text
        node.start()
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/").status_code == 200, 10)
        names = exposed(node.get("/metrics").text) | exposed(httpx.get(f"{cp.url}/metrics").text)
        yield names
    finally:
        node.stop()
        cp.stop()
        up.stop()


def test_the_files_parse_and_name_metrics() -> None:
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) > 30
    names = set().union(*(selected(e) for e in exprs))
    assert {"flux_http_requests_total", "flux_http_request_duration_seconds_bucket", "flux_nodes"} <= names
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["labels"]["severity"] and rule["annotations"]["summary"]


def test_every_metric_in_the_dashboard_and_the_alerts_exists(metric_names: set[str]) -> None:
    assert "flux_http_requests_total" in metric_names  # the scrape worked
    missing: dict[str, set[str]] = {}
    for expr in dashboard_exprs() + alert_exprs():
        unknown = selected(expr) - metric_names - PROMETHEUS_OWN
        if unknown:
            missing[expr.strip()[:100]] = unknown
    assert not missing, missing


def test_a_renamed_metric_would_be_caught(metric_names: set[str]) -> None:
    assert selected("rate(flux_http_requestz_total[5m])") - metric_names == {"flux_http_requestz_total"}
