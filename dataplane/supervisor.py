"""`flux-node --workers N`: N worker processes sharing the listeners.

Each worker is a full node process (its own config stream, node id
`ID/wK`) binding the traffic ports with SO_REUSEPORT so the kernel spreads
connections between them. The supervisor restarts a worker that dies, passes
SIGTERM/SIGINT on so every worker drains, and serves the admin port itself:
/ready is ready when every worker is, /metrics merges the workers' metrics
with a `worker` label, /stats, /clusters and /config_dump list each worker's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from dataplane.admin import AdminRequest, AdminServer, Reply, json_body
from fluxcommon import httpfetch
from fluxcommon.httpfetch import FetchError

log = logging.getLogger("flux.supervisor")


class _Worker:
    def __init__(self, index: int, report: pathlib.Path) -> None:
        self.index = index
        self.report = report
        self.proc: trio.Process | None = None
        self.admin_port = 0
        self.restarts = 0


def _worker_argv(args: argparse.Namespace, index: int, report: pathlib.Path) -> list[str]:
    argv = [sys.executable, "-m", "dataplane.main"]
    skip_next = False
    raw = sys.argv[1:]
    for i, token in enumerate(raw):
        if skip_next:
            skip_next = False
            continue
        name = token.split("=", 1)[0]
        if name in ("--admin", "--worker-index", "--report-file", "--join-token"):  # workers never enrol
            skip_next = "=" not in token and i + 1 < len(raw)
            continue
        argv.append(token)
    argv += ["--admin", "127.0.0.1:0", "--worker-index", str(index), "--report-file", str(report)]
    if not any(t.split("=", 1)[0] == "--workers" for t in raw):
        argv += ["--workers", str(args.workers)]
    return argv


FETCH_TIMEOUT = 2.0


MAX_WORKER_ANSWER = 64 << 20  # a worker's /metrics or /config_dump


async def _fetch(port: int, path: str) -> tuple[int, bytes]:
    """GET http://127.0.0.1:PORT/PATH from a worker's admin endpoint (2 s at most; httpx through
    `fluxcommon.httpfetch`); FetchError when the worker does not answer."""
    async with httpfetch.client(max_connections=1, keepalive=False) as http:
        return await httpfetch.fetch(
            http,
            "GET",
            f"http://127.0.0.1:{port}{path}",
            headers=[("Host", "worker")],
            time_limit=FETCH_TIMEOUT,
            max_body=MAX_WORKER_ANSWER,
        )


def _merge_metrics(parts: list[tuple[int, bytes]]) -> bytes:
    """Prometheus texts of several workers as one, each sample labelled with its worker."""
    seen_meta: set[bytes] = set()
    out: list[bytes] = []
    for index, text in parts:
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith(b"#"):
                if line not in seen_meta:
                    seen_meta.add(line)
                    out.append(line)
                continue
            name, brace, rest = line.partition(b"{")
            label = b'worker="%d"' % index
            if brace:
                out.append(name + b"{" + label + (b"," if not rest.startswith(b"}") else b"") + rest)
            else:
                metric, _, value = line.partition(b" ")
                out.append(metric + b"{" + label + b"} " + value)
    return b"\n".join(out) + b"\n"


class Supervisor:
    def __init__(self, args: argparse.Namespace, admin: tuple[str, int]) -> None:
        self.args = args
        self.admin = admin
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="flux-node-"))
        self.workers = [_Worker(i, self.tmp / f"worker-{i}.json") for i in range(args.workers)]
        self.stopping = False
        self.server = AdminServer(
            {
                "/ready": self._ready,
                "/healthz": lambda _h: (200, "application/json", json_body({"status": "alive"})),
                "/metrics": self._metrics,
                "/stats": lambda h: self._each("/stats"),
                "/clusters": lambda h: self._each("/clusters"),
                "/config_dump": lambda h: self._each("/config_dump"),
                "/listeners": lambda h: self._each("/listeners"),
            }
        )

    async def _ready(self, _head: AdminRequest) -> Reply:
        states = []
        for w in self.workers:
            ok = False
            if w.admin_port:
                try:
                    status, _ = await _fetch(w.admin_port, "/ready")
                    ok = status == 200
                except FetchError:
                    ok = False
            states.append({"worker": w.index, "ready": ok, "pid": w.proc.pid if w.proc else None})
        ready = all(s["ready"] for s in states) and not self.stopping
        return (200 if ready else 503), "application/json", json_body({"ready": ready, "workers": states})

    async def _metrics(self, _head: AdminRequest) -> Reply:
        parts = []
        for w in self.workers:
            if w.admin_port:
                try:
                    status, body = await _fetch(w.admin_port, "/metrics")
                    if status == 200:
                        parts.append((w.index, body))
                except FetchError:
                    pass
        return 200, "text/plain; version=0.0.4", _merge_metrics(parts)

    async def _each(self, path: str) -> Reply:
        out: list[dict[str, Any]] = []
        for w in self.workers:
            entry: dict[str, Any] = {"worker": w.index}
            try:
                status, body = await _fetch(w.admin_port, path) if w.admin_port else (503, b"null")
                entry["status"] = status
                entry["body"] = json.loads(body or b"null")
            except (FetchError, ValueError) as exc:
                entry["error"] = str(exc)
            out.append(entry)
        return 200, "application/json", json_body({"workers": out})

    async def _run_worker(self, w: _Worker) -> None:
        backoff = 0.5
        while not self.stopping:
            w.report.unlink(missing_ok=True)
            argv = _worker_argv(self.args, w.index, w.report)
            started = time.monotonic()
            w.proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL)
            log.info("worker %d started (pid %d)", w.index, w.proc.pid)
            with trio.move_on_after(30):
                # The worker writes the file when its admin port is open; polling is simplest.
                while not w.report.exists() and w.proc.poll() is None:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            if w.report.exists():
                w.admin_port = json.loads(w.report.read_text())["admin_port"]
            code = await w.proc.wait()
            w.admin_port = 0
            if self.stopping:
                log.info("worker %d exited (%d)", w.index, code)
                return
            w.restarts += 1
            backoff = 0.5 if time.monotonic() - started > 30 else min(backoff * 2, 10)
            log.error("worker %d exited with %d; restarting in %.1fs", w.index, code, backoff)
            await trio.sleep(backoff)

    async def run(self) -> int:
        async with trio.open_nursery() as nursery:
            try:
                port = await nursery.start(self.server.serve, self.admin[0], self.admin[1])
            except OSError as exc:
                raise OSError(exc.errno, f"--admin {self.admin[0]}:{self.admin[1]}: {exc.strerror}") from None
            log.info("supervising %d workers; admin on http://%s:%d", len(self.workers), self.admin[0], port)
            for w in self.workers:
                nursery.start_soon(self._run_worker, w)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for sig in signals:
                    log.info("received %s: stopping workers", signal.Signals(sig).name)
                    break
            self.stopping = True
            for w in self.workers:
                if w.proc is not None and w.proc.returncode is None:
                    w.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(self.args.drain_timeout + 5):
                for w in self.workers:
                    if w.proc is not None:
                        await w.proc.wait()
            for w in self.workers:
                if w.proc is not None and w.proc.returncode is None:
                    w.proc.kill()
            nursery.cancel_scope.cancel()
        for f in self.tmp.glob("*"):
            f.unlink(missing_ok=True)
        self.tmp.rmdir()
        return 0


def run_supervisor(args: argparse.Namespace, admin: tuple[str, int]) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return trio.run(Supervisor(args, admin).run)
