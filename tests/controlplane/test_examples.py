"""examples/ and the README against the stack `./scripts/up` starts (issue 14), for real:
`scripts/dev_stack.py` (what scripts/up runs) with its control plane, node and demo upstream.

- the README's Examples commands apply examples/gateway.yaml, policies.yaml and services.yaml, and
  every curl of its checked block (one per policy) answers the status it says, run by bash;
- examples/frpc.toml publishes the demo upstream through the tunnel server gateway.yaml makes;
- the README's flux.yaml does not trap a plain upstream (one without /healthz) into 503s;
- a second start of the stack keeps a listener the user changed.

The stack runs on free ports: the well-known ones (8080, 9080, 9001, ...) are replaced in copies
of the files and in the commands, and nothing else is.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from support.processes import executable, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = "<!-- examples: run by tests/controlplane/test_examples.py -->"
DEFAULT_PORTS = (8080, 8081, 9080, 9001, 9901, 18000, 7000, 6000, 7400)


class Stack:
    """scripts/dev_stack.py as a child process, on free ports, state in `state`."""

    def __init__(self, state: pathlib.Path) -> None:
        self.state = state
        self.ports = {p: free_port() for p in DEFAULT_PORTS}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.banner = ""

    def port(self, default: int) -> int:
        return self.ports[default]

    def start(self) -> Stack:
        p = self.ports
        cmd = [sys.executable, str(ROOT / "scripts" / "dev_stack.py"), "--dir", str(self.state),
               "--port", str(p[8080]), "--upstream-port", str(p[9001]), "--http", str(p[9080]),
               "--grpc", str(p[18000]), "--admin", str(p[9901])]  # fmt: skip
        # started as a shell starts a background job: SIGINT ignored (Ctrl-C must still stop it, below)
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        threading.Thread(target=self._pump, daemon=True).start()
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while "Ctrl-C stops everything." not in "".join(seen):
            try:
                seen.append(self.lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError("dev stack did not start:\n" + "".join(seen)) from None
        self.banner = "".join(seen)
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    @property
    def token(self) -> str:
        return (self.state / "data" / "admin.token").read_text().strip()

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port(9080)}", headers={"Authorization": f"Bearer {self.token}"}
        )

    def localize(self, text: str) -> str:
        """`text` with the stack's ports for the well-known ones."""
        p = self.ports
        text = text.replace("6000-6010", f"{p[6000]}-{p[6000]}")
        known = r"(?<![\d.])(" + "|".join(map(str, DEFAULT_PORTS)) + r")(?!\d)"
        return re.sub(known, lambda m: str(p[int(m[1])]), text)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("dev-stack") / ".flux-dev").start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def workdir(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A checkout as the README's commands expect it: examples/ (on the stack's ports), .venv, .flux-dev."""
    work = tmp_path_factory.mktemp("checkout")
    (work / "examples").mkdir()
    for name in ("gateway.yaml", "policies.yaml", "services.yaml", "frpc.toml"):
        (work / "examples" / name).write_text(stack.localize((ROOT / "examples" / name).read_text()))
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / ".flux-dev").symlink_to(stack.state)
    return work


def _env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLUX_TOKEN", "FLUX_ADMIN_TOKEN")}
    env["FLUX_SERVER"] = f"http://127.0.0.1:{stack.port(9080)}"
    return env


def _readme_block(after: str) -> str:
    """The first ```sh block after the line `after` in the README."""
    text = README.read_text()
    start = text.index(after)
    fence = text.index("```sh\n", start) + len("```sh\n")
    return text[fence : text.index("```", fence)]


def _checked(block: str) -> str:
    """The README's checked block as a bash script: each `curl ...  # -> 200, 503` runs once per
    status and must answer it; other lines run as they are."""
    out = ["set -u"]
    for n, line in enumerate(block.splitlines(), 1):
        if "# -> " not in line:
            out.append(line)
            continue
        command, _, note = line.partition("# -> ")
        statuses = re.match(r"\d{3}(?:,\s*\d{3})*", note)
        assert command.startswith("curl ") and statuses, f"README line {n}: {line}"
        for want in re.findall(r"\d{3}", statuses.group(0)):
            out.append(f"""got=$({command.rstrip()} -s -o /dev/null -w '%{{http_code}}')""")
            complaint = f"line {n}: want {want}, got $got: {command.strip()}"
            out.append(f"""[ "$got" = {want} ] || {{ echo "{complaint}"; exit 1; }}""")
    return "\n".join(out) + "\necho ALL-OK\n"


