"""`fluxctl` as a child process against a real control plane."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import textwrap
from collections.abc import Iterator

import httpx
import pytest
import yaml
from support.discovery import DiscoveryClient
from support.processes import ControlPlaneProcess, executable

FILE = textwrap.dedent(
    """\
    listeners:
      - name: public
        protocol: http
        address: 0.0.0.0
        port: 8080
        node_group: default
    clusters:
      - name: orders
        lb: consistent_hash
        hash_on: header:x-user
        session_affinity: {cookie: srv_id}
        endpoints:
          - {address: 127.0.0.1, port: 9001, weight: 1}
        health_check: {type: http, path: /healthz, interval: 5s, unhealthy_threshold: 3}
        timeouts: {connect: 2s, read: 30s}
      - name: orders-v2
        endpoints:
          - {address: 127.0.0.1, port: 9002, weight: 1}
    routes:
      - name: orders-api
        listener: public
        hosts: [api.example.com, "*.example.com"]
        path: /orders
        path_type: prefix
        methods: [GET, POST]
        headers: {x-canary: "true"}
        clusters: [{name: orders, weight: 90}, {name: orders-v2, weight: 10}]
        priority: 0
        policies: [rl-ip]
      - name: legacy
        listener: public
        path: /legacy
        cluster: orders
    tunnels:
      - name: edge
        node_group: default
        bind_port: 7000
        token: change-me
        allow_ports: "6000-6999"
        vhost_http_port: 8080
        subdomain_host: tunnel.example.com
    policies:
      - name: rl-ip
        type: rate_limit
        config: {algorithm: token_bucket, rate: 100, per: 1s, burst: 200, key: ip, scope: local}
    consumers:
      - name: alice
        groups: [partners]
        credentials:
          - {type: api_key, key: "alice-api-key-123"}
          - {type: jwt, issuer: my-idp, algorithm: HS256, secret: "0123456789abcdef0123"}
          - {type: basic_auth, username: alice, password: "alice-pass"}
    """
)


@pytest.fixture(scope="module")
def cp(module_controlplane: ControlPlaneProcess) -> ControlPlaneProcess:
    return module_controlplane


@pytest.fixture
def api(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client() as c:
        yield c


def fluxctl(
    cp: ControlPlaneProcess, *args: str, token: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLUX_SERVER": cp.url, "FLUX_ADMIN_TOKEN": cp.token if token is None else token}
    return subprocess.run(
        [executable("fluxctl"), *args], env=env, capture_output=True, text=True, timeout=60, input=stdin
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def version(api: httpx.Client) -> int:
    return int(api.get("/api/v1/config").json()["version"])


def test_apply_reapply_diff_prune_get_delete_history_rollback(
    cp: ControlPlaneProcess, api: httpx.Client, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "flux.yaml"
    path.write_text(FILE)
    v0 = version(api)

    out = ok(fluxctl(cp, "apply", "-f", str(path)))
    assert "+ routes/orders-api create" in out and "+ consumers/alice create" in out
    assert f"applied 8 change(s): config version {v0 + 1}" in out
    assert version(api) == v0 + 1
    route = api.get("/api/v1/routes/orders-api").json()
    assert route["clusters"] == [{"name": "orders", "weight": 90}, {"name": "orders-v2", "weight": 10}]
    assert api.get("/api/v1/consumers/alice").json()["credentials"][0]["key"] == "********"

    out = ok(fluxctl(cp, "apply", "-f", str(path)))  # the same file again
    assert f"no changes: config version {v0 + 1}" in out
    assert version(api) == v0 + 1

    changed = FILE.replace("path: /orders", "path: /orders/v2")
    path.write_text(changed)
    out = ok(fluxctl(cp, "apply", "-f", str(path), "--diff"))
    assert "~ routes/orders-api update (dry run)" in out
    assert "-path: /orders" in out and "+path: /orders/v2" in out
    assert "nothing committed" in out
    assert version(api) == v0 + 1
    assert api.get("/api/v1/routes/orders-api").json()["path"] == "/orders"

    out = ok(fluxctl(cp, "apply", "-f", str(path)))
    assert "~ routes/orders-api update" in out and version(api) == v0 + 2
    assert api.get("/api/v1/routes/orders-api").json()["path"] == "/orders/v2"

    # --prune: the file no longer names route "legacy" nor cluster "orders-v2" (and its split)
    pruned = yaml.safe_load(changed)
    pruned["routes"] = [r for r in pruned["routes"] if r["name"] != "legacy"]
    pruned["routes"][0].pop("clusters")
    pruned["routes"][0]["cluster"] = "orders"
    pruned["clusters"] = [c for c in pruned["clusters"] if c["name"] != "orders-v2"]
    path.write_text(yaml.safe_dump(pruned))
    out = ok(fluxctl(cp, "apply", "-f", str(path), "--prune"))
    assert "- routes/legacy delete" in out and "- clusters/orders-v2 delete" in out
    assert "~ routes/orders-api update" in out
    assert api.get("/api/v1/routes/legacy").status_code == 404
    assert api.get("/api/v1/clusters/orders-v2").status_code == 404
    assert version(api) == v0 + 3

    table = ok(fluxctl(cp, "get", "routes"))
    header, *rows = table.splitlines()
    assert header.split()[:3] == ["NAME", "LISTENER", "HOSTS"]
    assert any(row.split()[0] == "orders-api" and "/orders/v2" in row for row in rows)
    as_json = json.loads(ok(fluxctl(cp, "get", "route", "orders-api", "-o", "json")))
    assert as_json == api.get("/api/v1/routes/orders-api").json()
    as_yaml = yaml.safe_load(ok(fluxctl(cp, "get", "clusters", "-o", "yaml")))
    assert [c["name"] for c in as_yaml["clusters"]] == ["orders"]
    secrets = ok(fluxctl(cp, "get", "consumers", "-o", "json"))
    assert "alice-api-key-123" not in secrets and "alice-pass" not in secrets and "********" in secrets

    out = ok(fluxctl(cp, "delete", "route", "orders-api"))
    assert f"deleted routes/orders-api: config version {v0 + 4}" in out
    assert api.get("/api/v1/routes/orders-api").status_code == 404

    history = ok(fluxctl(cp, "history"))
    lines = history.splitlines()
    assert lines[0].split()[:2] == ["VERSION", "CREATED"]
    assert lines[1].split()[0] == str(v0 + 4) and "delete routes/orders-api" in lines[1]
    assert [int(line.split()[0]) for line in lines[1:5]] == [v0 + 4, v0 + 3, v0 + 2, v0 + 1]

    out = ok(fluxctl(cp, "rollback", str(v0 + 2)))
    assert f"rolled back to version {v0 + 2}: config version {v0 + 5}" in out
    assert api.get("/api/v1/routes/legacy").status_code == 200
    assert api.get("/api/v1/routes/orders-api").json()["path"] == "/orders/v2"
    assert api.get("/api/v1/clusters/orders-v2").status_code == 200
    assert "version" in ok(fluxctl(cp, "version"))


def test_nodes(cp: ControlPlaneProcess) -> None:
    with DiscoveryClient(cp.grpc_addr, "ctl-node", group="ctl") as node:
        v = node.wait_for_pushes(1)[0].version
        out = ""
        for _ in range(50):  # until the ACK shows (poll; each call is a fresh process)
            out = ok(fluxctl(cp, "nodes"))
            if any(line.split()[:2] == ["ctl-node", "ctl"] and f" {v} " in line for line in out.splitlines()):
                break
        row = next(line for line in out.splitlines() if line.startswith("ctl-node"))
        assert row.split()[:5] == ["ctl-node", "ctl", row.split()[2], "connected", v]
        assert "ID" in out.splitlines()[1] and "GROUP" in out.splitlines()[1]
        data = json.loads(ok(fluxctl(cp, "nodes", "-o", "json")))
        assert any(n["id"] == "ctl-node" and n["connected"] for n in data["items"])


def test_bad_file_exits_1_naming_the_field(cp: ControlPlaneProcess, api: httpx.Client, tmp_path: pathlib.Path) -> None:
    before = api.get("/api/v1/config").json()["digest"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters:\n  - name: broken\n    endpoints:\n      - {address: 127.0.0.1, port: 9001, weight: 0}\n")
    result = fluxctl(cp, "apply", "-f", str(bad))
    assert result.returncode == 1, result
    assert "endpoints[0].weight" in result.stderr and "clusters/broken" in result.stderr

    bad.write_text("routes:\n  - name: r\n    cluster: nowhere\n")
    result = fluxctl(cp, "apply", "-f", str(bad))
    assert result.returncode == 1 and "cluster" in result.stderr and "nowhere" in result.stderr

    bad.write_text("gadgets:\n  - name: x\n")
    result = fluxctl(cp, "apply", "-f", str(bad))
    assert result.returncode == 1 and "unknown kind 'gadgets'" in result.stderr

    bad.write_text("clusters: [ {name: x\n")
    result = fluxctl(cp, "apply", "-f", str(bad))
    assert result.returncode == 1 and "not valid YAML" in result.stderr

    result = fluxctl(cp, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1 and "cannot read" in result.stderr

    bad.write_text("clusters:\n  - name: fine\n")
    result = fluxctl(cp, "apply", "-f", str(bad), token="wrong")
    assert result.returncode == 1 and "401" in result.stderr and "FLUX_ADMIN_TOKEN" in result.stderr
    assert api.get("/api/v1/config").json()["digest"] == before

    result = fluxctl(cp, "get", "gizmos")
    assert result.returncode == 1 and "unknown kind" in result.stderr
    assert "services (the registry), all" in result.stderr  # what `get` reads besides the config kinds
    result = fluxctl(cp, "get", "route", "no-such-route")
    assert result.returncode == 1 and "404" in result.stderr


def test_apply_from_stdin(cp: ControlPlaneProcess, api: httpx.Client) -> None:
    doc = "policies:\n  - name: stdin-cors\n    type: cors\n"
    out = ok(fluxctl(cp, "apply", "-f", "-", stdin=doc))
    assert "+ policies/stdin-cors create" in out
    assert api.get("/api/v1/policies/stdin-cors").status_code == 200


def test_output_into_a_closed_pipe_is_no_traceback(cp: ControlPlaneProcess) -> None:
    """`fluxctl history | head -1`: the reader goes away; fluxctl stops quietly (as a C tool would)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before fluxctl writes a byte
    try:
        env = {**os.environ, "FLUX_SERVER": cp.url, "FLUX_ADMIN_TOKEN": cp.token}
        result = subprocess.run(
            [executable("fluxctl"), "history"], env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert result.returncode == 141, result.stderr


@pytest.fixture
def not_a_control_plane() -> Iterator[str]:
    """An HTTP server that answers JSON, but not as a control plane: the gateway's echo route, say."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = (404, b'{"error": "not_found"}') if self.path.startswith("/api/v1/nodes") else (200, b"{}")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_is_no_control_plane_is_named_not_a_traceback(not_a_control_plane: str) -> None:
    env = {**os.environ, "FLUX_SERVER": not_a_control_plane, "FLUX_ADMIN_TOKEN": "x"}
    for args in (["get", "routes"], ["history"], ["nodes"]):
        result = subprocess.run([executable("fluxctl"), *args], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert "does not answer as a FLUX control plane" in result.stderr, (args, result.stderr)
        assert "--server (FLUX_SERVER)" in result.stderr


def test_server_without_a_scheme_is_plain_http(cp: ControlPlaneProcess) -> None:
    bare = cp.url.removeprefix("http://")
    out = ok(fluxctl(cp, "--server", bare, "history"))
    assert "VERSION" in out


def test_a_name_is_one_path_segment(cp: ControlPlaneProcess, api: httpx.Client) -> None:
    """`fluxctl get route ..` printed the API's index as a route, and `fluxctl delete route
    ../clusters/NAME` deleted a cluster: names went into the URL as they were typed."""
    doc = "clusters:\n  - {name: seg-c, endpoints: [{address: 127.0.0.1, port: 9}]}\n"
    ok(fluxctl(cp, "apply", "-f", "-", stdin=doc))
    for args in (
        ["get", "route", ".."],
        ["get", "route", "../clusters/seg-c"],
        ["delete", "route", "../clusters/seg-c"],
    ):
        result = fluxctl(cp, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "404" in result.stderr, (args, result.stderr)
    assert api.get("/api/v1/clusters/seg-c").status_code == 200  # still there
    for args in (["rollouts", "get", ".."], ["nodes", "revoke", ".."], ["tokens", "delete", ".."]):
        result = fluxctl(cp, *args)
        assert result.returncode == 1 and "404" in result.stderr, (args, result.stderr)


def test_an_export_applies_as_it_is(cp: ControlPlaneProcess, api: httpx.Client, tmp_path: pathlib.Path) -> None:
    """GET /api/v1/config/export names its version; POST /api/v1/apply takes the document as it is,
    and so does `fluxctl apply -f` (it said: unknown kind 'version')."""
    export = api.get("/api/v1/config/export")
    assert export.status_code == 200, export.text
    assert "version" in export.json()
    path = tmp_path / "export.json"
    path.write_text(export.text)
    out = ok(fluxctl(cp, "apply", "-f", str(path), "--diff"))
    assert "unknown kind" not in out
