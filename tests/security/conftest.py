"""Shared pieces of the security regression suite: a node started from a snapshot file (no
control plane needed), the echo upstream, a scriptable hostile upstream, and raw-socket helpers.

Every exchange is exact bytes over a socket with a timeout, so each test is bounded in time.
"""

from __future__ import annotations

import os
import pathlib
import re
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from support.config_samples import commit_samples
from support.node import UpstreamProcess
from support.processes import ControlPlaneProcess, executable, free_port, wait_until

from controlplane.snapshot import render_snapshot
from controlplane.spec import ConfigSet
from dataplane.discovery.cache import SnapshotFile


class SnapshotNode:
    """`flux-node` serving a config given as the REST document shape, from its snapshot cache."""

    def __init__(self, workdir: pathlib.Path, doc: dict[str, Any], *, nofile: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.doc = doc
        self.nofile = nofile
        self.admin_port = free_port()
        self.log_path = workdir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> SnapshotNode:
        snap = render_snapshot(ConfigSet.from_document(self.doc), 1, "default")
        SnapshotFile(self.workdir / "cache", "default").save(snap)
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        cmd = [
            executable("flux-node"),
            "--control-plane", "127.0.0.1:1",  # nobody: the node serves its cached snapshot
            "--node-id", "sec",
            "--cache-dir", str(self.workdir / "cache"),
            "--admin", f"127.0.0.1:{self.admin_port}",
            "--access-log", str(self.workdir / "access.log"),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=limit,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
        try:
            return httpx.get(self.admin + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(self.admin + "/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
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


@pytest.fixture(scope="module")
def cp(module_controlplane: ControlPlaneProcess) -> ControlPlaneProcess:
    """A control plane holding one sample of every resource kind (support.config_samples)."""
    with module_controlplane.client() as c:
        commit_samples(c)
    return module_controlplane


@pytest.fixture(scope="module")
def client(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client(timeout=10.0) as c:
        yield c


@pytest.fixture(scope="module")
def echo() -> Iterator[UpstreamProcess]:
    up = UpstreamProcess("echo").start()
    try:
        yield up
    finally:
        up.stop()


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


class HostileUpstream:
    """An upstream that answers each request with the raw bytes `responses[path]` gives.

    A path not in the table gets a plain 200. Runs in a thread; bounded by socket timeouts.
    """

    def __init__(self, responses: dict[str, bytes | Callable[[socket.socket], None]]) -> None:
        self.responses = responses
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HostileUpstream:
        self._thread.start()
        return self

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head)
                path = head.split(b" ", 2)[1].decode("latin-1").partition("?")[0]
                answer = self.responses.get(path, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                if callable(answer):
                    answer(conn)
                    return
                conn.sendall(answer)
        except OSError:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