def _bash(script: str, cwd: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_readme_examples_apply_and_every_curl_answers(stack: Stack, workdir: pathlib.Path) -> None:
    env = _env(stack)
    setup = stack.localize(_readme_block("### Examples"))
    assert "fluxctl apply -f examples/gateway.yaml" in setup and "examples/services.yaml" in setup
    done = _bash("set -eu\n" + setup, workdir, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied" in done.stdout and '"created":1' in done.stdout.replace(" ", "")

    with stack.api() as api:  # the registry instance reaches the node's cluster
        wait_until(lambda: api.get("/api/v1/services/demo-svc").json()["healthy_instances"] == 1, 20)
    svc = f"http://localhost:{stack.port(8080)}/svc/hello"
    wait_until(lambda: httpx.get(svc).status_code == 200, 10, message="the registry cluster on the node")
    script = stack.localize(_checked(_readme_block(MARKER)))
    assert script.count("got=$(") >= 25
    ran = _bash(f"export FLUX_ADMIN_TOKEN={stack.token}\n{script}", workdir, env)
    assert ran.returncode == 0 and "ALL-OK" in ran.stdout, ran.stdout + ran.stderr


def test_the_examples_answer_as_the_readme_says(stack: Stack, workdir: pathlib.Path) -> None:
    gw = f"http://localhost:{stack.port(8080)}"
    r = httpx.get(f"{gw}/limited")  # the README's rate-limit fields (one request was made above)
    assert r.headers["RateLimit-Limit"] == "5" and r.headers["RateLimit-Policy"] == "5;w=60"
    assert int(r.headers["RateLimit-Remaining"]) <= 3 and int(r.headers["RateLimit-Reset"]) <= 60
    echoed = httpx.get(f"{gw}/rewrite/orders").json()
    assert echoed["path"] == "/echo/orders" and echoed["headers"]["Host"] == "echo.internal"
    assert echoed["headers"]["X-Gateway"] == "flux"
    stamped = httpx.get(f"{gw}/stamped")
    assert stamped.headers["X-Served-By"] == "flux" and "X-Upstream" not in stamped.headers
    assert httpx.get(f"{gw}/old-home").headers["Location"] == "/new-home"
    assert httpx.get(f"{gw}/fragile").json() == {"degraded": True}


def test_frpc_example_publishes_the_demo_upstream(stack: Stack, workdir: pathlib.Path) -> None:
    frpc = workdir / "examples" / "frpc.toml"
    verify = subprocess.run([executable("flux-tunnel"), "verify", "-c", str(frpc)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    agent = subprocess.Popen([executable("flux-tunnel"), "-c", str(frpc)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        status_url = f"http://127.0.0.1:{stack.port(7400)}/api/status"

        def running() -> bool:
            proxies = httpx.get(status_url).json()["proxies"]
            return len(proxies) == 2 and all(p["status"] == "running" for p in proxies)

        wait_until(running, 20, message="both proxies of examples/frpc.toml running")
        tcp = httpx.get(f"http://localhost:{stack.port(6000)}/echo")
        assert tcp.status_code == 200 and tcp.json()["path"] == "/echo"
        vhost = httpx.get(f"http://localhost:{stack.port(8080)}/echo", headers={"Host": "demo.localhost"})
        assert vhost.status_code == 200 and vhost.json()["headers"]["Host"] == "demo.localhost"
        routed = wait_until(lambda: httpx.get(f"http://localhost:{stack.port(8080)}/tunnel/hello"), 10)
        assert routed.status_code == 200 and routed.json()["path"] == "/echo/hello"
    finally:
        agent.terminate()
        agent.wait(10)


class _PlainUpstream:
    """`python -m http.server`: a plain upstream that has no /healthz (it answers 404 there)."""

    def __init__(self, directory: pathlib.Path) -> None:
        (directory / "orders").write_text("orders from a plain upstream\n")
        self.proc = subprocess.Popen(  # port 0: the banner ("Serving HTTP on ... port N") says which port
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(directory)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()
        m = re.search(r" port (\d+)", banner)
        assert m, f"http.server did not start: {banner!r}"
        self.port = int(m.group(1))
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{self.port}/orders").status_code == 200, 10)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_the_readme_flux_yaml_does_not_trap_a_plain_upstream(stack: Stack, tmp_path: pathlib.Path) -> None:
    doc: dict[str, Any] = yaml.safe_load(_readme_block_yaml("`flux.yaml` uses the contract's shapes"))
    upstream = _PlainUpstream(tmp_path)
    port = free_port()
    try:
        for lst in doc["listeners"]:
            lst.update(name="readme", address="127.0.0.1", port=port)
        for route in doc["routes"]:
            route["listener"] = "readme"
        for cluster in doc["clusters"]:
            cluster["endpoints"] = [{"address": "127.0.0.1", "port": upstream.port}]
            if "health_check" in cluster:  # as the README has it, only quicker to show its outcome
                cluster["health_check"]["interval"] = "100ms"
        with stack.api() as api:
            r = api.post("/api/v1/apply", json=doc)
            assert r.status_code == 200, r.text
        url = f"http://127.0.0.1:{port}/orders"
        wait_until(lambda: httpx.get(url, headers={"Host": "api.example.com"}).status_code != 404, 10)
        checked = {c["name"] for c in doc["clusters"] if "health_check" in c}
        assert checked, "the README's flux.yaml has a health check"

        def rounds() -> int:  # health-check rounds the node ran on the plain upstream (the fewest of its endpoints)
            clusters = httpx.get(f"http://127.0.0.1:{stack.port(9901)}/clusters", timeout=5).json()["clusters"]
            counts = [ep["checks_ok"] + ep["checks_failed"] for c in clusters if c["name"] in checked
                      for ep in c["endpoints"]]  # fmt: skip
            return min(counts) if counts else 0

        wait_until(lambda: rounds() >= 10, 10, message="ten health-check rounds")
        answers = [httpx.get(url, headers={"Host": "api.example.com", "x-user": f"u{i}"}) for i in range(10)]
        assert [a.status_code for a in answers] == [200] * 10, answers[-1].text
        assert all(a.text == "orders from a plain upstream\n" for a in answers)
    finally:
        upstream.close()
        with stack.api() as api:
            for kind, name in (("routes", "orders-api"), ("clusters", "orders"), ("clusters", "orders-v2"),
                               ("listeners", "readme")):  # fmt: skip
                api.delete(f"/api/v1/{kind}/{name}")


def _readme_block_yaml(after: str) -> str:
    text = README.read_text()
    start = text.index(after)
    fence = text.index("```yaml\n", start) + len("```yaml\n")
    return text[fence : text.index("```", fence)]


def test_a_second_start_keeps_a_listener_the_user_changed(stack: Stack) -> None:
    """Last in the module: it restarts the stack."""
    with stack.api() as api:
        public = api.get("/api/v1/listeners/public").json()
        public.update(address="0.0.0.0")
        r = api.put("/api/v1/listeners/public", json=public)
        assert r.status_code == 200, r.text
        assert api.delete("/api/v1/routes/demo").status_code == 200  # a demo route removed stays removed
        egress = {
            "name": "egress",
            "protocol": "http",
            "address": "127.0.0.1",
            "port": free_port(),
            "mode": "forward",
            "forward": {"allow_hosts": ["example.com"]},
        }
        assert api.post("/api/v1/listeners", json=egress).status_code == 201
        version = api.get("/api/v1/config").json()["version"]
    proc = stack.proc
    stack.stop(signal.SIGINT)  # what Ctrl-C sends: everything stops, even when started in the background
    assert proc is not None and proc.returncode == 0
    with pytest.raises(httpx.TransportError), stack.api() as api:
        api.get("/api/v1/config")  # the control plane went with it
    stack.start()
    with stack.api() as api:
        assert api.get("/api/v1/listeners/public").json()["address"] == "0.0.0.0"
        assert api.get("/api/v1/routes/demo").status_code == 404
        assert api.get("/api/v1/config").json()["version"] == version  # the restart wrote nothing
    assert "(bound to 0.0.0.0)" in stack.banner, stack.banner
    # a forward proxy listener is shown as one, not with the 400 a GET / there answers
    assert f"(forward proxy: curl -x http://127.0.0.1:{egress['port']}/ http://HOST/)" in stack.banner, stack.banner
    assert "bad_request" not in stack.banner, stack.banner
