"""Shared pieces of the security regression suite: the echo upstream, a scriptable hostile
upstream, a control plane holding sample resources (the node from a snapshot file and the
raw-socket helpers are in support.snapshot_node).

Every exchange is exact bytes over a socket with a timeout, so each test is bounded in time.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from support.config_samples import commit_samples
from support.node import UpstreamProcess
from support.processes import ControlPlaneProcess
from support.snapshot_node import SnapshotNode, exchange, read_response, status_of

__all__ = ["HostileUpstream", "SnapshotNode", "exchange", "read_response", "status_of"]


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
