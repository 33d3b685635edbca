"""Real child processes for integration tests: the control plane, and MariaDB databases.

`ControlPlaneProcess` starts `flux-controlplane` on port 0 (HTTP and gRPC), reads the
ports from the block it prints on stdout, and stops it with SIGTERM (kill after 10 s).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pathlib
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

BIN = pathlib.Path(sys.executable).parent
MARIADB_HOST = os.environ.get("FLUX_TEST_MYSQL_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("FLUX_TEST_MYSQL_PORT", "3306"))
MARIADB_USER = os.environ.get("FLUX_TEST_MYSQL_USER", "root")
MARIADB_PASSWORD = os.environ.get("FLUX_TEST_MYSQL_PASSWORD", "")

T = TypeVar("T")

_SERVING: dict[str, ControlPlaneProcess] = {}  # grpc_addr -> the control plane started there last


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port the OS says is free now (another process may still take it later)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_log(path: pathlib.Path, pattern: str, offset: int = 0) -> int:
    """The port a child process logged (group 1 of `pattern`, first match after `offset` bytes of
    its log), or 0 while it has not: how tests learn the port of a server started on port 0."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return 0
    m = re.search(pattern, text)
    return int(m.group(1)) if m else 0


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.02, message: str = "") -> T:
    """Poll `predicate` until it returns something truthy; return that, or fail after `timeout`.

    Exceptions from the predicate count as "not yet" and the last one is shown on failure.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
        except Exception as exc:
            last_exc, result = exc, None  # type: ignore[assignment]
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}{detail}")
        time.sleep(interval)


def executable(name: str) -> str:
    """A console script of this virtualenv (next to the running Python), or from PATH."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed in {BIN} nor on PATH")
    return found


class ProcessStartError(AssertionError):
    pass


def serving(addresses: str) -> ControlPlaneProcess | None:
    """The ControlPlaneProcess listening on one of `addresses` ("HOST:PORT[,HOST:PORT...]"), if any:
    how NodeProcess and the test discovery client find where to get a join token."""
    for address in addresses.split(","):
        cp = _SERVING.get(address.strip())
        if cp is not None and cp.running:
            return cp
    return None


