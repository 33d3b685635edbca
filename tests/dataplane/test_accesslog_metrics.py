"""The JSON access log (`dataplane.accesslog`) and the Prometheus exposition (`dataplane.metrics`).

Access log lines must stay valid JSON whatever the client put in the path, Host or request
id (hypothesis); the metrics text must parse with prometheus_client's own parser and give
back the counts and sums that were recorded.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections import Counter, defaultdict

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from dataplane.accesslog import AccessLog
from dataplane.metrics import BUCKETS, Metrics

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = {"ts", "request_id", "client", "method", "host", "path", "route", "cluster", "upstream", "status",
        "bytes_in", "bytes_out", "duration_ms"}  # fmt: skip

# Client-controlled text: any unicode, control characters, quotes and backslashes included.
# (Paths and hosts come from latin-1 decoding, so lone surrogates cannot occur.)
nasty = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(max_codepoint=0x20), max_size=10),
    st.sampled_from(['"', "\\", '\\"', "\x00", "\n", "\u2028\u2029", "\x7f", "é", "💥", '{"a":1}', "</script>"]),
)
latin1 = st.binary(max_size=40)


def log_one(log: AccessLog, **kw: object) -> dict[str, object]:
    args: dict[str, object] = dict(
        request_id=b"rid", client="192.0.2.1", method="GET", host="h", path="/", route="r", cluster="c",
        upstream="10.0.0.1:80", status=200, bytes_in=1, bytes_out=2, duration=0.0015,
    )  # fmt: skip
    args.update(kw)
    log.log(**args)  # type: ignore[arg-type]
    return json.loads(log.lines[-1])


@PROPS
@given(path=nasty, host=nasty, rid=latin1, consumer=nasty, error=nasty)
def test_access_log_lines_are_json_for_any_client_text(
    path: str, host: str, rid: bytes, consumer: str, error: str
) -> None:
    log = AccessLog(fd=-1)
    doc = log_one(log, path=path, host=host, request_id=rid, consumer=consumer, error=error, status=502)
    assert doc.keys() >= KEYS
    assert doc["path"] == path and doc["host"] == host and doc["request_id"] == rid.decode("latin-1")
    assert doc.get("consumer", "") == consumer and doc.get("error", "") == error
    assert doc["status"] == 502 and doc["bytes_in"] == 1 and doc["bytes_out"] == 2
    assert "\n" not in log.lines[-1]  # one line per request
    assert log.lines[-1].encode()  # encodable for the file: no lone surrogates


def test_access_log_fields() -> None:
    log = AccessLog(fd=-1)
    doc = log_one(log, duration=0.0125, status=404, bytes_in=0, bytes_out=123)
    assert doc["duration_ms"] == pytest.approx(12.5)
    assert doc["status"] == 404 and doc["bytes_out"] == 123
    assert doc["ts"].endswith("Z") and len(doc["ts"]) == len("2024-01-01T00:00:00.000Z")
    assert "consumer" not in doc and "error" not in doc
    assert set(doc) == KEYS


def test_access_log_disabled_and_backlog() -> None:
    off = AccessLog(fd=None)
    assert not off.enabled
    off.log(b"r", "c", "GET", "h", "/", "r", "c", "u", 200, 0, 0, 0.0)
    assert off.lines == []
    small = AccessLog(fd=-1, max_backlog=3)
    for _ in range(5):
        small.log(b"r", "c", "GET", "h", "/", "r", "c", "u", 200, 0, 0, 0.0)
    assert len(small.lines) == 3 and small.dropped == 2


def test_access_log_flush_writes_json_lines(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "access.log"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        log = AccessLog(fd=fd)
        paths = ["/plain", '/q"uote', "/new\nline", "/tab\there", "/ünï/💥"]
        for p in paths:
            log.log(b"rid\x01", "192.0.2.1", "POST", "höst", p, "r", "c", "u:1", 201, 3, 4, 0.001)
        trio.run(log.flush)
        assert log.lines == [] and log.written == len(paths)
        trio.run(log.flush)  # nothing pending: nothing written
    finally:
        os.close(fd)
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [r["path"] for r in rows] == paths
    assert all(r["host"] == "höst" and r["request_id"] == "rid\x01" for r in rows)


def test_access_log_flush_to_a_pipe_and_a_broken_one() -> None:
    r, w = os.pipe()
    try:
        log = AccessLog(fd=w)
        log.log(b"r", "c", "GET", "h", "/p", "r", "c", "u", 200, 0, 0, 0.0)
        trio.run(log.flush)  # a pipe may block: written from a thread
        assert json.loads(os.read(r, 65536).decode())["path"] == "/p"
        os.close(r)
        r = -1
        log.log(b"r", "c", "GET", "h", "/p", "r", "c", "u", 200, 0, 0, 0.0)
        trio.run(log.flush)  # the reader is gone (EPIPE): the batch is counted as dropped, nothing raises
        assert log.dropped == 1 and log.written == 1
    finally:
        if r >= 0:
            os.close(r)
        os.close(w)


# -- metrics -------------------------------------------------------------------------------


def families(metrics: Metrics) -> dict[str, object]:
    text = metrics.render().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam: object, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for s in fam.samples if s.name == name]  # type: ignore[attr-defined]


label = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
records = st.lists(
    st.tuples(
        st.sampled_from(["http", "https"]),
        st.one_of(st.sampled_from(["api", "web"]), label),
        st.sampled_from(["c1", "c2"]),
        st.sampled_from([200, 201, 404, 502, 503]),
        st.one_of(st.sampled_from([0.0, *BUCKETS, 31.0]), st.floats(min_value=0, max_value=60)),
        st.integers(0, 10**6),
        st.integers(0, 10**6),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, upstream=st.lists(st.tuples(st.sampled_from(["c1", "c2"]), st.floats(0, 40)), max_size=10))
def test_metrics_render_parses_and_matches_what_was_recorded(recs: list, upstream: list) -> None:
    m = Metrics()
    for listener, route, cluster, status, seconds, bin_, bout in recs:
        m.request(listener, route, cluster, status, seconds, bin_, bout)
    for cluster, seconds in upstream:
        m.upstream_time(cluster, seconds)
    fams = families(m)

    want = Counter((lst, rt, cl, str(st_)) for lst, rt, cl, st_, *_ in recs)
    got = {(lb["listener"], lb["route"], lb["cluster"], lb["status"]): v
           for lb, v in samples(fams["flux_http_requests"], "flux_http_requests_total")}  # fmt: skip
    assert got == want

    # Histogram per (listener, route): count, sum, cumulative buckets with inclusive upper bounds.
    by_key: dict[tuple[str, str], list[float]] = defaultdict(list)
    for lst, rt, _cl, _st, seconds, *_ in recs:
        by_key[(lst, rt)].append(seconds)
    hist = fams["flux_http_request_duration_seconds"]
    counts = {(lb["listener"], lb["route"]): v for lb, v in samples(hist, "flux_http_request_duration_seconds_count")}
    sums = {(lb["listener"], lb["route"]): v for lb, v in samples(hist, "flux_http_request_duration_seconds_sum")}
    assert counts == {k: len(v) for k, v in by_key.items()}
    for k, v in by_key.items():
        assert sums[k] == pytest.approx(math.fsum(v), rel=1e-9, abs=1e-9)
    for lb, v in samples(hist, "flux_http_request_duration_seconds_bucket"):
        bound = float(lb["le"])
        assert v == sum(1 for s in by_key[(lb["listener"], lb["route"])] if s <= bound), lb

    up = fams["flux_upstream_response_seconds"]
    up_counts = {lb["cluster"]: v for lb, v in samples(up, "flux_upstream_response_seconds_count")}
    assert up_counts == Counter(c for c, _ in upstream)

    for name, index in (("flux_http_received_bytes", 5), ("flux_http_sent_bytes", 6)):
        totals: Counter[str] = Counter()
        for rec in recs:
            totals[rec[0]] += rec[index]
        got_bytes = {lb["listener"]: v for lb, v in samples(fams[name], name + "_total")}
        assert got_bytes == {k: v for k, v in totals.items()}


def test_metrics_other_families() -> None:
    m = Metrics()
    m.upstream_error("c1", "connect_failure")
    m.upstream_error("c1", "connect_failure")
    m.upstream_error("c2", "timeout")
    m.count("config_reload")
    m.count("config_reload", 2)
    m.downstream_active = 7
    m.downstream_total = 42
    m.config_version = "17"
    m.config_applied = 3
    m.config_rejected = 1
    fams = families(m)
    errs = {
        (lb["cluster"], lb["kind"]): v for lb, v in samples(fams["flux_upstream_errors"], "flux_upstream_errors_total")
    }
    assert errs == {("c1", "connect_failure"): 2, ("c2", "timeout"): 1}
    assert samples(fams["flux_node_events"], "flux_node_events_total") == [({"event": "config_reload"}, 3)]
    assert samples(fams["flux_downstream_connections"], "flux_downstream_connections") == [({}, 7)]
    accepted = fams["flux_downstream_connections_accepted"]
    assert samples(accepted, "flux_downstream_connections_accepted_total") == [({}, 42)]
    assert samples(fams["flux_config_info"], "flux_config_info") == [({"version": "17"}, 1)]
    assert samples(fams["flux_config_version"], "flux_config_version") == [({}, 17)]
    assert samples(fams["flux_config_applied"], "flux_config_applied_total") == [({}, 3)]
    assert samples(fams["flux_config_rejected"], "flux_config_rejected_total") == [({}, 1)]


def test_metrics_non_numeric_version_and_extra_gauges() -> None:
    from prometheus_client.core import GaugeMetricFamily

    m = Metrics()
    m.config_version = "v1-abc"
    m.gauges.append(lambda: iter([GaugeMetricFamily("flux_test_gauge", "A test gauge", value=5)]))
    fams = families(m)
    assert samples(fams["flux_config_version"], "flux_config_version") == [({}, -1)]
    assert samples(fams["flux_test_gauge"], "flux_test_gauge") == [({}, 5)]


def test_empty_metrics_render() -> None:
    fams = families(Metrics())
    assert samples(fams["flux_http_requests"], "flux_http_requests_total") == []
    assert "flux_http_request_duration_seconds" in fams
