"""Active health checks and alerts over REST, and their Prometheus metrics.

    GET /api/v1/services/{name}/instances/{id}/health   verdict, check spec, counts, recent results
    GET /api/v1/alerts/status                            active alerts, last notification, last error

The prober (`controlplane.registry.health.HealthProber`) and the alert manager
(`controlplane.registry.alerts.AlertManager`) are set on `app.state.health_prober` and
`app.state.alerts` by `controlplane.main`. Both run on the registry leader only: another
control plane answers with the stored health, an empty history and `checking: false`.

This router must be included before the `alerts` resource router, whose
`GET /api/v1/alerts/{name}` would otherwise take `/api/v1/alerts/status`.
"""

# No `from __future__ import annotations`: FastAPI reads the parameter types at runtime.

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from controlplane.api.errors import error_response
from controlplane.api.registry import get_registry
from controlplane.registry.alerts import AlertManager
from controlplane.registry.health import HealthProber
from controlplane.registry.store import RegistryStore
from controlplane.store.config_store import NotFound

router = APIRouter(prefix="/api/v1")


def _prober(request: Request) -> HealthProber | None:
    return getattr(request.app.state, "health_prober", None)


def _alerts(request: Request) -> AlertManager | None:
    return getattr(request.app.state, "alerts", None)


@router.get(
    "/services/{name}/instances/{iid}/health",
    tags=["registry"],
    summary="Health of an instance: verdict, check, consecutive results and recent history",
)
async def instance_health(name: str, iid: str, request: Request, reg: RegistryStore = Depends(get_registry)) -> Any:
    if not reg.has_service(name):
        return error_response(404, "not_found", f"service {name!r} not found", field="service")
    try:
        inst = reg.instance(name, iid)
    except NotFound:
        return error_response(404, "not_found", f"instance {iid!r} of service {name!r} not found", field="instance")
    spec = reg.service_spec(name)
    check = spec.health_check if spec is not None else None
    prober = _prober(request)
    seen = prober.describe(name, iid) if prober is not None else None
    return {
        "service": name,
        "instance": iid,
        "address": inst.address,
        "port": inst.port,
        "ephemeral": inst.ephemeral,
        "status": inst.status,
        "health": inst.health,
        "healthy": inst.serves,
        "check": check.model_dump(mode="json") if check is not None else None,
        "checking": seen is not None,  # this control plane runs the checks (it leads the registry)
        "consecutive_ok": seen["consecutive_ok"] if seen else 0,
        "consecutive_fail": seen["consecutive_fail"] if seen else 0,
        "checks": seen["checks"] if seen else 0,
        "history": seen["history"] if seen else [],
    }


@router.get("/alerts/status", tags=["alerts"], summary="Active alerts, last notification and last webhook error")
async def alerts_status(request: Request, reg: RegistryStore = Depends(get_registry)) -> Any:
    manager = _alerts(request)
    if manager is None:
        return JSONResponse({"error": "unavailable", "message": "alert evaluation is not running"}, status_code=503)
    return {"leader": reg.is_leader, **manager.status()}


class HealthCollector:
    """Metrics of the health checks and alerts, added to the control plane's /metrics."""

    def __init__(self, state: Any) -> None:
        self.prober: HealthProber | None = getattr(state, "health_prober", None)
        self.alerts: AlertManager | None = getattr(state, "alerts", None)

    def collect(self) -> Any:
        if self.prober is not None:
            p = self.prober
            checks = CounterMetricFamily(
                "flux_registry_health_checks", "Active health checks run", labels=["type", "result"]
            )
            for (kind, result), n in sorted(p.checks.items()):
                checks.add_metric([kind, result], n)
            yield checks
            latency = HistogramMetricFamily(
                "flux_registry_health_check_seconds", "Duration of active health checks", labels=["type"]
            )
            for kind, hist in sorted(p.latency.items()):
                latency.add_metric([kind], hist.buckets(), sum_value=hist.total)
            yield latency
            yield GaugeMetricFamily("flux_registry_health_targets", "Instances being checked", value=p.targets())
            flips = CounterMetricFamily("flux_registry_health_changes", "Health changes recorded by active checks")
            flips.add_metric([], p.flips)
            yield flips
        if self.alerts is not None:
            a = self.alerts
            notes = CounterMetricFamily(
                "flux_registry_alert_notifications",
                "Alert webhook notifications (result: sent, failed, dropped)",
                labels=["state", "result"],
            )
            for (state, result), n in sorted(a.counters.items()):
                notes.add_metric([state, result], n)
            yield notes
            yield GaugeMetricFamily(
                "flux_registry_alerts_active", "Alert subjects whose condition holds", value=len(a.evaluator.active())
            )
