"""The web console in a real browser: Debian's headless Chromium driven by Playwright.

One control plane, one echo upstream and one real `flux-node` serve the whole module; each
test gets a fresh browser context (no cookies) whose every request is watched: a request to
any host but this machine is aborted and fails the test, and so does any console error or
uncaught page error (checked when the test's page closes).

`FLUX_CONSOLE_SCREENSHOTS=DIR` also saves screenshots of the main pages into DIR (the
README's pictures come from `FLUX_CONSOLE_SCREENSHOTS=docs/console`).
"""

from __future__ import annotations

import os
import pathlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, free_port, wait_until

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
SHOTS = os.environ.get("FLUX_CONSOLE_SCREENSHOTS", "")

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.timeout(60)


@dataclass
class Stack:
    cp: ControlPlaneProcess
    node: NodeProcess
    upstream: UpstreamProcess
    gateway_port: int
    read_token: str

    def api(self) -> httpx.Client:
        return self.cp.client()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("console")
    gateway_port = free_port()
    with ControlPlaneProcess(base / "cp") as cp, UpstreamProcess("demo") as up:
        with cp.client() as c:
            doc = {
                "listeners": [{"name": "public", "protocol": "http", "address": "127.0.0.1", "port": gateway_port}],
                "clusters": [{"name": "demo", "endpoints": [up.endpoint()]}],
                "routes": [{"name": "root", "listener": "public", "path": "/", "cluster": "demo"}],
            }
            assert c.post("/api/v1/apply", json=doc).status_code == 200
            c.put("/api/v1/services/orders", json={"group": "shop", "tags": ["v1"]}).raise_for_status()
            for port in (9101, 9102):
                body = {"address": "127.0.0.1", "port": port, "version": "v1", "ephemeral": False}
                c.post("/api/v1/services/orders/instances", json=body).raise_for_status()
        read_token = cp.api_token("read", name="viewer")
        with NodeProcess(base / "node", cp.grpc_addr, node_id="node-1") as node:
            yield Stack(cp, node, up, gateway_port, read_token)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        # launch() gives every run a fresh, empty temporary profile (user-data-dir)
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@dataclass
class Watch:
    """What a page did that a console must never do."""

    console_errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Any, watch: Watch) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})

    def route(r: Any) -> None:
        host = urlsplit(r.request.url).hostname or ""
        if host in LOCAL_HOSTS:
            watch.local.append(r.request.url)
            r.continue_()
        else:
            watch.outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    pg = context.new_page()
    pg.on("console", lambda m: watch.console_errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: watch.console_errors.append(f"uncaught: {e}"))
    yield pg
    pg.close()
    context.close()
    assert watch.outside == [], f"requests left the host: {watch.outside}"
    assert watch.console_errors == [], f"console errors: {watch.console_errors}"


def shot(pg: Any, name: str) -> None:
    if SHOTS:
        pathlib.Path(SHOTS).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(pathlib.Path(SHOTS) / f"{name}.png"))


def login(pg: Any, stack: Stack, token: str, path: str = "/ui/") -> None:
    pg.goto(stack.cp.url + path)
    expect(pg).to_have_url(f"{stack.cp.url}/ui/login?next={path.replace('/', '%2F')}")
    pg.fill("#token", token)
    pg.click("button[type=submit]")
    expect(pg.get_by_test_id("user")).to_be_visible()


# -- the tests -----------------------------------------------------------------------------


def test_wrong_token_is_refused_and_sets_no_cookie(stack: Stack, page: Any) -> None:
    page.goto(stack.cp.url + "/ui/")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.get_by_test_id("login-error")).to_contain_text("Wrong token")
    assert page.url.startswith(stack.cp.url + "/ui/login")
    assert not [c for c in page.context.cookies() if c["name"] == "flux_console"]
    shot(page, "login")


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(stack: Stack, page: Any) -> None:
    login(page, stack, stack.cp.admin_token)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "flux_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert stack.cp.admin_token not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # out of the page's scripts' reach
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{stack.cp.url}/ui/login?reason=logout")
    with httpx.Client(base_url=stack.cp.url, cookies={"flux_console": cookie["value"]}) as c:
        r = c.get("/ui/")  # the old cookie is dead on the server too
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_dashboard_shows_the_live_node_and_refreshes_without_reloading(stack: Stack, page: Any) -> None:
    for _ in range(20):  # some traffic, so the node has load to report
        httpx.get(f"http://127.0.0.1:{stack.gateway_port}/echo", timeout=5)
    login(page, stack, stack.cp.admin_token)
    node = page.locator('tr[data-node="node-1"]')
    expect(node).to_contain_text("connected")
    expect(node).to_contain_text("yes", timeout=10_000)  # in sync
    page.evaluate("window.__notReloaded = true")
    with stack.api() as c:
        r = c.put("/api/v1/clusters/live-check", json={"name": "live-check", "endpoints": [stack.upstream.endpoint()]})
        assert r.status_code in (200, 201), r.text
        version = c.get("/api/v1/config").json()["version"]
    expect(page.get_by_test_id("config-version")).to_have_text(str(version), timeout=10_000)
    expect(node.get_by_test_id("acked")).to_have_text(re.compile(rf"^{version}(\.\d+)?$"), timeout=10_000)
    assert page.evaluate("window.__notReloaded") is True  # swapped in place, not reloaded
    # per-route rates: the nodes' load reports carry counters per route (bounded traffic meanwhile)
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            httpx.get(f"http://127.0.0.1:{stack.gateway_port}/echo", timeout=5)
            time.sleep(0.02)  # stays: the pace of the bounded background traffic (not a wait)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        expect(page.locator('tr[data-route="root"]').get_by_test_id("route-rps")).not_to_have_text(
            "0.0", timeout=15_000
        )
    finally:
        stop.set()
        worker.join(10)
    shot(page, "dashboard")