class ControlPlaneProcess:
    """`flux-controlplane` as a child process.

    `url` is the base URL (http://127.0.0.1:PORT, the REST API is under `/api/v1`),
    `grpc_addr` is HOST:PORT of the discovery server, `token` the admin token.
    """

    START_TIMEOUT = 15.0

    def __init__(
        self,
        workdir: pathlib.Path,
        db: str | None = None,
        *,
        token: str | None = None,
        cp_id: str | None = None,
        poll_interval: float | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db = db or f"sqlite:///{self.workdir / 'flux.db'}"
        self.token = token if token is not None else "test-admin-" + secrets.token_hex(8)
        self.cp_id = cp_id
        self.poll_interval = poll_interval
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[str] | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.host = "127.0.0.1"
        self.token_source = ""
        self.ca_pin = ""  # sha256:<hex> of the node CA (from the banner)
        self.stdout_lines: list[str] = []
        self.log_path = self.workdir / "controlplane.log"
        self._starts = 0

    # -- addresses -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def grpc_addr(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def admin_token(self) -> str:
        """`token`, or (started without FLUX_ADMIN_TOKEN) the admin.token it generated."""
        if self.token:
            return self.token
        path = self.workdir / "admin.token"
        return path.read_text().strip() if path.exists() else ""

    def client(self, *, token: str | None = None, timeout: float = 10.0, **kw: Any) -> httpx.Client:
        """An httpx client on `url` sending the admin token, or `token` ("" sends none).
        Every /api/v1 call needs a token, reads included."""
        token = self.admin_token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, **kw)

    def api_token(self, role: str, *, services: tuple[str, ...] = (), name: str = "", ttl: str = "") -> str:
        """A new API token of `role` (POST /api/v1/tokens with the admin token)."""
        body: dict[str, Any] = {"name": name or f"{role}-{secrets.token_hex(4)}", "role": role}
        if services:
            body["services"] = list(services)
        if ttl:
            body["ttl"] = ttl
        with self.client() as c:
            r = c.post("/api/v1/tokens", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def join_token(self, group: str = "default", *, ttl: str = "1h", uses: int = 1) -> str:
        """A node join token for `group` (POST /api/v1/nodes/join-tokens with the admin token)."""
        with self.client() as c:
            r = c.post("/api/v1/nodes/join-tokens", json={"group": group, "ttl": ttl, "uses": uses})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def version(self) -> int:
        """The committed config version (GET /api/v1/config)."""
        with self.client() as c:
            r = c.get("/api/v1/config")
        r.raise_for_status()
        return int(r.json()["version"])

    def metric(self, name: str, /, **labels: str) -> float:
        """The value of one sample of the control plane's /metrics (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            m = re.fullmatch(r"([a-z_:]+)(?:\{(.*)\})? (\S+)", line)
            if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
                return float(m.group(3))
        return 0.0

    # -- life cycle ------------------------------------------------------------------

    def _command(self, http_port: int, grpc_port: int) -> list[str]:
        cmd = [
            executable("flux-controlplane"),
            "--db", self.db,
            "--http", f"{self.host}:{http_port}",
            "--grpc", f"{self.host}:{grpc_port}",
            "--data-dir", str(self.workdir),
        ]  # fmt: skip
        if self.cp_id:
            cmd += ["--id", self.cp_id]
        if self.poll_interval is not None:
            cmd += ["--poll-interval", str(self.poll_interval)]
        return cmd + list(self.extra_args)

    def shared_secret_key(self) -> dict[str, str]:
        """Control planes sharing a MySQL database must share one secret key (README): the
        key is derived from the database URL, so every process started on it agrees."""
        if self.db.startswith("sqlite"):
            return {}
        digest = hashlib.sha256(b"flux test secret key\0" + self.db.encode()).digest()
        return {"FLUX_SECRET_KEY": base64.b64encode(digest).decode()}

    def start(self, *, http_port: int = 0, grpc_port: int = 0) -> ControlPlaneProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {
            **os.environ,
            "FLUX_ADMIN_TOKEN": self.token,
            "PYTHONUNBUFFERED": "1",
            **self.shared_secret_key(),
            **self.extra_env,
        }
        if not self.token:
            env.pop("FLUX_ADMIN_TOKEN", None)
        self._starts += 1
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - the child owns it
        log.write(f"---- start #{self._starts}\n")
        log.flush()
        self.stdout_lines = []
        self.proc = subprocess.Popen(
            self._command(http_port, grpc_port),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=self.workdir,
        )
        log.close()
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, lines), daemon=True).start()
        try:
            self._read_banner(lines)
        except BaseException:
            self.stop()
            raise
        return self

    def _pump(self, proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            lines.put(line)
        lines.put(None)

    def _read_banner(self, lines: queue.Queue[str | None]) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT
        http = grpc = None
        while http is None or grpc is None or not self.token_source:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProcessStartError(f"control plane did not start within {self.START_TIMEOUT}s\n{self.output()}")
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                assert self.proc is not None
                code = self.proc.wait(5)
                raise ProcessStartError(f"control plane exited with code {code} before it was ready\n{self.output()}")
            if m := re.search(r"REST API\s+http://([^/\s]+):(\d+)/api/v1", line):
                self.host, http = m.group(1).strip("[]"), int(m.group(2))
            elif m := re.search(r"config gRPC\s+(\S+):(\d+)", line):
                grpc = int(m.group(2))
            elif m := re.search(r"admin token\s+(.+)$", line.rstrip()):
                self.token_source = m.group(1)
            elif m := re.search(r"node CA\s+(sha256:[0-9a-f]+)", line):
                self.ca_pin = m.group(1)
        self.http_port, self.grpc_port = http, grpc
        _SERVING[self.grpc_addr] = self

    def output(self) -> str:
        """stdout and the log (stderr) of the child so far, for failure messages."""
        try:
            log = self.log_path.read_text(encoding="utf-8", errors="replace")[-6000:]
        except OSError:
            log = ""
        return "---- stdout:\n" + "\n".join(self.stdout_lines) + "\n---- stderr (tail):\n" + log

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
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

    def restart(self, *, keep_ports: bool = True) -> ControlPlaneProcess:
        """Stop and start again on the same database and data dir (same ports by default)."""
        http, grpc = (self.http_port, self.grpc_port) if keep_ports else (0, 0)
        self.stop()
        return self.start(http_port=http, grpc_port=grpc)

    def __enter__(self) -> ControlPlaneProcess:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- MariaDB ------------------------------------------------------------------------------


def mariadb_connect(database: str | None = None) -> Any:
    import pymysql

    return pymysql.connect(
        host=MARIADB_HOST,
        port=MARIADB_PORT,
        user=MARIADB_USER,
        password=MARIADB_PASSWORD,
        database=database,
        connect_timeout=5,
        autocommit=True,
    )


def mariadb_unreachable() -> str | None:
    """None when the MariaDB server answers; otherwise why not."""
    try:
        conn = mariadb_connect()
    except Exception as exc:
        return f"MariaDB at {MARIADB_HOST}:{MARIADB_PORT} does not answer: {exc}"
    conn.close()
    return None


def mariadb_url(database: str) -> str:
    auth = MARIADB_USER + (f":{MARIADB_PASSWORD}" if MARIADB_PASSWORD else "")
    return f"mysql+pymysql://{auth}@{MARIADB_HOST}:{MARIADB_PORT}/{database}"


@contextlib.contextmanager
def mariadb_database(prefix: str = "flux_t_") -> Iterator[str]:
    """A fresh, empty MariaDB database for the block; yields its SQLAlchemy URL and drops it after."""
    name = prefix + secrets.token_hex(6)
    conn = mariadb_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        yield mariadb_url(name)
    finally:
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()
