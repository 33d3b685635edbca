"""Alert rules (`alerts` config) against a real control plane and a real webhook receiver.

The evaluator itself is pure (controlplane.registry.alerts.AlertEvaluator) and is checked
directly first; then a control plane child process evaluates rules over its registry and
POSTs to an HTTP server on a free port.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from support.processes import ControlPlaneProcess, free_port, wait_until

from controlplane.registry.alerts import AlertEvaluator
from controlplane.spec.alert import AlertSpec

_names = itertools.count()
WAIT = 10.0


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


# -- the pure evaluator -------------------------------------------------------------------------


def rule(**kw: Any) -> AlertSpec:
    kw.setdefault("name", "r")
    kw.setdefault("webhook", "http://hook.test/x")
    return AlertSpec.model_validate(kw)


def test_evaluator_min_healthy_fires_once_resolves_and_respects_cooldown() -> None:
    ev = AlertEvaluator()
    r = rule(kind="min_healthy", service="orders", threshold=2, cooldown="10s")
    assert ev.evaluate([r], {"orders": 2}, 100.0) == []
    (fired,) = ev.evaluate([r], {"orders": 1}, 101.0)
    assert (fired.state, fired.value, fired.service, fired.instance) == ("firing", 1, "orders", None)
    assert fired.payload()["message"] == "service orders has 1 healthy instance(s), fewer than 2"
    assert "instance" not in fired.payload()
    assert ev.evaluate([r], {"orders": 0}, 102.0) == []  # still firing: no duplicate
    assert ev.active()[0]["value"] == 0 and ev.active()[0]["notified"]
    (resolved,) = ev.evaluate([r], {"orders": 3}, 103.0)
    assert (resolved.state, resolved.value) == ("resolved", 3)
    assert ev.evaluate([r], {"orders": 1}, 104.0) == []  # within the cooldown of the last firing
    assert ev.active()[0]["notified"] is False
    assert ev.evaluate([r], {"orders": 2}, 105.0) == []  # cleared before being notified: nothing to resolve
    assert ev.evaluate([r], {"orders": 1}, 106.0) == []
    (again,) = ev.evaluate([r], {"orders": 1}, 111.0)  # the cooldown has passed and it still holds
    assert again.state == "firing"
    assert ev.evaluate([], {"orders": 1}, 112.0)[0].state == "resolved"  # rule deleted: resolved
    assert ev.active() == []


def test_evaluator_every_service_and_unknown_ones() -> None:
    ev = AlertEvaluator()
    every = rule(name="all", kind="min_healthy", service="*", threshold=1)
    named = rule(name="typo", kind="min_healthy", service="ordres", threshold=1)
    notes = ev.evaluate([every, named], {"a": 0, "b": 2}, 10.0)
    fired = sorted((n.alert, n.service, n.state) for n in notes)
    assert fired == [("all", "a", "firing"), ("typo", "ordres", "firing")]
    (gone,) = ev.evaluate([every, named], {"b": 2}, 11.0)  # service a deleted
    assert (gone.alert, gone.service, gone.state) == ("all", "a", "resolved") and "removed" in gone.message
    assert [x["service"] for x in ev.active()] == ["ordres"]


def test_evaluator_flapping_counts_changes_in_the_window() -> None:
    ev = AlertEvaluator()
    r = rule(kind="flapping", service="*", threshold=2, window="10s", cooldown="0s")
    only_users = rule(name="u", kind="flapping", service="users", threshold=2, window="10s")
    for t in (100.0, 101.0):
        ev.observe_change("orders", "a", t)
    ev.observe_change("users", "b", 101.0)
    assert ev.evaluate([r, only_users], {}, 101.5) == []  # two changes: not more than the threshold
    ev.observe_change("orders", "a", 102.0)
    (fired,) = ev.evaluate([r, only_users], {}, 102.5)
    assert (fired.alert, fired.state, fired.service, fired.instance, fired.value) == ("r", "firing", "orders", "a", 3)
    assert fired.payload()["instance"] == "a"
    assert ev.evaluate([r, only_users], {}, 105.0) == []
    (resolved,) = ev.evaluate([r, only_users], {}, 110.5)  # the change at 100.0 left the window
    assert (resolved.state, resolved.value) == ("resolved", 2)
    assert ev.evaluate([r, only_users], {}, 200.0) == [] and ev.active() == []

    for t in (300.0, 300.1, 300.2):  # a burst whose changes all leave the window between two rounds
        ev.observe_change("orders", "a", t)
    assert ev.evaluate([r], {}, 300.5)[0].state == "firing"
    (gone,) = ev.evaluate([r], {}, 400.0)
    assert (gone.state, gone.value) == ("resolved", 0)


# -- a real control plane and webhook -----------------------------------------------------------


class Webhook:
    """An HTTP server on a free port that records what is POSTed; `fail` answers 503 that many times."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.attempts = 0
        self.fail = 0
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                with hook.lock:
                    hook.attempts += 1
                    failing = hook.fail > 0
                    if failing:
                        hook.fail -= 1
                    else:
                        hook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(503 if failing else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def bodies(self, alert: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [b for _, b in self.received if alert is None or b["alert"] == alert]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    w = Webhook()
    yield w
    w.close()


@pytest.fixture
def api(module_controlplane: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with module_controlplane.client() as c:
        yield c


def add_rule(api: httpx.Client, **body: Any) -> str:
    body.setdefault("name", fresh("alert"))
    r = api.post("/api/v1/alerts", json=body)
    assert r.status_code == 201, r.text
    return str(body["name"])


def instances(api: httpx.Client, service: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        r = api.post(f"/api/v1/services/{service}/instances", json={"address": f"10.1.0.{i + 1}", "port": 80,
                                                                     "ttl": "10m"})  # fmt: skip
        assert r.status_code == 201, r.text
        out.append(r.json()["id"])
    return out


def set_status(api: httpx.Client, service: str, iid: str, status: str) -> None:
    r = api.patch(f"/api/v1/services/{service}/instances/{iid}", json={"status": status})
    assert r.status_code == 200, r.text


def status(api: httpx.Client) -> dict[str, Any]:
    r = api.get("/api/v1/alerts/status")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_min_healthy_fires_once_then_resolves(api: httpx.Client, webhook: Webhook) -> None:
    service = fresh("orders")
    a, b = instances(api, service, 2)
    name = add_rule(api, kind="min_healthy", service=service, threshold=2, webhook=webhook.url,
                    headers={"Authorization": "Bearer hook-secret", "X-Team": "shop"})  # fmt: skip
    wait_until(lambda: status(api)["rules"] >= 1, timeout=WAIT)
    set_status(api, service, a, "out_of_service")
    (fired,) = wait_until(lambda: webhook.bodies(name), timeout=WAIT, message="the firing notification")
    assert fired["state"] == "firing" and fired["kind"] == "min_healthy" and fired["service"] == service
    assert fired["value"] == 1 and fired["threshold"] == 2 and "fewer than 2" in fired["message"]
    assert fired["time"] > 1e9 and "instance" not in fired
    headers = webhook.received[-1][0]
    assert headers["authorization"] == "Bearer hook-secret" and headers["x-team"] == "shop"
    assert headers["content-type"] == "application/json"

    active = [x for x in status(api)["active"] if x["alert"] == name]
    assert active and active[0]["notified"] and active[0]["value"] == 1
    set_status(api, service, b, "out_of_service")  # worse, but the same alert: no second notification
    wait_until(lambda: next(x for x in status(api)["active"] if x["alert"] == name)["value"] == 0, timeout=WAIT)
    time.sleep(1.0)  # stays: a negative check over a few evaluation rounds (nothing counts the rounds)
    assert len(webhook.bodies(name)) == 1

    set_status(api, service, a, "up")
    set_status(api, service, b, "up")
    wait_until(lambda: len(webhook.bodies(name)) == 2, timeout=WAIT, message="the resolved notification")
    resolved = webhook.bodies(name)[1]
    assert resolved["state"] == "resolved" and resolved["value"] == 2
    st = status(api)
    assert st["leader"] and st["evaluating"] and not [x for x in st["active"] if x["alert"] == name]
    assert st["last_notification"]["alert"] == name and st["last_notification"]["state"] == "resolved"


def test_cooldown_holds_back_a_repeat(api: httpx.Client, webhook: Webhook) -> None:
    service = fresh("cool")
    (a,) = instances(api, service, 1)
    name = add_rule(api, kind="min_healthy", service=service, threshold=1, cooldown="2s", webhook=webhook.url)
    wait_until(lambda: status(api)["rules"] >= 1, timeout=WAIT)
    set_status(api, service, a, "down")
    wait_until(lambda: len(webhook.bodies(name)) == 1, timeout=WAIT)
    set_status(api, service, a, "up")
    wait_until(lambda: len(webhook.bodies(name)) == 2, timeout=WAIT)
    set_status(api, service, a, "down")  # again, within the cooldown: held back
    held = wait_until(lambda: [x for x in status(api)["active"] if x["alert"] == name], timeout=WAIT)
    assert held[0]["notified"] is False and len(webhook.bodies(name)) == 2
    third = wait_until(lambda: webhook.bodies(name)[2:], timeout=WAIT, message="the firing after the cooldown")[0]
    first = webhook.bodies(name)[0]
    assert [b["state"] for b in webhook.bodies(name)] == ["firing", "resolved", "firing"]
    assert third["time"] - first["time"] >= 2.0  # not before the cooldown ran out
    set_status(api, service, a, "up")
    wait_until(lambda: len(webhook.bodies(name)) == 4, timeout=WAIT)


class Listener:
    """A TCP port that accepts (and hangs up) while open; closed, connections are refused."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock: socket.socket | None = None

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self.sock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    @staticmethod
    def _accept(s: socket.socket) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.sock = None


def test_flapping_instance(api: httpx.Client, webhook: Webhook) -> None:
    service = fresh("flappy")
    check = {"type": "tcp", "interval": "100ms", "timeout": "1s", "healthy_threshold": 1, "unhealthy_threshold": 1}
    assert api.put(f"/api/v1/services/{service}", json={"health_check": check}).status_code == 201
    target = Listener()
    target.open()
    try:
        r = api.post(f"/api/v1/services/{service}/instances",
                     json={"address": "127.0.0.1", "port": target.port, "ephemeral": False})  # fmt: skip
        iid = r.json()["id"]
        name = add_rule(api, kind="flapping", service=service, threshold=2, window="3s", cooldown="0s",
                        webhook=webhook.url)  # fmt: skip

        def becomes(want: str) -> None:
            url = f"/api/v1/services/{service}/instances/{iid}"
            wait_until(lambda: api.get(url).json()["health"] == want, timeout=WAIT, message=want)

        becomes("healthy")  # change 1 (the first verdict)
        target.close()
        becomes("unhealthy")  # change 2: not more than the threshold yet
        assert webhook.bodies(name) == []
        target.open()
        becomes("healthy")  # change 3: flapping
        (fired,) = wait_until(lambda: webhook.bodies(name), timeout=WAIT, message="the flapping alert")
        assert fired["state"] == "firing" and fired["kind"] == "flapping"
        assert fired["instance"] == iid and fired["service"] == service and fired["value"] >= 3
        assert fired["threshold"] == 2 and "changed health" in fired["message"]
        # once the changes leave the window, the alert resolves
        resolved = wait_until(lambda: webhook.bodies(name)[1:], timeout=WAIT, message="resolution")[0]
        assert resolved["state"] == "resolved" and resolved["instance"] == iid and resolved["value"] <= 2
    finally:
        target.close()


def test_failing_webhooks_retry_are_reported_and_do_not_block(
    api: httpx.Client, webhook: Webhook, module_controlplane: ControlPlaneProcess
) -> None:
    service = fresh("hooks")
    (a,) = instances(api, service, 1)
    webhook.fail = 2  # two 503s, then accepted
    flaky = add_rule(api, kind="min_healthy", service=service, threshold=1, webhook=webhook.url)
    dead = add_rule(api, kind="min_healthy", service=service, threshold=1,
                    webhook=f"http://127.0.0.1:{free_port()}/nobody")  # fmt: skip
    wait_until(lambda: status(api)["rules"] >= 2, timeout=WAIT)
    started = time.monotonic()
    set_status(api, service, a, "out_of_service")
    for _ in range(5):  # the control plane keeps answering while deliveries retry
        assert api.get("/healthz").status_code == 200
    assert time.monotonic() - started < 5.0
    (body,) = wait_until(lambda: webhook.bodies(flaky), timeout=WAIT, message="delivery after retries")
    assert body["state"] == "firing" and webhook.attempts >= 3
    err = wait_until(lambda: (e := status(api)["last_error"]) and e["alert"] == dead and e, timeout=WAIT)
    assert err["webhook"].endswith("/nobody") and "Connect" in err["error"]
    text = httpx.get(f"{module_controlplane.url}/metrics").text
    assert 'flux_registry_alert_notifications_total{result="sent",state="firing"}' in text
    assert 'flux_registry_alert_notifications_total{result="failed",state="firing"}' in text
    assert "flux_registry_alerts_active" in text


def test_alerts_status_is_not_an_alert_name(api: httpx.Client) -> None:
    st = status(api)
    assert {"leader", "evaluating", "rules", "active", "last_notification", "last_error"} <= set(st)
    assert api.get("/api/v1/alerts").status_code == 200