def test_create_a_route_through_the_form(stack: Stack, page: Any) -> None:
    login(page, stack, stack.cp.admin_token, "/ui/resources/routes")
    page.get_by_test_id("new").click()
    page.fill("#f-name", "orders-api")
    page.fill("#f-listener", "public")
    page.fill("#f-hosts", "api.example.com, *.example.com")
    page.fill("#f-path", "/orders")
    page.fill("#f-methods", "GET, POST")
    page.fill("#f-cluster", "demo")
    page.get_by_role("button", name="Create").click()
    expect(page).to_have_url(f"{stack.cp.url}/ui/resources/routes/orders-api")
    expect(page.locator(".flash-ok")).to_contain_text("route orders-api created")
    with stack.api() as c:
        route = c.get("/api/v1/routes/orders-api").json()
    assert route["hosts"] == ["api.example.com", "*.example.com"]
    assert route["methods"] == ["GET", "POST"] and route["cluster"] == "demo" and route["path"] == "/orders"
    page.goto(stack.cp.url + "/ui/resources/routes")
    expect(page.get_by_test_id("list")).to_contain_text("orders-api")


def test_a_validation_error_is_shown_on_its_field(stack: Stack, page: Any) -> None:
    login(page, stack, stack.cp.admin_token, "/ui/resources/routes/new")
    page.fill("#f-name", "bad-route")
    page.fill("#f-path", "no-slash")
    page.fill("#f-cluster", "demo")
    page.get_by_role("button", name="Create").click()
    error = page.get_by_test_id("error-path")
    expect(error).to_contain_text("must start with '/'")
    expect(page.locator('[data-field="path"]')).to_have_class(re.compile("has-error"))
    expect(page.locator("#f-path")).to_have_value("no-slash")  # what was typed stays
    shot(page, "route-form-error")
    page.fill("#f-path", "/ok")
    page.fill("#f-cluster", "nope")  # a reference error, named by the API's cross-resource check
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_test_id("error-cluster")).to_contain_text("nope")
    with stack.api() as c:
        assert c.get("/api/v1/routes/bad-route").status_code == 404


def test_yaml_dry_run_shows_the_diff_before_applying(stack: Stack, page: Any) -> None:
    with stack.api() as c:
        before = c.get("/api/v1/config").json()["version"]
    login(page, stack, stack.cp.admin_token, "/ui/apply")
    doc = (
        "clusters:\n"
        f"  - {{name: yaml-demo, lb: least_conn, endpoints: [{{address: 127.0.0.1, port: {stack.upstream.port}}}]}}\n"
        "routes:\n"
        "  - {name: root, listener: public, path: /, cluster: yaml-demo}\n"
    )
    page.fill("#yaml", doc)
    page.get_by_test_id("dry-run").click()
    create = page.locator('[data-resource="clusters/yaml-demo"]')
    update = page.locator('[data-resource="routes/root"]')
    expect(create).to_contain_text("create")
    expect(update).to_contain_text("update")
    expect(update.locator(".d-del")).to_contain_text("cluster: demo")
    expect(update.locator(".d-add")).to_contain_text("cluster: yaml-demo")
    shot(page, "yaml-dry-run")
    with stack.api() as c:
        assert c.get("/api/v1/config").json()["version"] == before  # a dry run commits nothing
    page.get_by_test_id("apply").click()
    expect(page).to_have_url(f"{stack.cp.url}/ui/history")
    expect(page.locator(".flash-ok")).to_contain_text("applied: config version")
    with stack.api() as c:
        assert c.get("/api/v1/routes/root").json()["cluster"] == "yaml-demo"
        c.put("/api/v1/routes/root", json={"name": "root", "listener": "public", "path": "/", "cluster": "demo"})


