"""Real `flux-node` and echo-upstream child processes for data-plane end-to-end tests.

`NodeProcess` starts `flux-node` with its admin endpoint on port 0 and reads the port the node
took from the line it logs ("admin endpoint on ...", or the supervisor's "admin on ..."; a
restart asks for that same port again), keeps the JSON access log in a file, and offers
helpers to wait for readiness or a config version. It enrols on its own: when its
cache holds no credentials yet, it asks the ControlPlaneProcess serving one of its
control-plane addresses for a join token of its group (`join_token=""`: none). `UpstreamProcess` runs
`scripts/echo_upstream.py` on port 0 and reads the port from its banner.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from support.processes import executable, port_in_log, serving, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
ECHO = ROOT / "scripts" / "echo_upstream.py"
ADMIN_LINE = r"admin endpoint on http://[^:\s]+:(\d+)"  # what a node (one worker) logs once its admin port is open
SUPERVISOR_ADMIN_LINE = r"; admin on http://[^:\s]+:(\d+)"  # the same from the supervisor of several workers


class UpstreamProcess:
    """The echo upstream (scripts/echo_upstream.py) as a child process."""

    def __init__(self, name: str = "up", port: int = 0, fail_status: int = 0) -> None:
        self.name = name
        self.fail_status = fail_status
        self.requested_port = port
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> UpstreamProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ECHO),
                "--port",
                str(self.requested_port or self.port),
                "--name",
                self.name,
                "--fail-status",
                str(self.fail_status),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"listening on [^:]+:(\d+)", line)
        if not m:
            raise AssertionError(f"echo upstream {self.name} did not start: {line!r}")
        self.port = int(m.group(1))
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def endpoint(self, weight: int = 1) -> dict[str, Any]:
        return {"address": "127.0.0.1", "port": self.port, "weight": weight}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> UpstreamProcess:
        """Start again on the same port."""
        self.stop()
        self.requested_port = self.port
        return self.start()

    def __enter__(self) -> UpstreamProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NodeProcess:
    """`flux-node` as a child process; `admin` is its admin base URL."""

    def __init__(
        self,
        workdir: pathlib.Path,
        control_plane: str,
        *,
        node_id: str = "node-1",
        group: str = "default",
        workers: int = 1,
        extra_args: tuple[str, ...] = (),
        join_token: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = pathlib.Path(workdir)
        self.env = dict(env or {})  # added to the node's environment (e.g. OTEL_* variables)
        self.join_token = join_token  # None: one from the control plane when needed
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control_plane = control_plane
        self.node_id = node_id
        self.group = group
        self.workers = workers
        self.extra_args = tuple(extra_args)
        self.admin_port = 0  # known once the node logs it (see `admin`); a restart asks for it again
        self._log_offset = 0  # where this start's lines begin in the (appended) log
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{node_id}.log"
        self.access_path = self.workdir / f"{node_id}.access.log"
        self.cache_dir = self.workdir / "cache"

    @property
    def admin(self) -> str:
        """The admin base URL (waits until the node has logged the port it bound)."""
        if not self.admin_port:
            wait_until(self._admin_port_now, 15.0, message=f"{self.node_id}'s admin port in its log")
        return f"http://127.0.0.1:{self.admin_port}"

    def _admin_port_now(self) -> int:
        """The admin port from the log of this start, or 0 while not logged yet."""
        if not self.admin_port:
            pattern = SUPERVISOR_ADMIN_LINE if self.workers > 1 else ADMIN_LINE
            self.admin_port = port_in_log(self.log_path, pattern, self._log_offset)
            if not self.admin_port and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"flux-node exited with {self.proc.returncode}\n{self.output()}")
        return self.admin_port

    def start(self, *, wait_ready: bool = True, timeout: float = 15.0) -> NodeProcess:
        cmd = [
            executable("flux-node"),
            "--control-plane", self.control_plane,
            "--node-id", self.node_id,
            "--group", self.group,
            "--admin", f"127.0.0.1:{self.admin_port}",
            "--cache-dir", str(self.cache_dir),
            "--access-log", str(self.access_path),
            "--workers", str(self.workers),
            "--drain-timeout", "5s",
            *self.extra_args,
        ]  # fmt: skip
        token = self._token()
        if token:
            cmd += ["--join-token", token]
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - the child owns it
        self._log_offset = log.tell()
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def _token(self) -> str:
        if self.join_token is not None:
            return self.join_token
        if (self.cache_dir / "node.crt").exists():
            return ""  # enrolled before: restarts need no token
        cp = serving(self.control_plane)
        return cp.join_token(self.group) if cp is not None else ""

    def get(self, path: str, timeout: float = 5.0) -> httpx.Response:
        return httpx.get(self.admin + path, timeout=timeout)

    def is_ready(self) -> bool:
        try:
            return bool(self._admin_port_now()) and self.get("/ready").status_code == 200
        except (httpx.HTTPError, AssertionError):
            return False

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"flux-node exited with {self.proc.returncode}\n{self.output()}")
            return self.is_ready()

        try:
            wait_until(ready, timeout, message="node ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from None

    def version(self) -> str | None:
        try:
            body = self.get("/ready").json()
        except (httpx.HTTPError, ValueError):
            return None
        if "workers" in body:  # supervisor
            return None
        return body.get("version")

    def wait_version(self, version: int | str, timeout: float = 5.0) -> None:
        wait_until(lambda: self.version() == str(version), timeout, message=f"node at version {version}")

    def clusters(self) -> dict[str, Any]:
        return {c["name"]: c for c in self.get("/clusters").json()["clusters"]}

    def access_log(self) -> list[dict[str, Any]]:
        if not self.access_path.exists():
            return []
        return [json.loads(line) for line in self.access_path.read_text().splitlines() if line.strip()]

    def output(self) -> str:
        try:
            return "---- node log (tail):\n" + self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> NodeProcess:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_http(url: str, predicate: Any = None, timeout: float = 5.0, **kw: Any) -> httpx.Response:
    """GET `url` until it answers (and `predicate(response)` holds); return the response."""

    def attempt() -> httpx.Response | None:
        r = httpx.get(url, timeout=2.0, **kw)
        if predicate is None or predicate(r):
            return r
        return None

    return wait_until(attempt, timeout, message=f"GET {url}")


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0
