"""`outlier_detection.consecutive_5xx`, as Envoy offers it (issue 14: 500s never counted
towards passive ejection): the state machine, the control-plane spec and the snapshot."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.snapshot import render_snapshot
from controlplane.spec import ClusterSpec, ConfigSet, ListenerSpec, RouteSpec
from dataplane.balancing import EndpointState
from dataplane.config.compiler import EndpointRegistry, compile_snapshot
from dataplane.health import OutlierPolicy, record_request


def _cluster(n: int = 2) -> list[EndpointState]:
    return [EndpointState("10.0.0.1", 9000 + i) for i in range(n)]


def test_five_500s_in_a_row_eject_with_consecutive_5xx() -> None:
    eps = _cluster()
    policy = OutlierPolicy(consecutive_5xx=5)
    results = [record_request(eps[0], True, 1.0, policy, eps, status=500) for _ in range(5)]
    assert results == [False, False, False, False, True]
    assert eps[0].ejected and not eps[0].available
    assert eps[0].consecutive_5xx == 0 and eps[0].total_failures == 5


def test_500s_do_not_eject_when_consecutive_5xx_is_off() -> None:
    eps = _cluster()
    policy = OutlierPolicy()  # the default: only gateway failures eject
    assert not any(record_request(eps[0], True, 1.0, policy, eps, status=500) for _ in range(50))
    assert eps[0].available and eps[0].total_failures == 0 and eps[0].consecutive_5xx == 0


def test_a_success_ends_the_5xx_streak_and_a_500_ends_the_gateway_streak() -> None:
    eps = _cluster()
    policy = OutlierPolicy(consecutive_failures=3, consecutive_5xx=3)
    ep = eps[0]
    record_request(ep, True, 1.0, policy, eps, status=500)
    record_request(ep, True, 1.0, policy, eps, status=500)
    record_request(ep, True, 1.0, policy, eps, status=200)
    assert ep.consecutive_5xx == 0
    record_request(ep, False, 1.0, policy, eps, status=502)  # gateway failures count as 5xx too
    record_request(ep, False, 1.0, policy, eps)  # no response at all
    assert (ep.consecutive_failures, ep.consecutive_5xx) == (2, 2)
    assert record_request(ep, True, 1.0, policy, eps, status=500)  # the third 5xx in a row ejects
    assert ep.ejected and ep.consecutive_failures == 0 and ep.consecutive_5xx == 0


def test_a_500_ends_the_gateway_failure_streak() -> None:
    eps = _cluster()
    policy = OutlierPolicy(consecutive_failures=2)
    record_request(eps[0], False, 1.0, policy, eps, status=503)
    record_request(eps[0], True, 1.0, policy, eps, status=500)
    assert not record_request(eps[0], False, 1.0, policy, eps, status=503)
    assert eps[0].consecutive_failures == 1 and not eps[0].ejected


def test_callers_without_a_status_keep_the_old_meaning() -> None:
    """`passive_health(cluster, ep, ok)` as the proxy calls it today: ok False ejects after
    consecutive_failures; ok True is a success whatever consecutive_5xx says."""
    eps = _cluster()
    policy = OutlierPolicy(consecutive_failures=2, consecutive_5xx=2)
    assert not record_request(eps[0], True, 1.0, policy, eps)
    assert not record_request(eps[0], False, 1.0, policy, eps)
    assert record_request(eps[0], False, 1.0, policy, eps)


def _config(outlier: dict[str, Any]) -> ConfigSet:
    cluster = ClusterSpec.model_validate(
        {"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9001}], "outlier_detection": outlier}
    )
    route = RouteSpec.model_validate({"name": "r", "path": "/", "cluster": "c"})
    listener = ListenerSpec.model_validate({"name": "l", "protocol": "http", "port": 18080})
    return ConfigSet({"clusters": {"c": cluster}, "routes": {"r": route}, "listeners": {"l": listener}})


def test_the_spec_takes_consecutive_5xx_and_the_node_compiles_it() -> None:
    snap = render_snapshot(_config({"consecutive_5xx": 7}), 1, "default")
    assert snap.clusters[0].outlier_detection.consecutive_5xx == 7
    compiled = compile_snapshot(snap, EndpointRegistry(), lambda *a: object())  # type: ignore[arg-type, return-value]
    assert compiled.config.clusters["c"].outlier.consecutive_5xx == 7
    assert ClusterSpec.model_validate({"name": "c", "endpoints": []}).outlier_detection.consecutive_5xx == 0


@pytest.mark.parametrize("bad", [-1, 1001, "five"])
def test_the_spec_bounds_consecutive_5xx(bad: object) -> None:
    with pytest.raises(ValueError, match="consecutive_5xx"):
        _config({"consecutive_5xx": bad})