def test_rollback_from_history(stack: Stack, page: Any) -> None:
    body = {"name": "rb", "lb": "round_robin", "endpoints": [stack.upstream.endpoint()]}
    with stack.api() as c:
        c.put("/api/v1/clusters/rb", json=body).raise_for_status()
        good = c.get("/api/v1/config").json()["version"]
        c.put("/api/v1/clusters/rb", json={**body, "lb": "ip_hash"}).raise_for_status()
    login(page, stack, stack.cp.admin_token, "/ui/history")
    page.get_by_test_id(f"rollback-{good}").click()
    diff = page.locator('[data-resource="clusters/rb"]')
    expect(diff.locator(".d-del")).to_contain_text("lb: ip_hash")
    expect(diff.locator(".d-add")).to_contain_text("lb: round_robin")
    page.get_by_test_id("confirm-rollback").click()
    expect(page.locator(".flash-ok")).to_contain_text(f"rolled back to version {good}")
    with stack.api() as c:
        assert c.get("/api/v1/clusters/rb").json()["lb"] == "round_robin"
    row = page.locator(f'tr[data-version="{good + 2}"]')
    expect(row).to_contain_text(f"rollback to version {good}")
    expect(row).to_contain_text("admin via console@127.0.0.1")  # who, in the config history
    shot(page, "history")


def test_a_read_token_sees_write_controls_disabled(stack: Stack, page: Any) -> None:
    login(page, stack, stack.read_token, "/ui/resources/routes")
    expect(page.get_by_test_id("role")).to_have_text("read")
    expect(page.get_by_test_id("new")).to_be_disabled()
    page.goto(stack.cp.url + "/ui/resources/routes/root")
    expect(page.get_by_role("button", name="Save")).to_be_disabled()
    expect(page.locator("#f-path")).to_be_disabled()
    page.goto(stack.cp.url + "/ui/apply")
    page.get_by_test_id("dry-run").click()  # the read role may dry-run
    expect(page.get_by_test_id("apply")).to_be_disabled()
    page.goto(stack.cp.url + "/ui/resources/tokens")
    expect(page.locator(".flash-error")).to_contain_text("needs the admin role")
    page.goto(stack.cp.url + "/ui/history")
    expect(page.get_by_role("button", name="Roll back…").first).to_be_disabled()


def test_writes_need_the_csrf_token_and_secrets_stay_masked(stack: Stack, page: Any) -> None:
    with stack.api() as c:
        consumer = {"name": "alice", "credentials": [{"type": "api_key", "key": "alice-secret-key-123"}]}
        c.put("/api/v1/consumers/alice", json=consumer).raise_for_status()
    login(page, stack, stack.cp.admin_token, "/ui/resources/consumers/alice")
    expect(page.get_by_test_id("resource-yaml")).to_contain_text("********")
    assert "alice-secret-key-123" not in page.content()
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "flux_console")
    with httpx.Client(base_url=stack.cp.url, cookies={"flux_console": cookie}) as c:
        r = c.post("/ui/resources/routes/new", data={"name": "csrf-less", "path": "/x", "cluster": "demo"})
        assert r.status_code == 403 and "CSRF" in r.text
        csrf = page.locator('input[name="csrf_token"]').first.get_attribute("value")
        evil = {"name": "cross", "path": "/x", "cluster": "demo", "csrf_token": csrf}
        r = c.post("/ui/resources/routes/new", data=evil, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
    with stack.api() as c:
        assert c.get("/api/v1/routes/csrf-less").status_code == 404
        assert c.get("/api/v1/routes/cross").status_code == 404


def test_registry_and_tunnels_pages(stack: Stack, page: Any) -> None:
    login(page, stack, stack.cp.admin_token, "/ui/registry")
    expect(page.get_by_test_id("services")).to_contain_text("2 / 2")
    page.get_by_role("link", name="orders", exact=True).click()
    expect(page.get_by_test_id("instances")).to_contain_text("127.0.0.1:9101")
    expect(page.get_by_test_id("events")).to_contain_text("registered")
    page.goto(stack.cp.url + "/ui/registry")
    shot(page, "registry")
    page.goto(stack.cp.url + "/ui/tunnels")
    expect(page.locator("h1")).to_have_text("Tunnels")


def test_swagger_ui_is_served_locally(stack: Stack, page: Any, watch: Watch) -> None:
    page.goto(stack.cp.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("FLUX Gateway control plane", timeout=15_000)
    assert any(u.endswith("/ui/static/vendor/swagger-ui/swagger-ui-bundle.js") for u in watch.local)
    with httpx.Client(base_url=stack.cp.url) as c:
        assert c.get("/redoc").headers["location"] == "/docs"
    wait_until(lambda: any(u.endswith("/openapi.json") for u in watch.local), 5)
