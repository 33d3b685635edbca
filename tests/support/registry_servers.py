"""Real etcd and ZooKeeper servers as child processes, for the registry adapter tests.

`EtcdServer` runs Debian's `etcd` (package `etcd-server`, /usr/bin/etcd) and `ZooKeeperServer`
runs Debian's ZooKeeper (package `zookeeperd`: /usr/share/java/zookeeper.jar started with
`java ... org.apache.zookeeper.server.ZooKeeperServerMain zoo.cfg`, the standalone server
that `zkServer.sh start-foreground` runs). Each listens on free ports on 127.0.0.1 with its
data in a temporary directory, and can be killed and started again on the same data and
ports (`restart`), as a crashed server would come back.

A missing binary fails the test with a message that names the Debian package; `.ci/run`
installs both. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

from support.processes import free_port

ETCD_BIN = os.environ.get("FLUX_TEST_ETCD", "/usr/bin/etcd")
ZK_JAR = os.environ.get("FLUX_TEST_ZOOKEEPER_JAR", "/usr/share/java/zookeeper.jar")
ZK_CONF_DIR = "/etc/zookeeper/conf"  # log4j.properties of the Debian package (classpath, as zkEnv.sh sets it)


class ServerStartError(AssertionError):
    pass


class _ChildServer:
    """A server child process with its log in `workdir`; stopped by SIGTERM, then SIGKILL."""

    NAME = "server"
    START_TIMEOUT = 20.0

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.NAME}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> _ChildServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.START_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None:
                raise ServerStartError(f"{self.NAME} exited with code {self.proc.returncode}\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(f"{self.NAME} did not answer within {self.START_TIMEOUT}s\n{self.output()}")
            time.sleep(0.05)  # poll interval: until the server answers (or exits)
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL, as a crash would (the data directory stays)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def restart(self) -> _ChildServer:
        """Kill the server and start it again on the same data directory and ports."""
        self.kill()
        return self.start()

    def __enter__(self) -> _ChildServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EtcdServer(_ChildServer):
    """A single-member etcd 3.4 cluster: `host`, `port` (client), `address` ("host:port")."""

    NAME = "etcd"

    def __init__(self, workdir: pathlib.Path) -> None:
        if not (os.path.isfile(ETCD_BIN) and os.access(ETCD_BIN, os.X_OK)):
            raise ServerStartError(
                f"etcd is not installed at {ETCD_BIN}: install the Debian package `etcd-server` "
                "(.ci/run does), or point FLUX_TEST_ETCD at an etcd binary"
            )
        super().__init__(workdir)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.peer_port = free_port()
        self.data_dir = self.workdir / "data"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        client = f"http://{self.host}:{self.port}"
        return [
            ETCD_BIN,
            "--name", "flux-test",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"flux-test={peer}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
        ]  # fmt: skip

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except OSError:
            return False


class ZooKeeperServer(_ChildServer):
    """A standalone ZooKeeper 3.8: `host`, `port`, `address` ("host:port")."""

    NAME = "zookeeper"
    START_TIMEOUT = 30.0  # a JVM

    def __init__(self, workdir: pathlib.Path) -> None:
        java = shutil.which("java")
        if not os.path.isfile(ZK_JAR) or java is None:
            raise ServerStartError(
                f"ZooKeeper is not installed ({ZK_JAR}{'' if java else ', java'} missing): install the Debian "
                "package `zookeeperd` (.ci/run does), or point FLUX_TEST_ZOOKEEPER_JAR at zookeeper.jar"
            )
        super().__init__(workdir)
        self.java = java
        self.host = "127.0.0.1"
        self.port = free_port()
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config = self.workdir / "zoo.cfg"
        self.config.write_text(
            "tickTime=500\n"
            f"dataDir={self.data_dir}\n"
            f"clientPort={self.port}\n"
            f"clientPortAddress={self.host}\n"
            "maxClientCnxns=0\n"
            "minSessionTimeout=1000\n"
            "maxSessionTimeout=60000\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr\n"
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        classpath = os.pathsep.join(p for p in (ZK_CONF_DIR, ZK_JAR) if os.path.exists(p))
        return [
            self.java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-Dzookeeper.admin.enableServer=false",
            "-cp", classpath,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(self.config),
        ]  # fmt: skip

    def _ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1) as s:
            s.sendall(b"ruok")
            s.settimeout(1)
            return s.recv(4) == b"imok"
        return False
