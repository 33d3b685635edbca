"""A `flux-node` started from a snapshot file (no control plane needed), and raw-socket helpers.

`SnapshotNode(workdir, doc).start()` renders `doc` (the REST document shape: listeners,
clusters, routes, ...) into a snapshot with the control plane's own code, stores secrets as
the store would (hashed passwords), and starts a node that serves it from its cache. Every
exchange helper is bounded by a timeout.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import time
from typing import Any

import httpx

from controlplane.snapshot import render_snapshot
from controlplane.spec import ConfigSet
from dataplane.discovery.cache import SnapshotFile
from support.node import ADMIN_LINE
from support.processes import executable, port_in_log, wait_until


class SnapshotNode:
    """`flux-node` serving a config given as the REST document shape, from its snapshot cache."""

    def __init__(
        self,
        workdir: pathlib.Path,
        doc: dict[str, Any],
        *,
        nofile: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = dict(env or {})  # added to the node's environment (e.g. OTEL_* variables)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.doc = doc
        self.nofile = nofile
        self.admin_port = 0  # port 0: the node's log line says which it took
        self.log_path = workdir / "node.log"
        self._log_offset = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> SnapshotNode:
        cfg = ConfigSet.from_document(self.doc)
        stored = [(plural, spec.keep_secrets_from(None)) for plural, spec in cfg.iter_all()]  # as the store keeps them
        snap = render_snapshot(ConfigSet().with_changes(stored, []), 1, "default")
        SnapshotFile(self.workdir / "cache", "default").save(snap)
        cmd = [
            executable("flux-node"),
            "--control-plane", "127.0.0.1:1",  # nobody: the node serves its cached snapshot
            "--node-id", "sec",
            "--cache-dir", str(self.workdir / "cache"),
            "--admin", f"127.0.0.1:{self.admin_port}",
            "--access-log", str(self.workdir / "access.log"),
        ]  # fmt: skip
        if self.nofile is not None:  # set in a small exec wrapper: no Python runs between fork and exec
            wrapper = (
                "import os, resource, sys; n = int(sys.argv[1]); "
                "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
            )
            cmd = [sys.executable, "-c", wrapper, str(self.nofile), *cmd]
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )  # fmt: skip
        try:
            wait_until(self._ready, 15, message="node ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from None
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"flux-node exited with {self.proc.returncode}\n{self.output()}")
        if not self.admin_port:
            self.admin_port = port_in_log(self.log_path, ADMIN_LINE, self._log_offset)
            if not self.admin_port:
                return False
        try:
            return httpx.get(self.admin + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(self.admin + "/metrics", timeout=5).text

    def metric(self, name: str, /, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            m = re.fullmatch(r"([a-z_:]+)(?:\{(.*)\})? (\S+)", line)
            if m and m.group(1) == name:
                got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
                if got == want:
                    return float(m.group(3))
        return 0.0

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def exchange(port: int, data: bytes, *, timeout: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """Send `data`, read until the peer closes or a complete response arrived; bounded by `timeout`."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        return read_response(s, timeout)


def read_response(s: socket.socket, timeout: float = 5.0) -> bytes:
    """Bytes of one response (head, and body by Content-Length), or what came before EOF/timeout."""
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if m and len(body) >= int(m.group(1)):
                break
    return buf


def status_of(response: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    return int(m.group(1)) if m else 0
